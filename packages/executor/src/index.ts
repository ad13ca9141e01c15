export { createExecutor, executorBackends } from './executor-registry.js';
export { TfjsExecutor } from './tfjs-executor.js';
export { DecodeSelector, StepSelection } from './decode-selection.js';
export type { SelectionOptions, LayerSelectionRecord } from './decode-selection.js';
export { PagedKvCache } from './kv-cache.js';
export { planForward } from './forward-plan.js';
export type { ForwardLimits, ForwardPlan } from './forward-plan.js';
export { TFJS_BACKENDS, initTfjsBackend, activateTfjsBackend, runExclusive } from './tfjs-backend.js';
export type { TfjsBackendName } from './tfjs-backend.js';
export { prepareWeights, checkModelConfig, graphWeightBytes } from './model-weights.js';
export type { PreparedWeights, LayerWeights, LinearWeights, NormWeights } from './model-weights.js';
export { pagedAttention, appendKvToPages, attendOverPages, rotateQueries } from './kernels/paged-attention-cpu.js';
export type { PagedAttentionParams, AttentionStatsSink, PageSelection, KvBuffer } from './kernels/paged-attention-cpu.js';
export { computeRopeTables, rotateHead } from './kernels/rope.js';
export type { RopeTables } from './kernels/rope.js';
export { rmsNormRows, layerNormRows, swiGluRows, geluNew } from './kernels/elementwise-cpu.js';
export {
  PAGED_ATTENTION_KERNEL,
  KV_APPEND_KERNEL,
  PAGE_SCORE_KERNEL,
  SPARSE_PAGED_ATTENTION_KERNEL,
  FUSED_SPARSE_ATTENTION_KERNEL,
  RMS_NORM_KERNEL,
  LAYER_NORM_KERNEL,
  SWIGLU_KERNEL,
  GELU_NEW_KERNEL,
  TINYSERVE_KERNELS,
  registerTinyServeKernels,
  runTinyServeKernel,
  layerAttentionParams,
} from './kernels/register-kernels.js';
export type { AttentionStep, StepPageSelector } from './kernels/register-kernels.js';
