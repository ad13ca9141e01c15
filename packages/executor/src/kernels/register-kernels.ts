import { engine, getBackend, getKernel, registerKernel, util } from '@tensorflow/tfjs-core';
import type { DataId, KernelBackend, NamedAttrMap, Tensor, TensorInfo } from '@tensorflow/tfjs-core';
import type { KvCacheDtype } from '@tinyserve/core';
import type { PageMetadataLayer } from '@tinyserve/kv-retriever';
import { geluNew, layerNormRows, rmsNormRows, swiGluRows } from './elementwise-cpu.js';
import { appendKvToPages, attendOverPages, pagedAttention, rotateQueries } from './paged-attention-cpu.js';
import type { AttentionStatsSink, KvBuffer, PageSelection, PagedAttentionParams } from './paged-attention-cpu.js';
import type { RopeTables } from './rope.js';

/** Append K/V (+ page metadata) and dense causal attention: the layer's attention when nothing is selected. */
export const PAGED_ATTENTION_KERNEL = 'TinyServePagedAttention';
/** Append K/V (+ page metadata) alone; outputs the step's rotated queries `[numTokens, numHeads * headDim]`. */
export const KV_APPEND_KERNEL = 'TinyServeKvAppend';
/** Quest page scores of the step's decode sequences from the page metadata: `[scoreLength]`. */
export const PAGE_SCORE_KERNEL = 'TinyServePageScore';
/** Attention over the pages of a `PageSelection` (dense and causal for unselected sequences), from rotated queries. */
export const SPARSE_PAGED_ATTENTION_KERNEL = 'TinyServeSparsePagedAttention';
/** Append, score, select (policy object) and sparse attention in one call. */
export const FUSED_SPARSE_ATTENTION_KERNEL = 'TinyServeFusedSparseAttention';
export const RMS_NORM_KERNEL = 'TinyServeRmsNorm';
export const LAYER_NORM_KERNEL = 'TinyServeLayerNorm';
export const SWIGLU_KERNEL = 'TinyServeSwiGlu';
export const GELU_NEW_KERNEL = 'TinyServeGeluNew';

export const TINYSERVE_KERNELS: readonly string[] = [
  PAGED_ATTENTION_KERNEL,
  KV_APPEND_KERNEL,
  PAGE_SCORE_KERNEL,
  SPARSE_PAGED_ATTENTION_KERNEL,
  FUSED_SPARSE_ATTENTION_KERNEL,
  RMS_NORM_KERNEL,
  LAYER_NORM_KERNEL,
  SWIGLU_KERNEL,
  GELU_NEW_KERNEL,
];

/**
 * What the sparse kernels ask of the step's page selection (the executor's `StepSelection`,
 * which calls the kv-retriever's scorer and policy objects).
 */
export interface StepPageSelector {
  /** Floats of the step's score buffer. */
  readonly scoreLength: number;
  /** Whether `layer` needs page scores (a scoring policy below its budget). */
  needsScores(layer: number): boolean;
  /** Writes the page scores of `layer` into `out` from the rotated queries. */
  score(layer: number, queries: Float32Array, out: Float32Array): void;
  /** Chooses the pages of `layer` (records statistics) and returns the kernel's page lists. */
  select(layer: number, queries: Float32Array, scores: Float32Array | null): PageSelection;
}

/**
 * What the attention kernels need besides the step's activations: the KV pages (which live
 * outside tfjs, in the layout the kv-retriever and CUDA kernels share), their metadata, the
 * step's page table and its page selection. One object per forward step, shared by all layers.
 */
export interface AttentionStep {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  scale: number;
  chunkSize: number;
  /** Per layer K and V pages in `kvDtype`. */
  keyCaches: KvBuffer[];
  valueCaches: KvBuffer[];
  kvDtype: KvCacheDtype;
  /** int8: per layer scales (one per page, slot and KV head); empty arrays otherwise. */
  keyScales: Float32Array[];
  valueScales: Float32Array[];
  /** Per layer page metadata, updated on append; null to leave metadata alone. */
  metadata: PageMetadataLayer[] | null;
  tokenSeq: Int32Array;
  tokenPos: Int32Array;
  pageIndptr: Int32Array;
  pageIndices: Int32Array;
  rope: RopeTables | null;
  /** Per layer, where to record attention statistics; null when not asked for. */
  stats: AttentionStatsSink[] | null;
  /** The step's page selection; null when every layer attends densely. */
  selector: StepPageSelector | null;
}

