/**
 * The decode-attention benchmark's parameters and result, shared by every executor: the
 * seed's `attention_executor.benchmark_attention(input_size=..., num_pages=...)` in
 * TypeScript. Executors run it on one synthetic paged KV cache (random keys and values, page
 * metadata rebuilt from them), one decode query per sequence, dense and query-aware sparse.
 */
import { ConfigError, DEFAULT_CONFIG } from '@tinyserve/core';
import type { KvCacheDtype } from '@tinyserve/core';
import { checkBudgetFitsForcedPages } from '@tinyserve/kv-retriever';
import type { CudaBenchmarkOptions } from './cuda/benchmark-attention.js';
import type { PlanInfo } from './cuda/addon-types.js';

/**
 * What one timed call does: `dense` attends to every page; `sparse` scores every page from
 * its metadata (Quest's bound), keeps the top-K per (sequence, KV head) with the current page
 * and `sinkPages` leading pages always kept, and attends to those. K is
 * `ceil(tokenBudget / pageSize)` pages when a token budget is given, else
 * `ceil(selectionRatio * pages)`.
 */
export type BenchmarkMode =
  | { kind: 'dense' }
  | { kind: 'sparse'; selectionRatio?: number; tokenBudget?: number | null; sinkPages?: number };

export type BenchmarkMetaDtype = 'fp16' | 'fp32';

export interface BenchmarkAttentionParams {
  /** Executor by registered name: 'wasm' (default), 'cpu' or 'cuda'. */
  executor?: string;
  /** Sequences decoding at once (default 1). */
  batchSize?: number;
  /** Context tokens per sequence, the current one included (the seed's `input_size`). */
  inputSize?: number;
  /**
   * KV pages per sequence (the seed's `num_pages`). With `inputSize` it must be
   * `ceil(inputSize / pageSize)`; alone it means `numPages * pageSize` tokens.
   */
  numPages?: number;
  /** Tokens per KV page (default 16). */
  pageSize?: number;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  /** KV element format (default 'fp16'); int8 with one fp32 scale per (token, KV head). */
  kvDtype?: KvCacheDtype;
  /** Page-metadata (key box) format: cuda 'fp16' (default) or 'fp32'; wasm/cpu keep fp32 boxes. */
  metaDtype?: BenchmarkMetaDtype;
  /** Default: dense only. */
  modes?: BenchmarkMode[];
  /** Timed calls per mode (default 50 on cuda, 10 on wasm/cpu). */
  iterations?: number;
  /** Untimed calls before each mode is timed (default 5; on wasm/cpu they also let the JIT settle). */
  warmup?: number;
  /** wasm/cpu: keys per online-softmax chunk, as `attentionChunkSize` (default 256). */
  chunkSize?: number;
  /**
   * Copy bandwidth (GB/s, read + write) that `fractionOfCopy` divides by; measured when absent
   * (device-to-device on cuda, a 64 MiB typed-array copy on wasm/cpu).
   */
  copyGbPerSecond?: number;
  /** cuda only: the addon, kernel tuning, KV pool size. */
  cuda?: CudaBenchmarkOptions;
}

/** {@link BenchmarkAttentionParams} validated, with every default filled in. */
export interface ResolvedBenchmarkAttentionParams {
  executor: string;
  batchSize: number;
  inputSize: number;
  numPages: number;
  pageSize: number;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  kvDtype: KvCacheDtype;
  metaDtype: BenchmarkMetaDtype;
  modes: BenchmarkMode[];
  iterations: number;
  warmup: number;
  chunkSize: number;
  copyGbPerSecond: number | null;
  cuda: CudaBenchmarkOptions;
}

