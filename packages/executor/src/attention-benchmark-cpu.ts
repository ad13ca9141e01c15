/**
 * The attention benchmark on the `wasm` and `cpu` executors. Both run decode attention through
 * the same TypeScript kernels (tfjs's wasm backend only hosts their buffers), so this times
 * those kernels directly, doing the work one layer of a decode step does (without the K/V
 * append, as on cuda): for `dense`, `attendOverPages` over every page; for `sparse`, the
 * executor's `StepSelection` (Quest page scores from the metadata, the `quest` policy object's
 * top-K, statistics recorded) and `attendOverPages` over the selected pages.
 *
 * The cache is a one-layer `PagedKvCache` in the benchmark's KV format, filled with N(0, 1)
 * keys and values, with its page metadata rebuilt from the keys as stored. Each call is timed
 * by wall clock; the result is the median. One copy of the cache is used, so a cache that
 * fits in the CPU's caches is read from them.
 */
import { cpus } from 'node:os';
import { ConfigError, mulberry32 } from '@tinyserve/core';
import type { ForwardParams, SelectionConfig } from '@tinyserve/core';
import { SelectionStatsCollector } from '@tinyserve/kv-retriever';
import type { BenchmarkAttentionResult, ResolvedBenchmarkAttentionParams } from './attention-benchmark-params.js';
import { modeLabel } from './attention-benchmark-params.js';
import { DecodeSelector, StepSelection } from './decode-selection.js';
import { planForward } from './forward-plan.js';
import { attendOverPages } from './kernels/paged-attention-cpu.js';
import type { PageSelection, PagedAttentionParams } from './kernels/paged-attention-cpu.js';
import { PagedKvCache } from './kv-cache.js';

/** The most K (or V) elements the benchmark allocates per buffer (fp32: 4 GiB). */
const MAX_KV_ELEMENTS = 2 ** 30;

let copyGbPerSecond: number | undefined;

/**
 * Memory bandwidth of a plain copy (read + write, GB/s): the best of five copies of a 64 MiB
 * typed array, after one untimed copy that faults the pages in. Measured once per process.
 */
export function cpuCopyBandwidth(): number {
  if (copyGbPerSecond !== undefined) return copyGbPerSecond;
  const bytes = 64 * 2 ** 20;
  const src = new Float64Array(bytes / 8).fill(1);
  const dst = new Float64Array(bytes / 8);
  dst.set(src);
  let best = Infinity;
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    dst.set(src);
    best = Math.min(best, performance.now() - t0);
  }
  copyGbPerSecond = (2 * bytes) / (best / 1000) / 1e9;
  return copyGbPerSecond;
}

/** Median microseconds per call of `fn` over `iterations` timed calls after `warmup` untimed ones. */
function medianMicroseconds(fn: () => void, iterations: number, warmup: number): number {
  for (let i = 0; i < warmup; i++) fn();
  const t = new Float64Array(iterations);
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    fn();
    t[i] = performance.now() - t0;
  }
  t.sort();
  const mid = iterations >> 1;
  return (iterations % 2 === 1 ? t[mid] : (t[mid - 1] + t[mid]) / 2) * 1000;
}

/** N(0, 1) by Box-Muller from a seeded uniform generator. */
function normalFill(out: Float32Array, uniform: () => number): Float32Array {
  for (let i = 0; i < out.length; i += 2) {
    const r = Math.sqrt(-2 * Math.log(1 - uniform()));
    const a = 2 * Math.PI * uniform();
    out[i] = r * Math.cos(a);
    if (i + 1 < out.length) out[i + 1] = r * Math.sin(a);
  }
  return out;
}

