import fc from 'fast-check';
import type { KvLayout } from '@tinyserve/core';
import { kvElementIndex, metadataIndex } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { cacheLength, randomArray, rng, shuffledPages } from './__fixtures__/kv.js';
import {
  PageMetadata,
  clearPageMetadata,
  createPageMetadataLayer,
  isPageMetadataEmpty,
  rebuildPageMetadata,
  updatePageMetadata,
} from './page-metadata.js';
import { PageTable } from './page-table.js';

/** The box of a page straight from the definition, over its first `fill` slots. */
function bruteForceBox(layout: KvLayout, k: Float32Array, page: number, fill: number, kvHead: number): { min: number[]; max: number[] } {
  const min: number[] = [];
  const max: number[] = [];
  for (let d = 0; d < layout.headDim; d++) {
    let lo = Infinity;
    let hi = -Infinity;
    for (let s = 0; s < fill; s++) {
      const v = k[kvElementIndex(layout, page, s, kvHead) + d];
      lo = Math.min(lo, v);
      hi = Math.max(hi, v);
    }
    min.push(lo);
    max.push(hi);
  }
  return { min, max };
}

/** Appends `count` random tokens to a sequence: writes the K buffer and updates metadata incrementally. */
function appendTokens(
  layout: KvLayout,
  table: PageTable,
  count: number,
  freePages: number[],
  kCache: Float32Array,
  meta: { min: Float32Array; max: Float32Array },
  rand: () => number,
): void {
  const start = table.numTokens;
  table.append(count, freePages.splice(0, table.pagesNeededFor(count)));
  const { pages, slots } = table.slotMapping(start, count);
  const row = layout.numKvHeads * layout.headDim;
  const keys = randomArray(count * row, rand);
  for (let t = 0; t < count; t++) kCache.set(keys.subarray(t * row, (t + 1) * row), kvElementIndex(layout, pages[t], slots[t], 0));
  updatePageMetadata({ layout, ...meta, keys, pages, slots });
}

