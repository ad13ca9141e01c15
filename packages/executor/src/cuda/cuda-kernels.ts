import { getKernel, registerKernel, util } from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import type { StepSelection } from '../decode-selection.js';
import { checkPageSelection } from '../kernels/paged-attention-cpu.js';
import type { PageSelection } from '../kernels/paged-attention-cpu.js';
import {
  FUSED_SPARSE_ATTENTION_KERNEL,
  GELU_NEW_KERNEL,
  KV_APPEND_KERNEL,
  LAYER_NORM_KERNEL,
  PAGED_ATTENTION_KERNEL,
  PAGE_SCORE_KERNEL,
  RMS_NORM_KERNEL,
  SPARSE_PAGED_ATTENTION_KERNEL,
  SWIGLU_KERNEL,
} from '../kernels/register-kernels.js';
import type { AttentionStep } from '../kernels/register-kernels.js';
import { BINARY_OP } from './addon-types.js';
import type { DeviceBuffer } from './addon-types.js';
import type { CudaBackend } from './cuda-backend.js';
import type { CudaKvCache } from './cuda-kv-cache.js';
import type { FusedSelectionLog } from './fused-selection-log.js';
import { pageCounts, selectedLists } from './selection-lists.js';
import type { CudaStepPlan } from './step-plan.js';

export const CUDA_BACKEND_NAME = 'cuda';

/**
 * What the cuda attention kernels need beyond the shared `AttentionStep`: the device KV cache,
 * the step's plan and page selection. Keyed by the step object, so the model graph (written
 * once for every backend) passes the same attributes everywhere.
 */
export interface CudaAttentionState {
  cache: CudaKvCache;
  plan: CudaStepPlan;
  /** Device scratch for the rotated queries, at least numTokens * numHeads * headDim floats. */
  qRot: DeviceBuffer;
  rope: boolean;
  ropeTheta: number;
  /** The step's page selection (the executor's `StepSelection`); null when every layer attends densely. */
  selection: StepSelection | null;
  /**
   * Set when the fused launch makes this step's sparse choices on the GPU (quest with
   * `useFusedKernel`, a decode-only step, `topK` in the plan): where each layer's choice is kept
   * until the step ends. Null: the fused kernel runs the policy route (scores, the policy in
   * JavaScript, attention over its pages).
   */
  fused: FusedSelectionLog | null;
  /** Quest aggregates a GQA group's bounds by sum (`gqaAggregation: 'sum'`) rather than max. */
  aggregateSum: boolean;
  /** Set in steps that collect attention statistics: where each layer writes them. */
  stats: CudaStatsTarget | null;
}

/**
 * A step's attention statistics on the device, one block per layer at `layer * layerFloats`:
 * the sequences' entropies `[numSeqs]`, then their position masses (each sequence's length,
 * concatenated), as the addon's `attentionStats` writes them.
 */
export interface CudaStatsTarget {
  buffer: DeviceBuffer;
  numSeqs: number;
  layerFloats: number;
}

export const cudaAttentionStates = new WeakMap<AttentionStep, CudaAttentionState>();

function cudaBackend(backend: unknown): CudaBackend {
  return backend as CudaBackend;
}

function buf(backend: CudaBackend, t: TensorInfo, kernel: string, name: string): DeviceBuffer {
  const b = backend.bufferOf(t);
  if (b === null) throw new Error(`${kernel}: input '${name}' is empty`);
  return b;
}

function requireDtype(t: TensorInfo | undefined, dtype: string, kernel: string, name: string): TensorInfo {
  if (t === undefined || t.dtype !== dtype) throw new Error(`${kernel}: input '${name}' must be a ${dtype} tensor on the cuda backend`);
  return t;
}

/** Element strides of `shape` broadcast to `out` (numpy rules; 0 where a dim broadcasts). */
export function broadcastStrides(shape: number[], out: number[]): number[] {
  const strides = new Array<number>(out.length).fill(0);
  let stride = 1;
  for (let i = shape.length - 1, j = out.length - 1; i >= 0; i--, j--) {
    if (shape[i] !== 1) strides[j] = stride;
    stride *= shape[i];
  }
  return strides;
}

export function broadcastShape(a: number[], b: number[]): number[] {
  const n = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = a[a.length - n + i] ?? 1;
    const y = b[b.length - n + i] ?? 1;
    if (x !== y && x !== 1 && y !== 1) throw new Error(`shapes [${a}] and [${b}] do not broadcast`);
    out.push(x === 1 ? y : x);
  }
  return out;
}

