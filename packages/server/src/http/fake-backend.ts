import { setTimeout as sleep } from 'node:timers/promises';
import { CancelledError, OverloadedError, RequestValidationError, normalizeRequest, mulberry32 } from '@tinyserve/core';
import type { FinishReason, NormalizedRequest, StreamEvent, StreamDecoder, TinyServeRequest, TinyServeResponse, Tokenizer } from '@tinyserve/core';
import type { BackendLoadedModel, BackendModelInfo, BackendStats, ServingBackend } from './backend.js';

/**
 * An in-memory {@link ServingBackend} for tests and the load script: a toy tokenizer, seeded
 * word-level "generation" at a fixed pace, and real bookkeeping of what an engine must get
 * right under HTTP load — admission with a bounded queue, KV pages reserved and returned,
 * cancellation through the request's AbortSignal, sessions holding pages between turns.
 */
export interface FakeBackendOptions {
  modelName?: string;
  /** Delay before each generated token. Default 1 ms. */
  tokenDelayMs?: number;
  /** Extra delay before the first token (prefill). Default 0. */
  prefillDelayMs?: number;
  numKvPages?: number;
  pageSize?: number;
  /** Requests decoded at once; more wait in the queue. Default 64. */
  maxRunning?: number;
  /** Waiting requests beyond this are rejected as `overloaded`. Default 256. */
  maxQueueSize?: number;
  maxModelLen?: number;
  /** Default max tokens for requests that give none. Default 16. */
  defaultMaxTokens?: number;
  chatTemplate?: string | null;
  tokenizerConfig?: Record<string, unknown>;
  /** Fail every generation with this (non-TinyServe) error after this many tokens: tests 500s. */
  failAfterTokens?: number;
}

export const FAKE_BOS = 1;
export const FAKE_EOS = 2;
const WORD_BASE = 0x11000;
const WORDS = ['the', 'cache', 'page', 'query', 'token', 'model', 'serves', 'fast', 'tiny', 'bound', 'key', 'value', 'selects', 'top', 'attention', 'sparse'];

/** Characters are their code points; generated words are ids from WORD_BASE; 1 is BOS, 2 is EOS. */
export class FakeTokenizer implements Tokenizer {
  readonly vocabSize = WORD_BASE + WORDS.length;
  readonly bosTokenId = FAKE_BOS;
  readonly eosTokenIds: readonly number[] = [FAKE_EOS];

  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    const ids = [...text].map((c) => c.codePointAt(0) as number);
    return options.addSpecialTokens === false ? ids : [FAKE_BOS, ...ids];
  }

  decode(ids: ArrayLike<number>): string {
    let out = '';
    for (let i = 0; i < ids.length; i++) out += this.piece(ids[i]);
    return out;
  }

  createStreamDecoder(): StreamDecoder {
    return { push: (id) => this.piece(id), flush: () => '' };
  }

  idToToken(id: number): string | null {
    return id >= 0 && id < this.vocabSize ? this.piece(id) : null;
  }

  /** The id of a generated word (" word"). */
  static wordId(index: number): number {
    return WORD_BASE + (index % WORDS.length);
  }

  private piece(id: number): string {
    if (id === FAKE_BOS || id === FAKE_EOS) return '';
    if (id >= WORD_BASE) return ` ${WORDS[id - WORD_BASE] ?? '?'}`;
    return String.fromCodePoint(id);
  }
}

/** As the scheduler's SessionInfo (the fields the fake can know). */
interface FakeSession {
  sessionId: string;
  requestCount: number;
  numTokens: number;
  pagesHeld: number;
  createdAt: number;
  lastActiveAt: number;
}

interface Waiter {
  pages: number;
  resolve: () => void;
}

export class FakeBackend implements ServingBackend {
  /** Every request received, in order (the HTTP layer's mapping is checked against these). */
  readonly received: TinyServeRequest[] = [];
  /** Request ids whose generation was cancelled through their AbortSignal. */
  readonly aborted: string[] = [];
  readonly options: Required<Omit<FakeBackendOptions, 'failAfterTokens' | 'chatTemplate'>> & Pick<FakeBackendOptions, 'failAfterTokens' | 'chatTemplate'>;
  drained = false;
  closed = false;

