export {
  TinyServeError,
  ConfigError,
  RequestValidationError,
  ModelLoadError,
  CorruptModelFileError,
  UnsupportedModelError,
  TokenizerError,
  BackendUnavailableError,
  OutOfPagesError,
  OverloadedError,
  CancelledError,
  NotFoundError,
  PluginError,
  RegistryError,
} from './errors.js';
export type { TinyServeErrorCode } from './errors.js';
export { Registry } from './registry.js';
export {
  DEFAULT_CONFIG,
  CONFIG_FIELDS,
  resolveConfig,
  resolveConfigFromRecord,
  snakeToCamel,
} from './config.js';
export type { TinyServeConfig, KvCacheDtype, ModelType, EntropySource, PluginErrorMode } from './config.js';
export type {
  Architecture,
  SafetensorsDtype,
  ModelConfig,
  TensorData,
  GenerationDefaults,
  StreamDecoder,
  EncodeOptions,
  DecodeOptions,
  Tokenizer,
  LoadedModel,
} from './model-types.js';
export type {
  ForwardParams,
  ForwardResult,
  AttentionStats,
  StepSelectionStats,
  ExecutorOptions,
  SelectionConfig,
  Executor,
  CopyTokensParams,
  ExecutorFactory,
} from './executor-types.js';
export type { Priority, FinishReason, TinyServeRequest, Usage, TinyServeResponse, StreamEvent } from './request-types.js';
export type {
  RequestHookInfo,
  LogitsHookContext,
  TokenHookContext,
  TokenDecision,
  PruneHookInfo,
  FinishHookContext,
  EngineHooks,
} from './plugin-types.js';
export { kvElementIndex, metadataIndex } from './kv-layout.js';
export type { KvLayout } from './kv-layout.js';
export { normalizeRequest, DEFAULT_REQUEST } from './request-validation.js';
export type { NormalizedRequest, RequestDefaults } from './request-validation.js';
// model loading
export {
  readSafetensorsHeader,
  readSafetensors,
  writeSafetensors,
  SAFETENSORS_MAX_HEADER_BYTES,
} from './model/safetensors.js';
export type {
  SafetensorsFileDtype,
  FloatSafetensorsDtype,
  SafetensorsTensorInfo,
  SafetensorsHeader,
  ReadSafetensorsOptions,
  SafetensorsWriteTensor,
} from './model/safetensors.js';
export {
  float32ToFloat16Bits,
  float16BitsToFloat32,
  float32ToBfloat16Bits,
  bfloat16BitsToFloat32,
} from './model/half-float.js';
export {
  loadCheckpointWeights,
  readCheckpointIndex,
  SAFETENSORS_WEIGHTS_FILE,
  SAFETENSORS_INDEX_FILE,
} from './model/checkpoint.js';
export type { CheckpointIndex, CheckpointTensorInfo } from './model/checkpoint.js';
export { parseModelConfig, parseGenerationConfig, detectArchitecture } from './model/hf-config.js';
export { createTokenizer, loadTokenizer, cleanUpTokenizationSpaces } from './model/tokenizer.js';
export type { CreateTokenizerOptions } from './model/tokenizer.js';
export { loadModel, isModelDirectory, expectedWeightShapes } from './model/load-model.js';
// hub
export { resolveModel, DEFAULT_HUB_ENDPOINT } from './hub/resolve-model.js';
export type { ResolveModelOptions, ResolveModelResult } from './hub/resolve-model.js';
export { downloadModelToCache } from './hub/download.js';
export type { DownloadProgressEvent, DownloadProgressCallback, DownloadModelParams, DownloadModelResult } from './hub/download.js';
export { hubCacheDir, repoCacheDir, findCachedSnapshot, missingModelFiles } from './hub/hub-cache.js';
export type { HubEnv, CachedSnapshot } from './hub/hub-cache.js';
export { parseModelId, describeInvalidModelId, isCommitHash, repoFolderName, DEFAULT_REVISION } from './hub/model-id.js';
export type { HubModelId } from './hub/model-id.js';
export { mulberry32 } from './random.js';
