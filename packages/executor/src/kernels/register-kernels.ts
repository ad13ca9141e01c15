import { engine, getKernel, registerKernel, util } from '@tensorflow/tfjs-core';
import type { DataId, KernelBackend, NamedAttrMap, Tensor, TensorInfo } from '@tensorflow/tfjs-core';
import { geluNew, layerNormRows, rmsNormRows, swiGluRows } from './elementwise-cpu.js';
import { pagedAttention } from './paged-attention-cpu.js';
import type { AttentionStatsSink } from './paged-attention-cpu.js';
import type { RopeTables } from './rope.js';

export const PAGED_ATTENTION_KERNEL = 'TinyServePagedAttention';
export const RMS_NORM_KERNEL = 'TinyServeRmsNorm';
export const LAYER_NORM_KERNEL = 'TinyServeLayerNorm';
export const SWIGLU_KERNEL = 'TinyServeSwiGlu';
export const GELU_NEW_KERNEL = 'TinyServeGeluNew';

export const TINYSERVE_KERNELS: readonly string[] = [
  PAGED_ATTENTION_KERNEL,
  RMS_NORM_KERNEL,
  LAYER_NORM_KERNEL,
  SWIGLU_KERNEL,
  GELU_NEW_KERNEL,
];

/**
 * What the paged-attention kernel needs besides the step's QKV activations: the KV pages
 * (which live outside tfjs, in the layout the kv-retriever and CUDA kernels share) and the
 * step's page table. One object per forward step, shared by all layers.
 */
export interface AttentionStep {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  scale: number;
  chunkSize: number;
  /** Per layer K and V pages. */
  keyCaches: Float32Array[];
  valueCaches: Float32Array[];
  tokenSeq: Int32Array;
  tokenPos: Int32Array;
  pageIndptr: Int32Array;
  pageIndices: Int32Array;
  rope: RopeTables | null;
  /** Per layer, where to record attention statistics; null when not asked for. */
  stats: AttentionStatsSink[] | null;
}

/** The wasm backend exposes its heap: kernels read inputs and write outputs in place. */
interface WasmHeapBackend {
  makeOutput(shape: number[], dtype: 'float32'): TensorInfo;
  typedArrayFromHeap(info: TensorInfo): Float32Array | Int32Array | Uint8Array;
}

function isWasmHeapBackend(backend: object): backend is WasmHeapBackend {
  const b = backend as Partial<WasmHeapBackend>;
  return typeof b.makeOutput === 'function' && typeof b.typedArrayFromHeap === 'function';
}

/**
 * Runs a float32 kernel body on any tfjs backend: on wasm over heap views (no copies; inputs
 * are viewed only after the output is allocated, since allocation may grow and detach the
 * heap), elsewhere through `readSync`/`write` (zero-copy on `cpu`).
 */
function runFloatKernel(
  backend: object,
  inputs: TensorInfo[],
  outShape: number[],
  body: (ins: Float32Array[], out: Float32Array) => void,
): TensorInfo {
  if (isWasmHeapBackend(backend)) {
    const info = backend.makeOutput(outShape, 'float32');
    const out = backend.typedArrayFromHeap(info) as Float32Array;
    body(
      inputs.map((t) => backend.typedArrayFromHeap(t) as Float32Array),
      out,
    );
    return info;
  }
  const kb = backend as KernelBackend;
  const ins = inputs.map((t) => kb.readSync(t.dataId as DataId) as Float32Array);
  const out = new Float32Array(util.sizeFromShape(outShape));
  body(ins, out);
  return { dataId: kb.write(out, outShape, 'float32'), shape: outShape, dtype: 'float32' };
}

function requireFloat(info: TensorInfo | undefined, kernel: string, input: string): TensorInfo {
  if (info === undefined || info.dtype !== 'float32') {
    throw new Error(`${kernel}: input '${input}' must be a float32 tensor`);
  }
  return info;
}

/**
 * Registers TinyServe's kernels for a tfjs backend (idempotent). `wasm` and `cpu` get them
 * when an executor is created; any backend with `readSync`/`write` can run them.
 */
export function registerTinyServeKernels(backendName: string): void {
  const add = (kernelName: string, kernelFunc: Parameters<typeof registerKernel>[0]['kernelFunc']) => {
    if (getKernel(kernelName, backendName) === undefined) registerKernel({ kernelName, backendName, kernelFunc });
  };

  add(PAGED_ATTENTION_KERNEL, ({ inputs, backend, attrs }) => {
    const qkv = requireFloat(inputs.qkv, PAGED_ATTENTION_KERNEL, 'qkv');
    const { step, layer } = attrs as unknown as { step: AttentionStep; layer: number };
    const numTokens = qkv.shape[0];
    return runFloatKernel(backend, [qkv], [numTokens, step.numHeads * step.headDim], ([qkvData], out) =>
      pagedAttention({
        numTokens,
        numHeads: step.numHeads,
        numKvHeads: step.numKvHeads,
        headDim: step.headDim,
        pageSize: step.pageSize,
        qkv: qkvData,
        out,
        keyCache: step.keyCaches[layer],
        valueCache: step.valueCaches[layer],
        tokenSeq: step.tokenSeq,
        tokenPos: step.tokenPos,
        pageIndptr: step.pageIndptr,
        pageIndices: step.pageIndices,
        rope: step.rope,
        scale: step.scale,
        chunkSize: step.chunkSize,
        stats: step.stats?.[layer],
      }),
    );
  });

  add(RMS_NORM_KERNEL, ({ inputs, backend, attrs }) => {
    const x = requireFloat(inputs.x, RMS_NORM_KERNEL, 'x');
    const w = requireFloat(inputs.weight, RMS_NORM_KERNEL, 'weight');
    const eps = (attrs as { eps: number }).eps;
    return runFloatKernel(backend, [x, w], x.shape, ([xd, wd], out) => rmsNormRows(xd, wd, eps, x.shape[1], out));
  });

  add(LAYER_NORM_KERNEL, ({ inputs, backend, attrs }) => {
    const x = requireFloat(inputs.x, LAYER_NORM_KERNEL, 'x');
    const g = requireFloat(inputs.weight, LAYER_NORM_KERNEL, 'weight');
    const b = requireFloat(inputs.bias, LAYER_NORM_KERNEL, 'bias');
    const eps = (attrs as { eps: number }).eps;
    return runFloatKernel(backend, [x, g, b], x.shape, ([xd, gd, bd], out) =>
      layerNormRows(xd, gd, bd, eps, x.shape[1], out),
    );
  });

  add(SWIGLU_KERNEL, ({ inputs, backend }) => {
    const x = requireFloat(inputs.x, SWIGLU_KERNEL, 'x');
    const inter = x.shape[1] / 2;
    return runFloatKernel(backend, [x], [x.shape[0], inter], ([xd], out) => swiGluRows(xd, inter, out));
  });

  add(GELU_NEW_KERNEL, ({ inputs, backend }) => {
    const x = requireFloat(inputs.x, GELU_NEW_KERNEL, 'x');
    return runFloatKernel(backend, [x], x.shape, ([xd], out) => geluNew(xd, out));
  });
}

/** Runs one of the kernels above through the tfjs engine (so tidy scopes track its output). */
export function runTinyServeKernel(kernelName: string, inputs: Record<string, Tensor>, attrs: object = {}): Tensor {
  // Attributes are passed by reference: the attention step carries typed arrays and the KV
  // pages, which tfjs's NamedAttrMap type does not describe but the engine passes through.
  return engine().runKernel(kernelName, inputs, attrs as NamedAttrMap) as Tensor;
}
