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
