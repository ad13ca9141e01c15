import { getBackend, registerBackend, setBackend, tidy, gather, tensor1d } from '@tensorflow/tfjs-core';
import type { Tensor2D } from '@tensorflow/tfjs-core';
import { BackendUnavailableError, ConfigError } from '@tinyserve/core';
import type { CopyTokensParams, Executor, ExecutorOptions, ForwardParams, ForwardResult, ModelConfig, SelectionConfig } from '@tinyserve/core';
import { checkBudgetFitsForcedPages, validateSelectionConfig } from '@tinyserve/kv-retriever';
import { planForward } from '../forward-plan.js';
import type { ForwardLimits, ForwardPlan } from '../forward-plan.js';
import type { AttentionStep } from '../kernels/register-kernels.js';
import { embedTokens, finalLogits, runLayers, uploadWeights } from '../model-graph.js';
import type { GraphWeights } from '../model-graph.js';
import { prepareWeights } from '../model-weights.js';
import { runExclusive } from '../tfjs-backend.js';
import { loadCudaAddon } from './addon-loader.js';
import type { CudaAddon, CudaDeviceInfo, DeviceBuffer } from './addon-types.js';
import { CudaBackend } from './cuda-backend.js';
import { CUDA_BACKEND_NAME, cudaAttentionStates, registerCudaKernels } from './cuda-kernels.js';
import { CudaKvCache } from './cuda-kv-cache.js';
import type { CudaKvDtype } from './cuda-kv-cache.js';
import { CudaStepPlan, selectionTopK, trimPageTable } from './step-plan.js';

const HEAD_DIMS = [8, 16, 32, 64, 128];

let registeredAddon: CudaAddon | null = null;

/** Registers the `cuda` tfjs backend and its kernels once, and makes it the active backend. */
export async function activateCudaBackend(addon: CudaAddon): Promise<void> {
  if (registeredAddon === null) {
    // Priority 0: tfjs never picks it on its own; executors switch to it explicitly.
    registerBackend(CUDA_BACKEND_NAME, () => new CudaBackend(addon), 0);
    registerCudaKernels();
    registeredAddon = addon;
  } else if (registeredAddon !== addon) {
    throw new BackendUnavailableError('the cuda tfjs backend is already bound to another copy of the CUDA addon');
  }
  if (getBackend() !== CUDA_BACKEND_NAME && !(await setBackend(CUDA_BACKEND_NAME))) {
    throw new BackendUnavailableError('the cuda tfjs backend failed to initialise');
  }
}

function checkOptions(options: ExecutorOptions): { kvDtype: CudaKvDtype; sparse: boolean } {
  if (options === null || typeof options !== 'object' || options.model === undefined) {
    throw new ConfigError('model', 'ExecutorOptions.model is required');
  }
  for (const f of ['pageSize', 'numKvPages', 'attentionChunkSize'] as const) {
    const v = options[f];
    if (!(Number.isInteger(v) && v > 0)) throw new ConfigError(f, `must be a positive integer, got ${String(v)}`);
  }
  if (options.kvCacheDtype !== 'fp32' && options.kvCacheDtype !== 'fp16' && options.kvCacheDtype !== 'int8') {
    throw new ConfigError('kvCacheDtype', `'${String(options.kvCacheDtype)}' is not supported by the cuda executor (supported: fp32, fp16, int8)`);
  }
  const { headDim } = options.model.config;
  if (!HEAD_DIMS.includes(headDim)) {
    throw new ConfigError('model', `headDim ${headDim} is not supported by the cuda kernels (supported: ${HEAD_DIMS.join(', ')})`);
  }
  const selection = options.selection ?? ({ policy: 'dense' } as SelectionConfig);
  if (selection.policy !== 'dense' && selection.policy !== 'quest') {
    throw new ConfigError('selectionPolicy', `'${selection.policy}' is not supported by the cuda executor (supported: dense, quest)`);
  }
  if (selection.policy === 'quest') {
    validateSelectionConfig(selection, { pageSize: options.pageSize });
    checkBudgetFitsForcedPages(selection, options.pageSize, selection.sinkPages + 1);
  }
  return { kvDtype: options.kvCacheDtype, sparse: selection.policy === 'quest' };
}

