export { createExecutor, executorBackends } from './executor-registry.js';
export { TfjsExecutor } from './tfjs-executor.js';
export { DecodeSelector, StepSelection, ExecutorSelection } from './decode-selection.js';
export type { SelectionOptions, LayerSelectionRecord, SelectionKvSource, CompactKeys } from './decode-selection.js';
export { checkExecutorOptions } from './executor-options.js';
export { PagedKvCache } from './kv-cache.js';
export { planForward } from './forward-plan.js';
export type { ForwardLimits, ForwardPlan } from './forward-plan.js';
export { TFJS_BACKENDS, initTfjsBackend, activateTfjsBackend, runExclusive } from './tfjs-backend.js';
export type { TfjsBackendName } from './tfjs-backend.js';
export { prepareWeights, checkModelConfig, graphWeightBytes } from './model-weights.js';
export type { PreparedWeights, LayerWeights, LinearWeights, NormWeights } from './model-weights.js';
export { pagedAttention, appendKvToPages, attendOverPages, rotateQueries, checkPageSelection } from './kernels/paged-attention-cpu.js';
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

// attention benchmark (every executor)
export { benchmarkAttention, attentionBenchmarks } from './attention-benchmark.js';
export type { AttentionBenchmarkRunner } from './attention-benchmark.js';
export { modeLabel, resolveBenchmarkAttentionParams } from './attention-benchmark-params.js';
export type {
  BenchmarkAttentionParams,
  BenchmarkAttentionResult,
  BenchmarkExecutorTraits,
  BenchmarkMetaDtype,
  BenchmarkMode,
  ResolvedBenchmarkAttentionParams,
  SparseTimeline,
} from './attention-benchmark-params.js';
export { benchmarkCpuAttention, cpuCopyBandwidth } from './attention-benchmark-cpu.js';
export {
  HEAD_SHAPES,
  DEFAULT_MODES,
  parseModes,
  parseKvDtype,
  parseHeadShapes,
  sdpaShapes,
  runSdpaBenchmark,
  defaultSdpaScript,
  formatAttentionTable,
  formatTimeline,
} from './attention-benchmark-report.js';
export type { HeadShape, BenchKvDtype, SdpaShape, SdpaResult, SdpaRun, RunSdpaOptions, AttentionTableRow } from './attention-benchmark-report.js';

// cuda
export { loadCudaAddon, cudaAddonCandidates, resetCudaAddonCache } from './cuda/addon-loader.js';
export type { LoadCudaAddonOptions, LoadedCudaAddon } from './cuda/addon-loader.js';
export { CUDA_ADDON_ABI_VERSION, KV_DTYPE, META_DTYPE, BINARY_OP } from './cuda/addon-types.js';
export type {
  CudaAddon,
  DeviceBuffer,
  StepPlanHandle,
  CudaDeviceInfo,
  KvDtypeCode,
  MetaDtypeCode,
  PlanUpdateParams,
  PlanInfo,
  DecodeLayerArgs,
  SparseLayerArgs,
  AppendKvArgs,
  AttentionStatsArgs,
  PrefillLayerArgs,
  TimedCall,
  GemmArgs,
  BinaryArgs,
  GatherArgs,
  NormArgs,
  ActivationArgs,
  RebuildMetadataArgs,
  RandomFillArgs,
  CopyTokensArgs,
  PageScoreArgs,
  SelectedDecodeArgs,
} from './cuda/addon-types.js';
export { CudaKvCache, quantizeKvRows, dequantizeKvRows } from './cuda/cuda-kv-cache.js';
export type { CudaKvCacheOptions, CudaKvDtype, CudaKvLayerBuffers, CudaMetaDtype } from './cuda/cuda-kv-cache.js';
export { CudaStepPlan, trimPageTable, selectionTopK, selectionRowPages } from './cuda/step-plan.js';
export { CudaBackend } from './cuda/cuda-backend.js';
export { CUDA_BACKEND_NAME, CUDA_KERNEL_NAMES, registerCudaKernels, broadcastShape, broadcastStrides } from './cuda/cuda-kernels.js';
export { CudaExecutor, activateCudaBackend } from './cuda/cuda-executor.js';
export { benchmarkCudaAttention, traceSparseLaunch, SPARSE_TRACE_SLOTS } from './cuda/benchmark-attention.js';
export type { BenchmarkTuning, CudaBenchmarkOptions, CudaBenchmarkAttentionParams } from './cuda/benchmark-attention.js';
export { runAttentionSuite, formatSuiteTable } from './cuda/benchmark-suite.js';
export type { SuiteOptions, SuiteRow, SuiteResult } from './cuda/benchmark-suite.js';
export { runGpuChecks, runAttentionScenario, defaultScenarios, relativeError } from './cuda/gpu-checks.js';
export type { GpuCheckResult, AttentionScenario } from './cuda/gpu-checks.js';
