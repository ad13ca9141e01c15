import fc from 'fast-check';
import type { KvLayout } from '@tinyserve/core';
import { kvElementIndex, metadataIndex } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { randomArray, rng } from './__fixtures__/kv.js';
import { createPageMetadataLayer, updatePageMetadata } from './page-metadata.js';
import { scorePages } from './page-score.js';

/** Fills `numPages` pages (the last one `lastFill` slots) with the given keys and their metadata. */
function filledLayer(layout: KvLayout, keys: Float32Array, lastFill: number) {
  const meta = createPageMetadataLayer(layout);
  const row = layout.numKvHeads * layout.headDim;
  const pages: number[] = [];
  const slots: number[] = [];
  for (let p = 0; p < layout.numPages; p++) {
    const fill = p === layout.numPages - 1 ? lastFill : layout.pageSize;
    for (let s = 0; s < fill; s++) {
      pages.push(p);
      slots.push(s);
    }
  }
  const kCache = new Float32Array(layout.numPages * layout.pageSize * row);
  pages.forEach((p, t) => kCache.set(keys.subarray(t * row, (t + 1) * row), kvElementIndex(layout, p, slots[t], 0)));
  updatePageMetadata({ layout, ...meta, keys, pages, slots });
  return { meta, kCache, numTokens: pages.length };
}

function dot(a: Float32Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s = 0;
  for (let d = 0; d < n; d++) s += a[ao + d] * b[bo + d];
  return s;
}

/** Per query head upper bound, straight from the formula. */
function headBound(layout: KvLayout, meta: { min: Float32Array; max: Float32Array }, q: Float32Array, h: number, page: number, kvHead: number): number {
  const box = metadataIndex(layout, page, kvHead);
  let s = 0;
  for (let d = 0; d < layout.headDim; d++) {
    const x = q[h * layout.headDim + d];
    s += Math.max(x * meta.min[box + d], x * meta.max[box + d]);
  }
  return s;
}

