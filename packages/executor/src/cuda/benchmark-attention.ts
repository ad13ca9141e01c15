/**
 * Times the CUDA decode attention kernels on synthetic paged KV caches: dense, and the fused
 * query-aware sparse step at given selection ratios or token budgets. Time is measured with
 * CUDA events around back-to-back launches, rotating over enough copies of the cache that
 * repeated runs do not measure the L2 cache. Bytes are those the kernel must read (the KV of
 * every attended token, int8 scales included, the page metadata and the score scratch for
 * sparse, queries and outputs), reported against the device's measured copy bandwidth.
 *
 * `benchmarkAttention` (attention-benchmark.ts) is the entry for every executor; this is its
 * `cuda` runner, also called directly by the benchmark suite (several tunings, one addon).
 */
import { ConfigError } from '@tinyserve/core';
import type { BenchmarkAttentionResult, BenchmarkMode, SparseTimeline } from '../attention-benchmark-params.js';
import { modeLabel } from '../attention-benchmark-params.js';
import type { CudaAddon, DeviceBuffer, PlanInfo, SparseLayerArgs, TimedCall } from './addon-types.js';
import { KV_DTYPE, META_DTYPE } from './addon-types.js';
import { loadCudaAddon } from './addon-loader.js';
import { CudaStepPlan, selectionTopK } from './step-plan.js';

export interface BenchmarkTuning {
  denseSplits?: number;
  sparseSplits?: number;
  headsPerCta?: number;
  minPagesPerSplit?: number;
  targetCtas?: number;
  sparseWarps?: number;
}

/** What only the cuda runner reads (`BenchmarkAttentionParams.cuda`). */
export interface CudaBenchmarkOptions {
  /** Default: the addon from `loadCudaAddon()`. */
  addon?: CudaAddon;
  tuning?: BenchmarkTuning;
  /** Pages in the KV pool; default: what the batch needs times the rotation copies. */
  poolPages?: number;
  /** Sparse modes: also run one traced launch and report its timeline (`sparseTimeline`). */
  traceSparse?: boolean;
}

export interface CudaBenchmarkAttentionParams extends CudaBenchmarkOptions {
  batchSize: number;
  /** Context tokens per sequence (the current one included). */
  inputSize: number;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize?: number;
  /** KV element format (default fp16); int8 with one fp32 scale per (token, KV head). */
  kvDtype?: 'fp16' | 'fp32' | 'int8';
  metaDtype?: 'fp16' | 'fp32';
  modes?: BenchmarkMode[];
  iterations?: number;
  warmup?: number;
  /** The device's copy bandwidth in GB/s (read + write); measured when absent. */
  copyGbPerSecond?: number;
}

/** Timeline slots per (sequence, KV head) of a traced sparse launch (decode_args.h). */
export const SPARSE_TRACE_SLOTS = 10;
const TRACE_EVENTS = ['scored', 'keysLoaded', 'thresholdFound', 'pagesWritten', 'published', 'firstAttender', 'attended', 'merged'] as const;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.floor(s.length / 2)];
}

/** Runs one traced launch of a sparse call and summarises its timeline. */
export function traceSparseLaunch(addon: CudaAddon, plan: TimedCall['plan'], args: SparseLayerArgs, pairs: number): SparseTimeline {
  const n = 2 + pairs * SPARSE_TRACE_SLOTS;
  const host = new BigUint64Array(n);
  const MAX = 0xffffffffffffffffn;
  host[0] = MAX;
  for (let p = 0; p < pairs; p++) host[2 + p * SPARSE_TRACE_SLOTS + 5] = MAX;  // first attender: a minimum
  const trace = addon.alloc(n * 8);
  try {
    addon.upload(trace, 0, host);
    addon.decodeSparse(plan, { ...args, trace });
    addon.synchronize();
    addon.download(trace, 0, host);
  } finally {
    addon.free(trace);
  }
  const t0 = host[0];
  const us = (t: bigint): number => Number(t - t0) / 1000;
  const summary = { end: us(host[1]), pairs } as SparseTimeline;
  TRACE_EVENTS.forEach((name, i) => {
    summary[name] = median(Array.from({ length: pairs }, (_, p) => us(host[2 + p * SPARSE_TRACE_SLOTS + i])));
  });
  const rounds = Array.from({ length: pairs }, (_, p) => Number(host[2 + p * SPARSE_TRACE_SLOTS + 8]));
  summary.rounds = median(rounds);
  let exact = 0;
  for (let p = 0; p < pairs; p++) exact += Number(host[2 + p * SPARSE_TRACE_SLOTS + 9]);
  summary.exactFraction = exact / pairs;
  return summary;
}

function positive(field: string, v: number): number {
  if (!(Number.isInteger(v) && v > 0)) throw new ConfigError(field, `must be a positive integer, got ${v}`);
  return v;
}