/** One mode on one shape. Plain data (JSON-serialisable). */
export interface BenchmarkAttentionResult {
  /** The executor that ran it. */
  executor: string;
  /** The GPU's or CPU's name. */
  device: string;
  /** `dense`, `sparse ratio R` or `sparse budget TOKENS` (see {@link modeLabel}). */
  mode: string;
  batchSize: number;
  inputSize: number;
  /** KV pages per sequence. */
  numPages: number;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  kvDtype: string;
  metaDtype: string;
  /**
   * Time per call: cuda, by CUDA events (graph replay when the launches can be captured);
   * wasm/cpu, the median of the timed calls by wall clock.
   */
  microseconds: number;
  /** cuda only: per call with each launch issued from the host. */
  microsecondsEager?: number;
  /** Context tokens per millisecond: `batchSize * inputSize / (microseconds / 1000)`. */
  throughputTokensPerMs: number;
  /**
   * Bytes the call must read or write: K and V of every attended (token, KV head) (int8
   * scales included), for a scored sparse call the metadata of every page and the page scores
   * (written, then read by the selection), the queries and the outputs (fp32).
   */
  bytes: number;
  gbPerSecond: number;
  /** The copy bandwidth (GB/s, read + write) that `fractionOfCopy` divides by. */
  copyGbPerSecond: number;
  fractionOfCopy: number;
  /** (page, KV head) pairs attended, of `pagesTotal` (what a dense call attends). */
  pagesAttended: number;
  pagesTotal: number;
  /** Copies of the cache rotated through while timing (cuda: so repeats do not hit L2; wasm/cpu: 1). */
  rotations: number;
  /** Timed calls. */
  iterations: number;
  /**
   * Sparse only: page scoring alone, scoring + selection, and the attention over the last
   * selection alone, each timed on its own (microseconds per call).
   */
  scoreMicroseconds?: number;
  selectMicroseconds?: number;
  /**
   * cuda sparse only: attention alone over the same pages through the page-list kernel (the
   * policy route's `decodeSelected`, lists from JavaScript), microseconds per call.
   */
  listedMicroseconds?: number;
  /** cuda sparse with `cuda.traceSparse`: one launch's timeline. */
  sparseTimeline?: SparseTimeline;
  attendMicroseconds?: number;
  /** cuda only: the launch plan of the kernels. */
  plan?: PlanInfo;
}

export function modeLabel(m: BenchmarkMode): string {
  if (m.kind === 'dense') return 'dense';
  if (m.tokenBudget) return `sparse budget ${m.tokenBudget}`;
  return `sparse ratio ${+(m.selectionRatio ?? 1).toFixed(4)}`;
}

/** Per executor: what it accepts and its defaults. */
export interface BenchmarkExecutorTraits {
  iterations: number;
  warmup: number;
  /** Page-metadata formats it has kernels for; the first is the default. */
  metaDtypes: readonly BenchmarkMetaDtype[];
  /** Whether it reads `params.cuda`. */
  cudaOptions: boolean;
}

const KNOWN_FIELDS: readonly (keyof BenchmarkAttentionParams)[] = [
  'executor',
  'batchSize',
  'inputSize',
  'numPages',
  'pageSize',
  'numQHeads',
  'numKvHeads',
  'headDim',
  'kvDtype',
  'metaDtype',
  'modes',
  'iterations',
  'warmup',
  'chunkSize',
  'copyGbPerSecond',
  'cuda',
];

const KV_DTYPES: readonly KvCacheDtype[] = ['fp32', 'fp16', 'int8'];
const INT32_MAX = 2 ** 31 - 1;

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `'${v}'`;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'undefined') return String(v);
  return `a ${typeof v}`;
}

function int(field: string, v: unknown, min: number, max = INT32_MAX): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ConfigError(field, `must be an integer in [${min}, ${max}], got ${describe(v)}`);
  }
  return v;
}

