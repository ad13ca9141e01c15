import type { EngineHooks, Executor, FinishReason, Priority, TinyServeConfig, Tokenizer } from '@tinyserve/core';
import type { SamplingParams } from './sampling.js';

export interface EngineOptions {
  executor: Executor;
  tokenizer: Tokenizer;
  /** Reads pageSize, maxBatchTokens, maxNumSeqs, maxQueueSize, sessionTimeout and seed. */
  config: TinyServeConfig;
  hooks?: EngineHooks;
  /** Longest context (prompt + generated) in tokens. */
  maxModelLen: number;
  /** Generation stops after any of these (unless a request sets ignoreEos). */
  eosTokenIds: readonly number[];
  /**
   * Aging: a waiting request moves up one priority level for every this many milliseconds it
   * has waited (default 5000), so a `low` request waiting 10 s ranks with a fresh `high` one
   * and anything waiting longer outranks every newcomer.
   */
  agingIntervalMs?: number;
  /** Cross-request prefix caching through the block pool (default true). */
  enablePrefixCaching?: boolean;
  /** Monotonic clock in milliseconds (tests); default `performance.now`. */
  now?: () => number;
}

export interface EngineRequest {
  requestId: string;
  promptTokenIds: number[];
  sampling: SamplingParams;
  /** Keep this conversation's KV between requests (see Engine's class comment). */
  sessionId?: string;
  priority: Priority;
  /** Aborting cancels the request: its pages are freed at once and it finishes with 'cancelled'. */
  signal?: AbortSignal;
}

export interface EngineTokenEvent {
  type: 'token';
  tokenId: number;
  /** Text that became final with this token (stop-string aware; possibly ''). */
  text: string;
  /** Log-softmax of the raw model logits at the chosen token (when `sampling.logprobs`). */
  logprob?: number;
}

export type EngineEvent = EngineTokenEvent;

export interface EngineUsage {
  promptTokens: number;
  completionTokens: number;
  /** Prompt tokens whose KV came from the session or the prefix cache at admission. */
  cachedTokens: number;
}

export interface EngineTimings {
  /** Submission to first scheduling. */
  queuedMs: number;
  /** Submission to first generated token (to the finish when none was generated). */
  ttftMs: number;
  totalMs: number;
}

export interface EngineResult {
  requestId: string;
  /** Generated token ids, a final EOS or stop token id included. */
  tokenIds: number[];
  /**
   * Generated text: EOS, stop tokens and stop strings excluded; always the concatenation of
   * the streamed token texts (so a cancelled request drops text held back for a possible stop string).
   */
  text: string;
  finishReason: FinishReason;
  /** Per generated token, when `sampling.logprobs`. */
  logprobs?: number[];
  /** Per prompt token (null for the first), when `sampling.promptLogprobs`. */
  promptLogprobs?: (number | null)[];
  usage: EngineUsage;
  timings: EngineTimings;
  sessionId?: string;
}

/**
 * A submitted request: iterate it (once) for token events; `result` settles when it ends,
 * rejecting with the request's own error (validation errors are thrown by `submit` itself).
 * Stopping the iteration early does not cancel the request: use the AbortSignal.
 */
export interface EngineHandle extends AsyncIterable<EngineEvent> {
  readonly requestId: string;
  readonly result: Promise<EngineResult>;
}

export interface SessionInfo {
  sessionId: string;
  /** Requests submitted on this session. */
  requestCount: number;
  /** Tokens whose KV the session holds now (the running request's, while one runs). */
  numTokens: number;
  /** KV pages held for those tokens. */
  pagesHeld: number;
  promptTokens: number;
  completionTokens: number;
  /** Epoch milliseconds. */
  createdAt: number;
  lastActiveAt: number;
  /** A request of the session is running. */
  active: boolean;
  /** Requests waiting behind the running one. */
  queuedRequests: number;
}

export interface EngineStats {
  steps: number;
  numRunning: number;
  numWaiting: number;
  numSessions: number;
  requests: {
    submitted: number;
    finished: number;
    cancelled: number;
    failed: number;
    /** Refused by submit: queue full or draining. */
    rejected: number;
  };
  preemptions: number;
  /** Tokens run through the model other than decode tokens (prompts, recompute after preemption). */
  tokensPrefilled: number;
  /** Tokens generated. */
  tokensDecoded: number;
  /** Prompt tokens served from KV at admission (sessions and prefix cache). */
  tokensReused: number;
  queueTimeMs: { count: number; mean: number; max: number };
  /** Sequences per step; histogram keys are bucket upper bounds (1, 2, 4, 8, ...). */
  batchSize: { mean: number; max: number; histogram: Record<string, number> };
  /** Tokens per step. */
  batchTokens: { mean: number; max: number };
  stepTimeMs: { mean: number; max: number };
  prefixCache: {
    queries: number;
    queryTokens: number;
    hitTokens: number;
    hitPages: number;
    /** hitTokens / queryTokens. */
    hitRate: number;
    evictions: number;
  };
  /** Prompt tokens reused from a session's own KV. */
  sessionReusedTokens: number;
  kv: { totalPages: number; usedPages: number; cachedFreePages: number; pageSize: number; usage: number };
  /** Sparse attention counters summed over steps; kvHitRate = kvBytesRead / kvBytesDense (1 before any step). */
  /**
   * Decode-time page selection, summed over steps. `kvHitRate`: pages selected / pages scanned
   * (per sequence, layer and KV head); `kvReadFraction`: KV bytes read / bytes dense would read.
   */
  selection: {
    pagesScanned: number;
    pagesSelected: number;
    kvBytesRead: number;
    kvBytesDense: number;
    kvHitRate: number;
    kvReadFraction: number;
  };
  pruning: { prunes: number; tokensPruned: number; pagesFreed: number; skippedForRoom: number };
  copyOnWrites: number;
}
