export { Engine } from './engine.js';
export type {
  EngineOptions,
  EngineRequest,
  EngineEvent,
  EngineTokenEvent,
  EngineResult,
  EngineUsage,
  EngineTimings,
  EngineHandle,
  EngineStats,
  SessionInfo,
} from './engine-types.js';
export { SamplerRng, StopStringDetokenizer, argmax, checkSamplingParams, logSumExp, sampleToken } from './sampling.js';
export type { SamplingParams, SamplingSettings, TextDelta } from './sampling.js';
export { runThroughputBench, formatThroughputTable } from './throughput-bench.js';
export type { ThroughputBenchOptions, ThroughputRow, Percentiles } from './throughput-bench.js';
