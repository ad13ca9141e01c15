import {
  ConfigError,
  OutOfPagesError,
  OverloadedError,
  PluginError,
  RequestValidationError,
  TinyServeError,
} from '@tinyserve/core';
import type {
  AttentionStats,
  EngineHooks,
  Executor,
  FinishReason,
  ForwardParams,
  ForwardResult,
  Priority,
  RequestHookInfo,
  TinyServeConfig,
  TokenDecision,
  Tokenizer,
} from '@tinyserve/core';
import { BlockPool, ROOT_PREFIX_HASH, hashPageTokens } from '@tinyserve/kv-retriever';
import type {
  EngineHandle,
  EngineOptions,
  EngineRequest,
  EngineResult,
  EngineStats,
  SessionInfo,
} from './engine-types.js';
import { RequestStream } from './request-stream.js';
import { SamplerRng, StopStringDetokenizer, checkSamplingParams, logSumExp, sampleToken } from './sampling.js';

const PRIORITY_RANK: Record<Priority, number> = { high: 0, normal: 1, low: 2 };
const DEFAULT_AGING_INTERVAL_MS = 5000;

/** A sequence's (or an idle session's) KV: pages in token order and the tokens they hold. */
interface KvState {
  pages: number[];
  /** Token ids in cache-slot order (after pruning, no longer the whole history). */
  tokens: number[];
  /** Leading tokens that are the unpruned history at their true positions (reusable, hashable). */
  exactLen: number;
  /** Chain hash of page i, for the full pages within `exactLen` computed so far. */
  hashes: string[];
}

function emptyKv(): KvState {
  return { pages: [], tokens: [], exactLen: 0, hashes: [] };
}

interface Session {
  id: string;
  createdAt: number;
  lastActiveAt: number;
  /** Engine clock of the last activity (expiry). */
  lastActive: number;
  requestCount: number;
  promptTokens: number;
  completionTokens: number;
  /** The KV kept between turns; empty while a request of the session runs (it holds it then). */
  kv: KvState;
  /** Unfinished requests in submission order; only the first may run. */
  queue: Sequence[];
  closed: boolean;
}

type SeqState = 'waiting' | 'running' | 'finished';

interface Sequence {
  seqId: number;
  request: EngineRequest;
  rank: number;
  /** Submission order (FCFS tie-breaker). */
  order: number;
  arrival: number;
  state: SeqState;
  session: Session | null;
  kv: KvState;
  /** Tokens still to run through the model: the prompt's rest, or the last sampled token. */
  pending: number[];
  /** Leading tokens of (kv.tokens ++ pending) that are the unpruned history. */
  streamExact: number;
  output: number[];
  logprobs: number[] | null;
  promptLogprobs: (number | null)[] | null;
  /** Next prompt index whose logprob is still unknown. */
  promptNext: number;
  rng: SamplerRng;
  text: StopStringDetokenizer;
  stream: RequestStream;
  started: boolean;
  admittedOnce: boolean;
  firstScheduledAt: number;
  firstTokenAt: number;
  cachedTokens: number;
  /** Tokens scheduled in the step being planned. */
  chunk: number;
  onAbort: (() => void) | null;
}

interface StepPlan {
  items: Sequence[];
  budget: number;
}

function pagesFor(tokens: number, pageSize: number): number {
  return Math.ceil(tokens / pageSize);
}

function bucketOf(n: number): string {
  let b = 1;
  while (b < n) b *= 2;
  return String(b);
}

