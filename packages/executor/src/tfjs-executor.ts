import { BackendUnavailableError, ConfigError } from '@tinyserve/core';
import type {
  AttentionStats,
  CopyTokensParams,
  Executor,
  ExecutorOptions,
  ForwardParams,
  ForwardResult,
  KvCacheDtype,
  ModelConfig,
} from '@tinyserve/core';
import { KV_CACHE_DTYPES } from '@tinyserve/kv-retriever';
import { ExecutorSelection } from './decode-selection.js';
import { SelectingExecutor } from './selecting-executor.js';
import type { DecodeSelector, SelectionOptions } from './decode-selection.js';
import { checkExecutorOptions } from './executor-options.js';
import { planForward } from './forward-plan.js';
import type { ForwardLimits, ForwardPlan } from './forward-plan.js';
import type { AttentionStatsSink } from './kernels/paged-attention-cpu.js';
import type { AttentionStep } from './kernels/register-kernels.js';
import { computeRopeTables } from './kernels/rope.js';
import { PagedKvCache } from './kv-cache.js';
import { stepLogits, uploadWeights } from './model-graph.js';
import type { GraphWeights } from './model-graph.js';
import { graphWeightBytes, prepareWeights } from './model-weights.js';
import { activateTfjsBackend, initTfjsBackend, runExclusive } from './tfjs-backend.js';
import type { TfjsBackendName } from './tfjs-backend.js';

/** Checks the options; returns the validated selection (policy object built, so its errors surface here). */
function checkOptions(options: ExecutorOptions, selectionOptions: SelectionOptions): DecodeSelector {
  return checkExecutorOptions(options, selectionOptions, () => {
    if (!KV_CACHE_DTYPES.includes(options.kvCacheDtype)) {
      throw new ConfigError('kvCacheDtype', `must be one of ${KV_CACHE_DTYPES.map((d) => `'${d}'`).join(', ')}, got '${String(options.kvCacheDtype)}'`);
    }
  });
}

const GIB = 2 ** 30;
/** wasm32 memory tops out just under 4 GiB. */
const WASM_MEMORY_LIMIT = 4 * GIB;
/** Room for activations, the packed-weight bookkeeping and the allocator. */
const WASM_HEADROOM = 0.5 * GIB;

/**
 * The wasm backend holds each weight twice (tfjs's copy and XNNPACK's packed copy) in one
 * 32-bit heap; an allocation past the limit would not fail cleanly, so refuse up front.
 */
export function checkWasmMemory(weightBytes: number): void {
  const needed = 2 * weightBytes + WASM_HEADROOM;
  if (needed > WASM_MEMORY_LIMIT) {
    throw new BackendUnavailableError(
      `the model needs about ${(needed / GIB).toFixed(1)} GiB of wasm memory (fp32 weights are held twice: tfjs's copy and ` +
        `XNNPACK's packed copy), beyond the wasm backend's 4 GiB; use the 'cpu' executor for this model`,
    );
  }
}

/**
 * The executor of the `wasm` and `cpu` backends: the tfjs model graph over a paged KV cache
 * (fp32, fp16 or int8) with page metadata kept on every append, and decode-time page
 * selection by the kv-retriever's policies. tfjs has one global active backend; each call
 * switches to this executor's backend first, so executors on different backends can live
 * side by side. Executors never share KV pages: to compare selection policies on one cached
 * context, switch policies on one executor with {@link setSelection}.
 */
export class TfjsExecutor extends SelectingExecutor implements Executor {
  readonly backend: TfjsBackendName;
  readonly model: ModelConfig;
  readonly pageSize: number;
  readonly numKvPages: number;
  readonly kvCacheDtype: KvCacheDtype;
  /** Bytes one page occupies across all layers, K and V, in `kvCacheDtype` (int8 scales included). */
  readonly kvBytesPerPage: number;
  /** The KV pages and their metadata, in `KvLayout` (exposed for inspection). */
  readonly kvCache: PagedKvCache;

  private readonly attentionChunkSize: number;
  private readonly embed: Float32Array;
  private readonly positions: Float32Array | null;
  private readonly limits: ForwardLimits;
  private graph: GraphWeights | null;

  private constructor(
    backend: TfjsBackendName,
    options: ExecutorOptions,
    selector: DecodeSelector,
    graph: GraphWeights,
    embed: Float32Array,
    positions: Float32Array | null,
  ) {
    const config = options.model.config;
    super(new ExecutorSelection(selector, { pageSize: options.pageSize, headDim: config.headDim, dtype: options.kvCacheDtype }));
    this.backend = backend;
    this.model = config;
    this.pageSize = options.pageSize;
    this.numKvPages = options.numKvPages;
    this.kvCacheDtype = options.kvCacheDtype;
    this.attentionChunkSize = options.attentionChunkSize;
    this.graph = graph;
    this.embed = embed;
    this.positions = positions;
    this.kvCache = new PagedKvCache(
      {
        numLayers: config.numLayers,
        numPages: options.numKvPages,
        pageSize: options.pageSize,
        numKvHeads: config.numKvHeads,
        headDim: config.headDim,
      },
      options.kvCacheDtype,
    );
    this.kvBytesPerPage = this.kvCache.bytesPerPage;
    this.limits = {
      vocabSize: config.vocabSize,
      pageSize: options.pageSize,
      numKvPages: options.numKvPages,
      maxPositions: config.architecture === 'gpt2' ? config.maxPositionEmbeddings : null,
    };
  }

