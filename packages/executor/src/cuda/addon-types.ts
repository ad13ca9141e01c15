/**
 * The typed surface of the CUDA addon (`native/src/addon.cpp`). Device memory and plans are
 * opaque handles owned by JavaScript: a handle's memory is released by `free` (or, as a last
 * resort, when the handle is garbage collected). Every call checks its arguments and throws a
 * TypeError (code `ERR_TINYSERVE_CUDA_ARG`) naming the bad field, or an Error (code
 * `ERR_TINYSERVE_CUDA`) carrying CUDA's own message.
 *
 * Offsets (`xxxOffset`) and strides (`xxxStride`) count elements of the buffer's type, not bytes,
 * except in `upload` / `download` / `copy`.
 */

/** A block of device memory from {@link CudaAddon.alloc}. */
export interface DeviceBuffer {
  readonly __deviceBuffer: never;
}

/** A per-step plan from {@link CudaAddon.createPlan}. */
export interface StepPlanHandle {
  readonly __stepPlan: never;
}

/** Bumped whenever the addon's calls change incompatibly; the loader refuses a mismatch. */
export const CUDA_ADDON_ABI_VERSION = 3;

/**
 * KV element formats of the kernels. int8 is the kv-retriever's `KvCacheStorage` format with
 * per-token scales: symmetric absmax per (token, KV head) row, one fp32 scale per row in a
 * separate buffer (`kScale` / `vScale`, at `(page * pageSize + slot) * numKvHeads + kvHead`).
 */
export const KV_DTYPE = { fp32: 0, fp16: 1, int8: 2 } as const;
export type KvDtypeCode = (typeof KV_DTYPE)[keyof typeof KV_DTYPE];
/** Page metadata (key bounding boxes) formats; fp16 boxes are rounded outward, so they still bound the keys. */
export const META_DTYPE = { fp32: 0, fp16: 1 } as const;
export type MetaDtypeCode = (typeof META_DTYPE)[keyof typeof META_DTYPE];

export interface CudaDeviceInfo {
  name: string;
  major: number;
  minor: number;
  multiProcessors: number;
  totalMemory: number;
  l2CacheBytes: number;
  sharedMemPerBlockOptin: number;
  driverVersion: number;
  runtimeVersion: number;
  abiVersion: number;
}

/** The batch of one forward step. */
export interface PlanUpdateParams {
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  kvDtype: KvDtypeCode;
  /** Pages in the KV pool (page indices are checked against it). */
  numPagesTotal: number;
  /** CSR: sequence s owns exactly `ceil(seqLens[s] / pageSize)` pages, in order. */
  pageIndptr: Int32Array;
  pageIndices: Int32Array;
  /** Tokens per sequence, the step's new tokens included. */
  seqLens: Int32Array;
  /**
   * Rows of the step's new tokens per sequence (the last tokens of each sequence, rows grouped
   * by sequence). Omitted: one new token per sequence (decode).
   */
  queryIndptr?: Int32Array;
  /** Per sequence, the pages sparse selection keeps, forced ones included (>= its page count: all). */
  topK?: Int32Array;
  sinkPages?: number;
  /** Split counts of the decode kernels; 0 or omitted: chosen from the GPU's size. */
  denseSplits?: number;
  sparseSplits?: number;
  minPagesPerSplit?: number;
  /** Resident CTAs the split heuristic counts with (default: SMs x occupancy). */
  targetCtas?: number;
  /**
   * Warps per CTA of the fused sparse kernel, 4 or 8; 0 or omitted: 8 unless the step has more
   * (sequence, KV head) pairs than eight-warp CTAs fit on the GPU at once.
   */
  sparseWarps?: number;
  /**
   * Query heads per decode CTA: 1, 2, 4, 8 (CUDA cores) or 16 (tensor cores, fp16 or int8 KV,
   * head dim a multiple of 16); 0 or omitted: 16 for fp16 and int8 groups of 4 or more, else
   * (fp32, smaller groups) the group size rounded up.
   */
  headsPerCta?: number;
}

export interface PlanInfo {
  numSeqs: number;
  numTokens: number;
  maxPages: number;
  /** Every sequence has exactly one new token: the decode kernels apply. */
  decodeOnly: boolean;
  denseSplits: number;
  sparseSplits: number;
  /** CTAs of the cooperative sparse launch, and their warps. */
  sparseGrid: number;
  sparseWarps: number;
  numRuns: number;
  numBlocks: number;
  headsPerCta: number;
}

