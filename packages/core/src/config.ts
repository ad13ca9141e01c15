import { ConfigError } from './errors.js';

export type KvCacheDtype = 'fp32' | 'fp16' | 'int8';
export type ModelType = 'auto' | 'gpt2' | 'llama';
export type EntropySource = 'logits' | 'attention';
export type PluginErrorMode = 'skip' | 'fail_request';

/**
 * Every knob of TinyServe. Names map one to one onto the seed's Python config
 * (`page_size` -> `pageSize`). Fields marked "(issue N)" are validated now and take effect
 * once that capability lands; docs/configuration.md lists them.
 */
export interface TinyServeConfig {
  /** Tokens per KV page. */
  pageSize: number;
  /** Fraction of KV pages attended to at decode time by query-aware selection (top-K ratio). */
  selectionRatio: number;
  /** Token budget for selection; when set, it overrides `selectionRatio`. */
  tokenBudget: number | null;
  /** Selection policy by registered name: 'quest', 'dense', 'streaming', 'random', 'oracle'. */
  selectionPolicy: string;
  /** Leading pages always kept by sparse selection (attention sinks). */
  sinkPages: number;
  /** The first N layers attend densely (Quest keeps layers 0-1 dense). */
  denseLayers: number;
  /** Use the fused sparse-attention kernel where the backend has one. */
  useFusedKernel: boolean;
  /** Keys per chunk in chunked attention (bounds scratch memory on long contexts). */
  attentionChunkSize: number;
  /** KV cache element format. */
  kvCacheDtype: KvCacheDtype;
  /** Pages in the KV block pool; null derives it from `targetMemoryGb`. */
  numKvPages: number | null;

  enableEntropyEarlyExit: boolean;
  entropyThreshold: number;
  minTokensBeforeExit: number;
  /** What the early-exit entropy is computed on. */
  entropySource: EntropySource;
  enableTokenPruning: boolean;
  pruningRatio: number;
  minTokensAfterPruning: number;
  /** What a throwing plugin does: skipped (recorded) or fails its own request. */
  pluginErrorMode: PluginErrorMode;

  targetLatencyMs: number;
  targetMemoryGb: number;

  /** Executor backend by registered name: 'wasm' (default), 'cpu', 'cuda'. */
  executor: string;
  numGpus: number;
  gpuIds: number[];

  /** Upper bound of tokens (decode + prefill chunks) in one engine step. */
  maxBatchTokens: number;
  /** Upper bound of sequences running at once. */
  maxNumSeqs: number;
  /** Waiting requests beyond this are rejected with an `overloaded` error. */
  maxQueueSize: number;
  /** Idle sessions are closed after this many seconds. */
  sessionTimeout: number;
  /** Longest context (prompt + generated); null takes the model's own limit. */
  maxModelLen: number | null;
  /** Default sampling seed for requests that give none; null draws one per request. */
  seed: number | null;
}

export const DEFAULT_CONFIG: Readonly<TinyServeConfig> = Object.freeze({
  pageSize: 16,
  selectionRatio: 0.3,
  tokenBudget: null,
  selectionPolicy: 'quest',
  sinkPages: 1,
  denseLayers: 2,
  useFusedKernel: true,
  attentionChunkSize: 256,
  kvCacheDtype: 'fp32',
  numKvPages: null,
  // The seed's example turns both plugins on; we ship them off so that a plain request
  // returns the model's full output, as vLLM or Ollama would. Thresholds are the seed's.
  enableEntropyEarlyExit: false,
  entropyThreshold: 0.5,
  minTokensBeforeExit: 10,
  entropySource: 'logits',
  enableTokenPruning: false,
  pruningRatio: 0.1,
  minTokensAfterPruning: 100,
  pluginErrorMode: 'skip',
  targetLatencyMs: 50.0,
  targetMemoryGb: 4.0,
  executor: 'wasm',
  numGpus: 1,
  gpuIds: Object.freeze([0]) as unknown as number[],
  maxBatchTokens: 512,
  maxNumSeqs: 64,
  maxQueueSize: 1024,
  sessionTimeout: 600,
  maxModelLen: null,
  seed: null,
});

type FieldSpec =
  | { kind: 'int'; min: number; max: number; nullable?: boolean }
  | { kind: 'number'; min: number; max: number; minExclusive?: boolean; nullable?: boolean }
  | { kind: 'boolean' }
  | { kind: 'enum'; values: readonly string[] }
  | { kind: 'name' }
  | { kind: 'intArray'; min: number; max: number };

const INT32_MAX = 2 ** 31 - 1;

