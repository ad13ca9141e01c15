import type { LoadedModel, ModelType, TinyServeConfig } from '@tinyserve/core';
import type { EvalPlugin } from './engine-runner.js';
import type { HeldOutText } from './held-out-text.js';
import type { PasskeyContext } from './passkey.js';

export type EvalTask = 'perplexity' | 'passkey';

export const EVAL_TASKS: readonly EvalTask[] = ['perplexity', 'passkey'];

/**
 * How much KV a sparse policy may read: a selection ratio of the pages (`ratio`), a token
 * budget (`tokens`), or a token budget that is a fraction of each context's length
 * (`fraction`: `ceil(value * contextTokens)` tokens, so 1K and 2K prompts get 1/8 each).
 */
export interface EvalBudget {
  kind: 'ratio' | 'tokens' | 'fraction';
  value: number;
}

export interface PasskeyTaskParams {
  /** Target prompt lengths (default 1024, 2048, 'full'), capped at maxPositionEmbeddings - maxNewTokens. */
  contexts?: PasskeyContext[];
  /** Trials per length, spread over needle depths as the format does (default 10). */
  trials?: number;
  /** Answer tokens generated greedily (default the format's 8). */
  maxNewTokens?: number;
}

export interface PerplexityTaskParams {
  /** Tokens of context before the scored window (default min(1024, maxPositions - windowTokens)). */
  contextTokens?: number;
  /** Tokens scored, one decode step each (default min(128, maxPositions / 4)). */
  windowTokens?: number;
  /** Samples, one per held-out document long enough (default 4). */
  samples?: number;
  /** Held-out text (default the bundled SOTU held-out sample). */
  text?: HeldOutText;
}

export interface EvalParams {
  /** A loaded model or a model directory (default: the bundled model, @tinyserve/model-tiny). */
  model?: LoadedModel | string;
  /** Architecture of a model directory (default 'auto': read from config.json). */
  modelType?: ModelType;
  /** Executor backend by name (default the config's `executor`, 'wasm'). */
  executor?: string;
  tasks: EvalTask[];
  /**
   * Policies by registered name, each optionally with plugins after '+': 'quest', 'streaming',
   * 'dense', 'dense+pruning', 'quest+early-exit', 'dense+pruning+early-exit'.
   */
  policies: string[];
  /** Budgets swept for every sparse policy (default one: fraction 0.125). Dense ignores them. */
  budgets?: EvalBudget[];
  /** Page sizes swept, one executor each (default the config's `pageSize`). */
  pageSizes?: number[];
  passkey?: PasskeyTaskParams;
  perplexity?: PerplexityTaskParams;
  /**
   * Base configuration: `sinkPages`, `denseLayers`, `useFusedKernel`, `kvCacheDtype`,
   * `attentionChunkSize`, `maxBatchTokens` (prefill chunk) and the plugin knobs
   * (`entropyThreshold`, `minTokensBeforeExit`, `pruningRatio`, ...). Selection policy,
   * ratio, budget and page size come from the sweep instead.
   */
  config?: Partial<TinyServeConfig>;
  /** Seed of the `random` policy, and the engine rows' sampling seed (decoding is greedy either way). Default 0. */
  seed?: number;
  /**
   * Measure attention-mass recall (the share of the true attention mass on the selected pages,
   * per sparse layer) where the executor can; costs one dense pass per layer and step. Default true.
   */
  measureRecall?: boolean;
  /** Progress lines (stderr in the CLI). */
  onProgress?: (message: string) => void;
}

/** One row of the results: one task, one policy (with its plugins), one page size, one budget. */
export interface EvalRow {
  task: EvalTask;
  /** The policy as asked for, plugins included ('dense+pruning'). */
  policy: string;
  selectionPolicy: string;
  plugins: EvalPlugin[];
  pageSize: number;
  /** The budget in words ('fraction 0.125', 'ratio 0.25', '64 tokens'); null for dense. */
  budget: string | null;
  selectionRatio: number | null;
  tokenBudget: number | null;
  budgetFraction: number | null;
  /** Token budget used at each context length (fraction budgets), by length. */
  tokenBudgets: Record<string, number> | null;
  /** kvBytesRead / kvBytesDense over the decode steps (dense layers included; pruning counted against the unpruned context). */
  kvReadFraction: number | null;
  /** Mean attention-mass recall of the selected pages, where the executor measures it. */
  attentionRecall: number | null;
  decodeSteps: number;
  decodeMsPerStep: number | null;
  // passkey
  passkeyAccuracy: number | null;
  /** Accuracy per target length (tokens), e.g. { "1024": 0.9 }. */
  passkeyByContext: Record<string, number> | null;
  passkeyTrials: number | null;
  /** Mean tokens generated per answer. */
  tokensGenerated: number | null;
  // perplexity
  perplexity: number | null;
  /** Mean next-token KL(dense || policy), nats. */
  klDivergence: number | null;
  /** Fraction of scored tokens where the policy's top-1 equals dense's. */
  top1Agreement: number | null;
  tokensScored: number | null;
  // plugins
  earlyExits: number | null;
  tokensPruned: number | null;
  /** Why a figure is missing (e.g. perplexity is not applicable with early exit). */
  note: string | null;
}

export interface EvalModelInfo {
  name: string;
  dir: string;
  architecture: string;
  parameters: number;
  numLayers: number;
  numKvHeads: number;
  maxPositionEmbeddings: number;
}

/** The settings actually used, resolved from the params and defaults. */
export interface EvalSettings {
  tasks: EvalTask[];
  policies: string[];
  budgets: EvalBudget[];
  pageSizes: number[];
  sinkPages: number;
  denseLayers: number;
  kvCacheDtype: string;
  seed: number;
  measureRecall: boolean;
  /** Whether policies shared one dense prefill per context (the executor can switch selection). */
  sharedPrefill: boolean;
  passkey: { targets: number[]; trials: number; maxNewTokens: number; format: string } | null;
  perplexity: { contextTokens: number; windowTokens: number; samples: number; textSource: string } | null;
  plugins: {
    entropyThreshold: number;
    minTokensBeforeExit: number;
    entropySource: string;
    pruningRatio: number;
    minTokensAfterPruning: number;
  };
}

export interface EvalResult {
  model: EvalModelInfo;
  /** The backend the executors ran on. */
  executor: string;
  settings: EvalSettings;
  rows: EvalRow[];
  startedAt: string;
  durationSeconds: number;
}