/** One layer's decode attention: one query per sequence. */
export interface DecodeLayerArgs {
  /** Queries, fp32: head h of sequence s at `qOffset + s * qStride + h * headDim`. */
  q: DeviceBuffer;
  qOffset?: number;
  qStride?: number;
  /** This layer's K and V pools (`numPagesTotal * pageSize * numKvHeads * headDim` elements). */
  k: DeviceBuffer;
  v: DeviceBuffer;
  /** int8 KV only (required then): the pools' scales, `numPagesTotal * pageSize * numKvHeads` floats each. */
  kScale?: DeviceBuffer;
  vScale?: DeviceBuffer;
  /** Outputs, fp32, addressed like q. */
  out: DeviceBuffer;
  outOffset?: number;
  outStride?: number;
  /** Logit scale; default `1 / sqrt(headDim)`. */
  scale?: number;
}

export interface SparseLayerArgs extends DecodeLayerArgs {
  /** This layer's page metadata, `numPagesTotal * numKvHeads * headDim` elements each. */
  metaMin: DeviceBuffer;
  metaMax: DeviceBuffer;
  metaDtype?: MetaDtypeCode;
  /** Aggregate the GQA group's bounds by sum instead of max. */
  aggregateSum?: boolean;
  /**
   * For timing breakdowns: 1 scores and selects only, 5 scores only, 2 attends over the last
   * selection only, 3 (default) the whole step.
   */
  phases?: 1 | 2 | 3 | 5;
  /**
   * For benchmarks: a buffer of (2 + numSeqs * numKvHeads * SPARSE_TRACE_SLOTS) uint64 that the
   * launch fills with its timeline in GPU-timer nanoseconds (see `traceSparseLaunch`).
   */
  trace?: DeviceBuffer;
}

/**
 * Quest page scores for decode sequences whose pages a policy picks in JavaScript: sequence
 * `seqs[i]` (a sequence of the plan with one new token) scores every page of its page table
 * for its query, `[numKvHeads, its pages]` at `out[outOffsets[i]..]`, bit-identical to the
 * kv-retriever's `scorePages` on the same metadata (float64 sums in the reference's order).
 */
export interface PageScoreArgs {
  /** Queries, fp32: head h of the step's row r at `qOffset + r * qStride + h * headDim`. */
  q: DeviceBuffer;
  qOffset?: number;
  qStride?: number;
  /** This layer's page metadata. */
  metaMin: DeviceBuffer;
  metaMax: DeviceBuffer;
  metaDtype?: MetaDtypeCode;
  /** Aggregate the GQA group's bounds by sum instead of max. */
  aggregateSum?: boolean;
  out: DeviceBuffer;
  outOffset?: number;
  seqs: Int32Array;
  outOffsets: Int32Array;
}

/**
 * Decode attention over given page lists: sequence `seqs[i]` (distinct sequences of the plan,
 * one new token each) attends, per KV head j, to the logical pages
 * `pages[indptr[i * numKvHeads + j] .. indptr[i * numKvHeads + j + 1])`, ascending (an empty
 * list outputs zeros). Its query and output rows are its token's row; other rows of `out` are
 * left alone.
 */
export interface SelectedDecodeArgs {
  q: DeviceBuffer;
  qOffset?: number;
  qStride?: number;
  k: DeviceBuffer;
  v: DeviceBuffer;
  out: DeviceBuffer;
  outOffset?: number;
  outStride?: number;
  scale?: number;
  seqs: Int32Array;
  indptr: Int32Array;
  pages: Int32Array;
  /** Splits per (sequence, KV head, head chunk); 0 or omitted: chosen from the GPU's size. */
  splits?: number;
}

/**
 * Attention statistics (`collectAttentionStats`): for every sequence s of the plan, the
 * attention of its last new token (at position seqLen - 1) per query head over, per KV head j,
 * the logical pages `pages[indptr[s * numKvHeads + j] .. indptr[s * numKvHeads + j + 1])`
 * (ascending; all of its pages where it attends densely), as the TypeScript reference
 * `attentionStatsOverPages` computes them. The plan keeps a scratch of numSeqs x numQHeads x
 * (longest sequence + 1) floats for it, allocated on the first such call.
 */
export interface AttentionStatsArgs {
  /** The layer's (rotated) queries, fp32, one row per new token. */
  q: DeviceBuffer;
  qStride?: number;
  /** This layer's K pool, and for int8 KV its scales. */
  k: DeviceBuffer;
  kScale?: DeviceBuffer;
  /** Logit scale; default `1 / sqrt(headDim)`. */
  scale?: number;
  indptr: Int32Array;
  pages: Int32Array;
  /** fp32: at `entropyOffset + s`, the mean over query heads of the entropy (nats; 0 for a head attending nothing). */
  entropy: DeviceBuffer;
  entropyOffset?: number;
  /**
   * fp32: sequence s's positions from `massOffset` plus the earlier sequences' lengths, each the
   * mean over query heads of its probability (0 where no head attends it).
   */
  mass: DeviceBuffer;
  massOffset?: number;
}