function binaryKernel(op: number, name: string): KernelFunc {
  return ({ inputs, backend }) => {
    const be = cudaBackend(backend);
    const a = requireDtype(inputs.a, 'float32', name, 'a');
    const b = requireDtype(inputs.b, 'float32', name, 'b');
    const shape = broadcastShape(a.shape, b.shape);
    const out = be.makeTensorInfo(shape, 'float32');
    if (util.sizeFromShape(shape) === 0) return out;
    // Rank 0 outputs still take one dim for the kernel.
    const s = shape.length === 0 ? [1] : shape;
    be.addon.binary({
      op,
      a: buf(be, a, name, 'a'),
      aStrides: broadcastStrides(a.shape.length === 0 ? [1] : a.shape, s),
      b: buf(be, b, name, 'b'),
      bStrides: broadcastStrides(b.shape.length === 0 ? [1] : b.shape, s),
      out: be.bufferOf(out)!,
      shape: s,
    });
    return out;
  };
}

/** Batched matrix product over 3-D (or 2-D) operands with batch broadcasting of 1s. */
function matMul(be: CudaBackend, a: TensorInfo, b: TensorInfo, transA: boolean, transB: boolean, bias: TensorInfo | null, kernel: string): TensorInfo {
  if (a.shape.length < 2 || b.shape.length < 2) throw new Error(`${kernel}: operands must have rank >= 2`);
  const ra = a.shape.length;
  const rb = b.shape.length;
  const M = transA ? a.shape[ra - 1] : a.shape[ra - 2];
  const Ka = transA ? a.shape[ra - 2] : a.shape[ra - 1];
  const Kb = transB ? b.shape[rb - 1] : b.shape[rb - 2];
  const N = transB ? b.shape[rb - 2] : b.shape[rb - 1];
  if (Ka !== Kb) throw new Error(`${kernel}: inner dimensions ${Ka} and ${Kb} differ`);
  const batchA = util.sizeFromShape(a.shape.slice(0, -2));
  const batchB = util.sizeFromShape(b.shape.slice(0, -2));
  if (batchA !== batchB && batchA !== 1 && batchB !== 1) throw new Error(`${kernel}: batch sizes ${batchA} and ${batchB} do not broadcast`);
  const batch = Math.max(batchA, batchB);
  const outer = batchA >= batchB ? a.shape.slice(0, -2) : b.shape.slice(0, -2);
  const out = be.makeTensorInfo([...outer, M, N], 'float32');
  if (batch * M * N === 0) return out;
  if (bias !== null && util.sizeFromShape(bias.shape) !== N) throw new Error(`${kernel}: only a bias of ${N} values (one per column) is supported`);
  if (Ka === 0) {
    be.addon.fill({ dst: be.bufferOf(out)!, count: batch * M * N, dtype: 0, value: 0 });
    if (bias === null) return out;
  }
  be.addon.gemm({
    batch,
    m: M,
    n: N,
    k: Ka,
    a: buf(be, a, kernel, 'a'),
    strideA: batchA === 1 ? 0 : M * Ka,
    transA,
    b: buf(be, b, kernel, 'b'),
    strideB: batchB === 1 ? 0 : Ka * N,
    transB,
    bias: bias === null ? undefined : buf(be, bias, kernel, 'bias'),
    c: be.bufferOf(out)!,
  });
  return out;
}

function identity(be: CudaBackend, x: TensorInfo, shape = x.shape): TensorInfo {
  be.incRef(x.dataId);
  return { dataId: x.dataId, shape, dtype: x.dtype };
}

type KernelArgs = Parameters<KernelFunc>[0];

function stateOf(step: AttentionStep, rows: number, kernel: string): CudaAttentionState {
  const state = cudaAttentionStates.get(step);
  if (state === undefined) throw new Error(`${kernel}: this step was not prepared by the cuda executor`);
  const info = state.plan.info;
  if (info === null || info.numTokens !== rows) throw new Error(`${kernel}: the step's plan does not match ${rows} tokens`);
  return state;
}

function selectionOf(state: CudaAttentionState, kernel: string): StepSelection {
  if (state.selection === null) throw new Error(`${kernel}: the step has no page selection`);
  return state.selection;
}

/**
 * The layer's attention statistics, when the step collects them: each sequence's last query
 * over the pages it attended (`lists`, every sequence; null: all pages, dense attention).
 */
