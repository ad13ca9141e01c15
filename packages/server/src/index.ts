export { TinyServe } from './tinyserve.js';
export type { ModelInfo, TinyServeLogger, TinyServeOptions, TinyServeStats, AttentionBenchmarkOptions, AttentionExecutorApi } from './tinyserve.js';
// The facade's benchmark results and their reporting, re-exported so the CLI needs no lower package.
export { formatThroughputTable } from '@tinyserve/scheduler';
export type { ThroughputRow } from '@tinyserve/scheduler';
export {
  HEAD_SHAPES,
  DEFAULT_MODES,
  modeLabel,
  parseModes,
  parseKvDtype,
  parseHeadShapes,
  sdpaShapes,
  runSdpaBenchmark,
  formatAttentionTable,
  formatTimeline,
} from '@tinyserve/executor';
export type {
  BenchmarkAttentionParams,
  BenchmarkAttentionResult,
  BenchmarkMode,
  HeadShape,
  SdpaResult,
  SdpaRun,
  AttentionTableRow,
  SparseTimeline,
} from '@tinyserve/executor';
// http
export { createHttpServer } from './http/server.js';
export type { HttpServerOptions, HttpServerControl, TinyServeHttpServer } from './http/server.js';
export type { ServingBackend, BackendModelInfo, BackendLoadedModel, BackendSessions, BackendStats } from './http/backend.js';
export { installGracefulShutdown } from './http/shutdown.js';
export type { GracefulShutdownOptions, GracefulShutdown } from './http/shutdown.js';
export { readServingGauges, GAUGE_PATHS } from './http/stats.js';
export type { ServingGauges, GaugeReader } from './http/stats.js';
export type { ServerStatsSnapshot, LatencySummary, ServerCounters } from './http/metrics.js';
export { renderChat, FALLBACK_CHAT_TEMPLATE, FALLBACK_STOP } from './http/chat-template.js';
export type { RenderedChat } from './http/chat-template.js';
export type { ChatMessage } from './http/openai-requests.js';
export type { OpenAiErrorBody } from './http/errors.js';
// eval
export { runEval, parseEvalVariant } from './eval/run-eval.js';
export type { EvalVariant } from './eval/run-eval.js';
export { EVAL_TASKS } from './eval/eval-types.js';
export type {
  EvalTask,
  EvalBudget,
  EvalParams,
  EvalRow,
  EvalResult,
  EvalSettings,
  EvalModelInfo,
  PasskeyTaskParams,
  PerplexityTaskParams,
} from './eval/eval-types.js';
export { EVAL_PLUGINS } from './eval/engine-runner.js';
export type { EvalPlugin } from './eval/engine-runner.js';
export {
  PASSKEY_FORMAT,
  buildPasskeyPrompt,
  passkeyKey,
  passkeyDepth,
  passkeyTargets,
  scorePasskeyAnswer,
} from './eval/passkey.js';
export type { PasskeyPrompt, PasskeyPromptParams, PasskeyContext } from './eval/passkey.js';
export { loadHeldOutText, loadTextFile, perplexitySamples } from './eval/held-out-text.js';
export type { HeldOutText, HeldOutDocument, PerplexitySample, PerplexitySampleParams } from './eval/held-out-text.js';
export { klDivergence, logSoftmax } from './eval/metrics.js';
export { evalResultToJson, formatEvalMarkdown, renderEvalChartHtml, writeEvalReport } from './eval/report.js';
export type { EvalReportFiles } from './eval/report.js';