export interface AppendKvArgs {
  /** The step's fused projections, fp32 rows `[q heads | k heads | v heads]`. */
  qkv: DeviceBuffer;
  qkvOffset?: number;
  qkvStride?: number;
  /** Where to write the (rotated) queries, `[numTokens, numQHeads * headDim]`; optional. */
  qOut?: DeviceBuffer;
  qOutOffset?: number;
  qOutStride?: number;
  k: DeviceBuffer;
  v: DeviceBuffer;
  /** int8 KV only (required then): written with one scale per appended (token, KV head) row. */
  kScale?: DeviceBuffer;
  vScale?: DeviceBuffer;
  /** Page metadata to update with the stored keys (int8: dequantised); omit both to skip. */
  metaMin?: DeviceBuffer;
  metaMax?: DeviceBuffer;
  metaDtype?: MetaDtypeCode;
  /** Apply RoPE (HF rotate_half) to q and k with base `ropeTheta`. */
  rope?: boolean;
  ropeTheta?: number;
}

/** One layer's causal attention of every new token: the decode operands, one row per new token. */
export type PrefillLayerArgs = DecodeLayerArgs;

/**
 * One call of `timeCalls`: `decodeDense`, `decodeSparse` or `decodeSelected` with these
 * arguments (a 'selected' call's lists are uploaded once, before timing; one such call per plan).
 */
export type TimedCall =
  | { op: 'dense' | 'sparse'; plan: StepPlanHandle; args: DecodeLayerArgs | SparseLayerArgs }
  | { op: 'selected'; plan: StepPlanHandle; args: SelectedDecodeArgs };

export interface GemmArgs {
  batch?: number;
  m: number;
  n: number;
  k: number;
  a: DeviceBuffer;
  aOffset?: number;
  /** Elements between batch entries; 0 broadcasts. */
  strideA?: number;
  transA?: boolean;
  b: DeviceBuffer;
  bOffset?: number;
  strideB?: number;
  transB?: boolean;
  bias?: DeviceBuffer;
  c: DeviceBuffer;
  cOffset?: number;
}

export const BINARY_OP = { add: 0, sub: 1, mul: 2, div: 3, max: 4, min: 5 } as const;

export interface BinaryArgs {
  op: number;
  a: DeviceBuffer;
  /** Element strides of `a` per output dim (0 where `a` broadcasts). */
  aStrides: number[];
  b: DeviceBuffer;
  bStrides: number[];
  out: DeviceBuffer;
  shape: number[];
}

export interface GatherArgs {
  x: DeviceBuffer;
  elemBytes: number;
  indices: DeviceBuffer;
  numIndices: number;
  outer: number;
  axisDim: number;
  inner: number;
  out: DeviceBuffer;
}

export interface NormArgs {
  x: DeviceBuffer;
  weight: DeviceBuffer;
  /** Present: LayerNorm; absent: RMSNorm. */
  bias?: DeviceBuffer;
  eps: number;
  rows: number;
  cols: number;
  out: DeviceBuffer;
}

export interface ActivationArgs {
  /** 0: SwiGLU over `[gate | up]` rows (output half as wide), 1: GPT-2 gelu_new. */
  kind: 0 | 1;
  x: DeviceBuffer;
  rows: number;
  cols: number;
  out: DeviceBuffer;
}

export interface RebuildMetadataArgs {
  k: DeviceBuffer;
  /** int8 KV only (required then): the keys' scales; boxes bound the dequantised keys. */
  kScale?: DeviceBuffer;
  kvDtype: KvDtypeCode;
  metaMin: DeviceBuffer;
  metaMax: DeviceBuffer;
  metaDtype: MetaDtypeCode;
  pages: Int32Array;
  /** Filled slots of each page; 0 marks it empty. */
  fills: Int32Array;
  pageSize: number;
  numKvHeads: number;
  headDim: number;
  numPagesTotal: number;
}

export interface RandomFillArgs {
  dst: DeviceBuffer;
  dstOffset?: number;
  count: number;
  dtype: KvDtypeCode;
  seed?: number;
  scale?: number;
  /**
   * int8 only (required then): the values are quantised per row of `rowLen` (count a multiple
   * of it) exactly as `appendKv` quantises, one fp32 scale per row written to `scales`.
   */
  scales?: DeviceBuffer;
  scalesOffset?: number;
  rowLen?: number;
}