/**
 * The executor of the `cuda` backend: the same tfjs model graph as `wasm` and `cpu`, its
 * tensors and KV pages in GPU memory (fp32, fp16, or int8 in the kv-retriever's format with
 * one scale per token and KV head). Decode steps attend densely or, with the `quest`
 * policy, through the fused sparse kernel (layers from `denseLayers` on); steps with prompt
 * tokens use causal paged prefill attention. Attention statistics are not collected.
 */
export class CudaExecutor implements Executor {
  readonly backend = CUDA_BACKEND_NAME;
  readonly model: ModelConfig;
  readonly pageSize: number;
  readonly numKvPages: number;
  readonly kvBytesPerPage: number;
  readonly device: CudaDeviceInfo;
  readonly kvCache: CudaKvCache;

  private readonly selection: SelectionConfig | null;
  private readonly limits: ForwardLimits;
  private readonly plan: CudaStepPlan;
  private qRot: DeviceBuffer | null = null;
  private qRotFloats = 0;
  private graph: GraphWeights | null;

  private constructor(
    private readonly addon: CudaAddon,
    device: CudaDeviceInfo,
    options: ExecutorOptions,
    kvDtype: CudaKvDtype,
    sparse: boolean,
    graph: GraphWeights,
    private readonly embed: Float32Array,
    private readonly positions: Float32Array | null,
  ) {
    const config = options.model.config;
    this.device = device;
    this.model = config;
    this.pageSize = options.pageSize;
    this.numKvPages = options.numKvPages;
    this.selection = sparse ? { ...options.selection } : null;
    this.graph = graph;
    this.kvCache = new CudaKvCache(addon, {
      layout: { numLayers: config.numLayers, numPages: options.numKvPages, pageSize: options.pageSize, numKvHeads: config.numKvHeads, headDim: config.headDim },
      kvDtype,
      // fp32 boxes: the same pages as the kv-retriever's policies pick (fp16 boxes are looser by one rounding).
      metadata: sparse ? 'fp32' : 'none',
    });
    this.kvBytesPerPage = this.kvCache.bytesPerPage;
    this.plan = new CudaStepPlan(addon);
    this.limits = {
      vocabSize: config.vocabSize,
      pageSize: options.pageSize,
      numKvPages: options.numKvPages,
      maxPositions: config.architecture === 'gpt2' ? config.maxPositionEmbeddings : null,
    };
  }

  /**
   * Loads the addon (test-loaded in a child process first) and the weights. Rejects with a
   * `BackendUnavailableError` when the addon is not built, cannot load, or finds no GPU.
   */
  static async create(options: ExecutorOptions): Promise<CudaExecutor> {
    const { kvDtype, sparse } = checkOptions(options);
    const { addon, device } = loadCudaAddon();
    const prepared = prepareWeights(options.model);
    const config = options.model.config;
    return runExclusive(async () => {
      await activateCudaBackend(addon);
      const graph = uploadWeights(prepared, config.architecture, config.hiddenSize);
      try {
        return new CudaExecutor(addon, device, options, kvDtype, sparse, graph, prepared.embed, prepared.positions);
      } catch (err) {
        for (const t of graph.tensors) t.dispose();
        throw err;
      }
    });
  }

  async forward(params: ForwardParams): Promise<ForwardResult> {
    this.live();
    return runExclusive(async () => {
      if (getBackend() !== CUDA_BACKEND_NAME) await setBackend(CUDA_BACKEND_NAME);
      return this.runStep(params);
    });
  }

