import { ConfigError } from '@tinyserve/core';
import type { ForwardParams, KvLayout, SelectionConfig, StepSelectionStats } from '@tinyserve/core';
import {
  SelectionStatsCollector,
  attentionMassRecall,
  createSelectionPolicy,
  denseSelection,
  packSelections,
  scorePages,
  selectionBudgetPages,
} from '@tinyserve/kv-retriever';
import type {
  GqaAggregation,
  HeadSelection,
  PageMetadataLayer,
  SelectPagesParams,
  SelectPagesResult,
  SelectionPolicy,
  SelectionStatsOptions,
  SelectionStatsSnapshot,
} from '@tinyserve/kv-retriever';
import type { ForwardPlan } from './forward-plan.js';
import type { PageSelection } from './kernels/paged-attention-cpu.js';
import type { StepPageSelector } from './kernels/register-kernels.js';

/** Settings of decode-time selection beyond core's `SelectionConfig`. */
export interface SelectionOptions {
  /**
   * Measure the attention-mass recall of every sparse selection (each decode sequence, each
   * layer the policy selects at) against the true attention of the same query. Costs one
   * dense pass over the keys per (sequence, layer); off by default. Results land in
   * `getSelectionStats()` (`lastStep.recallMean`, `cumulative.recallMean`) and in
   * `getLastSelections()[i].recall`.
   */
  measureRecall?: boolean;
  /** Seed of the `random` policy (default 0). */
  seed?: number;
  /** How `quest` combines the bounds of a GQA group's query heads (default 'max'). */
  gqaAggregation?: GqaAggregation;
}

/** Policies that rank pages by the metadata bound: the executor scores pages for them (the PageScore step). */
const SCORING_POLICIES = new Set(['quest']);

/** A validated selection setup: the config, the kv-retriever policy object and the options. */
export class DecodeSelector {
  readonly config: Readonly<SelectionConfig>;
  readonly policy: SelectionPolicy;
  readonly options: Readonly<SelectionOptions>;
  readonly scoring: boolean;

  /** Throws a `ConfigError` naming the bad field (the policy's own checks included). */
  constructor(config: SelectionConfig, pageSize: number, options: SelectionOptions = {}) {
    if (config === null || typeof config !== 'object') {
      throw new ConfigError('selection', 'must be an object with policy, selectionRatio, tokenBudget, sinkPages, denseLayers, useFusedKernel');
    }
    if (typeof config.useFusedKernel !== 'boolean') {
      throw new ConfigError('useFusedKernel', `must be a boolean, got ${String(config.useFusedKernel)}`);
    }
    if (options.measureRecall !== undefined && typeof options.measureRecall !== 'boolean') {
      throw new ConfigError('measureRecall', `must be a boolean, got ${String(options.measureRecall)}`);
    }
    const policyOptions: { pageSize: number; seed?: number; gqaAggregation?: GqaAggregation } = { pageSize };
    if (options.seed !== undefined) policyOptions.seed = options.seed;
    if (options.gqaAggregation !== undefined) policyOptions.gqaAggregation = options.gqaAggregation;
    this.policy = createSelectionPolicy(config, policyOptions);
    this.config = this.policy.config;
    this.options = Object.freeze({ ...options });
    this.scoring = SCORING_POLICIES.has(config.policy);
  }
}

/** One sequence's keys decoded to fp32 in a layout of just its pages (ids 0..n-1). */
export interface CompactKeys {
  layout: KvLayout;
  kCache: Float32Array;
  pages: Int32Array;
}

/**
 * Where the policies and the recall measurement read keys and page metadata: the executor's KV
 * cache, on the host (`PagedKvCache`) or on the device (`CudaKvCache`, which downloads what is
 * asked for).
 */
export interface SelectionKvSource {
  readonly layout: KvLayout;
  /** This layer's page metadata on the host. Read only by policies that rank by it themselves. */
  metadataLayer(layer: number): PageMetadataLayer;
  /** This layer's keys as fp32 in the cache layout when the host holds them so (fp32 host caches); else null. */
  hostKeys(layer: number): Float32Array | null;
  /** One sequence's keys at `layer`, decoded to fp32, in a layout of just its pages. */
  compactKeys(layer: number, pages: Int32Array): CompactKeys;
}