/** Runs every mode of `params.modes` (default: dense) on one synthetic cache. */
export function benchmarkCudaAttention(params: CudaBenchmarkAttentionParams): BenchmarkAttentionResult[] {
  const addon = params.addon ?? loadCudaAddon().addon;
  const B = positive('batchSize', params.batchSize);
  const N = positive('inputSize', params.inputSize);
  const Hq = positive('numQHeads', params.numQHeads);
  const Hk = positive('numKvHeads', params.numKvHeads);
  const D = positive('headDim', params.headDim);
  const ps = positive('pageSize', params.pageSize ?? 16);
  const kvDtype = params.kvDtype ?? 'fp16';
  const metaDtype = params.metaDtype ?? 'fp16';
  const modes = params.modes ?? [{ kind: 'dense' }];
  const iterations = params.iterations ?? 50;
  const warmup = params.warmup ?? 5;
  if (kvDtype !== 'fp16' && kvDtype !== 'fp32' && kvDtype !== 'int8') {
    throw new ConfigError('kvDtype', `must be 'fp16', 'fp32' or 'int8', got '${String(kvDtype)}'`);
  }
  const int8 = kvDtype === 'int8';
  const elem = int8 ? 1 : kvDtype === 'fp16' ? 2 : 4;
  // K and V of one (token, KV head): the row, plus its scale for int8.
  const rowBytes = 2 * (D * elem + (int8 ? 4 : 0));
  const metaBytes = metaDtype === 'fp16' ? 2 : 4;
  const pagesPerSeq = Math.ceil(N / ps);
  const setPages = B * pagesPerSeq;
  const setBytes = setPages * ps * Hk * rowBytes;
  const device = addon.deviceInfo();
  // Enough copies that the rotation does not fit the L2 cache three times over, memory permitting.
  const free = addon.memoryInfo().free;
  let rotations = Math.min(16, Math.max(1, Math.ceil((3 * device.l2CacheBytes) / setBytes)));
  while (rotations > 1 && rotations * setBytes > 0.6 * free) rotations--;
  const numPages = params.poolPages ?? rotations * setPages;
  if (numPages < rotations * setPages) {
    throw new ConfigError('poolPages', `${numPages} pages cannot hold ${rotations} copies of ${setPages} pages`);
  }
  const copyGbps = params.copyGbPerSecond ?? addon.copyBandwidth(256 * 2 ** 20, 20).gbPerSecond;

  const owned: DeviceBuffer[] = [];
  const alloc = (bytes: number): DeviceBuffer => {
    const b = addon.alloc(bytes);
    owned.push(b);
    return b;
  };
  const poolElems = numPages * ps * Hk * D;
  const k = alloc(poolElems * elem);
  const v = alloc(poolElems * elem);
  const scaleRows = numPages * ps * Hk;
  const kScale = int8 ? alloc(scaleRows * 4) : undefined;
  const vScale = int8 ? alloc(scaleRows * 4) : undefined;
  const metaElems = numPages * Hk * D;
  const metaMin = alloc(metaElems * metaBytes);
  const metaMax = alloc(metaElems * metaBytes);
  const q = alloc(B * Hq * D * 4);
  const out = alloc(B * Hq * D * 4);
  const plans: CudaStepPlan[] = [];
  try {
    const kvCode = KV_DTYPE[kvDtype];
    const metaCode = META_DTYPE[metaDtype];
    // int8: the same values quantised per (token, KV head) row, with their scales.
    addon.randomFill({ dst: k, count: poolElems, dtype: kvCode, seed: 11, scales: kScale, rowLen: int8 ? D : undefined });
    addon.randomFill({ dst: v, count: poolElems, dtype: kvCode, seed: 12, scales: vScale, rowLen: int8 ? D : undefined });
    addon.randomFill({ dst: q, count: B * Hq * D, dtype: 0, seed: 13 });
    const lastLen = N - (pagesPerSeq - 1) * ps;
    const allPages = Int32Array.from({ length: numPages }, (_, i) => i);
    const fills = new Int32Array(numPages).fill(ps);
    for (let i = 0; i < rotations * B; i++) fills[i * pagesPerSeq + pagesPerSeq - 1] = lastLen;
    addon.fill({ dst: metaMin, count: metaElems, dtype: metaCode, value: Infinity });
    addon.fill({ dst: metaMax, count: metaElems, dtype: metaCode, value: -Infinity });
    addon.rebuildMetadata({ k, kScale, kvDtype: kvCode, metaMin, metaMax, metaDtype: metaCode, pages: allPages, fills, pageSize: ps, numKvHeads: Hk, headDim: D, numPagesTotal: numPages });
    const seqLens = new Int32Array(B).fill(N);
    const pageIndptr = Int32Array.from({ length: B + 1 }, (_, s) => s * pagesPerSeq);

    const results: BenchmarkAttentionResult[] = [];
    for (const mode of modes) {
      const topK =
        mode.kind === 'sparse'
          ? selectionTopK(seqLens, ps, { selectionRatio: mode.selectionRatio ?? 1, tokenBudget: mode.tokenBudget ?? null })
          : undefined;
      const calls: Extract<TimedCall, { op: 'dense' | 'sparse' }>[] = [];
      let info: PlanInfo | null = null;
      for (let r = 0; r < rotations; r++) {
        const plan = new CudaStepPlan(addon);
        plans.push(plan);
        info = plan.update({
          numQHeads: Hq,
          numKvHeads: Hk,
          headDim: D,
          pageSize: ps,
          kvDtype: kvCode,
          numPagesTotal: numPages,
          pageIndptr,
          pageIndices: Int32Array.from({ length: setPages }, (_, i) => r * setPages + i),
          seqLens,
          topK,
          sinkPages: mode.kind === 'sparse' ? (mode.sinkPages ?? 1) : 0,
          ...params.tuning,
        });
        const args = { q, k, v, kScale, vScale, out, metaMin, metaMax, metaDtype: metaCode };
        calls.push({ op: mode.kind, plan: plan.handle, args });
      }
      const rounds = Math.max(1, Math.ceil(iterations / rotations));
      const perCall = (t: { eager: number; graph: number }) => ({
        gpu: ((Number.isNaN(t.graph) ? t.eager : t.graph) * 1000) / rotations,
        eager: (t.eager * 1000) / rotations,
      });
      const timed = perCall(addon.timeCalls(calls, rounds, warmup));
      const us = timed.gpu;
      const phaseUs = (phases: 1 | 2 | 5): number => perCall(addon.timeCalls(calls.map((c) => ({ ...c, args: { ...c.args, phases } })), rounds, 1)).gpu;
      const breakdown = mode.kind === 'sparse' ? { scoreMicroseconds: phaseUs(5), selectMicroseconds: phaseUs(1), attendMicroseconds: phaseUs(2) } : {};
      // The policy route's attention (decodeSelected, page lists from JavaScript) over the same
      // pages: each plan's own selection, uploaded once before timing.
      const listedUs = (): number => {
        const seqs = Int32Array.from({ length: B }, (_, s) => s);
        const listCalls: TimedCall[] = calls.map((c) => {
          const sel = addon.readSelection(c.plan);
          return { op: 'selected', plan: c.plan, args: { q, k, v, kScale, vScale, out, seqs, indptr: sel.indptr, pages: sel.pages } };
        });
        return perCall(addon.timeCalls(listCalls, rounds, warmup)).gpu;
      };
      const listed = mode.kind === 'sparse' ? { listedMicroseconds: listedUs() } : {};
      const last = calls[calls.length - 1];
      const timeline = mode.kind === 'sparse' && params.traceSparse ? { sparseTimeline: traceSparseLaunch(addon, last.plan, last.args as SparseLayerArgs, B * Hk) } : {};
      let attendedTokens = B * N * Hk;
      let pagesAttended = setPages * Hk;
      let extra = 0;
      if (mode.kind === 'sparse') {
        const sel = addon.readSelection(plans[plans.length - 1].handle);
        pagesAttended = sel.pages.length;
        attendedTokens = 0;
        for (const li of sel.pages) attendedTokens += li === pagesPerSeq - 1 ? lastLen : ps;
        // Metadata of every page, and the page scores written then read back for selection;
        // none where every page is kept (nothing is scored, the dense kernel attends).
        if (pagesAttended < setPages * Hk) extra = setPages * Hk * D * 2 * metaBytes + 2 * setPages * Hk * 4;
      }
      const bytes = attendedTokens * rowBytes + extra + 2 * B * Hq * D * 4;
      const gbps = bytes / (us * 1e-6) / 1e9;
      results.push({
        executor: 'cuda',
        device: device.name,
        mode: modeLabel(mode),
        batchSize: B,
        inputSize: N,
        numPages: pagesPerSeq,
        numQHeads: Hq,
        numKvHeads: Hk,
        headDim: D,
        pageSize: ps,
        kvDtype,
        metaDtype,
        microseconds: us,
        microsecondsEager: timed.eager,
        throughputTokensPerMs: (B * N) / (us / 1000),
        bytes,
        gbPerSecond: gbps,
        copyGbPerSecond: copyGbps,
        fractionOfCopy: gbps / copyGbps,
        pagesAttended,
        pagesTotal: setPages * Hk,
        rotations,
        iterations: rounds * rotations,
        plan: info!,
        ...breakdown,
        ...listed,
        ...timeline,
      });
    }
    return results;
  } finally {
    addon.synchronize();
    for (const p of plans) p.release();
    for (const b of owned) addon.free(b);
  }
}
