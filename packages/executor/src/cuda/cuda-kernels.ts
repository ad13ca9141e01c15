import { getKernel, registerKernel, util } from '@tensorflow/tfjs-core';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs-core';
import {
  FUSED_SPARSE_ATTENTION_KERNEL,
  GELU_NEW_KERNEL,
  KV_APPEND_KERNEL,
  LAYER_NORM_KERNEL,
  PAGED_ATTENTION_KERNEL,
  RMS_NORM_KERNEL,
  SWIGLU_KERNEL,
} from '../kernels/register-kernels.js';
import type { AttentionStep } from '../kernels/register-kernels.js';
import { BINARY_OP } from './addon-types.js';
import type { DeviceBuffer } from './addon-types.js';
import type { CudaBackend } from './cuda-backend.js';
import type { CudaKvCache } from './cuda-kv-cache.js';
import type { CudaStepPlan } from './step-plan.js';

export const CUDA_BACKEND_NAME = 'cuda';

/**
 * What the cuda paged-attention kernel needs beyond the shared `AttentionStep`: the device KV
 * cache, the step's plan, and the sparse selection settings. Keyed by the step object, so the
 * model graph (written once for every backend) passes the same attributes everywhere.
 */
export interface CudaAttentionState {
  cache: CudaKvCache;
  plan: CudaStepPlan;
  /** Device scratch for the rotated queries, at least numTokens * numHeads * headDim floats. */
  qRot: DeviceBuffer;
  rope: boolean;
  ropeTheta: number;
  /** Layers from this one on use the fused sparse kernel on decode steps; Infinity: never. */
  sparseFromLayer: number;
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

/**
 * The paged-attention kernels on the device. 'auto': append, then dense or (decode steps, layers
 * from `sparseFromLayer`) the fused sparse kernel, or causal prefill for steps with prompt
 * tokens; 'sparse': the fused sparse kernel whatever the layer; 'append': append only,
 * returning the rotated queries.
 */
function attention({ inputs, backend, attrs }: KernelArgs, kernel: string, mode: 'auto' | 'sparse' | 'append'): TensorInfo {
  const be = cudaBackend(backend);
  const qkv = requireDtype(inputs.qkv, 'float32', kernel, 'qkv');
  const { step, layer } = attrs as unknown as { step: AttentionStep; layer: number };
  const state = cudaAttentionStates.get(step);
  if (state === undefined) throw new Error(`${kernel}: this step was not prepared by the cuda executor`);
  const info = state.plan.info;
  if (info === null || info.numTokens !== qkv.shape[0]) throw new Error(`${kernel}: the step's plan does not match ${qkv.shape[0]} tokens`);
  const { cache, plan } = state;
  const T = qkv.shape[0];
  const width = step.numHeads * step.headDim;
  const out = be.makeTensorInfo([T, width], 'float32');
  if (T === 0) return out;
  const meta = cache.metaDtype !== 'none';
  const qOut = mode === 'append' ? be.bufferOf(out)! : state.qRot;
  const kv = cache.layerBuffers(layer);
  be.addon.appendKv(plan.handle, {
    qkv: buf(be, qkv, kernel, 'qkv'),
    qOut,
    ...kv,
    metaMin: meta ? cache.metaMin[layer] : undefined,
    metaMax: meta ? cache.metaMax[layer] : undefined,
    metaDtype: cache.metaCode,
    rope: state.rope,
    ropeTheta: state.ropeTheta,
  });
  if (mode === 'append') return out;
  const args = { q: state.qRot, ...kv, out: be.bufferOf(out)!, scale: step.scale };
  const sparse = info.decodeOnly && (mode === 'sparse' || layer >= state.sparseFromLayer);
  if (sparse && !meta) throw new Error(`${kernel}: sparse attention needs page metadata (the executor's policy is dense)`);
  if (!info.decodeOnly) be.addon.prefill(plan.handle, args);
  else if (sparse) be.addon.decodeSparse(plan.handle, { ...args, metaMin: cache.metaMin[layer], metaMax: cache.metaMax[layer], metaDtype: cache.metaCode });
  else be.addon.decodeDense(plan.handle, args);
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
  [PAGED_ATTENTION_KERNEL]: (args) => attention(args, PAGED_ATTENTION_KERNEL, 'auto'),
  [FUSED_SPARSE_ATTENTION_KERNEL]: (args) => attention(args, FUSED_SPARSE_ATTENTION_KERNEL, 'sparse'),
  [KV_APPEND_KERNEL]: (args) => attention(args, KV_APPEND_KERNEL, 'append'),
};

/** The tfjs kernels of the `cuda` backend: every op the model graph uses, on the device. */
export const CUDA_KERNEL_NAMES: readonly string[] = Object.keys(kernels);

/** Registers the kernels for the `cuda` backend (idempotent). */
export function registerCudaKernels(): void {
  for (const [kernelName, kernelFunc] of Object.entries(kernels)) {
    if (getKernel(kernelName, CUDA_BACKEND_NAME) === undefined) registerKernel({ kernelName, backendName: CUDA_BACKEND_NAME, kernelFunc });
  }
}
