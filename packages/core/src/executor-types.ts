import type { KvCacheDtype } from './config.js';
import type { LoadedModel, ModelConfig } from './model-types.js';

/**
 * One batched forward step. Sequences are laid out CSR-style: sequence `s` contributes
 * tokens `tokenIds[queryIndptr[s] .. queryIndptr[s+1])`, placed at positions starting at
 * `startPos[s]`; its KV pages, in order, are `pageIndices[pageIndptr[s] .. pageIndptr[s+1])`
 * and must already cover positions `[0, startPos[s] + newTokens)` (the caller allocates them
 * from the block pool before the step). The executor appends the new K/V into those pages.
 */
export interface ForwardParams {
  tokenIds: Int32Array;
  queryIndptr: Int32Array;
  startPos: Int32Array;
  pageIndptr: Int32Array;
  pageIndices: Int32Array;
  /**
   * Which logits to return per sequence: 0 none, 1 the last new token's, 2 every new token's
   * (prompt scoring / echo).
   */
  logitsMode: Uint8Array;
  /** Stable ids of the sequences, for per-sequence statistics and selection state. */
  seqIds: Int32Array;
  /** Ask the executor for per-layer attention statistics this step (plugins, eval). */
  collectAttentionStats?: boolean;
}

/** Attention statistics for one sequence and layer, only when asked for. */
export interface AttentionStats {
  seqId: number;
  layer: number;
  /** Mean over heads of the entropy (nats) of the last query's attention distribution. */
  entropy: number;
  /**
   * Attention mass of the last query over each cached position, averaged over heads
   * (length = context length), for H2O-style importance.
   */
  positionMass?: Float32Array;
}

/** Per-step counters for sparsity decisions (pages scanned, selected, bytes read). */
export interface StepSelectionStats {
  pagesScanned: number;
  pagesSelected: number;
  kvBytesRead: number;
  /** Bytes that dense attention would have read for the same step. */
  kvBytesDense: number;
}

export interface ForwardResult {
  /** Rows of `vocabSize` floats, concatenated; row offsets per sequence in `logitsIndptr`. */
  logits: Float32Array;
  /** [numSeqs + 1] row offsets into `logits` (in rows, not floats). */
  logitsIndptr: Int32Array;
  selection: StepSelectionStats;
  attention?: AttentionStats[];
}

export interface ExecutorOptions {
  model: LoadedModel;
  pageSize: number;
  numKvPages: number;
  kvCacheDtype: KvCacheDtype;
  attentionChunkSize: number;
  /** Selection policy name and parameters for sparse decode attention. */
  selection: SelectionConfig;
}

export interface SelectionConfig {
  policy: string;
  selectionRatio: number;
  tokenBudget: number | null;
  sinkPages: number;
  denseLayers: number;
  useFusedKernel: boolean;
}

/** Runs a model's batched forward over a paged KV cache. Implementations register by name. */
export interface Executor {
  /** The backend actually in use ('wasm', 'cpu', 'cuda'). */
  readonly backend: string;
  readonly model: ModelConfig;
  readonly pageSize: number;
  readonly numKvPages: number;
  /** Bytes one page occupies across all layers, K and V. */
  readonly kvBytesPerPage: number;
  forward(params: ForwardParams): Promise<ForwardResult>;
  /**
   * Copies positions from one set of pages into another (token pruning compaction,
   * copy-on-write). `src[i]` position `srcPos[i]` goes to `dst[i]` position `dstPos[i]`.
   * Entries apply in order, so a left-compaction listed front to back never reads a slot it
   * already overwrote.
   */
  copyTokens(params: CopyTokensParams): void;
  /**
   * Recomputes the page metadata (key bounding boxes) of pages rewritten out of order
   * (compaction after pruning, copy-on-write, a session turn overwriting a partial page),
   * over each page's first `fills[i]` slots (the whole page when `fills` is omitted).
   * Optional: executors without page metadata leave it out.
   */
  rebuildPageMetadata?(pages: Int32Array, fills?: Int32Array): void;
  dispose(): void;
}

export interface CopyTokensParams {
  srcPages: Int32Array;
  srcSlots: Int32Array;
  dstPages: Int32Array;
  dstSlots: Int32Array;
}

export type ExecutorFactory = (options: ExecutorOptions) => Promise<Executor>;