function mode(i: number, m: unknown, pageSize: number): BenchmarkMode {
  const at = `modes[${i}]`;
  if (m === null || typeof m !== 'object' || Array.isArray(m)) {
    throw new ConfigError(at, `must be { kind: 'dense' } or { kind: 'sparse', selectionRatio?, tokenBudget?, sinkPages? }, got ${describe(m)}`);
  }
  const o = m as Record<string, unknown>;
  if (o.kind === 'dense') {
    for (const k of Object.keys(o)) if (k !== 'kind') throw new ConfigError(`${at}.${k}`, 'is not a field of a dense mode');
    return { kind: 'dense' };
  }
  if (o.kind !== 'sparse') throw new ConfigError(`${at}.kind`, `must be 'dense' or 'sparse', got ${describe(o.kind)}`);
  for (const k of Object.keys(o)) {
    if (!['kind', 'selectionRatio', 'tokenBudget', 'sinkPages'].includes(k)) {
      throw new ConfigError(`${at}.${k}`, 'is not a field of a sparse mode (selectionRatio, tokenBudget, sinkPages)');
    }
  }
  const budget = o.tokenBudget ?? null;
  if (budget !== null) int(`${at}.tokenBudget`, budget, 1);
  if (o.selectionRatio === undefined && budget === null) {
    throw new ConfigError(at, 'a sparse mode needs selectionRatio (0 < R <= 1) or tokenBudget (tokens)');
  }
  const ratio = o.selectionRatio ?? 1;
  if (typeof ratio !== 'number' || !(ratio > 0 && ratio <= 1)) {
    throw new ConfigError(`${at}.selectionRatio`, `must be a number in (0, 1], got ${describe(ratio)}`);
  }
  const sinkPages = int(`${at}.sinkPages`, o.sinkPages ?? 1, 0, 1 << 20);
  // The current page and the sinks are always kept: a budget must cover them (the policy's rule).
  try {
    checkBudgetFitsForcedPages(
      { policy: 'quest', selectionRatio: ratio, tokenBudget: budget as number | null, sinkPages, denseLayers: 0, useFusedKernel: true },
      pageSize,
      sinkPages + 1,
    );
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(`${at}.${e.field}`, e.message.slice(e.field.length + 2));
    throw e;
  }
  return { kind: 'sparse', selectionRatio: ratio, tokenBudget: budget as number | null, sinkPages };
}

/**
 * Checks every field of `params` (unknown fields included: a typo must not fall back to a
 * default) and fills in the defaults; throws a `ConfigError` naming the bad field.
 * `inputSize` and `numPages` are reconciled through `pageSize`.
 */