/** One (decode sequence, layer) selection of the last step, for inspection and evaluation. */
export interface LayerSelectionRecord {
  seqId: number;
  layer: number;
  /** Tokens in the sequence, the current one included. */
  numTokens: number;
  /** The sequence's physical pages attention could read, in order (a copy). */
  pages: Int32Array;
  /** Per KV head, the logical pages (indices into `pages`) attention read. */
  selection: SelectPagesResult;
  /** Pages were scored from the metadata (quest below its budget). */
  scored: boolean;
  /** Attention-mass recall of the selection, when measured; null otherwise. */
  recall: number | null;
}

interface DecodeSeq {
  /** Index in the batch. */
  s: number;
  /** Row of its token. */
  t: number;
  seqId: number;
  numTokens: number;
  pages: Int32Array;
  /** Offset of its `[numKvHeads, numPages]` block in the step's score buffer. */
  scoreOffset: number;
}

const NO_PAGES: HeadSelection = { indptr: new Int32Array(1), indices: new Int32Array(0) };

/**
 * The selection work of one forward step. Sequences whose step is a single token (decode)
 * select pages at every layer `>= denseLayers` under a non-dense policy; prefill chunks stay
 * dense and causal. Statistics go to the executor's collector, decode sequences only (prefill
 * attends causally to everything and is not a selection decision).
 */
export class StepSelection implements StepPageSelector {
  readonly records: LayerSelectionRecord[] = [];
  readonly scoreLength: number;
  readonly fused: boolean;
  private readonly decode: DecodeSeq[] = [];
  private readonly numSeqs: number;
  private readonly layout: KvLayout;
  private readonly metadataBefore: number;
  private readonly emptyHeads: HeadSelection;
  /** Metadata layers fetched for policies that read it (downloads, on device caches). */
  private readonly metadataRead = new Map<number, PageMetadataLayer>();

  constructor(
    private readonly selector: DecodeSelector,
    plan: ForwardPlan,
    params: ForwardParams,
    private readonly source: SelectionKvSource,
    private readonly collector: SelectionStatsCollector,
    private readonly numQHeads: number,
    private readonly scale: number,
  ) {
    this.layout = source.layout;
    this.numSeqs = plan.numSeqs;
    this.fused = selector.config.useFusedKernel;
    const { pageSize, numKvHeads } = this.layout;
    let offset = 0;
    for (let s = 0; s < plan.numSeqs; s++) {
      const t = params.queryIndptr[s];
      if (params.queryIndptr[s + 1] - t !== 1) continue;
      const numTokens = plan.contextLens[s];
      const np = Math.ceil(numTokens / pageSize);
      const pages = params.pageIndices.slice(params.pageIndptr[s], params.pageIndptr[s] + np);
      this.decode.push({ s, t, seqId: params.seqIds[s], numTokens, pages, scoreOffset: offset });
      offset += numKvHeads * np;
    }
    this.scoreLength = offset;
    this.emptyHeads = { indptr: new Int32Array(numKvHeads + 1), indices: NO_PAGES.indices };
    this.metadataBefore = this.decode.length > 0 ? collector.snapshot().cumulative.metadataBytesRead : 0;
  }

  /** Whether attention at `layer` reads selected pages (some decode sequence, a non-dense policy, past the dense layers). */
  isSparse(layer: number): boolean {
    return this.decode.length > 0 && this.selector.config.policy !== 'dense' && layer >= this.selector.config.denseLayers;
  }

  private needsScoresFor(layer: number, d: DecodeSeq): boolean {
    if (!this.selector.scoring || !this.isSparse(layer)) return false;
    const np = d.pages.length;
    // A budget covering every page selects everything: no scoring, no metadata read.
    return selectionBudgetPages(this.selector.config, np, this.layout.pageSize) < np;
  }

  needsScores(layer: number): boolean {
    return this.decode.some((d) => this.needsScoresFor(layer, d));
  }