function recordStats(be: CudaBackend, state: CudaAttentionState, step: AttentionStep, layer: number, queries: DeviceBuffer, lists: { indptr: Int32Array; pages: Int32Array } | null): void {
  const target = state.stats;
  if (target === null) return;
  const S = target.numSeqs;
  const all = lists ?? selectedLists({ sparse: new Uint8Array(S), indptr: new Int32Array(S * step.numKvHeads + 1), pages: new Int32Array(0) }, step.numKvHeads, pageCounts(step.pageIndptr));
  const { k, kScale } = state.cache.layerBuffers(layer);
  const base = layer * target.layerFloats;
  be.addon.attentionStats(state.plan.handle, {
    q: queries,
    k,
    kScale,
    scale: step.scale,
    indptr: all.indptr,
    pages: all.pages,
    entropy: target.buffer,
    entropyOffset: base,
    mass: target.buffer,
    massOffset: base + S,
  });
}

/** RoPE, K/V append and the metadata update of one layer; the rotated queries go to `qOut`. */
function appendLayer(be: CudaBackend, state: CudaAttentionState, layer: number, qkv: DeviceBuffer, qOut: DeviceBuffer): void {
  const { cache, plan } = state;
  const meta = cache.metaDtype !== 'none';
  const kv = cache.layerBuffers(layer);
  be.addon.appendKv(plan.handle, {
    qkv,
    qOut,
    ...kv,
    metaMin: meta ? cache.metaMin[layer] : undefined,
    metaMax: meta ? cache.metaMax[layer] : undefined,
    metaDtype: cache.metaCode,
    rope: state.rope,
    ropeTheta: state.ropeTheta,
  });
}

/**
 * Page scores of `layer` into `out` (`selection.scoreLength` floats): the decode sequences the
 * selection scores for, in its layout, bit-identical to `scorePages`; other blocks zero.
 */
function scoreOnDevice(be: CudaBackend, state: CudaAttentionState, layer: number, queries: DeviceBuffer, out: DeviceBuffer): void {
  const selection = selectionOf(state, PAGE_SCORE_KERNEL);
  const { cache } = state;
  if (cache.metaDtype === 'none') throw new Error(`${PAGE_SCORE_KERNEL}: the KV cache keeps no page metadata`);
  be.addon.fill({ dst: out, count: selection.scoreLength, dtype: 0, value: 0 });
  const { seqs, offsets } = selection.scoreTargets(layer);
  be.addon.pageScore(state.plan.handle, {
    q: queries,
    metaMin: cache.metaMin[layer],
    metaMax: cache.metaMax[layer],
    metaDtype: cache.metaCode,
    aggregateSum: state.aggregateSum,
    out,
    seqs,
    outOffsets: offsets,
  });
}

/**
 * Attention of every row over a page selection: sequences it marks sparse over their listed
 * pages, the others densely and causally (one launch in a decode-only step; otherwise causal
 * prefill attention of every row, then the sparse rows again over their pages).
 */
function attendSelected(
  be: CudaBackend,
  state: CudaAttentionState,
  step: AttentionStep,
  layer: number,
  queries: DeviceBuffer,
  out: DeviceBuffer,
  selection: PageSelection,
): void {
  const { cache, plan } = state;
  const info = plan.info!;
  checkPageSelection(
    { numTokens: info.numTokens, numKvHeads: step.numKvHeads, pageSize: step.pageSize, pageIndptr: step.pageIndptr, tokenSeq: step.tokenSeq, tokenPos: step.tokenPos },
    selection,
  );
  const args = { q: queries, ...cache.layerBuffers(layer), out, scale: step.scale };
  if (!info.decodeOnly) be.addon.prefill(plan.handle, args);
  const lists = selectedLists(selection, step.numKvHeads, info.decodeOnly ? pageCounts(step.pageIndptr) : null);
  be.addon.decodeSelected(plan.handle, { ...args, ...lists });
  // Statistics need every sequence's lists, which a decode-only step's launch already has.
  if (state.stats !== null) recordStats(be, state, step, layer, queries, info.decodeOnly ? lists : selectedLists(selection, step.numKvHeads, pageCounts(step.pageIndptr)));
}