  private runStep(params: ForwardParams): ForwardResult {
    const graph = this.live();
    const plan = planForward(params, this.limits);
    const cfg = this.model;
    const seqLens = plan.contextLens;
    const table = trimPageTable(params.pageIndptr, params.pageIndices, seqLens, this.pageSize);
    let decode = true;
    for (let s = 0; s < plan.numSeqs; s++) decode &&= params.queryIndptr[s + 1] - params.queryIndptr[s] === 1;
    const sparse = this.selection !== null && decode;
    const topK = sparse ? selectionTopK(seqLens, this.pageSize, this.selection!) : undefined;
    this.plan.update({
      numQHeads: cfg.numHeads,
      numKvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      pageSize: this.pageSize,
      kvDtype: this.kvCache.kvCode,
      numPagesTotal: this.numKvPages,
      pageIndptr: table.pageIndptr,
      pageIndices: table.pageIndices,
      seqLens,
      queryIndptr: params.queryIndptr,
      topK,
      sinkPages: this.selection?.sinkPages ?? 0,
    });
    const step: AttentionStep = {
      numHeads: cfg.numHeads,
      numKvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      pageSize: this.pageSize,
      scale: 1 / Math.sqrt(cfg.headDim),
      chunkSize: 0,
      // The pages live on the device (see cudaAttentionStates); the host-side fields stay empty.
      keyCaches: [],
      valueCaches: [],
      kvDtype: this.kvCache.kvDtype,
      keyScales: [],
      valueScales: [],
      metadata: null,
      tokenSeq: plan.tokenSeq,
      tokenPos: plan.tokenPos,
      pageIndptr: table.pageIndptr,
      pageIndices: table.pageIndices,
      rope: null,
      stats: null,
      selector: null,
    };
    cudaAttentionStates.set(step, {
      cache: this.kvCache,
      plan: this.plan,
      qRot: this.queryScratch(plan.numTokens * cfg.numHeads * cfg.headDim),
      rope: cfg.architecture === 'llama',
      ropeTheta: cfg.ropeTheta,
      sparseFromLayer: sparse ? this.selection!.denseLayers : Infinity,
    });

    let logits: Float32Array = new Float32Array(0);
    tidy(() => {
      const x0 = embedTokens(this.embed, this.positions, cfg.hiddenSize, params.tokenIds, plan.tokenPos);
      let x = runLayers(graph, x0, step);
      const rows = plan.logitRows;
      if (rows.length === 0) return;
      if (rows.length < plan.numTokens) x = gather(x, tensor1d(rows, 'int32')) as Tensor2D;
      logits = finalLogits(graph, x).dataSync() as Float32Array;
    });
    if (plan.logitRows.length === 0) this.addon.synchronize();
    return { logits, logitsIndptr: plan.logitsIndptr, selection: this.selectionStats(plan, topK) };
  }

  /**
   * Pages scanned and attended per (sequence, layer, KV head). The fused kernel keeps exactly
   * `topK` pages of a sequence whose pages are all non-empty (appends fill them in order).
   */
  private selectionStats(plan: ForwardPlan, topK: Int32Array | undefined): ForwardResult['selection'] {
    const { numLayers, numKvHeads } = this.model;
    const ps = this.pageSize;
    const perToken = this.kvCache.bytesPerTokenLayer;
    const sparseLayers = topK ? Math.max(0, numLayers - this.selection!.denseLayers) : 0;
    let scanned = 0;
    let selected = 0;
    let bytes = 0;
    let dense = 0;
    for (let s = 0; s < plan.numSeqs; s++) {
      const len = plan.contextLens[s];
      const n = Math.ceil(len / ps);
      const denseBytes = len * perToken;
      dense += denseBytes * numLayers;
      scanned += n * numKvHeads * numLayers;
      const k = topK ? Math.min(n, topK[s]) : n;
      const lastLen = len - (n - 1) * ps;
      const sparseBytes = k >= n ? denseBytes : ((k - 1) * ps + lastLen) * perToken;
      selected += n * numKvHeads * (numLayers - sparseLayers) + k * numKvHeads * sparseLayers;
      bytes += denseBytes * (numLayers - sparseLayers) + sparseBytes * sparseLayers;
    }
    return { pagesScanned: scanned, pagesSelected: selected, kvBytesRead: bytes, kvBytesDense: dense };
  }

  private queryScratch(floats: number): DeviceBuffer {
    if (this.qRot === null || this.qRotFloats < floats) {
      if (this.qRot !== null) this.addon.free(this.qRot);
      this.qRotFloats = Math.max(floats, 2 * this.qRotFloats);
      this.qRot = this.addon.alloc(this.qRotFloats * 4);
    }
    return this.qRot;
  }

  copyTokens(params: CopyTokensParams): void {
    this.live();
    this.kvCache.copyTokens(params);
  }

  rebuildPageMetadata(pages: Int32Array, fills?: Int32Array): void {
    this.live();
    if (this.kvCache.metaDtype !== 'none') this.kvCache.rebuildMetadata(pages, fills);
  }

  dispose(): void {
    if (this.graph === null) return;
    for (const t of this.graph.tensors) t.dispose();
    this.graph = null;
    this.kvCache.dispose();
    this.plan.release();
    if (this.qRot !== null) this.addon.free(this.qRot);
    this.qRot = null;
  }

  private live(): GraphWeights {
    if (this.graph === null) throw new BackendUnavailableError('the cuda executor has been disposed');
    return this.graph;
  }
}