function yieldToIo(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function asError(error: unknown): TinyServeError {
  if (error instanceof TinyServeError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new TinyServeError('internal_error', message, { cause: error });
}

/**
 * The engine loop: continuous batching over one executor.
 *
 * Each iteration plans one step and runs it as ONE batched `forward`: first a decode token
 * for every running sequence, then prefill chunks (running prefills, then waiting requests
 * admitted in priority order) until `maxBatchTokens` tokens or `maxNumSeqs` sequences, so a
 * long prompt is cut into chunks and never stalls running streams. The loop yields to I/O
 * (setImmediate) between steps.
 *
 * Order: waiting requests are ranked high < normal < low, first come first served within a
 * rank, with aging: a request gains one rank per `agingIntervalMs` waited (nothing starves).
 * Admission is head-of-line: when the best-ranked request does not fit, later ones wait too.
 *
 * Memory: pages come from a {@link BlockPool}. When a running sequence needs a page and none
 * is free, idle sessions' KV is released first (least recently active), then the
 * lowest-priority, latest-submitted running sequence is preempted (pages freed, recomputed
 * later, with whatever the prefix cache still holds). Waiting requests never preempt. A
 * request that could not fit even in an empty pool fails alone with OutOfPagesError.
 *
 * Sessions: a request with `sessionId` keeps its KV in the session when it finishes. The next
 * request's prompt is the whole conversation; its longest common prefix with the session's
 * tokens is reused, so only the new tokens are prefilled (or the prefix cache's hit, if
 * longer). A session runs one request at a time: a second request submitted while one runs
 * is queued behind it (FCFS within the session). Idle sessions expire after
 * `sessionTimeout` seconds; `closeSession` releases the KV at once (requests of the session
 * still running or queued then complete without it).
 *
 * Logprobs are the log-softmax of the RAW model logits (before plugins and temperature) at
 * the chosen token. Prompt logprobs (echo) need the prompt's logits, so such a request reuses
 * no cached KV for the part of the prompt still to be scored.
 */
export class Engine {
  readonly pool: BlockPool;
  private readonly executor: Executor;
  private readonly tokenizer: Tokenizer;
  private readonly config: TinyServeConfig;
  private readonly hooks: EngineHooks | null;
  private readonly maxModelLen: number;
  private readonly eos: Set<number>;
  private readonly pageSize: number;
  private readonly vocabSize: number;
  private readonly agingIntervalMs: number;
  private readonly now: () => number;

  private readonly waiting: Sequence[] = [];
  private readonly running: Sequence[] = [];
  private readonly active = new Map<string, Sequence>();
  private readonly sessions = new Map<string, Session>();
  private nextSeqId = 1;
  private nextOrder = 0;
  private accepting = true;
  private loopActive = false;
  private loopWaiters: (() => void)[] = [];
  private idleWaiters: (() => void)[] = [];
  private sessionTimer: ReturnType<typeof setInterval> | null = null;

  private counters = {
    steps: 0,
    submitted: 0,
    finished: 0,
    cancelled: 0,
    failed: 0,
    rejected: 0,
    preemptions: 0,
    tokensPrefilled: 0,
    tokensDecoded: 0,
    tokensReused: 0,
    sessionReusedTokens: 0,
    queueCount: 0,
    queueSum: 0,
    queueMax: 0,
    batchSeqSum: 0,
    batchSeqMax: 0,
    batchTokenSum: 0,
    batchTokenMax: 0,
    stepMsSum: 0,
    stepMsMax: 0,
    pagesScanned: 0,
    pagesSelected: 0,
    kvBytesRead: 0,
    kvBytesDense: 0,
    prunes: 0,
    tokensPruned: 0,
    pagesPruned: 0,
    pruneSkipped: 0,
    copyOnWrites: 0,
  };
  private readonly batchHistogram: Record<string, number> = {};

  constructor(options: EngineOptions) {
    const { executor, tokenizer, config } = options;
    this.executor = executor;
    this.tokenizer = tokenizer;
    this.config = config;
    this.hooks = options.hooks ?? null;
    if (executor.pageSize !== config.pageSize) {
      throw new ConfigError('pageSize', `is ${config.pageSize} but the executor was built with pages of ${executor.pageSize} tokens`);
    }
    if (!Number.isInteger(options.maxModelLen) || options.maxModelLen < 2) {
      throw new ConfigError('maxModelLen', `must be an integer >= 2, got ${options.maxModelLen}`);
    }
    this.maxModelLen = options.maxModelLen;
    this.eos = new Set(options.eosTokenIds);
    this.pageSize = config.pageSize;
    this.vocabSize = executor.model.vocabSize;
    this.agingIntervalMs = options.agingIntervalMs ?? DEFAULT_AGING_INTERVAL_MS;
    if (!(this.agingIntervalMs > 0)) throw new ConfigError('agingIntervalMs', `must be > 0, got ${this.agingIntervalMs}`);
    this.now = options.now ?? (() => performance.now());
    this.pool = new BlockPool({
      numPages: executor.numKvPages,
      pageSize: config.pageSize,
      enablePrefixCaching: options.enablePrefixCaching ?? true,
    });
  }

  // ---- public API ----------------------------------------------------------------------------

  /**
   * Queues a request. Throws RequestValidationError (naming the field), OutOfPagesError (the
   * prompt cannot fit even in an empty KV pool) or OverloadedError (queue full, or draining).
   */
  submit(request: EngineRequest): EngineHandle {
    if (!this.accepting) {
      this.counters.rejected++;
      throw new OverloadedError('the engine is draining or shut down and accepts no new requests');
    }
    this.validate(request);
    if (this.waiting.length >= this.config.maxQueueSize) {
      this.counters.rejected++;
      throw new OverloadedError(`overloaded: ${this.waiting.length} requests are waiting (maxQueueSize ${this.config.maxQueueSize}); retry later`);
    }
    const sampling = request.sampling;
    const seed = sampling.seed ?? this.config.seed ?? Math.floor(Math.random() * 2 ** 32);
    const promptLen = request.promptTokenIds.length;
    const seq: Sequence = {
      seqId: this.nextSeqId,
      request,
      rank: PRIORITY_RANK[request.priority],
      order: this.nextOrder++,
      arrival: this.now(),
      state: 'waiting',
      session: null,
      kv: emptyKv(),
      pending: [...request.promptTokenIds],
      streamExact: Infinity,
      output: [],
      logprobs: sampling.logprobs ? [] : null,
      promptLogprobs: sampling.promptLogprobs ? new Array<number | null>(promptLen).fill(null) : null,
      promptNext: 1,
      rng: new SamplerRng(seed),
      text: new StopStringDetokenizer(this.tokenizer, sampling.stop),
      stream: new RequestStream(request.requestId),
      started: false,
      admittedOnce: false,
      firstScheduledAt: -1,
      firstTokenAt: -1,
      cachedTokens: 0,
      chunk: 0,
      onAbort: null,
    };
    this.nextSeqId = this.nextSeqId >= 0x7fffffff ? 1 : this.nextSeqId + 1;
    this.counters.submitted++;
    this.active.set(request.requestId, seq);
    if (request.sessionId !== undefined) {
      const session = this.sessions.get(request.sessionId) ?? this.createSession(request.sessionId);
      session.requestCount++;
      session.promptTokens += promptLen;
      this.touchSession(session);
      session.queue.push(seq);
      seq.session = session;
    }
    this.waiting.push(seq);
    const signal = request.signal;
    if (signal) {
      if (signal.aborted) {
        this.finish(seq, 'cancelled');
        return seq.stream;
      }
      seq.onAbort = () => this.finish(seq, 'cancelled');
      signal.addEventListener('abort', seq.onAbort, { once: true });
    }
    this.kick();
    return seq.stream;
  }

  /** Cancels a request by id (as its AbortSignal would); false when it is not in flight. */
  cancel(requestId: string): boolean {
    const seq = this.active.get(requestId);
    if (!seq) return false;
    this.finish(seq, 'cancelled');
    return true;
  }

  listSessions(): SessionInfo[] {
    this.expireSessions();
    return [...this.sessions.values()].map((s) => this.sessionInfo(s));
  }

  /** The session's state, or undefined when there is no such (live) session. */
  getSessionInfo(sessionId: string): SessionInfo | undefined {
    this.expireSessions();
    const session = this.sessions.get(sessionId);
    return session ? this.sessionInfo(session) : undefined;
  }

  /**
   * Closes a session and releases its KV at once; false when there is no such session. A
   * request of it still running finishes normally and then frees its pages; queued ones run
   * without the session.
   */
  closeSession(sessionId: string): boolean {
    const session = this.sessions.get(sessionId);
    if (!session) return false;
    this.sessions.delete(sessionId);
    session.closed = true;
    this.pool.releaseAll(session.kv.pages);
    session.kv = emptyKv();
    for (const seq of session.queue) if (seq.state === 'waiting') seq.session = null;
    session.queue = session.queue.filter((seq) => seq.state === 'running');
    if (this.sessions.size === 0) this.stopSessionTimer();
    return true;
  }

  getStats(): EngineStats {
    const c = this.counters;
    const pool = this.pool.stats();
    const mean = (sum: number, n: number): number => (n === 0 ? 0 : sum / n);
    return {
      steps: c.steps,
      numRunning: this.running.length,
      numWaiting: this.waiting.length,
      numSessions: this.sessions.size,
      requests: { submitted: c.submitted, finished: c.finished, cancelled: c.cancelled, failed: c.failed, rejected: c.rejected },
      preemptions: c.preemptions,
      tokensPrefilled: c.tokensPrefilled,
      tokensDecoded: c.tokensDecoded,
      tokensReused: c.tokensReused,
      queueTimeMs: { count: c.queueCount, mean: mean(c.queueSum, c.queueCount), max: c.queueMax },
      batchSize: { mean: mean(c.batchSeqSum, c.steps), max: c.batchSeqMax, histogram: { ...this.batchHistogram } },
      batchTokens: { mean: mean(c.batchTokenSum, c.steps), max: c.batchTokenMax },
      stepTimeMs: { mean: mean(c.stepMsSum, c.steps), max: c.stepMsMax },
      prefixCache: {
        queries: pool.prefixQueries,
        queryTokens: pool.prefixQueryTokens,
        hitTokens: pool.prefixHitTokens,
        hitPages: pool.prefixHitPages,
        hitRate: pool.prefixHitRate,
        evictions: pool.evictions,
      },
      sessionReusedTokens: c.sessionReusedTokens,
      kv: { totalPages: pool.numPages, usedPages: pool.usedPages, cachedFreePages: pool.cachedFreePages, pageSize: pool.pageSize, usage: pool.usage },
      selection: {
        pagesScanned: c.pagesScanned,
        pagesSelected: c.pagesSelected,
        kvBytesRead: c.kvBytesRead,
        kvBytesDense: c.kvBytesDense,
        // kv-retriever's definition: the share of resident pages (per sequence, layer, KV head)
        // that decode attention read; 1 before any decode step.
        kvHitRate: c.pagesScanned === 0 ? 1 : c.pagesSelected / c.pagesScanned,
        kvReadFraction: c.kvBytesDense === 0 ? 1 : c.kvBytesRead / c.kvBytesDense,
      },
      pruning: { prunes: c.prunes, tokensPruned: c.tokensPruned, pagesFreed: c.pagesPruned, skippedForRoom: c.pruneSkipped },
      copyOnWrites: c.copyOnWrites,
    };
  }

  /** Stops accepting requests; resolves once every accepted request (running or waiting) has finished. */
  drain(): Promise<void> {
    this.accepting = false;
    if (this.running.length === 0 && this.waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /**
   * Stops accepting requests, cancels every request in flight, waits for the step under way,
   * and releases all sessions. The executor is the caller's to dispose.
   */
  async shutdown(): Promise<void> {
    this.accepting = false;
    for (const seq of [...this.running, ...this.waiting]) this.finish(seq, 'cancelled');
    if (this.loopActive) await new Promise<void>((resolve) => this.loopWaiters.push(resolve));
    for (const id of [...this.sessions.keys()]) this.closeSession(id);
    this.stopSessionTimer();
  }

  // ---- validation ----------------------------------------------------------------------------

  private validate(request: EngineRequest): void {
    if (request === null || typeof request !== 'object') throw new RequestValidationError('request', 'must be an object');
    const { requestId, promptTokenIds, priority, sessionId, signal } = request;
    if (typeof requestId !== 'string' || requestId.length === 0 || requestId.length > 256) {
      throw new RequestValidationError('requestId', 'must be a non-empty string of at most 256 characters');
    }
    if (this.active.has(requestId)) throw new RequestValidationError('requestId', `'${requestId}' is already in flight`);
    if (!Array.isArray(promptTokenIds) || promptTokenIds.length === 0) {
      throw new RequestValidationError('promptTokenIds', 'must be a non-empty array of token ids');
    }
    for (let i = 0; i < promptTokenIds.length; i++) {
      const id = promptTokenIds[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RequestValidationError(`promptTokenIds[${i}]`, `must be a token id in [0, ${this.vocabSize}), got ${String(id)}`);
      }
    }
    if (promptTokenIds.length >= this.maxModelLen) {
      throw new RequestValidationError(
        'promptTokenIds',
        `the prompt has ${promptTokenIds.length} tokens but the context holds ${this.maxModelLen} (maxModelLen), leaving no room to generate`,
      );
    }
    checkSamplingParams(request.sampling, this.vocabSize);
    if (!(priority in PRIORITY_RANK)) {
      throw new RequestValidationError('priority', `must be 'high', 'normal' or 'low', got ${String(priority)}`);
    }
    if (sessionId !== undefined && (typeof sessionId !== 'string' || sessionId.length === 0 || sessionId.length > 256)) {
      throw new RequestValidationError('sessionId', 'must be a non-empty string of at most 256 characters');
    }
    if (signal !== undefined && (signal === null || typeof signal.addEventListener !== 'function' || typeof signal.aborted !== 'boolean')) {
      throw new RequestValidationError('signal', 'must be an AbortSignal');
    }
    const needed = pagesFor(promptTokenIds.length, this.pageSize);
    if (needed > this.pool.numPages) {
      throw new OutOfPagesError(
        `the prompt needs ${needed} KV pages of ${this.pageSize} tokens but the pool has ${this.pool.numPages}; raise numKvPages or shorten the prompt`,
      );
    }
  }

  // ---- the loop ------------------------------------------------------------------------------

  private kick(): void {
    if (this.loopActive) return;
    this.loopActive = true;
    setImmediate(() => void this.runLoop());
  }

  private async runLoop(): Promise<void> {
    try {
      while (this.running.length > 0 || this.waiting.length > 0) {
        let worked: boolean;
        try {
          worked = await this.step();
        } catch (error) {
          // A bug in planning must not hang callers: fail what is in flight, loudly.
          const failure = asError(error);
          for (const seq of [...this.running, ...this.waiting]) this.finish(seq, 'error', failure);
          break;
        }
        if (!worked) {
          const stuck = new TinyServeError('internal_error', 'the engine could not schedule waiting requests');
          for (const seq of [...this.waiting]) this.finish(seq, 'error', stuck);
          break;
        }
        await yieldToIo();
      }
    } finally {
      this.loopActive = false;
      for (const resolve of this.loopWaiters.splice(0)) resolve();
      this.checkIdle();
    }
  }

  private async step(): Promise<boolean> {
    this.expireSessions();
    const t0 = this.now();
    const plan = this.schedule();
    if (plan.items.length === 0) return this.running.length > 0 || this.waiting.length === 0;

    const items = plan.items;
    const n = items.length;
    const starts = items.map((seq) => seq.kv.tokens.length);
    const queryIndptr = new Int32Array(n + 1);
    const pageIndptr = new Int32Array(n + 1);
    for (let i = 0; i < n; i++) {
      queryIndptr[i + 1] = queryIndptr[i] + items[i].chunk;
      pageIndptr[i + 1] = pageIndptr[i] + items[i].kv.pages.length;
    }
    const tokenIds = new Int32Array(queryIndptr[n]);
    const pageIndices = new Int32Array(pageIndptr[n]);
    const startPos = new Int32Array(n);
    const logitsMode = new Uint8Array(n);
    const seqIds = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const seq = items[i];
      for (let j = 0; j < seq.chunk; j++) tokenIds[queryIndptr[i] + j] = seq.pending[j];
      pageIndices.set(seq.kv.pages, pageIndptr[i]);
      startPos[i] = starts[i];
      seqIds[i] = seq.seqId;
      logitsMode[i] = this.logitsModeFor(seq, starts[i]);
    }
    let wantsStats = false;
    if (this.hooks) {
      try {
        wantsStats = this.hooks.wantsAttentionStats();
      } catch {
        wantsStats = false;
      }
    }
    const params: ForwardParams = { tokenIds, queryIndptr, startPos, pageIndptr, pageIndices, logitsMode, seqIds };
    if (wantsStats) params.collectAttentionStats = true;
    const chunks = items.map((seq) => seq.chunk);
    for (const seq of items) seq.chunk = 0;

    let result: ForwardResult;
    try {
      result = await this.executor.forward(params);
    } catch (error) {
      const failure = asError(error);
      for (const seq of items) this.finish(seq, 'error', failure);
      return true;
    }

    const c = this.counters;
    c.steps++;
    c.batchSeqSum += n;
    c.batchSeqMax = Math.max(c.batchSeqMax, n);
    c.batchTokenSum += tokenIds.length;
    c.batchTokenMax = Math.max(c.batchTokenMax, tokenIds.length);
    const bucket = bucketOf(n);
    this.batchHistogram[bucket] = (this.batchHistogram[bucket] ?? 0) + 1;
    c.pagesScanned += result.selection.pagesScanned;
    c.pagesSelected += result.selection.pagesSelected;
    c.kvBytesRead += result.selection.kvBytesRead;
    c.kvBytesDense += result.selection.kvBytesDense;

    for (let i = 0; i < n; i++) {
      const seq = items[i];
      // Cancelled (or shut down) while the step ran: its pages are already back in the pool.
      if (seq.state !== 'running') continue;
      try {
        this.afterForward(seq, chunks[i], logitsMode[i], result, i);
      } catch (error) {
        this.finish(seq, 'error', asError(error));
      }
    }
    const ms = this.now() - t0;
    c.stepMsSum += ms;
    c.stepMsMax = Math.max(c.stepMsMax, ms);
    return true;
  }

  private logitsModeFor(seq: Sequence, start: number): number {
    const promptLen = seq.request.promptTokenIds.length;
    // Row at position p predicts token p+1: score prompt tokens not scored yet.
    if (seq.promptLogprobs && seq.promptNext < promptLen && start + seq.chunk >= seq.promptNext) return 2;
    return seq.chunk === seq.pending.length ? 1 : 0;
  }

  // ---- planning ------------------------------------------------------------------------------

  private byRank = (a: Sequence, b: Sequence): number => a.rank - b.rank || a.order - b.order;

  private schedule(): StepPlan {
    const plan: StepPlan = { items: [], budget: this.config.maxBatchTokens };
    const maxSeqs = Math.min(this.config.maxNumSeqs, this.config.maxBatchTokens);
    this.running.sort(this.byRank);

    // 1. One decode token for every running sequence past its prefill.
    for (const seq of [...this.running]) {
      if (seq.state !== 'running' || !this.isDecode(seq)) continue;
      if (plan.budget < 1) break;
      this.reserve(seq, 1, plan);
    }
    // 2. Prefill chunks of running sequences.
    for (const seq of [...this.running]) {
      if (seq.state !== 'running' || seq.chunk > 0 || this.isDecode(seq)) continue;
      if (plan.budget < 1) break;
      this.reserve(seq, Math.min(seq.pending.length, plan.budget), plan);
    }
    // 3. Admit waiting requests, best effective rank first.
    const now = this.now();
    const effective = (seq: Sequence): number => seq.rank - Math.floor((now - seq.arrival) / this.agingIntervalMs);
    const order = [...this.waiting].sort((a, b) => effective(a) - effective(b) || a.order - b.order);
    for (const seq of order) {
      if (plan.budget < 1 || this.running.length >= maxSeqs) break;
      if (seq.state !== 'waiting') continue;
      if (seq.session && seq.session.queue[0] !== seq) continue;
      const outcome = this.admit(seq, plan);
      if (outcome === 'blocked') break;
    }
    return plan;
  }

  private isDecode(seq: Sequence): boolean {
    return seq.output.length > 0 && seq.pending.length === 1;
  }

  /** Schedules `n` tokens of a running sequence, allocating its pages (preempting if need be). */
  private reserve(seq: Sequence, n: number, plan: StepPlan): boolean {
    const total = pagesFor(seq.kv.tokens.length + n, this.pageSize);
    if (total > this.pool.numPages) {
      this.finish(seq, 'error', this.neverFits(seq, total));
      return false;
    }
    const need = total - seq.kv.pages.length;
    if (need > 0) {
      const pages = this.allocateFor(seq, need, plan, true, null);
      if (pages === null) {
        if (this.running.length === 1) {
          // Alone and still no room: recomputing later would not help.
          this.finish(seq, 'error', this.neverFits(seq, total));
        } else {
          this.preempt(seq, plan);
        }
        return false;
      }
      seq.kv.pages.push(...pages);
    }
    seq.chunk = n;
    plan.items.push(seq);
    plan.budget -= n;
    return true;
  }

  private neverFits(seq: Sequence, pages: number): OutOfPagesError {
    return new OutOfPagesError(
      `request '${seq.request.requestId}' needs ${pages} KV pages of ${this.pageSize} tokens for ${seq.kv.tokens.length + seq.pending.length} ` +
        `tokens but the pool has ${this.pool.numPages}; raise numKvPages or lower maxTokens`,
    );
  }

  /**
   * `need` pages for `seq`, or null. Frees idle sessions' KV first; a running sequence may
   * then preempt the lowest-priority, latest running one (null when that is itself).
   */
  private allocateFor(seq: Sequence, need: number, plan: StepPlan, mayPreempt: boolean, keepSession: Session | null): number[] | null {
    for (;;) {
      const pages = this.pool.allocate(need);
      if (pages) return pages;
      if (this.releaseIdleSessionKv(keepSession)) continue;
      if (!mayPreempt) return null;
      const victim = this.running[this.running.length - 1];
      if (victim === undefined || victim === seq) return null;
      this.preempt(victim, plan);
    }
  }

  /** Releases the KV of the least recently active session with no running request. */
  private releaseIdleSessionKv(keep: Session | null): boolean {
    let best: Session | null = null;
    for (const s of this.sessions.values()) {
      if (s === keep || s.kv.pages.length === 0) continue;
      if (s.queue.length > 0 && s.queue[0].state === 'running') continue;
      if (!best || s.lastActive < best.lastActive) best = s;
    }
    if (!best) return false;
    this.pool.releaseAll(best.kv.pages);
    best.kv = emptyKv();
    return true;
  }

  /** Frees a running sequence's pages and requeues it to recompute its KV later. */
  private preempt(seq: Sequence, plan: StepPlan): void {
    const idx = this.running.indexOf(seq);
    if (idx >= 0) this.running.splice(idx, 1);
    if (seq.chunk > 0) {
      plan.budget += seq.chunk;
      plan.items.splice(plan.items.indexOf(seq), 1);
      seq.chunk = 0;
    }
    this.pool.releaseAll(seq.kv.pages);
    seq.pending = seq.kv.tokens.concat(seq.pending);
    seq.kv = emptyKv();
    seq.state = 'waiting';
    this.waiting.push(seq);
    this.counters.preemptions++;
  }

  /**
   * Admits a waiting request: reuses KV from its session or the prefix cache, allocates the
   * pages of its first chunk and schedules it. 'blocked' when there is no room now.
   */
  private admit(seq: Sequence, plan: StepPlan): 'admitted' | 'blocked' | 'failed' {
    const stream = seq.pending;
    // At least one token must run to produce logits; echo needs the unscored prompt's rows.
    let maxReuse = Math.min(stream.length - 1, seq.streamExact);
    if (seq.promptLogprobs) maxReuse = Math.min(maxReuse, seq.promptNext - 1);

    const session = seq.session;
    let sessionLcp = 0;
    if (session && session.kv.pages.length > 0) {
      const kv = session.kv;
      const limit = Math.min(kv.exactLen, kv.tokens.length, maxReuse);
      while (sessionLcp < limit && kv.tokens[sessionLcp] === stream[sessionLcp]) sessionLcp++;
    }
    const match =
      this.pool.enablePrefixCaching && maxReuse >= this.pageSize
        ? this.pool.lookupPrefix(stream, { maxTokens: maxReuse, recordStats: false })
        : { pages: [], hashes: [], numTokens: 0 };
    let usePrefix = match.numTokens > sessionLcp;
    let reuse = usePrefix ? match.numTokens : sessionLcp;

    let kv: KvState;
    let cowSource = -1;
    let overwrite = false;
    if (usePrefix) {
      for (const page of match.pages) this.pool.retain(page);
      kv = { pages: [...match.pages], tokens: stream.slice(0, reuse), exactLen: reuse, hashes: [...match.hashes] };
    } else if (session && sessionLcp > 0) {
      // Pages past the common prefix are of no further use to this conversation.
      const skv = session.kv;
      const keep = pagesFor(sessionLcp, this.pageSize);
      overwrite = skv.tokens.length > sessionLcp && sessionLcp % this.pageSize !== 0;
      this.pool.releaseAll(skv.pages.slice(keep));
      skv.pages.length = keep;
      skv.tokens.length = sessionLcp;
      skv.exactLen = Math.min(skv.exactLen, sessionLcp);
      skv.hashes.length = Math.min(skv.hashes.length, Math.floor(sessionLcp / this.pageSize));
      kv = skv;
      const last = skv.pages[keep - 1];
      // The turn writes into the last kept page from slot sessionLcp % pageSize: copy it first
      // if it is shared or a cached prefix page.
      if (sessionLcp % this.pageSize !== 0 && (this.pool.refCount(last) > 1 || this.pool.pageHash(last) !== undefined)) {
        cowSource = last;
      }
    } else {
      kv = emptyKv();
    }
    if (session && kv !== session.kv && session.kv.pages.length > 0) {
      // The session's own KV lost to the prefix cache or matches nothing: it is of no further use.
      this.pool.releaseAll(session.kv.pages);
      session.kv = emptyKv();
    }
    const keepSession = session && kv === session.kv ? session : null;

    let n = Math.min(stream.length - reuse, plan.budget);
    if (pagesFor(reuse + n, this.pageSize) > this.pool.numPages) {
      if (usePrefix) this.pool.releaseAll(match.pages);
      this.finish(seq, 'error', this.neverFits(seq, pagesFor(stream.length, this.pageSize)));
      return 'failed';
    }
    const needFor = (): number => pagesFor(reuse + n, this.pageSize) - kv.pages.length + (cowSource >= 0 ? 1 : 0);
    let pages = this.allocateFor(seq, needFor(), plan, false, keepSession);
    if (pages === null && this.running.length === 0 && reuse > 0) {
      // Nothing else holds pages, so the reuse itself (a copy-on-write page) is in the way: start afresh.
      if (usePrefix) this.pool.releaseAll(match.pages);
      else this.pool.releaseAll(kv.pages);
      if (session) session.kv = emptyKv();
      usePrefix = false;
      reuse = 0;
      sessionLcp = 0;
      cowSource = -1;
      overwrite = false;
      kv = emptyKv();
      n = Math.min(stream.length, plan.budget);
      pages = this.allocateFor(seq, needFor(), plan, false, null);
    }
    if (pages === null) {
      if (usePrefix) this.pool.releaseAll(match.pages);
      if (this.running.length === 0) {
        // Nothing else holds pages: this request cannot fit at all.
        this.finish(seq, 'error', this.neverFits(seq, pagesFor(reuse + n, this.pageSize)));
        return 'failed';
      }
      return 'blocked';
    }

    // Committed: take the KV over.
    if (keepSession) keepSession.kv = emptyKv();
    if (cowSource >= 0) {
      const dst = pages.shift() as number;
      const fill = sessionLcp % this.pageSize;
      const slots = Int32Array.from({ length: fill }, (_, i) => i);
      this.executor.copyTokens({
        srcPages: new Int32Array(fill).fill(cowSource),
        srcSlots: slots,
        dstPages: new Int32Array(fill).fill(dst),
        dstSlots: slots,
      });
      this.executor.rebuildPageMetadata?.(Int32Array.of(dst), Int32Array.of(fill));
      kv.pages[kv.pages.length - 1] = dst;
      this.pool.release(cowSource);
      this.counters.copyOnWrites++;
    } else if (overwrite) {
      // Written in place from mid-page: the slots past the common prefix held other keys.
      this.executor.rebuildPageMetadata?.(Int32Array.of(kv.pages[kv.pages.length - 1]), Int32Array.of(sessionLcp % this.pageSize));
    }
    kv.pages.push(...pages);
    seq.kv = kv;
    seq.pending = stream.slice(reuse);

    if (this.pool.enablePrefixCaching) this.pool.recordPrefixQuery(stream.length, usePrefix ? reuse : 0);
    if (!usePrefix) this.counters.sessionReusedTokens += reuse;
    if (!seq.admittedOnce) {
      seq.admittedOnce = true;
      seq.cachedTokens = reuse;
      this.counters.tokensReused += reuse;
      seq.firstScheduledAt = this.now();
      const queued = seq.firstScheduledAt - seq.arrival;
      this.counters.queueCount++;
      this.counters.queueSum += queued;
      this.counters.queueMax = Math.max(this.counters.queueMax, queued);
    }
    this.waiting.splice(this.waiting.indexOf(seq), 1);
    seq.state = 'running';
    this.running.push(seq);
    if (!seq.started) {
      seq.started = true;
      if (this.hooks) {
        try {
          this.hooks.onRequestStart(this.hookInfo(seq));
        } catch (error) {
          this.finish(seq, 'error', this.pluginFailure(error, 'onRequestStart'));
          return 'failed';
        }
      }
    }
    seq.chunk = n;
    plan.items.push(seq);
    plan.budget -= n;
    return 'admitted';
  }

  // ---- after the forward ---------------------------------------------------------------------

  private afterForward(seq: Sequence, n: number, mode: number, result: ForwardResult, index: number): void {
    const decode = this.isDecode(seq);
    const start = seq.kv.tokens.length;
    const fed = seq.pending.splice(0, n);
    for (const t of fed) seq.kv.tokens.push(t);
    if (!decode) this.counters.tokensPrefilled += n;
    seq.kv.exactLen = Math.min(seq.streamExact, seq.kv.tokens.length);
    this.commitFullPages(seq.kv);

    const vocab = this.vocabSize;
    const rowBase = result.logitsIndptr[index];
    const row = (r: number): Float32Array => result.logits.subarray((rowBase + r) * vocab, (rowBase + r + 1) * vocab);
    if (mode === 2 && seq.promptLogprobs) {
      const prompt = seq.request.promptTokenIds;
      for (let j = 0; j < n; j++) {
        const target = start + j + 1;
        if (target !== seq.promptNext || target >= prompt.length) continue;
        const r = row(j);
        seq.promptLogprobs[target] = r[prompt[target]] - logSumExp(r);
        seq.promptNext++;
      }
    }
    if (seq.pending.length > 0) return;
    if (seq.output.length >= seq.request.sampling.maxTokens) {
      this.finish(seq, 'length');
      return;
    }
    this.sampleNext(seq, row(mode === 2 ? n - 1 : 0), result.attention);
  }

  private sampleNext(seq: Sequence, logits: Float32Array, attention: AttentionStats[] | undefined): void {
    const sampling = seq.request.sampling;
    const hooks = this.hooks;
    const wantLogprob = sampling.logprobs || hooks !== null;
    const lse = wantLogprob ? logSumExp(logits) : 0;
    const raw = hooks ? logits.slice() : logits;
    if (hooks) {
      try {
        hooks.processLogits({ ...this.hookInfo(seq), logits, generatedTokens: seq.output });
      } catch (error) {
        this.finish(seq, 'error', this.pluginFailure(error, 'processLogits'));
        return;
      }
    }
    const token = sampleToken(logits, sampling, seq.rng);
    const logprob = wantLogprob ? raw[token] - lse : Number.NaN;
    seq.output.push(token);
    seq.logprobs?.push(logprob);
    seq.pending.push(token);
    if (seq.firstTokenAt < 0) seq.firstTokenAt = this.now();
    this.counters.tokensDecoded++;
    if (seq.session) seq.session.completionTokens++;

    let decision: TokenDecision | undefined;
    if (hooks) {
      try {
        decision = hooks.onTokenAccepted({
          ...this.hookInfo(seq),
          tokenId: token,
          logprob,
          logits,
          generatedTokens: seq.output,
          contextLength: seq.kv.tokens.length,
          ...(attention ? { attention: attention.filter((a) => a.seqId === seq.seqId) } : {}),
        });
      } catch (error) {
        this.finish(seq, 'error', this.pluginFailure(error, 'onTokenAccepted'));
        return;
      }
    }

    let reason: FinishReason | null = null;
    let delta = '';
    if (!sampling.ignoreEos && this.eos.has(token)) reason = 'stop';
    else if (sampling.stopTokenIds.includes(token)) reason = 'stop';
    else {
      const d = seq.text.push(token);
      delta = d.delta;
      if (d.stopped) reason = 'stop';
    }
    if (reason === null && decision?.finish) reason = decision.finish;
    if (reason === null && seq.output.length >= sampling.maxTokens) reason = 'length';
    if (reason === null && seq.kv.tokens.length + seq.pending.length >= this.maxModelLen) reason = 'length';
    if (reason !== null) {
      const tail = seq.text.finish();
      delta += tail.delta;
      if (tail.stopped && reason === 'length') reason = 'stop';
    }
    seq.stream.push(sampling.logprobs ? { type: 'token', tokenId: token, text: delta, logprob } : { type: 'token', tokenId: token, text: delta });
    if (reason !== null) {
      this.finish(seq, reason);
      return;
    }
    if (decision?.prunePositions && decision.prunePositions.length > 0) this.prune(seq, decision.prunePositions);
  }

  /** Registers the sequence's newly full pages (within its unpruned prefix) in the prefix cache. */
  private commitFullPages(kv: KvState): void {
    if (!this.pool.enablePrefixCaching) return;
    const full = Math.floor(kv.exactLen / this.pageSize);
    for (let i = kv.hashes.length; i < full; i++) {
      const parent = i === 0 ? ROOT_PREFIX_HASH : kv.hashes[i - 1];
      const hash = hashPageTokens(parent, kv.tokens, i * this.pageSize, (i + 1) * this.pageSize);
      kv.hashes.push(hash);
      this.pool.commitFullPage(kv.pages[i], hash);
    }
  }

  /**
   * Drops cache positions: the kept tokens are compacted leftwards with executor.copyTokens
   * (shared or cached pages are copied first), emptied pages are released, the rewritten
   * pages' metadata is rebuilt, and the hooks hear what was freed. Skipped (nothing changes)
   * when the pool has no room for the copies.
   */
  private prune(seq: Sequence, positions: readonly number[]): void {
    const kv = seq.kv;
    const len = kv.tokens.length;
    const sorted = [...new Set(positions)].sort((a, b) => a - b);
    for (const p of sorted) {
      if (!Number.isInteger(p) || p < 0 || p >= len) {
        throw new PluginError('onTokenAccepted', `prunePositions holds ${p}, outside the cache of ${len} tokens`);
      }
    }
    const ps = this.pageSize;
    const first = sorted[0];
    const newLen = len - sorted.length;
    const firstPage = Math.floor(first / ps);
    const oldCount = kv.pages.length;
    const newCount = pagesFor(newLen, ps);
    const region = kv.pages.slice(firstPage, newCount);
    // Keep cached prefix pages intact when there is room to copy them; else only shared pages are copied.
    const writable = this.pool.prepareWrite(region, { keepCached: true }) ?? this.pool.prepareWrite(region);
    if (writable === null) {
      this.counters.pruneSkipped++;
      return;
    }
    const table = [...kv.pages.slice(0, firstPage), ...writable.pages, ...kv.pages.slice(newCount)];
    const src: number[] = [];
    const srcSlot: number[] = [];
    const dst: number[] = [];
    const dstSlot: number[] = [];
    for (const copy of writable.copies) {
      const pageIndex = firstPage + writable.pages.indexOf(copy.dst);
      const fill = Math.min(ps, len - pageIndex * ps);
      for (let s = 0; s < fill; s++) {
        src.push(copy.src);
        srcSlot.push(s);
        dst.push(copy.dst);
        dstSlot.push(s);
      }
    }
    const kept: number[] = [];
    let next = 0;
    for (let p = 0; p < len; p++) {
      if (next < sorted.length && sorted[next] === p) {
        next++;
        continue;
      }
      const j = kept.length;
      kept.push(kv.tokens[p]);
      if (j !== p) {
        src.push(table[Math.floor(p / ps)]);
        srcSlot.push(p % ps);
        dst.push(table[Math.floor(j / ps)]);
        dstSlot.push(j % ps);
      }
    }
    // Copy-on-write copies first, then the compaction front to back (copyTokens applies in order).
    if (src.length > 0) {
      this.executor.copyTokens({
        srcPages: Int32Array.from(src),
        srcSlots: Int32Array.from(srcSlot),
        dstPages: Int32Array.from(dst),
        dstSlots: Int32Array.from(dstSlot),
      });
    }
    this.counters.copyOnWrites += writable.copies.length;
    this.pool.releaseAll(table.slice(newCount));
    kv.pages = table.slice(0, newCount);
    kv.tokens = kept;
    seq.streamExact = Math.min(seq.streamExact, first);
    kv.exactLen = Math.min(kv.exactLen, first);
    kv.hashes.length = Math.min(kv.hashes.length, Math.floor(first / ps));
    if (writable.pages.length > 0) {
      const fills = writable.pages.map((_, i) => Math.min(ps, newLen - (firstPage + i) * ps));
      this.executor.rebuildPageMetadata?.(Int32Array.from(writable.pages), Int32Array.from(fills));
    }
    const pagesFreed = oldCount - newCount;
    this.counters.prunes++;
    this.counters.tokensPruned += sorted.length;
    this.counters.pagesPruned += pagesFreed;
    if (this.hooks) {
      try {
        this.hooks.onPruned({
          ...this.hookInfo(seq),
          tokensPruned: sorted.length,
          pagesFreed,
          bytesFreed: pagesFreed * this.executor.kvBytesPerPage,
        });
      } catch (error) {
        this.finish(seq, 'error', this.pluginFailure(error, 'onPruned'));
      }
    }
  }

  // ---- finishing -----------------------------------------------------------------------------

  private finish(seq: Sequence, reason: FinishReason, error?: TinyServeError): void {
    if (seq.state === 'finished') return;
    const list = seq.state === 'running' ? this.running : this.waiting;
    const idx = list.indexOf(seq);
    if (idx >= 0) list.splice(idx, 1);
    seq.state = 'finished';
    this.active.delete(seq.request.requestId);
    if (seq.onAbort && seq.request.signal) seq.request.signal.removeEventListener('abort', seq.onAbort);

    const session = seq.session;
    if (session && !session.closed && error === undefined && reason !== 'cancelled' && seq.kv.pages.length > 0) {
      // The conversation keeps its KV for the next turn.
      this.pool.releaseAll(session.kv.pages);
      session.kv = seq.kv;
    } else {
      this.pool.releaseAll(seq.kv.pages);
    }
    seq.kv = emptyKv();
    if (session) {
      const qi = session.queue.indexOf(seq);
      if (qi >= 0) session.queue.splice(qi, 1);
      this.touchSession(session);
    }

    if (seq.started && this.hooks) {
      try {
        this.hooks.onRequestFinish({ ...this.hookInfo(seq), finishReason: error ? 'error' : reason, generatedTokens: seq.output });
      } catch {
        // The request is over either way; the plugin manager records its own failures.
      }
    }
    if (error) {
      this.counters.failed++;
      seq.stream.fail(error);
    } else {
      if (reason === 'cancelled') this.counters.cancelled++;
      else this.counters.finished++;
      seq.stream.end(this.buildResult(seq, reason));
    }
    this.checkIdle();
    if (this.running.length + this.waiting.length > 0) this.kick();
  }

  private buildResult(seq: Sequence, reason: FinishReason): EngineResult {
    const end = this.now();
    const request = seq.request;
    const result: EngineResult = {
      requestId: request.requestId,
      tokenIds: [...seq.output],
      text: seq.text.text,
      finishReason: reason,
      usage: { promptTokens: request.promptTokenIds.length, completionTokens: seq.output.length, cachedTokens: seq.cachedTokens },
      timings: {
        queuedMs: (seq.firstScheduledAt >= 0 ? seq.firstScheduledAt : end) - seq.arrival,
        ttftMs: (seq.firstTokenAt >= 0 ? seq.firstTokenAt : end) - seq.arrival,
        totalMs: end - seq.arrival,
      },
    };
    if (seq.logprobs) result.logprobs = [...seq.logprobs];
    if (seq.promptLogprobs) result.promptLogprobs = [...seq.promptLogprobs];
    if (request.sessionId !== undefined) result.sessionId = request.sessionId;
    return result;
  }

  private checkIdle(): void {
    if (this.running.length > 0 || this.waiting.length > 0) return;
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private hookInfo(seq: Sequence): RequestHookInfo {
    const info: RequestHookInfo = { requestId: seq.request.requestId, seqId: seq.seqId, promptLength: seq.request.promptTokenIds.length };
    if (seq.request.sessionId !== undefined) info.sessionId = seq.request.sessionId;
    return info;
  }

  private pluginFailure(error: unknown, hook: string): TinyServeError {
    if (error instanceof TinyServeError) return error;
    const message = error instanceof Error ? error.message : String(error);
    return new PluginError(hook, message, { cause: error });
  }

  // ---- sessions ------------------------------------------------------------------------------

  private createSession(id: string): Session {
    const session: Session = {
      id,
      createdAt: Date.now(),
      lastActiveAt: Date.now(),
      lastActive: this.now(),
      requestCount: 0,
      promptTokens: 0,
      completionTokens: 0,
      kv: emptyKv(),
      queue: [],
      closed: false,
    };
    this.sessions.set(id, session);
    this.startSessionTimer();
    return session;
  }

  private touchSession(session: Session): void {
    session.lastActive = this.now();
    session.lastActiveAt = Date.now();
  }

  private sessionInfo(s: Session): SessionInfo {
    const runningSeq = s.queue.length > 0 && s.queue[0].state === 'running' ? s.queue[0] : null;
    const kv = runningSeq ? runningSeq.kv : s.kv;
    return {
      sessionId: s.id,
      requestCount: s.requestCount,
      numTokens: kv.tokens.length,
      pagesHeld: kv.pages.length,
      promptTokens: s.promptTokens,
      completionTokens: s.completionTokens,
      createdAt: s.createdAt,
      lastActiveAt: s.lastActiveAt,
      active: runningSeq !== null,
      queuedRequests: s.queue.length - (runningSeq ? 1 : 0),
    };
  }

  /** Closes sessions idle (no request running or queued) for longer than sessionTimeout. */
  private expireSessions(): void {
    if (this.sessions.size === 0) return;
    const limit = this.config.sessionTimeout * 1000;
    const now = this.now();
    for (const s of [...this.sessions.values()]) {
      if (s.queue.length === 0 && now - s.lastActive > limit) this.closeSession(s.id);
    }
  }

  private startSessionTimer(): void {
    if (this.sessionTimer !== null) return;
    const period = Math.min(60_000, Math.max(50, (this.config.sessionTimeout * 1000) / 4));
    this.sessionTimer = setInterval(() => this.expireSessions(), period);
    // Expiry must never keep a process alive on its own.
    this.sessionTimer.unref?.();
  }

  private stopSessionTimer(): void {
    if (this.sessionTimer === null) return;
    clearInterval(this.sessionTimer);
    this.sessionTimer = null;
  }
}