/** The policy route from the rotated queries on the device: scores when needed, the policy's choice in JavaScript, attention. */
function selectAndAttend(be: CudaBackend, state: CudaAttentionState, step: AttentionStep, layer: number, queries: DeviceBuffer, out: DeviceBuffer): void {
  const selection = selectionOf(state, FUSED_SPARSE_ATTENTION_KERNEL);
  const T = state.plan.info!.numTokens;
  const q = new Float32Array(T * step.numHeads * step.headDim);
  be.addon.download(queries, 0, q);
  let scores: Float32Array | null = null;
  if (selection.needsScores(layer)) {
    const t = be.makeTensorInfo([selection.scoreLength], 'float32');
    try {
      scoreOnDevice(be, state, layer, queries, be.bufferOf(t)!);
      scores = be.readSync(t.dataId) as Float32Array;
    } finally {
      be.disposeData(t.dataId);
    }
  }
  attendSelected(be, state, step, layer, queries, out, selection.select(layer, q, scores));
}

/**
 * The layer's attention on the device, by kernel: 'dense' appends then attends causally
 * (prefill) or densely (decode-only steps); 'append' appends only, returning the rotated
 * queries; 'fused' appends, then either the fused quest launch (score, select, attend in one
 * launch, its choice kept for the step's records) or the policy route.
 */
function attention({ inputs, backend, attrs }: KernelArgs, kernel: string, mode: 'dense' | 'fused' | 'append'): TensorInfo {
  const be = cudaBackend(backend);
  const qkv = requireDtype(inputs.qkv, 'float32', kernel, 'qkv');
  const { step, layer } = attrs as unknown as { step: AttentionStep; layer: number };
  const T = qkv.shape[0];
  const state = stateOf(step, T, kernel);
  const { cache, plan } = state;
  const out = be.makeTensorInfo([T, step.numHeads * step.headDim], 'float32');
  if (T === 0) return out;
  const outBuf = be.bufferOf(out)!;
  appendLayer(be, state, layer, buf(be, qkv, kernel, 'qkv'), mode === 'append' ? outBuf : state.qRot);
  if (mode === 'append') return out;
  const args = { q: state.qRot, ...cache.layerBuffers(layer), out: outBuf, scale: step.scale };
  if (mode === 'dense') {
    if (plan.info!.decodeOnly) be.addon.decodeDense(plan.handle, args);
    else be.addon.prefill(plan.handle, args);
    recordStats(be, state, step, layer, state.qRot, null);
  } else if (state.fused !== null) {
    be.addon.decodeSparse(plan.handle, { ...args, metaMin: cache.metaMin[layer], metaMax: cache.metaMax[layer], metaDtype: cache.metaCode, aggregateSum: state.aggregateSum });
    state.fused.save(layer, state.qRot);
    // The launch's choice stays on the device; a step that collects statistics reads it back here.
    if (state.stats !== null) recordStats(be, state, step, layer, state.qRot, be.addon.readSelection(plan.handle));
  } else {
    selectAndAttend(be, state, step, layer, state.qRot, outBuf);
  }
  return out;
}

/** Page scores of the step's decode sequences from the rotated queries: `[scoreLength]`, as the tfjs kernel. */
function pageScoreKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo {
  const be = cudaBackend(backend);
  const queries = requireDtype(inputs.queries, 'float32', PAGE_SCORE_KERNEL, 'queries');
  const { step, layer } = attrs as unknown as { step: AttentionStep; layer: number };
  const state = stateOf(step, queries.shape[0], PAGE_SCORE_KERNEL);
  const out = be.makeTensorInfo([selectionOf(state, PAGE_SCORE_KERNEL).scoreLength], 'float32');
  const outBuf = be.bufferOf(out);
  if (outBuf !== null) scoreOnDevice(be, state, layer, buf(be, queries, PAGE_SCORE_KERNEL, 'queries'), outBuf);
  return out;
}

/** Attention over a `PageSelection` from the rotated queries: `[numTokens, numHeads * headDim]`, as the tfjs kernel. */
function sparsePagedAttentionKernel({ inputs, backend, attrs }: KernelArgs): TensorInfo {
  const be = cudaBackend(backend);
  const kernel = SPARSE_PAGED_ATTENTION_KERNEL;
  const queries = requireDtype(inputs.queries, 'float32', kernel, 'queries');
  const { step, layer, selection } = attrs as unknown as { step: AttentionStep; layer: number; selection: PageSelection };
  const T = queries.shape[0];
  const state = stateOf(step, T, kernel);
  const out = be.makeTensorInfo([T, step.numHeads * step.headDim], 'float32');
  if (T === 0) return out;
  attendSelected(be, state, step, layer, buf(be, queries, kernel, 'queries'), be.bufferOf(out)!, selection);
  return out;
}