const SCHEMA: { [K in keyof TinyServeConfig]: FieldSpec } = {
  pageSize: { kind: 'int', min: 1, max: 4096 },
  selectionRatio: { kind: 'number', min: 0, max: 1, minExclusive: true },
  tokenBudget: { kind: 'int', min: 1, max: INT32_MAX, nullable: true },
  selectionPolicy: { kind: 'name' },
  sinkPages: { kind: 'int', min: 0, max: 1 << 20 },
  denseLayers: { kind: 'int', min: 0, max: 1024 },
  useFusedKernel: { kind: 'boolean' },
  attentionChunkSize: { kind: 'int', min: 1, max: 1 << 20 },
  kvCacheDtype: { kind: 'enum', values: ['fp32', 'fp16', 'int8'] },
  numKvPages: { kind: 'int', min: 1, max: INT32_MAX, nullable: true },
  enableEntropyEarlyExit: { kind: 'boolean' },
  entropyThreshold: { kind: 'number', min: 0, max: 1e6 },
  minTokensBeforeExit: { kind: 'int', min: 0, max: INT32_MAX },
  entropySource: { kind: 'enum', values: ['logits', 'attention'] },
  enableTokenPruning: { kind: 'boolean' },
  pruningRatio: { kind: 'number', min: 0, max: 1 },
  minTokensAfterPruning: { kind: 'int', min: 0, max: INT32_MAX },
  pluginErrorMode: { kind: 'enum', values: ['skip', 'fail_request'] },
  targetLatencyMs: { kind: 'number', min: 0, max: 1e9, minExclusive: true },
  targetMemoryGb: { kind: 'number', min: 0, max: 1e6, minExclusive: true },
  executor: { kind: 'name' },
  numGpus: { kind: 'int', min: 0, max: 1024 },
  gpuIds: { kind: 'intArray', min: 0, max: 1023 },
  maxBatchTokens: { kind: 'int', min: 1, max: 1 << 24 },
  maxNumSeqs: { kind: 'int', min: 1, max: 1 << 16 },
  maxQueueSize: { kind: 'int', min: 0, max: INT32_MAX },
  sessionTimeout: { kind: 'number', min: 0, max: 1e9, minExclusive: true },
  maxModelLen: { kind: 'int', min: 1, max: INT32_MAX, nullable: true },
  seed: { kind: 'int', min: 0, max: 2 ** 53 - 1, nullable: true },
};

export const CONFIG_FIELDS = Object.freeze(Object.keys(SCHEMA)) as readonly (keyof TinyServeConfig)[];

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'number' || typeof value === 'boolean') return String(value);
  return `a ${typeof value}`;
}

function checkField(field: string, spec: FieldSpec, value: unknown): void {
  switch (spec.kind) {
    case 'boolean':
      if (typeof value !== 'boolean') throw new ConfigError(field, `must be true or false, got ${describe(value)}`);
      return;
    case 'enum':
      if (typeof value !== 'string' || !spec.values.includes(value)) {
        throw new ConfigError(field, `must be one of ${spec.values.map((v) => `'${v}'`).join(', ')}, got ${describe(value)}`);
      }
      return;
    case 'name':
      if (typeof value !== 'string' || value.length === 0) {
        throw new ConfigError(field, `must be a non-empty name, got ${describe(value)}`);
      }
      return;
    case 'intArray': {
      if (!Array.isArray(value)) throw new ConfigError(field, `must be an array of integers, got ${describe(value)}`);
      value.forEach((v, i) => {
        if (typeof v !== 'number' || !Number.isInteger(v) || v < spec.min || v > spec.max) {
          throw new ConfigError(`${field}[${i}]`, `must be an integer in [${spec.min}, ${spec.max}], got ${describe(v)}`);
        }
      });
      return;
    }
    case 'int':
    case 'number': {
      if (value === null && spec.nullable) return;
      const what = spec.kind === 'int' ? 'an integer' : 'a number';
      const lo = spec.kind === 'number' && spec.minExclusive ? `(${spec.min}` : `[${spec.min}`;
      const range = `${lo}, ${spec.max}]`;
      if (typeof value !== 'number' || !Number.isFinite(value) || (spec.kind === 'int' && !Number.isInteger(value))) {
        throw new ConfigError(field, `must be ${what} in ${range}${spec.nullable ? ' or null' : ''}, got ${describe(value)}`);
      }
      const tooLow = spec.kind === 'number' && spec.minExclusive ? value <= spec.min : value < spec.min;
      if (tooLow || value > spec.max) {
        throw new ConfigError(field, `must be in ${range}, got ${value}`);
      }
      return;
    }
  }
}

/**
 * Merges `input` over the defaults and validates every field. Unknown fields are rejected
 * (a typo must not silently fall back to a default).
 */
export function resolveConfig(input: Partial<TinyServeConfig> = {}): TinyServeConfig {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    throw new ConfigError('config', `must be an object, got ${describe(input)}`);
  }
  for (const key of Object.keys(input)) {
    if (!(key in SCHEMA)) {
      throw new ConfigError(key, `is not a TinyServe config field (known: ${CONFIG_FIELDS.join(', ')})`);
    }
  }
  const merged = { ...DEFAULT_CONFIG, gpuIds: [...DEFAULT_CONFIG.gpuIds] } as TinyServeConfig;
  for (const [key, value] of Object.entries(input)) {
    if (value === undefined) continue;
    checkField(key, SCHEMA[key as keyof TinyServeConfig], value);
    (merged as unknown as Record<string, unknown>)[key] = Array.isArray(value) ? [...value] : value;
  }
  if (merged.numGpus > 0 && merged.gpuIds.length > 0 && merged.gpuIds.length !== merged.numGpus) {
    throw new ConfigError('gpuIds', `has ${merged.gpuIds.length} entries but numGpus is ${merged.numGpus}`);
  }
  if (merged.minTokensAfterPruning > 0 && merged.pruningRatio >= 1) {
    throw new ConfigError('pruningRatio', 'must be below 1 when minTokensAfterPruning keeps tokens');
  }
  return merged;
}

/** Maps a seed-style snake_case key (`page_size`) to the TS field (`pageSize`). */
export function snakeToCamel(key: string): string {
  return key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}

/** Accepts a config object with snake_case keys (seed, JSON files, env) as well as camelCase. */
export function resolveConfigFromRecord(record: Record<string, unknown>): TinyServeConfig {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(record)) out[snakeToCamel(key)] = value;
  return resolveConfig(out as Partial<TinyServeConfig>);
}