  /**
   * Quest page scores of every decode sequence that needs them, from this layer's metadata,
   * into `out` (`[numKvHeads, numPages]` blocks at each sequence's offset; other blocks are
   * left as they are). `queries` are the step's rotated queries.
   */
  score(layer: number, queries: Float32Array, out: Float32Array): void {
    const qRow = this.numQHeads * this.layout.headDim;
    const metadata = this.metadata(layer);
    for (const d of this.decode) {
      if (!this.needsScoresFor(layer, d)) continue;
      scorePages({
        layout: this.layout,
        metadata,
        query: queries.subarray(d.t * qRow, (d.t + 1) * qRow),
        numQHeads: this.numQHeads,
        pages: d.pages,
        aggregation: this.selector.options.gqaAggregation,
        out: out.subarray(d.scoreOffset, d.scoreOffset + this.layout.numKvHeads * d.pages.length),
      });
    }
  }

  /**
   * The decode sequences `layer` scores pages for, for kernels that score them elsewhere (a
   * GPU): their batch indices and the offsets of their `[numKvHeads, numPages]` blocks in the
   * score buffer.
   */
  scoreTargets(layer: number): { seqs: Int32Array; offsets: Int32Array } {
    const chosen = this.decode.filter((d) => this.needsScoresFor(layer, d));
    return { seqs: Int32Array.from(chosen, (d) => d.s), offsets: Int32Array.from(chosen, (d) => d.scoreOffset) };
  }

  /**
   * Chooses the pages of every decode sequence at `layer` through the policy object, records
   * the statistics (and recall when asked for), and returns the kernel's page lists.
   * `scores` must be {@link score}'s output when {@link needsScores} says so.
   */
  select(layer: number, queries: Float32Array, scores: Float32Array | null): PageSelection {
    const { numKvHeads, headDim } = this.layout;
    const qRow = this.numQHeads * headDim;
    const policy = this.selector.policy;
    const selections: HeadSelection[] = new Array<HeadSelection>(this.numSeqs).fill(this.emptyHeads);
    const sparse = new Uint8Array(this.numSeqs);
    for (const d of this.decode) {
      const query = queries.subarray(d.t * qRow, (d.t + 1) * qRow);
      const scored = scores !== null && this.needsScoresFor(layer, d);
      const params: SelectPagesParams = {
        layout: this.layout,
        layer,
        pages: d.pages,
        numTokens: d.numTokens,
        query,
        numQHeads: this.numQHeads,
        scale: this.scale,
        seqId: d.seqId,
      };
      if (scored) params.scores = scores.subarray(d.scoreOffset, d.scoreOffset + numKvHeads * d.pages.length);
      const keys = this.source.hostKeys(layer);
      if (keys !== null) params.kCache = keys;
      if (keys === null && policy.name === 'oracle') {
        // The oracle reads fp32 keys: give it the sequence's pages decoded into a compact buffer.
        Object.assign(params, this.source.compactKeys(layer, d.pages));
      } else {
        // Fetched only if the policy reads it (quest is given its scores; a device cache downloads).
        Object.defineProperty(params, 'metadata', { get: () => this.metadata(layer), enumerable: true, configurable: true });
      }
      const result = policy.select(params);
      this.record(layer, d, result, scored, query);
      selections[d.s] = result;
      sparse[d.s] = 1;
    }
    const packed = packSelections(selections);
    return { sparse, indptr: packed.selectedIndptr, pages: packed.selectedPages };
  }

  /**
   * Records the choice of `layer` made elsewhere (a fused GPU launch running the policy):
   * `chosen(s, numPages)` returns decode sequence `s`'s selection (batch index, as in the step).
   * `queries` are the step's rotated queries, needed when recall is measured.
   */
  recordChosen(layer: number, chosen: (s: number, numPages: number) => SelectPagesResult, queries: Float32Array | null): void {
    const qRow = this.numQHeads * this.layout.headDim;
    if (this.selector.options.measureRecall && queries === null) throw new Error('recordChosen: measuring recall needs the queries');
    for (const d of this.decode) {
      const query = queries === null ? new Float32Array(0) : queries.subarray(d.t * qRow, (d.t + 1) * qRow);
      this.record(layer, d, chosen(d.s, d.pages.length), this.needsScoresFor(layer, d), query);
    }
  }