  private readonly tokenizer = new FakeTokenizer();
  private freePages: number;
  private running = 0;
  private readonly waiting: Waiter[] = [];
  private readonly sessions = new Map<string, FakeSession>();
  private readonly idle = new Set<() => void>();
  private counters = { total: 0, completed: 0, failed: 0, latencyMs: 0, ttftMs: 0, prefixQueries: 0, prefixQueryTokens: 0, prefixHitTokens: 0, scanned: 0, selected: 0 };
  private nextId = 0;

  constructor(options: FakeBackendOptions = {}) {
    this.options = {
      modelName: options.modelName ?? 'fake-model',
      tokenDelayMs: options.tokenDelayMs ?? 1,
      prefillDelayMs: options.prefillDelayMs ?? 0,
      numKvPages: options.numKvPages ?? 4096,
      pageSize: options.pageSize ?? 16,
      maxRunning: options.maxRunning ?? 64,
      maxQueueSize: options.maxQueueSize ?? 256,
      maxModelLen: options.maxModelLen ?? 2048,
      defaultMaxTokens: options.defaultMaxTokens ?? 16,
      tokenizerConfig: options.tokenizerConfig ?? {},
      chatTemplate: options.chatTemplate ?? null,
      failAfterTokens: options.failAfterTokens,
    };
    this.freePages = this.options.numKvPages;
  }

  get modelInfo(): BackendModelInfo | null {
    if (this.closed) return null;
    return { name: this.options.modelName, maxModelLen: this.options.maxModelLen, architecture: 'fake', executor: 'fake', numKvPages: this.options.numKvPages, kvBytesPerPage: 1024 };
  }

  get loadedModel(): BackendLoadedModel | null {
    if (this.closed) return null;
    return { tokenizer: this.tokenizer, chatTemplate: this.options.chatTemplate ?? null, tokenizerConfig: this.options.tokenizerConfig };
  }

  get scheduler(): ServingBackend['scheduler'] {
    return {
      listSessions: () => [...this.sessions.values()].map((s) => ({ ...s })),
      getSessionInfo: (id: string) => {
        const s = this.sessions.get(id);
        return s ? { ...s } : undefined;
      },
      closeSession: (id: string) => {
        const s = this.sessions.get(id);
        if (!s) return false;
        this.sessions.delete(id);
        this.release(s.pagesHeld);
        return true;
      },
    };
  }

  /** Shaped as `TinyServe.getStats()`: the scheduler's EngineStats fields the server reads, the plugin manager's totals. */
  getStats(): BackendStats & Record<string, unknown> {
    const c = this.counters;
    const total = this.options.numKvPages;
    const used = total - this.freePages;
    return {
      totalRequests: c.total,
      completedRequests: c.completed,
      failedRequests: c.failed,
      avgLatencyMs: c.completed ? c.latencyMs / c.completed : 0,
      avgTimeToFirstTokenMs: c.completed ? c.ttftMs / c.completed : 0,
      kvHitRate: c.scanned ? c.selected / c.scanned : 1,
      model: this.modelInfo,
      engine: {
        numRunning: this.running,
        numWaiting: this.waiting.length,
        numSessions: this.sessions.size,
        preemptions: 0,
        prefixCache: {
          queries: c.prefixQueries,
          queryTokens: c.prefixQueryTokens,
          hitTokens: c.prefixHitTokens,
          hitRate: c.prefixQueryTokens ? c.prefixHitTokens / c.prefixQueryTokens : 0,
        },
        kv: { totalPages: total, usedPages: used, cachedFreePages: 0, pageSize: this.options.pageSize, usage: used / total },
        selection: {
          pagesScanned: c.scanned,
          pagesSelected: c.selected,
          kvBytesRead: c.selected * 1024,
          kvBytesDense: c.scanned * 1024,
          kvHitRate: c.scanned ? c.selected / c.scanned : 1,
        },
        pruning: { prunes: 0, tokensPruned: 0, pagesFreed: 0 },
      },
      plugins: { plugins: {}, earlyExitCount: 0, tokensPruned: 0, bytesFreed: 0, pagesFreed: 0, activeRequests: 0 },
    };
  }