const kernels: Record<string, KernelFunc> = {
  Reshape: ({ inputs, backend, attrs }) => {
    const x = inputs.x as TensorInfo;
    const shape = util.inferFromImplicitShape((attrs as { shape: number[] }).shape, util.sizeFromShape(x.shape));
    return identity(cudaBackend(backend), x, shape);
  },
  Identity: ({ inputs, backend }) => identity(cudaBackend(backend), inputs.x as TensorInfo),
  Cast: ({ inputs, backend, attrs }) => {
    const be = cudaBackend(backend);
    const x = inputs.x as TensorInfo;
    const to = (attrs as { dtype: string }).dtype;
    if (to === x.dtype) return identity(be, x);
    const code = (d: string): 0 | 2 => {
      if (d === 'float32') return 0;
      if (d === 'int32') return 2;
      throw new Error(`Cast: ${x.dtype} -> ${to} is not supported on the cuda backend (float32 <-> int32)`);
    };
    const out = be.makeTensorInfo(x.shape, to as 'float32' | 'int32');
    const n = util.sizeFromShape(x.shape);
    if (n > 0) be.addon.cast({ x: be.bufferOf(x)!, from: code(x.dtype), out: be.bufferOf(out)!, to: code(to), count: n });
    return out;
  },
  BatchMatMul: ({ inputs, backend, attrs }) => {
    const { transposeA, transposeB } = attrs as { transposeA: boolean; transposeB: boolean };
    const a = requireDtype(inputs.a, 'float32', 'BatchMatMul', 'a');
    const b = requireDtype(inputs.b, 'float32', 'BatchMatMul', 'b');
    return matMul(cudaBackend(backend), a, b, transposeA, transposeB, null, 'BatchMatMul');
  },
  _FusedMatMul: ({ inputs, backend, attrs }) => {
    const { transposeA, transposeB, activation } = attrs as { transposeA: boolean; transposeB: boolean; activation?: string };
    if (activation !== undefined && activation !== 'linear') throw new Error(`_FusedMatMul: activation '${activation}' is not supported on the cuda backend`);
    if (inputs.preluActivationWeights) throw new Error('_FusedMatMul: prelu weights are not supported on the cuda backend');
    const a = requireDtype(inputs.a, 'float32', '_FusedMatMul', 'a');
    const b = requireDtype(inputs.b, 'float32', '_FusedMatMul', 'b');
    const bias = inputs.bias ? requireDtype(inputs.bias, 'float32', '_FusedMatMul', 'bias') : null;
    return matMul(cudaBackend(backend), a, b, transposeA, transposeB, bias, '_FusedMatMul');
  },
  Add: binaryKernel(BINARY_OP.add, 'Add'),
  Sub: binaryKernel(BINARY_OP.sub, 'Sub'),
  Multiply: binaryKernel(BINARY_OP.mul, 'Multiply'),
  RealDiv: binaryKernel(BINARY_OP.div, 'RealDiv'),
  Maximum: binaryKernel(BINARY_OP.max, 'Maximum'),
  Minimum: binaryKernel(BINARY_OP.min, 'Minimum'),
  GatherV2: ({ inputs, backend, attrs }) => {
    const be = cudaBackend(backend);
    const x = inputs.x as TensorInfo;
    const indices = requireDtype(inputs.indices, 'int32', 'GatherV2', 'indices');
    const { axis, batchDims } = attrs as { axis: number; batchDims: number };
    if (batchDims) throw new Error('GatherV2: batchDims is not supported on the cuda backend');
    if (x.dtype !== 'float32' && x.dtype !== 'int32') throw new Error(`GatherV2: ${x.dtype} input is not supported on the cuda backend`);
    const ax = util.parseAxisParam(axis, x.shape)[0];
    const n = util.sizeFromShape(indices.shape);
    const outShape = [...x.shape.slice(0, ax), ...indices.shape, ...x.shape.slice(ax + 1)];
    const out = be.makeTensorInfo(outShape, x.dtype);
    if (util.sizeFromShape(outShape) === 0) return out;
    // Indices are few (rows of a step): check them here so the kernel never reads out of bounds.
    const idx = be.readSync(indices.dataId) as Int32Array;
    for (let i = 0; i < idx.length; i++) {
      if (idx[i] < 0 || idx[i] >= x.shape[ax]) throw new Error(`GatherV2: index ${idx[i]} is outside [0, ${x.shape[ax]})`);
    }
    be.addon.gather({
      x: buf(be, x, 'GatherV2', 'x'),
      elemBytes: 4,
      indices: buf(be, indices, 'GatherV2', 'indices'),
      numIndices: n,
      outer: util.sizeFromShape(x.shape.slice(0, ax)),
      axisDim: x.shape[ax],
      inner: util.sizeFromShape(x.shape.slice(ax + 1)),
      out: be.bufferOf(out)!,
    });
    return out;
  },
  [RMS_NORM_KERNEL]: ({ inputs, backend, attrs }) => {
    const be = cudaBackend(backend);
    const x = requireDtype(inputs.x, 'float32', RMS_NORM_KERNEL, 'x');
    const w = requireDtype(inputs.weight, 'float32', RMS_NORM_KERNEL, 'weight');
    const out = be.makeTensorInfo(x.shape, 'float32');
    if (x.shape[0] > 0) {
      be.addon.norm({ x: buf(be, x, RMS_NORM_KERNEL, 'x'), weight: buf(be, w, RMS_NORM_KERNEL, 'weight'), eps: (attrs as { eps: number }).eps, rows: x.shape[0], cols: x.shape[1], out: be.bufferOf(out)! });
    }
    return out;
  },
  [LAYER_NORM_KERNEL]: ({ inputs, backend, attrs }) => {
    const be = cudaBackend(backend);
    const x = requireDtype(inputs.x, 'float32', LAYER_NORM_KERNEL, 'x');
    const g = requireDtype(inputs.weight, 'float32', LAYER_NORM_KERNEL, 'weight');
    const b = requireDtype(inputs.bias, 'float32', LAYER_NORM_KERNEL, 'bias');
    const out = be.makeTensorInfo(x.shape, 'float32');
    if (x.shape[0] > 0) {
      be.addon.norm({
        x: buf(be, x, LAYER_NORM_KERNEL, 'x'),
        weight: buf(be, g, LAYER_NORM_KERNEL, 'weight'),
        bias: buf(be, b, LAYER_NORM_KERNEL, 'bias'),
        eps: (attrs as { eps: number }).eps,
        rows: x.shape[0],
        cols: x.shape[1],
        out: be.bufferOf(out)!,
      });
    }
    return out;
  },
  [SWIGLU_KERNEL]: ({ inputs, backend }) => {
    const be = cudaBackend(backend);
    const x = requireDtype(inputs.x, 'float32', SWIGLU_KERNEL, 'x');
    const out = be.makeTensorInfo([x.shape[0], x.shape[1] / 2], 'float32');
    if (x.shape[0] > 0) be.addon.activation({ kind: 0, x: buf(be, x, SWIGLU_KERNEL, 'x'), rows: x.shape[0], cols: x.shape[1], out: be.bufferOf(out)! });
    return out;
  },
  [GELU_NEW_KERNEL]: ({ inputs, backend }) => {
    const be = cudaBackend(backend);
    const x = requireDtype(inputs.x, 'float32', GELU_NEW_KERNEL, 'x');
    const out = be.makeTensorInfo(x.shape, 'float32');
    if (util.sizeFromShape(x.shape) > 0) be.addon.activation({ kind: 1, x: buf(be, x, GELU_NEW_KERNEL, 'x'), rows: x.shape[0], cols: x.shape[1], out: be.bufferOf(out)! });
    return out;
  },
  [PAGED_ATTENTION_KERNEL]: (args) => attention(args, PAGED_ATTENTION_KERNEL, 'dense'),
  [FUSED_SPARSE_ATTENTION_KERNEL]: (args) => attention(args, FUSED_SPARSE_ATTENTION_KERNEL, 'fused'),
  [KV_APPEND_KERNEL]: (args) => attention(args, KV_APPEND_KERNEL, 'append'),
  [PAGE_SCORE_KERNEL]: pageScoreKernel,
  [SPARSE_PAGED_ATTENTION_KERNEL]: sparsePagedAttentionKernel,
};

/** The tfjs kernels of the `cuda` backend: every op the model graph uses, on the device. */
export const CUDA_KERNEL_NAMES: readonly string[] = Object.keys(kernels);

/** Registers the kernels for the `cuda` backend (idempotent). */
export function registerCudaKernels(): void {
  for (const [kernelName, kernelFunc] of Object.entries(kernels)) {
    if (getKernel(kernelName, CUDA_BACKEND_NAME) === undefined) registerKernel({ kernelName, backendName: CUDA_BACKEND_NAME, kernelFunc });
  }
}
