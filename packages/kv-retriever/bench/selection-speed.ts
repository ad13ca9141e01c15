/**
 * Speed of the reference selection kernels for one sequence and one layer with TinyLlama's
 * attention shape (32 query heads, 4 KV heads, head dim 64): page scoring, quest top-K,
 * sparse attention over the selected pages, and the dense reference it replaces.
 *
 *   node --conditions=@tinyserve/source --import tsx packages/kv-retriever/bench/selection-speed.ts \
 *     [--contexts 4096,32768] [--page-size 16] [--budget-fraction 0.125] [--min-time 0.5] [--json]
 *
 * Each kernel runs repeatedly for at least --min-time seconds, after a warm-up of half that.
 * The table shows the fastest run (least disturbed by other processes on a shared machine)
 * and the median; --json gives both per kernel.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import type { KvLayout } from '@tinyserve/core';
import {
  buildPageTableCsr,
  createPageMetadataLayer,
  createSelectionPolicy,
  packSelections,
  PageTable,
  pagedAttentionDecodeDense,
  scorePages,
  sparsePagedAttention,
  updatePageMetadata,
} from '../src/index.js';

const { values: args } = parseArgs({
  options: {
    contexts: { type: 'string', default: '4096,32768' },
    'page-size': { type: 'string', default: '16' },
    'budget-fraction': { type: 'string', default: '0.125' },
    'min-time': { type: 'string', default: '0.5' },
    json: { type: 'boolean', default: false },
  },
});

const NUM_Q_HEADS = 32;
const NUM_KV_HEADS = 4;
const HEAD_DIM = 64;
const pageSize = Number(args['page-size']);
const budgetFraction = Number(args['budget-fraction']);
const minTime = Number(args['min-time']);
const contexts = args.contexts.split(',').map(Number);

/** Deterministic pseudo-normal data (sum of uniforms), cheap to generate. */
function fillRandom(out: Float32Array, seed: number): Float32Array {
  let a = seed >>> 0;
  const u = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  for (let i = 0; i < out.length; i++) out[i] = u() + u() + u() - 1.5;
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

interface Timing {
  min: number;
  median: number;
}

/** Wall time in ms of `fn`, repeated until `minTime` seconds have passed (at least 3 runs). */
function time(fn: () => unknown): Timing {
  // Warm-up, so the optimizing JIT has compiled the kernel before it is timed.
  const warm = performance.now();
  for (let i = 0; i < 3 || performance.now() - warm < minTime * 500; i++) fn();
  const runs: number[] = [];
  const start = performance.now();
  while (runs.length < 3 || performance.now() - start < minTime * 1000) {
    const t0 = performance.now();
    fn();
    runs.push(performance.now() - t0);
  }
  return { min: Math.min(...runs), median: median(runs) };
}

interface Row {
  context: number;
  pages: number;
  selectedPages: number;
  scoreMs: Timing;
  questSelectMs: Timing;
  sparseAttentionMs: Timing;
  questTotalMs: Timing;
  denseAttentionMs: Timing;
  /** Dense attention over quest total (score + select + sparse attention), fastest runs. */
  speedup: number;
}

const rows: Row[] = [];
for (const context of contexts) {
  const numPages = Math.ceil(context / pageSize);
  const layout: KvLayout = { numLayers: 1, numPages, pageSize, numKvHeads: NUM_KV_HEADS, headDim: HEAD_DIM };
  const row = NUM_KV_HEADS * HEAD_DIM;
  const kCache = fillRandom(new Float32Array(numPages * pageSize * row), 1);
  const vCache = fillRandom(new Float32Array(numPages * pageSize * row), 2);
  // Pages in reverse physical order, so the kernels never rely on contiguity.
  const table = new PageTable(pageSize);
  table.append(context, Array.from({ length: numPages }, (_, i) => numPages - 1 - i));
  const { pages, slots } = table.slotMapping(0, context);
  const keys = new Float32Array(context * row);
  for (let t = 0; t < context; t++) keys.set(kCache.subarray((pages[t] * pageSize + slots[t]) * row, (pages[t] * pageSize + slots[t] + 1) * row), t * row);
  const metadata = createPageMetadataLayer(layout);
  updatePageMetadata({ layout, ...metadata, keys, pages, slots });
  const query = fillRandom(new Float32Array(NUM_Q_HEADS * HEAD_DIM), 3);
  const csr = buildPageTableCsr([table]);
  const attention = { layout, kCache, vCache, query, numQHeads: NUM_Q_HEADS, pageIndptr: csr.indptr, pageIndices: csr.indices, lastPageLen: csr.lastPageLen };

  const quest = createSelectionPolicy(
    { policy: 'quest', selectionRatio: 1, tokenBudget: Math.round(context * budgetFraction), sinkPages: 1, denseLayers: 0, useFusedKernel: false },
    { pageSize },
  );
  const selectParams = { layout, layer: 0, pages: table.pageIds, numTokens: context, query, numQHeads: NUM_Q_HEADS, metadata };
  const scores = scorePages({ layout, metadata, query, numQHeads: NUM_Q_HEADS, pages: table.pageIds });
  const selection = quest.select({ ...selectParams, scores });
  const packed = packSelections([selection]);

  const scoreMs = time(() => scorePages({ layout, metadata, query, numQHeads: NUM_Q_HEADS, pages: table.pageIds, out: scores }));
  const questSelectMs = time(() => quest.select({ ...selectParams, scores }));
  const sparseAttentionMs = time(() => sparsePagedAttention({ ...attention, ...packed }));
  const questTotalMs = time(() => sparsePagedAttention({ ...attention, ...packSelections([quest.select(selectParams)]) }));
  const denseAttentionMs = time(() => pagedAttentionDecodeDense(attention));
  rows.push({
    context,
    pages: numPages,
    selectedPages: selection.indices.length / NUM_KV_HEADS,
    scoreMs,
    questSelectMs,
    sparseAttentionMs,
    questTotalMs,
    denseAttentionMs,
    speedup: denseAttentionMs.min / questTotalMs.min,
  });
}

const header = {
  cpu: os.cpus()[0]?.model ?? 'unknown',
  node: process.version,
  date: new Date().toISOString(),
  shape: `${NUM_Q_HEADS} q heads / ${NUM_KV_HEADS} kv heads / dim ${HEAD_DIM}, pageSize ${pageSize}, quest budget ${budgetFraction} of context, 1 sequence, 1 layer`,
};
if (args.json) {
  console.log(JSON.stringify({ ...header, rows }, null, 2));
} else {
  console.log(`# selection-speed  ${header.date}\n${header.cpu}, Node ${header.node}\n${header.shape}\n`);
  const f = (t: Timing, digits: number): string => `${t.min.toFixed(digits)} / ${t.median.toFixed(digits)}`;
  console.log('ms: fastest / median run\n');
  console.log('| context | pages | selected/head | scorePages | quest select | sparse attn | quest total | dense attn | dense / quest |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(
      `| ${r.context} | ${r.pages} | ${r.selectedPages} | ${f(r.scoreMs, 2)} | ${f(r.questSelectMs, 3)} | ${f(r.sparseAttentionMs, 2)} | ` +
        `${f(r.questTotalMs, 2)} | ${f(r.denseAttentionMs, 2)} | ${r.speedup.toFixed(2)}x |`,
    );
  }
}