export function benchmarkCpuAttention(p: ResolvedBenchmarkAttentionParams): BenchmarkAttentionResult[] {
  const { batchSize: B, inputSize: N, numPages: pagesPerSeq, pageSize: ps, numQHeads: Hq, numKvHeads: Hk, headDim: D, kvDtype } = p;
  const setPages = B * pagesPerSeq;
  const elements = setPages * ps * Hk * D;
  if (elements > MAX_KV_ELEMENTS) {
    throw new ConfigError(
      'inputSize',
      `batch ${B} x ${pagesPerSeq} pages of ${ps} tokens x ${Hk} KV heads x ${D} is ${elements} K elements; ` +
        `the ${p.executor} benchmark holds at most ${MAX_KV_ELEMENTS} per buffer (lower batchSize or inputSize)`,
    );
  }
  const layout = { numLayers: 1, numPages: setPages, pageSize: ps, numKvHeads: Hk, headDim: D };
  const cache = new PagedKvCache(layout, kvDtype);
  const uniform = mulberry32(11);
  const row = Hk * D;
  const k = new Float32Array(row);
  const v = new Float32Array(row);
  const lastLen = N - (pagesPerSeq - 1) * ps;
  const pageIndices = Int32Array.from({ length: setPages }, (_, i) => i);
  const fills = new Int32Array(setPages).fill(ps);
  for (let s = 0; s < B; s++) {
    fills[s * pagesPerSeq + pagesPerSeq - 1] = lastLen;
    for (let t = 0; t < N; t++) {
      cache.storage.writeToken(0, s * pagesPerSeq + Math.floor(t / ps), t % ps, normalFill(k, uniform), normalFill(v, uniform));
    }
  }
  cache.rebuildMetadata(pageIndices, fills);
  const queries = normalFill(new Float32Array(B * Hq * D), uniform);

  // One decode token per sequence at position N - 1, as the executor's step would plan it.
  const forward: ForwardParams = {
    tokenIds: new Int32Array(B),
    queryIndptr: Int32Array.from({ length: B + 1 }, (_, s) => s),
    startPos: new Int32Array(B).fill(N - 1),
    pageIndptr: Int32Array.from({ length: B + 1 }, (_, s) => s * pagesPerSeq),
    pageIndices,
    logitsMode: new Uint8Array(B),
    seqIds: Int32Array.from({ length: B }, (_, s) => s),
  };
  const plan = planForward(forward, { vocabSize: 1, pageSize: ps, numKvPages: setPages, maxPositions: null });
  const scale = 1 / Math.sqrt(D);
  const attention: PagedAttentionParams = {
    numTokens: B,
    numHeads: Hq,
    numKvHeads: Hk,
    headDim: D,
    pageSize: ps,
    qkv: new Float32Array(0),
    out: new Float32Array(B * Hq * D),
    keyCache: cache.keys[0],
    valueCache: cache.values[0],
    kvDtype,
    keyScales: cache.keyScales[0],
    valueScales: cache.valueScales[0],
    tokenSeq: plan.tokenSeq,
    tokenPos: plan.tokenPos,
    pageIndptr: forward.pageIndptr,
    pageIndices,
    rope: null,
    scale,
    chunkSize: p.chunkSize,
  };
  const collector = new SelectionStatsCollector({ pageSize: ps, headDim: D, dtype: kvDtype });
  const copy = p.copyGbPerSecond ?? cpuCopyBandwidth();
  const device = cpus()[0]?.model?.trim() || 'unknown CPU';
  const elem = kvDtype === 'int8' ? 1 : kvDtype === 'fp16' ? 2 : 4;
  // K and V of one (token, KV head): the rows, plus their scales for int8.
  const rowBytes = 2 * (D * elem + (kvDtype === 'int8' ? 4 : 0));
  const ioBytes = 2 * B * Hq * D * 4;

  const results: BenchmarkAttentionResult[] = [];
  for (const mode of p.modes) {
    let us: number;
    let selection: PageSelection | null = null;
    let scored = false;
    let phases: Pick<BenchmarkAttentionResult, 'scoreMicroseconds' | 'selectMicroseconds' | 'attendMicroseconds'> = {};
    if (mode.kind === 'dense') {
      us = medianMicroseconds(() => attendOverPages(attention, queries), p.iterations, p.warmup);
    } else {
      const config: SelectionConfig = {
        policy: 'quest',
        selectionRatio: mode.selectionRatio ?? 1,
        tokenBudget: mode.tokenBudget ?? null,
        sinkPages: mode.sinkPages ?? 1,
        denseLayers: 0,
        useFusedKernel: true,
      };
      const selector = new DecodeSelector(config, ps);
      const scores = new Float32Array(setPages * Hk);
      // Score, select and attend: what the fused sparse kernel does for one layer.
      const select = (): PageSelection => {
        const step = new StepSelection(selector, plan, forward, cache, collector, Hq, scale);
        const needs = step.needsScores(0);
        if (needs) step.score(0, queries, scores);
        const chosen = step.select(0, queries, needs ? scores : null);
        step.finish();
        return chosen;
      };
      us = medianMicroseconds(() => attendOverPages({ ...attention, selection: select() }, queries), p.iterations, p.warmup);
      const probe = new StepSelection(selector, plan, forward, cache, collector, Hq, scale);
      scored = probe.needsScores(0);
      selection = select();
      const chosen = selection;
      // The code is warm by now: one untimed call per phase, as on cuda.
      const w = Math.min(1, p.warmup);
      phases = {
        scoreMicroseconds: scored ? medianMicroseconds(() => probe.score(0, queries, scores), p.iterations, w) : 0,
        selectMicroseconds: medianMicroseconds(select, p.iterations, w),
        attendMicroseconds: medianMicroseconds(() => attendOverPages({ ...attention, selection: chosen }, queries), p.iterations, w),
      };
    }
    let attendedTokens = B * N * Hk;
    let pagesAttended = setPages * Hk;
    let extra = 0;
    if (selection !== null) {
      pagesAttended = selection.pages.length;
      attendedTokens = 0;
      for (const li of selection.pages) attendedTokens += li === pagesPerSeq - 1 ? lastLen : ps;
      // fp32 boxes (min and max) of every page, and the page scores written then read back.
      if (scored) extra = setPages * Hk * D * 2 * 4 + 2 * setPages * Hk * 4;
    }
    const bytes = attendedTokens * rowBytes + extra + ioBytes;
    const gbps = bytes / (us * 1e-6) / 1e9;
    results.push({
      executor: p.executor,
      device,
      mode: modeLabel(mode),
      batchSize: B,
      inputSize: N,
      numPages: pagesPerSeq,
      numQHeads: Hq,
      numKvHeads: Hk,
      headDim: D,
      pageSize: ps,
      kvDtype,
      metaDtype: 'fp32',
      microseconds: us,
      throughputTokensPerMs: (B * N) / (us / 1000),
      bytes,
      gbPerSecond: gbps,
      copyGbPerSecond: copy,
      fractionOfCopy: gbps / copy,
      pagesAttended,
      pagesTotal: setPages * Hk,
      rotations: 1,
      iterations: p.iterations,
      ...phases,
    });
  }
  return results;
}
