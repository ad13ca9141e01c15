import { getBackend, registerBackend, setBackend } from '@tensorflow/tfjs-core';
import { BackendUnavailableError, ConfigError } from '@tinyserve/core';
import type { AttentionStats, CopyTokensParams, Executor, ExecutorOptions, ForwardParams, ForwardResult, ModelConfig } from '@tinyserve/core';
import { ExecutorSelection } from '../decode-selection.js';
import { SelectingExecutor } from '../selecting-executor.js';
import type { DecodeSelector, SelectionOptions } from '../decode-selection.js';
import { checkExecutorOptions } from '../executor-options.js';
import { planForward } from '../forward-plan.js';
import type { ForwardLimits } from '../forward-plan.js';
import type { AttentionStep } from '../kernels/register-kernels.js';
import { stepLogits, uploadWeights } from '../model-graph.js';
import type { GraphWeights } from '../model-graph.js';
import { prepareWeights } from '../model-weights.js';
import { runExclusive } from '../tfjs-backend.js';
import { loadCudaAddon } from './addon-loader.js';
import type { CudaAddon, CudaDeviceInfo, DeviceBuffer } from './addon-types.js';
import { CudaBackend } from './cuda-backend.js';
import { CUDA_BACKEND_NAME, cudaAttentionStates, registerCudaKernels } from './cuda-kernels.js';
import type { CudaStatsTarget } from './cuda-kernels.js';
import { CudaKvCache } from './cuda-kv-cache.js';
import type { CudaKvDtype } from './cuda-kv-cache.js';
import { FusedSelectionLog } from './fused-selection-log.js';
import { CudaStepPlan, selectionRowPages, selectionTopK, trimPageTable } from './step-plan.js';

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

/** The common checks (model, sizes, selection: the same errors as the tfjs executors), then what the kernels support. */
function checkOptions(options: ExecutorOptions, selectionOptions: SelectionOptions): { selector: DecodeSelector; kvDtype: CudaKvDtype } {
  const selector = checkExecutorOptions(options, selectionOptions, () => {
    if (options.kvCacheDtype !== 'fp32' && options.kvCacheDtype !== 'fp16' && options.kvCacheDtype !== 'int8') {
      throw new ConfigError('kvCacheDtype', `'${String(options.kvCacheDtype)}' is not supported by the cuda executor (supported: fp32, fp16, int8)`);
    }
    const { headDim } = options.model.config;
    if (!HEAD_DIMS.includes(headDim)) {
      throw new ConfigError('model', `headDim ${headDim} is not supported by the cuda kernels (supported: ${HEAD_DIMS.join(', ')})`);
    }
  });
  return { selector, kvDtype: options.kvCacheDtype as CudaKvDtype };
}

/**
 * The executor of the `cuda` backend: the same tfjs model graph as `wasm` and `cpu`, its
 * tensors and KV pages (fp32, fp16, or int8 in the kv-retriever's format with one scale per
 * token and KV head; with their page metadata) in GPU memory, and the same decode-time
 * selection: every policy of the kv-retriever through the same `StepSelection` (page scores on
 * the GPU, the policy's choice in JavaScript, attention over the chosen pages on the GPU), and,
 * for `quest` with `useFusedKernel` on decode-only steps, the fused kernel that scores, selects
 * and attends in one launch. Steps with prompt tokens use causal paged prefill attention.
 * Attention statistics are not collected.
 */
export class CudaExecutor extends SelectingExecutor implements Executor {
  readonly backend = CUDA_BACKEND_NAME;
  readonly model: ModelConfig;
  readonly pageSize: number;
  readonly numKvPages: number;
  readonly kvBytesPerPage: number;
  readonly device: CudaDeviceInfo;
  readonly kvCache: CudaKvCache;

  private readonly limits: ForwardLimits;
  private readonly plan: CudaStepPlan;
  private readonly fusedLog: FusedSelectionLog;
  private qRot: DeviceBuffer | null = null;
  private qRotFloats = 0;
  /** Where steps that collect attention statistics write them (grown on demand, kept). */
  private statsBuf: DeviceBuffer | null = null;
  private statsFloats = 0;
  private graph: GraphWeights | null;