  async drain(): Promise<void> {
    this.drained = true;
    while (this.running > 0 || this.waiting.length > 0) await new Promise<void>((r) => this.idle.add(r));
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  async *serveStream(request: TinyServeRequest): AsyncGenerator<StreamEvent, void, undefined> {
    this.received.push(request);
    const n = normalizeRequest(request, { ...this.defaults() });
    if (this.drained || this.closed) throw new OverloadedError('the backend is draining');
    const promptIds = typeof n.prompt === 'string' ? this.tokenizer.encode(n.prompt, { addSpecialTokens: n.addSpecialTokens }) : n.prompt;
    if (promptIds.length + n.maxTokens > this.options.maxModelLen) {
      throw new RequestValidationError('maxTokens', `prompt (${promptIds.length} tokens) + maxTokens (${n.maxTokens}) exceeds the model's ${this.options.maxModelLen}-token context`);
    }
    const pages = Math.max(1, Math.ceil((promptIds.length + n.maxTokens) / this.options.pageSize));
    if (this.running >= this.options.maxRunning || pages > this.freePages || this.waiting.length > 0) {
      if (this.waiting.length >= this.options.maxQueueSize) throw new OverloadedError(`the queue is full (${this.options.maxQueueSize} waiting)`);
    }
    const requestId = n.requestId ?? `fake-${this.nextId++}`;
    this.counters.total += 1;
    const t0 = performance.now();
    let admitted = false;
    let finished = false;
    try {
      await this.admit(pages, n.signal);
      admitted = true;
      yield* this.generate(n, requestId, promptIds, t0);
      finished = true;
    } catch (error) {
      if (error instanceof CancelledError || n.signal?.aborted) {
        this.aborted.push(requestId);
        throw error instanceof CancelledError ? error : new CancelledError();
      }
      throw error;
    } finally {
      if (!finished) this.counters.failed += 1;
      if (admitted) {
        this.running -= 1;
        this.release(pages);
      } else {
        // Cancelled while queued (admit removed it from the queue): others may move up.
        this.wake();
      }
    }
  }

  private defaults(): { maxTokens: number; temperature: number; topP: number; topK: number; seed: number | null } {
    return { maxTokens: this.options.defaultMaxTokens, temperature: 0.7, topP: 1, topK: 0, seed: null };
  }

  private async admit(pages: number, signal: AbortSignal | undefined): Promise<void> {
    if (this.running < this.options.maxRunning && pages <= this.freePages && this.waiting.length === 0) {
      this.running += 1;
      this.freePages -= pages;
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        pages,
        resolve: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = (): void => {
        const i = this.waiting.indexOf(waiter);
        if (i !== -1) this.waiting.splice(i, 1);
        reject(new CancelledError());
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private release(pages: number): void {
    this.freePages += pages;
    this.wake();
  }

  private wake(): void {
    while (this.waiting.length > 0) {
      const w = this.waiting[0];
      if (this.running >= this.options.maxRunning || w.pages > this.freePages) break;
      this.waiting.shift();
      this.running += 1;
      this.freePages -= w.pages;
      w.resolve();
    }
    if (this.running === 0 && this.waiting.length === 0) {
      for (const r of this.idle) r();
      this.idle.clear();
    }
  }

  private async *generate(n: NormalizedRequest, requestId: string, promptIds: number[], t0: number): AsyncGenerator<StreamEvent, void, undefined> {
    const session = n.sessionId !== undefined ? this.sessions.get(n.sessionId) : undefined;
    // A session's earlier context is reused, as the engine's session KV reuse does.
    const cachedTokens = session ? Math.min(session.numTokens, promptIds.length - 1) : 0;
    this.counters.prefixQueries += 1;
    this.counters.prefixQueryTokens += promptIds.length;
    this.counters.prefixHitTokens += cachedTokens;
    const rand = mulberry32(n.seed ?? Math.floor(Math.random() * 2 ** 32));
    const holdBack = Math.max(0, ...n.stop.map((s) => s.length - 1));
    const tokens: number[] = [];
    const logprobs: number[] = [];
    let text = '';
    let emitted = 0;
    let finishReason: FinishReason = 'length';
    let ttftMs = 0;
    if (this.options.prefillDelayMs > 0) await this.wait(this.options.prefillDelayMs, n.signal);
    for (let i = 0; i < n.maxTokens; i++) {
      await this.wait(this.options.tokenDelayMs, n.signal);
      if (this.options.failAfterTokens !== undefined && i >= this.options.failAfterTokens) {
        throw new Error('fake backend fault: /secret/path/in/stack');
      }
      const id = FakeTokenizer.wordId(Math.floor(rand() * WORDS.length));
      const logprob = -rand() * 3;
      const held = Math.ceil((promptIds.length + i + 1) / this.options.pageSize);
      this.counters.scanned += held;
      this.counters.selected += Math.max(1, Math.ceil(held * 0.3));
      tokens.push(id);
      logprobs.push(logprob);
      text += this.tokenizer.decode([id]);
      if (i === 0) ttftMs = performance.now() - t0;
      const hit = n.stop.map((s) => text.indexOf(s)).filter((j) => j !== -1);
      if (hit.length > 0) {
        text = text.slice(0, Math.min(...hit));
        finishReason = 'stop';
        // The stop string is never shown: emit what precedes it, then finish.
        yield { type: 'token', text: text.slice(emitted, Math.max(emitted, text.length)), tokenId: id, ...(n.logprobs ? { logprob } : {}) };
        emitted = text.length;
        break;
      }
      // Hold back a tail that might still become a stop string, as a real detokenizer does.
      const safe = Math.max(emitted, text.length - holdBack);
      yield { type: 'token', text: text.slice(emitted, safe), tokenId: id, ...(n.logprobs ? { logprob } : {}) };
      emitted = safe;
    }
    const latencyMs = performance.now() - t0;
    this.counters.completed += 1;
    this.counters.latencyMs += latencyMs;
    this.counters.ttftMs += ttftMs;
    if (n.sessionId !== undefined) this.keepForSession(n.sessionId, promptIds.length + tokens.length);
    const response: TinyServeResponse = {
      requestId,
      generatedText: text,
      tokens,
      finishReason,
      latencyMs,
      timeToFirstTokenMs: ttftMs,
      usage: { promptTokens: promptIds.length, completionTokens: tokens.length, totalTokens: promptIds.length + tokens.length, cachedTokens },
    };
    if (n.logprobs) response.logprobs = logprobs;
    if (n.echo) {
      response.promptTokens = promptIds;
      response.promptLogprobs = promptIds.map((_, i) => (i === 0 ? null : -1 - (i % 3)));
    }
    if (n.sessionId !== undefined) response.sessionId = n.sessionId;
    yield { type: 'done', response };
  }

  private keepForSession(id: string, tokens: number): void {
    const now = Date.now();
    const pagesNeeded = Math.ceil(tokens / this.options.pageSize);
    const s = this.sessions.get(id) ?? { sessionId: id, requestCount: 0, numTokens: 0, pagesHeld: 0, createdAt: now, lastActiveAt: now };
    // The session keeps its context's pages (taken from the pool) until it is closed.
    const extra = Math.min(Math.max(0, pagesNeeded - s.pagesHeld), this.freePages);
    this.freePages -= extra;
    s.pagesHeld += extra;
    s.requestCount += 1;
    s.numTokens = tokens;
    s.lastActiveAt = now;
    this.sessions.set(id, s);
  }

  private async wait(ms: number, signal: AbortSignal | undefined): Promise<void> {
    try {
      await sleep(ms, undefined, { signal });
    } catch {
      throw new CancelledError();
    }
  }
}