describe('scorePages', () => {
  it('upper-bounds every q·k in the page, per head and for both GQA aggregations (property)', () => {
    const f = fc.float({ min: -4, max: 4, noNaN: true });
    fc.assert(
      fc.property(
        fc.record({
          pageSize: fc.integer({ min: 1, max: 5 }),
          numPages: fc.integer({ min: 1, max: 4 }),
          numKvHeads: fc.integer({ min: 1, max: 2 }),
          group: fc.integer({ min: 1, max: 3 }),
          headDim: fc.integer({ min: 1, max: 6 }),
          lastFillFrac: fc.double({ min: 0, max: 1, noNaN: true }),
        }).chain((s) => {
          const lastFill = Math.max(1, Math.ceil(s.lastFillFrac * s.pageSize));
          const tokens = (s.numPages - 1) * s.pageSize + lastFill;
          const row = s.numKvHeads * s.headDim;
          return fc.record({
            s: fc.constant({ ...s, lastFill }),
            keys: fc.array(f, { minLength: tokens * row, maxLength: tokens * row }),
            q: fc.array(f, { minLength: s.numKvHeads * s.group * s.headDim, maxLength: s.numKvHeads * s.group * s.headDim }),
          });
        }),
        ({ s, keys, q }) => {
          const layout: KvLayout = { numLayers: 1, numPages: s.numPages, pageSize: s.pageSize, numKvHeads: s.numKvHeads, headDim: s.headDim };
          const { meta, kCache } = filledLayer(layout, Float32Array.from(keys), s.lastFill);
          const query = Float32Array.from(q);
          const numQHeads = s.numKvHeads * s.group;
          const pages = Array.from({ length: s.numPages }, (_, i) => i);
          const sum = scorePages({ layout, metadata: meta, query, numQHeads, pages, aggregation: 'sum' });
          const max = scorePages({ layout, metadata: meta, query, numQHeads, pages, aggregation: 'max' });
          for (let p = 0; p < s.numPages; p++) {
            const fill = p === s.numPages - 1 ? s.lastFill : s.pageSize;
            for (let j = 0; j < s.numKvHeads; j++) {
              for (let slot = 0; slot < fill; slot++) {
                const k = kvElementIndex(layout, p, slot, j);
                let groupSum = 0;
                let groupMax = -Infinity;
                for (let g = 0; g < s.group; g++) {
                  const x = dot(query, (j * s.group + g) * s.headDim, kCache, k, s.headDim);
                  groupSum += x;
                  groupMax = Math.max(groupMax, x);
                }
                // fround is monotonic, so comparing rounded values is exact.
                expect(sum[j * s.numPages + p]).toBeGreaterThanOrEqual(Math.fround(groupSum));
                expect(max[j * s.numPages + p]).toBeGreaterThanOrEqual(Math.fround(groupMax));
              }
            }
          }
        },
      ),
      { numRuns: 150, seed: 1 },
    );
  });

  it('is tight on a single-key page (the box is a point)', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 1, pageSize: 4, numKvHeads: 1, headDim: 8 };
    const rand = rng(3);
    const keys = randomArray(8, rand);
    const { meta } = filledLayer(layout, keys, 1);
    const q = randomArray(8, rand);
    const [score] = scorePages({ layout, metadata: meta, query: q, numQHeads: 1, pages: [0] });
    expect(score).toBe(Math.fround(dot(q, 0, keys, 0, 8)));
  });

  it('aggregates GQA groups by max (default) or sum of the per-head bounds, per KV head', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 5, pageSize: 4, numKvHeads: 2, headDim: 8 };
    const rand = rng(11);
    const { meta } = filledLayer(layout, randomArray(5 * 4 * 2 * 8, rand), 4);
    const numQHeads = 6;
    const q = randomArray(numQHeads * 8, rand);
    const pages = [4, 0, 2];
    const byDefault = scorePages({ layout, metadata: meta, query: q, numQHeads, pages });
    const sum = scorePages({ layout, metadata: meta, query: q, numQHeads, pages, aggregation: 'sum' });
    expect(byDefault.length).toBe(2 * 3);
    for (let j = 0; j < 2; j++) {
      pages.forEach((page, i) => {
        const bounds = [0, 1, 2].map((g) => headBound(layout, meta, q, j * 3 + g, page, j));
        expect(byDefault[j * 3 + i]).toBe(Math.fround(Math.max(...bounds)));
        expect(sum[j * 3 + i]).toBeCloseTo(bounds[0] + bounds[1] + bounds[2], 4);
      });
    }
  });

  it('scores empty pages -Infinity and writes into a given buffer', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 3, pageSize: 2, numKvHeads: 1, headDim: 2 };
    const meta = createPageMetadataLayer(layout);
    updatePageMetadata({ layout, ...meta, keys: Float32Array.from([1, 1]), pages: [1], slots: [0] });
    const out = new Float32Array(3);
    const r = scorePages({ layout, metadata: meta, query: Float32Array.from([1, -1]), numQHeads: 1, pages: [0, 1, 2], out });
    expect(r).toBe(out);
    expect([...out]).toEqual([-Infinity, 0, -Infinity]);
  });

  it('rejects a head count that is not a multiple of the KV heads, and a short query', () => {
    const layout: KvLayout = { numLayers: 1, numPages: 1, pageSize: 2, numKvHeads: 2, headDim: 2 };
    const meta = createPageMetadataLayer(layout);
    expect(() => scorePages({ layout, metadata: meta, query: new Float32Array(6), numQHeads: 3, pages: [0] })).toThrow(/numQHeads/);
    expect(() => scorePages({ layout, metadata: meta, query: new Float32Array(6), numQHeads: 4, pages: [0] })).toThrow(/query/);
    expect(() => scorePages({ layout, metadata: meta, query: new Float32Array(8), numQHeads: 4, pages: [1] })).toThrow(/pages\[0\]/);
  });
});