export interface CopyTokensArgs {
  /** Every buffer to copy within: all layers' K and V (or, in a second call, their int8 scales). */
  caches: DeviceBuffer[];
  elemBytes: number;
  /** Elements of one token row (`numKvHeads * headDim`; `numKvHeads` for int8 scales). A row must be a multiple of 4 bytes. */
  rowElems: number;
  /** Rows in each cache (`numPages * pageSize`). */
  numRows: number;
  /** Row `page * pageSize + slot`, applied in order. */
  src: Int32Array;
  dst: Int32Array;
}

export interface CudaAddon {
  readonly abiVersion: number;
  deviceInfo(): CudaDeviceInfo;
  alloc(bytes: number): DeviceBuffer;
  free(buffer: DeviceBuffer): void;
  upload(dst: DeviceBuffer, dstOffsetBytes: number, src: ArrayBufferView): void;
  /** Waits for queued work, then copies. */
  download(src: DeviceBuffer, srcOffsetBytes: number, dst: ArrayBufferView): void;
  copy(dst: DeviceBuffer, dstOffsetBytes: number, src: DeviceBuffer, srcOffsetBytes: number, bytes: number): void;
  /** `count` elements of `dtype` (0 fp32, 1 fp16, 2 int8: an integer value) set to `value`. */
  fill(args: { dst: DeviceBuffer; dstOffset?: number; count: number; dtype: KvDtypeCode; value: number }): void;
  /** Pseudo-random values, mean 0, standard deviation `scale` (benchmarks, large tests). */
  randomFill(args: RandomFillArgs): void;
  synchronize(): void;
  memoryInfo(): { free: number; total: number };
  /** Device-to-device copy rate, bytes read plus bytes written per second. */
  copyBandwidth(bytes: number, iterations: number): { gbPerSecond: number; msPerCopy: number };

  createPlan(): StepPlanHandle;
  planUpdate(plan: StepPlanHandle, params: PlanUpdateParams): PlanInfo;
  /** Frees a plan's device scratch now (a later planUpdate makes it usable again). */
  releasePlan(plan: StepPlanHandle): void;
  /** Dense paged decode attention of one layer. */
  decodeDense(plan: StepPlanHandle, args: DecodeLayerArgs): void;
  /** The fused sparse decode of one layer: score pages, select top-K, attend, merge; one launch. */
  decodeSparse(plan: StepPlanHandle, args: SparseLayerArgs): void;
  /** The last sparse launch's selection per (sequence, KV head): logical pages, ascending. */
  readSelection(plan: StepPlanHandle): { indptr: Int32Array; pages: Int32Array };
  /**
   * Queues a copy of the last sparse launch's selection into `dst` (int32 elements from
   * `dstOffset`): counts `[numSeqs * numKvHeads]`, then rows `[numSeqs * numKvHeads, rowPages]`
   * of logical pages (each row's first `count` entries, ascending). `rowPages` (default the
   * plan's `maxPages`) must bound every count.
   */
  copySelection(plan: StepPlanHandle, args: { dst: DeviceBuffer; dstOffset?: number; rowPages?: number }): void;
  /** Quest page scores of chosen decode sequences (see {@link PageScoreArgs}). */
  pageScore(plan: StepPlanHandle, args: PageScoreArgs): void;
  /** Decode attention over given page lists (see {@link SelectedDecodeArgs}). */
  decodeSelected(plan: StepPlanHandle, args: SelectedDecodeArgs): void;
  /** Attention statistics of each sequence's last new token (see {@link AttentionStatsArgs}). */
  attentionStats(plan: StepPlanHandle, args: AttentionStatsArgs): void;
  /** RoPE, K/V append into pages and page metadata update, fused. */
  appendKv(plan: StepPlanHandle, args: AppendKvArgs): void;
  /** Causal paged attention of every new token of the step. */
  prefill(plan: StepPlanHandle, args: PrefillLayerArgs): void;
  /**
   * Milliseconds per round of `calls` by CUDA events: `eager` over `iterations` rounds launched
   * back to back, `graph` over the same rounds replayed from a CUDA graph (no host launch
   * cost; NaN when the launches could not be captured).
   */
  timeCalls(calls: TimedCall[], iterations: number, warmup: number): { eager: number; graph: number };

  gemm(args: GemmArgs): void;
  binary(args: BinaryArgs): void;
  gather(args: GatherArgs): void;
  norm(args: NormArgs): void;
  activation(args: ActivationArgs): void;
  cast(args: { x: DeviceBuffer; from: 0 | 2; out: DeviceBuffer; to: 0 | 2; count: number }): void;
  rebuildMetadata(args: RebuildMetadataArgs): void;
  copyTokens(args: CopyTokensArgs): void;
}