describe('page metadata', () => {
  it('starts with every page empty', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 3, pageSize: 4, numKvHeads: 2, headDim: 3 };
    const meta = createPageMetadataLayer(layout);
    for (let p = 0; p < 3; p++) for (let h = 0; h < 2; h++) expect(isPageMetadataEmpty(layout, meta, p, h)).toBe(true);
  });

  it('incremental updates equal a rebuild from scratch and the definition (random appends, partial pages)', () => {
    fc.assert(
      fc.property(
        fc.record({
          seed: fc.integer({ min: 0, max: 2 ** 31 }),
          pageSize: fc.integer({ min: 1, max: 6 }),
          numKvHeads: fc.integer({ min: 1, max: 3 }),
          headDim: fc.integer({ min: 1, max: 5 }),
          numSeqs: fc.integer({ min: 1, max: 3 }),
          appends: fc.array(fc.integer({ min: 1, max: 9 }), { minLength: 1, maxLength: 12 }),
        }),
        ({ seed, pageSize, numKvHeads, headDim, numSeqs, appends }) => {
          const rand = rng(seed);
          const maxTokens = appends.reduce((a, b) => a + b, 0);
          const layout: KvLayout = { numLayers: 1, numPages: numSeqs * Math.ceil(maxTokens / pageSize) + 1, pageSize, numKvHeads, headDim };
          const kCache = new Float32Array(cacheLength(layout));
          const meta = createPageMetadataLayer(layout);
          const free = shuffledPages(layout.numPages, layout.numPages, rand);
          const tables = Array.from({ length: numSeqs }, () => new PageTable(pageSize));
          // Interleave the sequences' appends, as a batched engine would.
          appends.forEach((count, i) => appendTokens(layout, tables[i % numSeqs], count, free, kCache, meta, rand));

          const rebuilt = createPageMetadataLayer(layout);
          for (const t of tables) {
            const fills = t.pageIds.map((_, i) => (i === t.numPages - 1 ? t.lastPageLen : pageSize));
            rebuildPageMetadata({ layout, ...rebuilt, kCache, pages: t.pageIds, fills });
          }
          expect(rebuilt.min).toEqual(meta.min);
          expect(rebuilt.max).toEqual(meta.max);
          for (const t of tables) {
            t.pageIds.forEach((page, i) => {
              const fill = i === t.numPages - 1 ? t.lastPageLen : pageSize;
              for (let h = 0; h < numKvHeads; h++) {
                const at = metadataIndex(layout, page, h);
                const box = bruteForceBox(layout, kCache, page, fill, h);
                expect([...meta.min.subarray(at, at + headDim)]).toEqual(box.min);
                expect([...meta.max.subarray(at, at + headDim)]).toEqual(box.max);
              }
            });
          }
          // Pages no sequence took stay empty.
          for (const page of free) expect(isPageMetadataEmpty(layout, meta, page)).toBe(true);
        },
      ),
      { numRuns: 60, seed: 42 },
    );
  });

  it('a recycled page gets a fresh box from its first new key', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 2, pageSize: 4, numKvHeads: 1, headDim: 2 };
    const meta = createPageMetadataLayer(layout);
    updatePageMetadata({ layout, ...meta, keys: Float32Array.from([10, -10, 20, -20]), pages: [1, 1], slots: [0, 1] });
    updatePageMetadata({ layout, ...meta, keys: Float32Array.from([1, 2]), pages: [1], slots: [0] });
    expect([...meta.min.subarray(2, 4)]).toEqual([1, 2]);
    expect([...meta.max.subarray(2, 4)]).toEqual([1, 2]);
  });

  it('rebuilds after truncation (pruning) to the remaining slots, and clears pages', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 4, pageSize: 4, numKvHeads: 2, headDim: 3 };
    const rand = rng(7);
    const kCache = new Float32Array(cacheLength(layout));
    const meta = createPageMetadataLayer(layout);
    const table = new PageTable(4);
    appendTokens(layout, table, 11, [2, 0, 3], kCache, meta, rand);
    const freed = table.truncate(6);
    expect(freed).toEqual([3]);
    clearPageMetadata({ layout, ...meta, pages: freed });
    rebuildPageMetadata({ layout, ...meta, kCache, pages: [table.pageIds[1]], fills: [table.lastPageLen] });
    for (let h = 0; h < 2; h++) {
      const at = metadataIndex(layout, 0, h);
      const box = bruteForceBox(layout, kCache, 0, 2, h);
      expect([...meta.min.subarray(at, at + 3)]).toEqual(box.min);
      expect([...meta.max.subarray(at, at + 3)]).toEqual(box.max);
    }
    expect(isPageMetadataEmpty(layout, meta, 3)).toBe(true);
    rebuildPageMetadata({ layout, ...meta, kCache, pages: [2], fills: [0] });
    expect(isPageMetadataEmpty(layout, meta, 2, 1)).toBe(true);
  });

  it('PageMetadata holds every layer and forwards to the functions', () => {
    const layout: KvLayout = { numLayers: 2, numPages: 2, pageSize: 2, numKvHeads: 1, headDim: 2 };
    const m = new PageMetadata(layout);
    m.update(1, Float32Array.from([1, 2, 3, 0]), [0, 0], [0, 1]);
    expect(m.isEmpty(0, 0)).toBe(true);
    expect(m.isEmpty(1, 0)).toBe(false);
    expect([...m.layer(1).min.subarray(0, 2)]).toEqual([1, 0]);
    expect([...m.layer(1).max.subarray(0, 2)]).toEqual([3, 2]);
    m.clear([0]);
    expect(m.isEmpty(1, 0)).toBe(true);
    expect(() => m.layer(2)).toThrow(/layer: must be in \[0, 2\)/);
  });

  it('names the bad field', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 2, pageSize: 2, numKvHeads: 1, headDim: 2 };
    const meta = createPageMetadataLayer(layout);
    expect(() => updatePageMetadata({ layout, ...meta, keys: new Float32Array(2), pages: [0], slots: [2] })).toThrow(/slots\[0\]/);
    expect(() => updatePageMetadata({ layout, ...meta, keys: new Float32Array(2), pages: [5], slots: [0] })).toThrow(/pages\[0\]/);
    expect(() => updatePageMetadata({ layout, ...meta, keys: new Float32Array(1), pages: [0], slots: [0] })).toThrow(/keys/);
    expect(() => updatePageMetadata({ layout, min: new Float32Array(3), max: meta.max, keys: new Float32Array(2), pages: [0], slots: [0] })).toThrow(
      /min\/max/,
    );
  });
});
