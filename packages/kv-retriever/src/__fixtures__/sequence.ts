import type { KvLayout } from '@tinyserve/core';
import { kvElementIndex } from '@tinyserve/core';
import { createPageMetadataLayer, updatePageMetadata } from '../page-metadata.js';
import type { PageMetadataLayer } from '../page-metadata.js';
import { PageTable } from '../page-table.js';
import { cacheLength, randomArray, rng, shuffledPages } from './kv.js';

export interface SequenceFixture {
  layout: KvLayout;
  kCache: Float32Array;
  vCache: Float32Array;
  metadata: PageMetadataLayer;
  tables: PageTable[];
  /** `[numSeqs, numQHeads, headDim]`. */
  query: Float32Array;
  numQHeads: number;
}

/**
 * Sequences of random keys/values in shuffled physical pages of one layer, with their
 * metadata and one random query per sequence.
 */
export function sequenceFixture(opts: {
  seed: number;
  tokens: number[];
  pageSize: number;
  numKvHeads: number;
  numQHeads: number;
  headDim: number;
  numLayers?: number;
  /** Scale of the query, to make attention sharper (larger) or flatter. */
  queryScale?: number;
}): SequenceFixture {
  const rand = rng(opts.seed);
  const totalPages = opts.tokens.reduce((a, n) => a + Math.ceil(n / opts.pageSize), 0);
  const layout: KvLayout = {
    numLayers: opts.numLayers ?? 4,
    numPages: totalPages + 3,
    pageSize: opts.pageSize,
    numKvHeads: opts.numKvHeads,
    headDim: opts.headDim,
  };
  const kCache = new Float32Array(cacheLength(layout));
  const vCache = new Float32Array(cacheLength(layout));
  const metadata = createPageMetadataLayer(layout);
  const free = shuffledPages(layout.numPages, layout.numPages, rand);
  const row = opts.numKvHeads * opts.headDim;
  const tables = opts.tokens.map((n) => {
    const t = new PageTable(opts.pageSize);
    t.append(n, free.splice(0, t.pagesNeededFor(n)));
    const { pages, slots } = t.slotMapping(0, n);
    const keys = randomArray(n * row, rand);
    const values = randomArray(n * row, rand);
    for (let i = 0; i < n; i++) {
      const at = kvElementIndex(layout, pages[i], slots[i], 0);
      kCache.set(keys.subarray(i * row, (i + 1) * row), at);
      vCache.set(values.subarray(i * row, (i + 1) * row), at);
    }
    updatePageMetadata({ layout, ...metadata, keys, pages, slots });
    return t;
  });
  const query = randomArray(opts.tokens.length * opts.numQHeads * opts.headDim, rand, opts.queryScale ?? 1);
  return { layout, kCache, vCache, metadata, tables, query, numQHeads: opts.numQHeads };
}