/** The kernel parameters of one layer of a step. */
export function layerAttentionParams(
  step: AttentionStep,
  layer: number,
  numTokens: number,
  qkv: Float32Array,
  out: Float32Array,
): PagedAttentionParams {
  return {
    numTokens,
    numHeads: step.numHeads,
    numKvHeads: step.numKvHeads,
    headDim: step.headDim,
    pageSize: step.pageSize,
    qkv,
    out,
    keyCache: step.keyCaches[layer],
    valueCache: step.valueCaches[layer],
    kvDtype: step.kvDtype,
    keyScales: step.keyScales[layer],
    valueScales: step.valueScales[layer],
    metadata: step.metadata?.[layer],
    tokenSeq: step.tokenSeq,
    tokenPos: step.tokenPos,
    pageIndptr: step.pageIndptr,
    pageIndices: step.pageIndices,
    rope: step.rope,
    scale: step.scale,
    chunkSize: step.chunkSize,
    stats: step.stats?.[layer],
  };
}

function needSelector(step: AttentionStep, kernel: string): StepPageSelector {
  if (step.selector === null) throw new Error(`${kernel}: the step has no page selection`);
  return step.selector;
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

  type Attrs = { step: AttentionStep; layer: number };
  const EMPTY = new Float32Array(0);

  add(PAGED_ATTENTION_KERNEL, ({ inputs, backend, attrs }) => {
    const qkv = requireFloat(inputs.qkv, PAGED_ATTENTION_KERNEL, 'qkv');
    const { step, layer } = attrs as unknown as Attrs;
    const n = qkv.shape[0];
    return runFloatKernel(backend, [qkv], [n, step.numHeads * step.headDim], ([qkvData], out) =>
      pagedAttention(layerAttentionParams(step, layer, n, qkvData, out)),
    );
  });

  add(KV_APPEND_KERNEL, ({ inputs, backend, attrs }) => {
    const qkv = requireFloat(inputs.qkv, KV_APPEND_KERNEL, 'qkv');
    const { step, layer } = attrs as unknown as Attrs;
    const n = qkv.shape[0];
    return runFloatKernel(backend, [qkv], [n, step.numHeads * step.headDim], ([qkvData], queries) => {
      const p = layerAttentionParams(step, layer, n, qkvData, EMPTY);
      appendKvToPages(p);
      rotateQueries(p, queries);
    });
  });

  add(PAGE_SCORE_KERNEL, ({ inputs, backend, attrs }) => {
    const queries = requireFloat(inputs.queries, PAGE_SCORE_KERNEL, 'queries');
    const { step, layer } = attrs as unknown as Attrs;
    const selector = needSelector(step, PAGE_SCORE_KERNEL);
    return runFloatKernel(backend, [queries], [selector.scoreLength], ([q], scores) => selector.score(layer, q, scores));
  });

  add(SPARSE_PAGED_ATTENTION_KERNEL, ({ inputs, backend, attrs }) => {
    const queries = requireFloat(inputs.queries, SPARSE_PAGED_ATTENTION_KERNEL, 'queries');
    const { step, layer, selection } = attrs as unknown as Attrs & { selection: PageSelection };
    const n = queries.shape[0];
    return runFloatKernel(backend, [queries], [n, step.numHeads * step.headDim], ([q], out) =>
      attendOverPages({ ...layerAttentionParams(step, layer, n, EMPTY, out), selection }, q),
    );
  });

  add(FUSED_SPARSE_ATTENTION_KERNEL, ({ inputs, backend, attrs }) => {
    const qkv = requireFloat(inputs.qkv, FUSED_SPARSE_ATTENTION_KERNEL, 'qkv');
    const { step, layer } = attrs as unknown as Attrs;
    const selector = needSelector(step, FUSED_SPARSE_ATTENTION_KERNEL);
    const n = qkv.shape[0];
    return runFloatKernel(backend, [qkv], [n, step.numHeads * step.headDim], ([qkvData], out) => {
      const p = layerAttentionParams(step, layer, n, qkvData, out);
      appendKvToPages(p);
      const queries = rotateQueries(p);
      let scores: Float32Array | null = null;
      if (selector.needsScores(layer)) {
        scores = new Float32Array(selector.scoreLength);
        selector.score(layer, queries, scores);
      }
      attendOverPages({ ...p, selection: selector.select(layer, queries, scores) }, queries);
    });
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

/**
 * Runs one of the kernels above through the tfjs engine (so tidy scopes track its output).
 * A backend that has not registered them gets the generic `readSync`/`write` versions on
 * first use, so the model graph runs on any tfjs backend.
 */
export function runTinyServeKernel(kernelName: string, inputs: Record<string, Tensor>, attrs: object = {}): Tensor {
  const backend = getBackend();
  if (getKernel(kernelName, backend) === undefined) registerTinyServeKernels(backend);
  // Attributes are passed by reference: the attention step carries typed arrays and the KV
  // pages, which tfjs's NamedAttrMap type does not describe but the engine passes through.
  return engine().runKernel(kernelName, inputs, attrs as NamedAttrMap) as Tensor;
}