  /** Statistics, recall and the record of one (sequence, layer) choice. */
  private record(layer: number, d: DecodeSeq, result: SelectPagesResult, scored: boolean, query: Float32Array): void {
    this.collector.recordSelection({ selection: result, numTokens: d.numTokens, readMetadata: scored });
    let recall: number | null = null;
    if (this.selector.options.measureRecall) {
      recall = result.dense ? 1 : this.recall(layer, d, query, result);
      this.collector.recordRecall(Math.min(recall, 1));
    }
    this.records.push({ seqId: d.seqId, layer, numTokens: d.numTokens, pages: d.pages, selection: result, scored, recall });
  }

  /** Counts a layer where every decode sequence reads all its pages. */
  recordDense(layer: number): void {
    for (const d of this.decode) {
      const selection = denseSelection(this.layout.numKvHeads, d.pages.length);
      this.collector.recordSelection({ selection, numTokens: d.numTokens });
      this.records.push({ seqId: d.seqId, layer, numTokens: d.numTokens, pages: d.pages, selection, scored: false, recall: null });
    }
  }

  /**
   * Closes the step in the collector and returns its counters. `kvBytesRead` here includes
   * the page-metadata bytes read for scoring (the collector keeps those apart, in
   * `metadataBytesRead`). A step without decode sequences is not a selection step: zeros.
   */
  finish(): StepSelectionStats {
    if (this.decode.length === 0) return { pagesScanned: 0, pagesSelected: 0, kvBytesRead: 0, kvBytesDense: 0 };
    const stats = this.collector.endStep();
    stats.kvBytesRead += this.collector.snapshot().cumulative.metadataBytesRead - this.metadataBefore;
    return stats;
  }

  private recall(layer: number, d: DecodeSeq, query: Float32Array, selection: SelectPagesResult): number {
    const base = { numQHeads: this.numQHeads, query, numTokens: d.numTokens, scale: this.scale, selection };
    const keys = this.source.hostKeys(layer);
    if (keys !== null) return attentionMassRecall({ ...base, layout: this.layout, kCache: keys, pages: d.pages }).recall;
    return attentionMassRecall({ ...base, ...this.source.compactKeys(layer, d.pages) }).recall;
  }

  private metadata(layer: number): PageMetadataLayer {
    let m = this.metadataRead.get(layer);
    if (m === undefined) this.metadataRead.set(layer, (m = this.source.metadataLayer(layer)));
    return m;
  }
}

/**
 * The selection state an executor keeps across steps: the policy in force (switchable between
 * steps), the statistics collector and the last step's records. The tfjs and cuda executors
 * both delegate their selection API to one.
 */
export class ExecutorSelection {
  private current: DecodeSelector;
  private readonly collector: SelectionStatsCollector;
  private readonly pageSize: number;
  private last: LayerSelectionRecord[] = [];

  /** `stats` describes the KV format the statistics count bytes in. */
  constructor(selector: DecodeSelector, stats: SelectionStatsOptions) {
    this.current = selector;
    this.pageSize = stats.pageSize;
    this.collector = new SelectionStatsCollector(stats);
  }

  /** The validated selection in force. */
  get selector(): DecodeSelector {
    return this.current;
  }

  /** Switches policy and options (validated at once; the old selection stays on error). */
  set(config: SelectionConfig, options: SelectionOptions = {}): void {
    this.current = new DecodeSelector(config, this.pageSize, options);
  }

  stats(): SelectionStatsSnapshot {
    return this.collector.snapshot();
  }

  resetStats(): void {
    this.collector.reset();
  }

  /** Every (decode sequence, layer) selection of the last finished step, in layer order. */
  lastSelections(): readonly LayerSelectionRecord[] {
    return this.last;
  }

  /** The selection work of one step under the selection in force now. */
  beginStep(plan: ForwardPlan, params: ForwardParams, source: SelectionKvSource, numQHeads: number, scale: number): StepSelection {
    return new StepSelection(this.current, plan, params, source, this.collector, numQHeads, scale);
  }

  /** Closes the step: its records become the last selections (sorted by layer; stable); returns its counters. */
  endStep(step: StepSelection): StepSelectionStats {
    this.last = [...step.records].sort((a, b) => a.layer - b.layer);
    return step.finish();
  }
}