  /**
   * Validates the options (a bad selection config, policy or KV format is a `ConfigError`
   * naming the field), uploads the weights and allocates the KV cache. `selectionOptions`
   * are the settings beyond core's `SelectionConfig` (recall measurement, random seed, GQA
   * aggregation); {@link setSelection} changes them later.
   */
  static async create(backend: TfjsBackendName, options: ExecutorOptions, selectionOptions: SelectionOptions = {}): Promise<TfjsExecutor> {
    const selector = checkOptions(options, selectionOptions);
    const config = options.model.config;
    const prepared = prepareWeights(options.model);
    if (backend === 'wasm') checkWasmMemory(graphWeightBytes(prepared));
    return runExclusive(async () => {
      await initTfjsBackend(backend);
      const graph = uploadWeights(prepared, config.architecture, config.hiddenSize);
      try {
        return new TfjsExecutor(backend, options, selector, graph, prepared.embed, prepared.positions);
      } catch (err) {
        for (const t of graph.tensors) t.dispose();
        throw err;
      }
    });
  }

  /**
   * Runs one batched step. Steps of all tfjs executors in the process run one at a time, in
   * call order; `params` is read when the step starts, so keep it unchanged until then.
   */
  async forward(params: ForwardParams): Promise<ForwardResult> {
    this.live();
    return runExclusive(async () => {
      await activateTfjsBackend(this.backend);
      return this.runStep(params);
    });
  }

  /** The step itself: synchronous from here on, with this executor's backend active. */
  private runStep(params: ForwardParams): ForwardResult {
    const graph = this.live();
    const plan = planForward(params, this.limits);
    const cfg = this.model;
    const cache = this.kvCache;
    const ps = this.pageSize;
    const scale = 1 / Math.sqrt(cfg.headDim);
    const statsSinks = params.collectAttentionStats ? makeStatsSinks(plan, params, cfg.numLayers) : null;
    const selection = this.selectionState.beginStep(plan, params, cache, cfg.numHeads, scale);
    const pageOf = (s: number, pos: number) => params.pageIndices[params.pageIndptr[s] + Math.floor(pos / ps)];
    // Keep each page's boxes exactly over the keys it will hold (see PagedKvCache.prepareAppend).
    for (let s = 0; s < plan.numSeqs; s++) cache.prepareAppend(pageOf(s, params.startPos[s]), params.startPos[s] % ps);
    const step: AttentionStep = {
      numHeads: cfg.numHeads,
      numKvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      pageSize: ps,
      scale,
      chunkSize: this.attentionChunkSize,
      keyCaches: cache.keys,
      valueCaches: cache.values,
      kvDtype: cache.dtype,
      keyScales: cache.keyScales,
      valueScales: cache.valueScales,
      metadata: cache.metadata.layers,
      tokenSeq: plan.tokenSeq,
      tokenPos: plan.tokenPos,
      pageIndptr: params.pageIndptr,
      pageIndices: params.pageIndices,
      rope: cfg.architecture === 'llama' ? computeRopeTables(plan.tokenPos, cfg.headDim, cfg.ropeTheta) : null,
      stats: statsSinks,
      selector: selection,
    };

    let logits: Float32Array;
    try {
      logits = stepLogits(graph, this.embed, this.positions, params.tokenIds, plan, step, selection);
    } finally {
      // Pages were written (fully or partly): their known fill is the last slot each step wrote.
      for (let s = 0; s < plan.numSeqs; s++) {
        for (let pos = params.startPos[s]; pos < plan.contextLens[s]; pos++) cache.appended(pageOf(s, pos), pos % ps);
      }
    }

    const result: ForwardResult = { logits, logitsIndptr: plan.logitsIndptr, selection: this.selectionState.endStep(selection) };
    if (statsSinks) result.attention = collectStats(statsSinks, params.seqIds);
    return result;
  }

  /**
   * Applies at once (synchronously): await any pending `forward` that must see the old slots
   * first. Leaves page metadata alone: call {@link rebuildPageMetadata} for the destination
   * pages (the engine does after copy-on-write and compaction).
   */
  copyTokens(params: CopyTokensParams): void {
    this.live();
    this.kvCache.copyTokens(params);
  }

  /**
   * Recomputes the key bounding boxes of `pages` in every layer from the keys as stored,
   * over each page's first `fills[i]` slots (all `pageSize` when omitted; 0 marks a page
   * empty). Applies at once, like {@link copyTokens}.
   */
  rebuildPageMetadata(pages: Int32Array, fills?: Int32Array): void {
    this.live();
    this.kvCache.rebuildMetadata(pages, fills);
  }

  dispose(): void {
    if (this.graph === null) return;
    for (const t of this.graph.tensors) t.dispose();
    this.graph = null;
  }

  protected live(): GraphWeights {
    if (this.graph === null) throw new BackendUnavailableError(`the ${this.backend} executor has been disposed`);
    return this.graph;
  }
}

function makeStatsSinks(plan: ForwardPlan, params: ForwardParams, numLayers: number): AttentionStatsSink[] {
  const tokens = new Int32Array(plan.numSeqs);
  for (let s = 0; s < plan.numSeqs; s++) tokens[s] = params.queryIndptr[s + 1] - 1;
  const sinks: AttentionStatsSink[] = [];
  for (let l = 0; l < numLayers; l++) {
    sinks.push({
      tokens,
      entropy: new Float64Array(plan.numSeqs),
      positionMass: Array.from(plan.contextLens, (len) => new Float32Array(len)),
    });
  }
  return sinks;
}

function collectStats(sinks: AttentionStatsSink[], seqIds: Int32Array): AttentionStats[] {
  const out: AttentionStats[] = [];
  for (let s = 0; s < seqIds.length; s++) {
    for (let layer = 0; layer < sinks.length; layer++) {
      out.push({ seqId: seqIds[s], layer, entropy: sinks[layer].entropy[s], positionMass: sinks[layer].positionMass[s] });
    }
  }
  return out;
}
