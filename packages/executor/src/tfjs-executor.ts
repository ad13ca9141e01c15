import { gather, tensor1d, tidy } from '@tensorflow/tfjs-core';
import type { Tensor2D } from '@tensorflow/tfjs-core';
import { BackendUnavailableError, ConfigError } from '@tinyserve/core';
import type {
  AttentionStats,
  CopyTokensParams,
  Executor,
  ExecutorOptions,
  ForwardParams,
  ForwardResult,
  ModelConfig,
} from '@tinyserve/core';
import { planForward } from './forward-plan.js';
import type { ForwardLimits, ForwardPlan } from './forward-plan.js';
import type { AttentionStatsSink } from './kernels/paged-attention-cpu.js';
import type { AttentionStep } from './kernels/register-kernels.js';
import { computeRopeTables } from './kernels/rope.js';
import { PagedKvCache } from './kv-cache.js';
import { embedTokens, finalLogits, runLayers, uploadWeights } from './model-graph.js';
import type { GraphWeights } from './model-graph.js';
import { graphWeightBytes, prepareWeights } from './model-weights.js';
import { activateTfjsBackend, initTfjsBackend, runExclusive } from './tfjs-backend.js';
import type { TfjsBackendName } from './tfjs-backend.js';

function positiveInt(field: string, value: unknown): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) {
    throw new ConfigError(field, `must be a positive integer, got ${String(value)}`);
  }
  return value;
}

function checkOptions(backend: string, options: ExecutorOptions): void {
  if (options === null || typeof options !== 'object' || options.model === undefined) {
    throw new ConfigError('model', 'ExecutorOptions.model is required');
  }
  positiveInt('pageSize', options.pageSize);
  positiveInt('numKvPages', options.numKvPages);
  positiveInt('attentionChunkSize', options.attentionChunkSize);
  if (options.kvCacheDtype !== 'fp32') {
    throw new ConfigError('kvCacheDtype', `'${options.kvCacheDtype}' is not supported by the ${backend} executor yet (supported: fp32)`);
  }
  const policy = options.selection?.policy ?? 'dense';
  if (policy !== 'dense') {
    throw new ConfigError('selectionPolicy', `'${policy}' is not supported by the ${backend} executor yet (supported: dense)`);
  }
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
 * The executor of the `wasm` and `cpu` backends: the tfjs model graph over a paged fp32 KV
 * cache with dense attention. tfjs has one global active backend; each call switches to this
 * executor's backend first, so executors on different backends can live side by side.
 */
export class TfjsExecutor implements Executor {
  readonly backend: TfjsBackendName;
  readonly model: ModelConfig;
  readonly pageSize: number;
  readonly numKvPages: number;
  readonly kvBytesPerPage: number;
  /** The KV pages, in `KvLayout` (exposed for page metadata and inspection). */
  readonly kvCache: PagedKvCache;

  private readonly attentionChunkSize: number;
  private readonly embed: Float32Array;
  private readonly positions: Float32Array | null;
  private readonly limits: ForwardLimits;
  private graph: GraphWeights | null;

  private constructor(backend: TfjsBackendName, options: ExecutorOptions, graph: GraphWeights, embed: Float32Array, positions: Float32Array | null) {
    const config = options.model.config;
    this.backend = backend;
    this.model = config;
    this.pageSize = options.pageSize;
    this.numKvPages = options.numKvPages;
    this.attentionChunkSize = options.attentionChunkSize;
    this.graph = graph;
    this.embed = embed;
    this.positions = positions;
    this.kvCache = new PagedKvCache({
      numLayers: config.numLayers,
      numPages: options.numKvPages,
      pageSize: options.pageSize,
      numKvHeads: config.numKvHeads,
      headDim: config.headDim,
    });
    this.kvBytesPerPage = this.kvCache.bytesPerPage;
    this.limits = {
      vocabSize: config.vocabSize,
      pageSize: options.pageSize,
      numKvPages: options.numKvPages,
      maxPositions: config.architecture === 'gpt2' ? config.maxPositionEmbeddings : null,
    };
  }

  static async create(backend: TfjsBackendName, options: ExecutorOptions): Promise<TfjsExecutor> {
    checkOptions(backend, options);
    const config = options.model.config;
    const prepared = prepareWeights(options.model);
    if (backend === 'wasm') checkWasmMemory(graphWeightBytes(prepared));
    return runExclusive(async () => {
      await initTfjsBackend(backend);
      const graph = uploadWeights(prepared, config.architecture, config.hiddenSize);
      try {
        return new TfjsExecutor(backend, options, graph, prepared.embed, prepared.positions);
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
    const statsSinks = params.collectAttentionStats ? makeStatsSinks(plan, params, cfg.numLayers) : null;
    const step: AttentionStep = {
      numHeads: cfg.numHeads,
      numKvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      pageSize: this.pageSize,
      scale: 1 / Math.sqrt(cfg.headDim),
      chunkSize: this.attentionChunkSize,
      keyCaches: this.kvCache.keys,
      valueCaches: this.kvCache.values,
      tokenSeq: plan.tokenSeq,
      tokenPos: plan.tokenPos,
      pageIndptr: params.pageIndptr,
      pageIndices: params.pageIndices,
      rope: cfg.architecture === 'llama' ? computeRopeTables(plan.tokenPos, cfg.headDim, cfg.ropeTheta) : null,
      stats: statsSinks,
    };

    let logits: Float32Array = new Float32Array(0);
    // The tidy callback returns nothing: tfjs walks a returned container element by element.
    tidy(() => {
      const x0 = embedTokens(this.embed, this.positions, cfg.hiddenSize, params.tokenIds, plan.tokenPos);
      let x = runLayers(graph, x0, step);
      const rows = plan.logitRows;
      if (rows.length === 0) return;
      // Rows are increasing, so as many rows as tokens means every token in order.
      if (rows.length < plan.numTokens) x = gather(x, tensor1d(rows, 'int32')) as Tensor2D;
      logits = finalLogits(graph, x).dataSync() as Float32Array;
    });

    const result: ForwardResult = {
      logits,
      logitsIndptr: plan.logitsIndptr,
      selection: this.denseSelectionStats(plan),
    };
    if (statsSinks) result.attention = collectStats(statsSinks, params.seqIds);
    return result;
  }

  /** Applies at once (synchronously): await any pending `forward` that must see the old slots first. */
  copyTokens(params: CopyTokensParams): void {
    this.live();
    this.kvCache.copyTokens(params);
  }

  dispose(): void {
    if (this.graph === null) return;
    for (const t of this.graph.tensors) t.dispose();
    this.graph = null;
  }

  /**
   * Dense attention reads every cached page of every sequence once per layer and KV head.
   * Counted in (sequence, layer, KV head, page) units, the granularity at which query-aware
   * selection decides; bytes are those of the K and V rows of the positions attended.
   */
  private denseSelectionStats(plan: ForwardPlan): ForwardResult['selection'] {
    const { numLayers, numKvHeads } = this.model;
    let pages = 0;
    let positions = 0;
    for (let s = 0; s < plan.numSeqs; s++) {
      pages += Math.ceil(plan.contextLens[s] / this.pageSize);
      positions += plan.contextLens[s];
    }
    const units = numLayers * numKvHeads;
    const bytes = positions * numLayers * this.kvCache.bytesPerTokenLayer;
    return { pagesScanned: pages * units, pagesSelected: pages * units, kvBytesRead: bytes, kvBytesDense: bytes };
  }

  private live(): GraphWeights {
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