  private constructor(
    private readonly addon: CudaAddon,
    device: CudaDeviceInfo,
    options: ExecutorOptions,
    kvDtype: CudaKvDtype,
    selector: DecodeSelector,
    graph: GraphWeights,
    private readonly embed: Float32Array,
    private readonly positions: Float32Array | null,
  ) {
    super(new ExecutorSelection(selector, { pageSize: options.pageSize, headDim: options.model.config.headDim, dtype: kvDtype }));
    const config = options.model.config;
    this.device = device;
    this.model = config;
    this.pageSize = options.pageSize;
    this.numKvPages = options.numKvPages;
    this.graph = graph;
    this.kvCache = new CudaKvCache(addon, {
      layout: { numLayers: config.numLayers, numPages: options.numKvPages, pageSize: options.pageSize, numKvHeads: config.numKvHeads, headDim: config.headDim },
      kvDtype,
      // Always kept (as the tfjs cache does), so setSelection can switch to quest at any time.
      // fp32 boxes: the same scores, to the bit, as the kv-retriever's scorePages on the CPU.
      metadata: 'fp32',
    });
    this.kvBytesPerPage = this.kvCache.bytesPerPage;
    this.plan = new CudaStepPlan(addon);
    this.fusedLog = new FusedSelectionLog(addon, this.plan, config.numLayers, config.numKvHeads);
    this.limits = {
      vocabSize: config.vocabSize,
      pageSize: options.pageSize,
      numKvPages: options.numKvPages,
      maxPositions: config.architecture === 'gpt2' ? config.maxPositionEmbeddings : null,
    };
  }

  /**
   * Validates the options (the same `ConfigError`s as the tfjs executors, then the kernels'
   * limits), loads the addon (test-loaded in a child process first) and the weights. Rejects
   * with a `BackendUnavailableError` when the addon is not built, cannot load, or finds no GPU.
   * `selectionOptions` as for `TfjsExecutor.create`.
   */
  static async create(options: ExecutorOptions, selectionOptions: SelectionOptions = {}): Promise<CudaExecutor> {
    const checked = checkOptions(options, selectionOptions);
    const { addon, device } = loadCudaAddon();
    return CudaExecutor.build(addon, device, options, checked);
  }

  /**
   * As {@link create}, over an addon already loaded (by `loadCudaAddon`, or any implementation
   * of its typed surface): the options are checked the same way.
   */
  static async withAddon(addon: CudaAddon, options: ExecutorOptions, selectionOptions: SelectionOptions = {}): Promise<CudaExecutor> {
    const checked = checkOptions(options, selectionOptions);
    return CudaExecutor.build(addon, addon.deviceInfo(), options, checked);
  }