export function resolveBenchmarkAttentionParams(
  params: BenchmarkAttentionParams,
  traitsOf: (executor: string) => BenchmarkExecutorTraits,
): ResolvedBenchmarkAttentionParams {
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    throw new ConfigError('params', `must be an object with inputSize or numPages, numQHeads, numKvHeads, headDim, ..., got ${describe(params)}`);
  }
  for (const k of Object.keys(params)) {
    if (!KNOWN_FIELDS.includes(k as keyof BenchmarkAttentionParams)) {
      throw new ConfigError(k, `is not a benchmarkAttention parameter (known: ${KNOWN_FIELDS.join(', ')})`);
    }
  }
  const executor = params.executor ?? 'wasm';
  if (typeof executor !== 'string' || executor.length === 0) throw new ConfigError('executor', `must be an executor name, got ${describe(executor)}`);
  const traits = traitsOf(executor);
  const batchSize = int('batchSize', params.batchSize ?? 1, 1, 1 << 16);
  const pageSize = int('pageSize', params.pageSize ?? DEFAULT_CONFIG.pageSize, 1, 4096);
  const missing = (['numQHeads', 'numKvHeads', 'headDim'] as const).filter((f) => params[f] === undefined);
  if (missing.length > 0) throw new ConfigError(missing[0], `is required (missing: ${missing.join(', ')}): the attention head shape`);
  const numQHeads = int('numQHeads', params.numQHeads, 1, 1024);
  const numKvHeads = int('numKvHeads', params.numKvHeads, 1, 1024);
  const headDim = int('headDim', params.headDim, 1, 1024);
  if (numQHeads % numKvHeads !== 0) {
    throw new ConfigError('numQHeads', `must be a multiple of numKvHeads (${numKvHeads}): query heads share KV heads in equal groups, got ${numQHeads}`);
  }

  let inputSize: number;
  let numPages: number;
  if (params.inputSize === undefined && params.numPages === undefined) {
    throw new ConfigError('inputSize', 'give inputSize (context tokens per sequence) or numPages (KV pages per sequence)');
  }
  if (params.inputSize !== undefined) {
    inputSize = int('inputSize', params.inputSize, 1);
    numPages = Math.ceil(inputSize / pageSize);
    if (params.numPages !== undefined && int('numPages', params.numPages, 1) !== numPages) {
      const held = params.numPages === 1 ? `1..${pageSize}` : `${(params.numPages - 1) * pageSize + 1}..${params.numPages * pageSize}`;
      throw new ConfigError(
        'numPages',
        `${params.numPages} pages of ${pageSize} tokens hold ${held} tokens, but inputSize ${inputSize} fills ${numPages}; ` +
          'give one of them, or make them agree (numPages = ceil(inputSize / pageSize))',
      );
    }
  } else {
    numPages = int('numPages', params.numPages, 1);
    inputSize = numPages * pageSize;
    if (inputSize > INT32_MAX) throw new ConfigError('numPages', `${numPages} pages of ${pageSize} tokens is ${inputSize} tokens, more than ${INT32_MAX}`);
  }

  const kvDtype = params.kvDtype ?? 'fp16';
  if (!KV_DTYPES.includes(kvDtype)) throw new ConfigError('kvDtype', `must be one of 'fp32', 'fp16', 'int8', got ${describe(kvDtype)}`);
  const metaDtype = params.metaDtype ?? traits.metaDtypes[0];
  if (!traits.metaDtypes.includes(metaDtype)) {
    throw new ConfigError('metaDtype', `executor '${executor}' keeps page metadata in ${traits.metaDtypes.map((d) => `'${d}'`).join(' or ')}, got ${describe(metaDtype)}`);
  }
  const rawModes: unknown = params.modes ?? [{ kind: 'dense' }];
  if (!Array.isArray(rawModes) || rawModes.length === 0) throw new ConfigError('modes', `must be a non-empty array of modes, got ${describe(rawModes)}`);
  const modes = rawModes.map((m, i) => mode(i, m, pageSize));
  const iterations = int('iterations', params.iterations ?? traits.iterations, 1, 1_000_000);
  const warmup = int('warmup', params.warmup ?? traits.warmup, 0, 1_000_000);
  const chunkSize = int('chunkSize', params.chunkSize ?? DEFAULT_CONFIG.attentionChunkSize, 1, 1 << 20);
  const copy = params.copyGbPerSecond ?? null;
  if (copy !== null && !(typeof copy === 'number' && Number.isFinite(copy) && copy > 0)) {
    throw new ConfigError('copyGbPerSecond', `must be a positive number of GB/s, got ${describe(copy)}`);
  }
  const cuda = params.cuda ?? {};
  if (params.cuda !== undefined) {
    if (!traits.cudaOptions) throw new ConfigError('cuda', `options apply to executor 'cuda' only, not '${executor}'`);
    if (cuda === null || typeof cuda !== 'object' || Array.isArray(cuda)) throw new ConfigError('cuda', `must be an object { addon?, tuning?, poolPages? }, got ${describe(cuda)}`);
    for (const k of Object.keys(cuda)) {
      if (!['addon', 'tuning', 'poolPages'].includes(k)) throw new ConfigError(`cuda.${k}`, 'is not a cuda option (addon, tuning, poolPages)');
    }
    if (cuda.poolPages !== undefined) int('cuda.poolPages', cuda.poolPages, 1);
    if (cuda.tuning !== undefined && (cuda.tuning === null || typeof cuda.tuning !== 'object')) {
      throw new ConfigError('cuda.tuning', `must be an object of kernel tunings, got ${describe(cuda.tuning)}`);
    }
  }
  return {
    executor,
    batchSize,
    inputSize,
    numPages,
    pageSize,
    numQHeads,
    numKvHeads,
    headDim,
    kvDtype,
    metaDtype,
    modes,
    iterations,
    warmup,
    chunkSize,
    copyGbPerSecond: copy,
    cuda,
  };
}

/**
 * One fused sparse launch seen from the GPU's global timer, in microseconds since its first CTA
 * started, the median over (sequence, KV head) pairs: when the pair's last page-scoring chunk
 * finished, its selector had the keys in shared memory, had found the K-th largest key, had
 * written the pages, had published them; when its first attender saw them, its attenders had
 * finished, its merged output was written. `end`: the last CTA's exit. `rounds`: median
 * radix digits (rounds) of the selection's threshold search; `exactFraction`: pairs whose search ended on an exact count.
 */
export interface SparseTimeline {
  scored: number;
  keysLoaded: number;
  thresholdFound: number;
  pagesWritten: number;
  published: number;
  firstAttender: number;
  attended: number;
  merged: number;
  end: number;
  rounds: number;
  exactFraction: number;
  pairs: number;
}
