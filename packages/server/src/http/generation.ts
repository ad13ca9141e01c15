import { setImmediate as nextMacrotask } from 'node:timers/promises';
import { TinyServeError } from '@tinyserve/core';
import type { StreamEvent, TinyServeRequest } from '@tinyserve/core';
import type { ServingBackend } from './backend.js';
import type { ServerMetrics } from './metrics.js';

export interface ChoiceEvent {
  index: number;
  event: StreamEvent;
}

type Pulled = { ok: true; index: number; result: IteratorResult<StreamEvent> } | { ok: false; index: number; error: unknown };

/**
 * Runs one or more generations (an HTTP request's choices) through `backend.serveStream`
 * concurrently, merges their events in arrival order, and records the latency metrics.
 * Errors a backend raises on submission (validation, `overloaded`) surface from {@link start},
 * before any response byte is written, so they can become proper HTTP statuses.
 */
export class GenerationRun {
  private readonly iterators: AsyncIterator<StreamEvent>[];
  private readonly pending = new Map<number, Promise<Pulled>>();
  private readonly early = new Map<number, Pulled>();
  private readonly firstAt: (number | null)[];
  private readonly lastAt: (number | null)[];
  private failedRecorded = false;

  constructor(
    backend: ServingBackend,
    requests: readonly TinyServeRequest[],
    private readonly metrics: ServerMetrics,
    private readonly controller: AbortController,
    private readonly arrivalMs: number,
  ) {
    this.iterators = requests.map((r) => backend.serveStream(r)[Symbol.asyncIterator]());
    this.firstAt = requests.map(() => null);
    this.lastAt = requests.map(() => null);
  }

  /** Submits every choice; throws the first submission error (after cancelling the others). */
  async start(): Promise<void> {
    this.iterators.forEach((_, i) => this.pull(i));
    // Submission is synchronous in the backend's generator: a rejection is settled by now.
    await nextMacrotask();
    for (const pulled of this.early.values()) {
      if (!pulled.ok) {
        this.fail(pulled.error);
        await this.close();
        throw pulled.error;
      }
    }
  }

  /** Events of every choice as they arrive. Throws the first generation error (others are cancelled). */
  async *events(): AsyncGenerator<ChoiceEvent, void, undefined> {
    try {
      while (this.pending.size > 0) {
        const pulled = await Promise.race(this.pending.values());
        this.pending.delete(pulled.index);
        if (!pulled.ok) {
          this.fail(pulled.error);
          throw pulled.error;
        }
        if (pulled.result.done) continue;
        this.observe(pulled.index, pulled.result.value);
        this.pull(pulled.index);
        yield { index: pulled.index, event: pulled.result.value };
      }
    } finally {
      await this.close();
    }
  }

  private pull(index: number): void {
    const p: Promise<Pulled> = this.iterators[index].next().then(
      (result): Pulled => ({ ok: true, index, result }),
      (error: unknown): Pulled => ({ ok: false, index, error }),
    );
    void p.then((pulled) => {
      if (!this.early.has(index)) this.early.set(index, pulled);
    });
    this.pending.set(index, p);
  }

  private observe(index: number, event: StreamEvent): void {
    const now = performance.now();
    if (event.type === 'token') {
      const last = this.lastAt[index];
      if (last === null) {
        this.firstAt[index] = now;
        this.metrics.observeFirstToken((now - this.arrivalMs) / 1000);
      } else {
        this.metrics.observeInterToken((now - last) / 1000);
      }
      this.lastAt[index] = now;
    } else {
      const usage = event.response.usage;
      this.metrics.observeFinished({
        e2eSeconds: (now - this.arrivalMs) / 1000,
        finishReason: event.response.finishReason,
        promptTokens: usage.promptTokens,
        completionTokens: usage.completionTokens,
      });
    }
  }

  private fail(error: unknown): void {
    if (!this.failedRecorded) {
      this.failedRecorded = true;
      this.metrics.observeFailed(error instanceof TinyServeError ? error.code : 'internal_error');
    }
    // One failed choice fails the request: the others stop and free their pages.
    if (!this.controller.signal.aborted) this.controller.abort();
  }

  /**
   * Ends every unfinished generation. Their pending pulls never reject (see pull), and the
   * generators' `return()` is not awaited: it settles only once the abort reaches the backend.
   */
  private async close(): Promise<void> {
    if (this.pending.size > 0 && !this.controller.signal.aborted) this.controller.abort();
    const open = [...this.pending.keys()];
    this.pending.clear();
    for (const i of open) void Promise.resolve(this.iterators[i].return?.()).catch(() => undefined);
  }
}