  private static async build(
    addon: CudaAddon,
    device: CudaDeviceInfo,
    options: ExecutorOptions,
    { kvDtype, selector }: { kvDtype: CudaKvDtype; selector: DecodeSelector },
  ): Promise<CudaExecutor> {
    const prepared = prepareWeights(options.model);
    const config = options.model.config;
    return runExclusive(async () => {
      await activateCudaBackend(addon);
      const graph = uploadWeights(prepared, config.architecture, config.hiddenSize);
      try {
        return new CudaExecutor(addon, device, options, kvDtype, selector, graph, prepared.embed, prepared.positions);
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
    const scale = 1 / Math.sqrt(cfg.headDim);
    const table = trimPageTable(params.pageIndptr, params.pageIndices, seqLens, this.pageSize);
    const selector = this.selectionState.selector;
    const config = selector.config;
    const selection = this.selectionState.beginStep(plan, params, this.kvCache, cfg.numHeads, scale);
    let decode = plan.numSeqs > 0;
    for (let s = 0; s < plan.numSeqs; s++) decode &&= params.queryIndptr[s + 1] - params.queryIndptr[s] === 1;
    // The fused launch makes quest's choice on the GPU; any other case runs the policy in JavaScript.
    const fused = decode && config.useFusedKernel && config.policy === 'quest';
    const topK = fused ? selectionTopK(seqLens, this.pageSize, config) : undefined;
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
      sinkPages: config.sinkPages,
    });
    const queryFloats = plan.numTokens * cfg.numHeads * cfg.headDim;
    if (topK !== undefined) {
      const rowPages = selectionRowPages(seqLens, this.pageSize, topK, config.sinkPages);
      this.fusedLog.begin(plan.numSeqs, rowPages, selector.options.measureRecall ? queryFloats : 0);
    }
    const step: AttentionStep = {
      numHeads: cfg.numHeads,
      numKvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      pageSize: this.pageSize,
      scale,
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
      selector: selection,
    };
    const stats = params.collectAttentionStats === true ? this.statsTarget(plan.numSeqs, seqLens) : null;
    cudaAttentionStates.set(step, {
      stats,
      cache: this.kvCache,
      plan: this.plan,
      qRot: this.queryScratch(queryFloats),
      rope: cfg.architecture === 'llama',
      ropeTheta: cfg.ropeTheta,
      selection,
      fused: fused ? this.fusedLog : null,
      aggregateSum: selector.options.gqaAggregation === 'sum',
    });

    const logits = stepLogits(graph, this.embed, this.positions, params.tokenIds, plan, step, selection);
    if (plan.logitRows.length === 0) this.addon.synchronize();
    if (fused) this.fusedLog.flush(selection);
    const result: ForwardResult = { logits, logitsIndptr: plan.logitsIndptr, selection: this.selectionState.endStep(selection) };
    if (stats !== null) result.attention = this.readStats(stats, params.seqIds, seqLens);
    return result;
  }

  /** Device room for a step's attention statistics: per layer, the entropies then the position masses. */
  private statsTarget(numSeqs: number, seqLens: Int32Array): CudaStatsTarget {
    let positions = 0;
    for (let s = 0; s < numSeqs; s++) positions += seqLens[s];
    const layerFloats = numSeqs + positions;
    const floats = Math.max(1, this.model.numLayers * layerFloats);
    if (this.statsBuf === null || this.statsFloats < floats) {
      if (this.statsBuf !== null) this.addon.free(this.statsBuf);
      this.statsBuf = null;
      this.statsFloats = Math.max(floats, 2 * this.statsFloats);
      this.statsBuf = this.addon.alloc(this.statsFloats * 4);
    }
    return { buffer: this.statsBuf, numSeqs, layerFloats };
  }

  /** The step's statistics in the cpu executor's order: per sequence, per layer. */
  private readStats(target: CudaStatsTarget, seqIds: Int32Array, seqLens: Int32Array): AttentionStats[] {
    const L = this.model.numLayers;
    const all = new Float32Array(L * target.layerFloats);
    this.addon.download(target.buffer, 0, all);
    const out: AttentionStats[] = [];
    for (let s = 0, at = target.numSeqs; s < target.numSeqs; at += seqLens[s], s++) {
      for (let layer = 0; layer < L; layer++) {
        const base = layer * target.layerFloats;
        out.push({ seqId: seqIds[s], layer, entropy: all[base + s], positionMass: all.slice(base + at, base + at + seqLens[s]) });
      }
    }
    return out;
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
    this.kvCache.rebuildMetadata(pages, fills);
  }

  dispose(): void {
    if (this.graph === null) return;
    for (const t of this.graph.tensors) t.dispose();
    this.graph = null;
    this.kvCache.dispose();
    this.fusedLog.dispose();
    this.plan.release();
    if (this.qRot !== null) this.addon.free(this.qRot);
    this.qRot = null;
    if (this.statsBuf !== null) this.addon.free(this.statsBuf);
    this.statsBuf = null;
  }

  protected live(): GraphWeights {
    if (this.graph === null) throw new BackendUnavailableError('the cuda executor has been disposed');
    return this.graph;
  }
}
