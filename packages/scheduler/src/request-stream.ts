import { TinyServeError } from '@tinyserve/core';
import type { EngineEvent, EngineHandle, EngineResult } from './engine-types.js';

/**
 * The engine's side of an {@link EngineHandle}: events are buffered until read, so the
 * engine never waits on a slow reader (memory is bounded by the request's maxTokens).
 */
export class RequestStream implements EngineHandle {
  readonly requestId: string;
  readonly result: Promise<EngineResult>;
  private resolveResult!: (result: EngineResult) => void;
  private rejectResult!: (error: unknown) => void;
  private readonly buffer: EngineEvent[] = [];
  private waiter: { resolve: (r: IteratorResult<EngineEvent>) => void; reject: (e: unknown) => void } | null = null;
  private settled = false;
  private failure: { error: unknown } | null = null;
  private iterated = false;
  private detached = false;

  constructor(requestId: string) {
    this.requestId = requestId;
    this.result = new Promise<EngineResult>((resolve, reject) => {
      this.resolveResult = resolve;
      this.rejectResult = reject;
    });
    // A caller that only iterates must not get an unhandled rejection; awaiting `result` still throws.
    this.result.catch(() => undefined);
  }

  get done(): boolean {
    return this.settled;
  }

  push(event: EngineEvent): void {
    if (this.settled || this.detached) return;
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w.resolve({ value: event, done: false });
    } else {
      this.buffer.push(event);
    }
  }

  end(result: EngineResult): void {
    if (this.settled) return;
    this.settled = true;
    this.resolveResult(result);
    this.wake();
  }

  fail(error: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.failure = { error };
    this.rejectResult(error);
    this.wake();
  }

  [Symbol.asyncIterator](): AsyncIterator<EngineEvent> {
    if (this.iterated) throw new TinyServeError('invalid_request', `request '${this.requestId}': its events can be iterated only once`);
    this.iterated = true;
    return {
      next: () => {
        const event = this.buffer.shift();
        if (event !== undefined) return Promise.resolve({ value: event, done: false });
        if (this.settled) {
          if (this.failure) {
            const { error } = this.failure;
            this.failure = null;
            return Promise.reject(error);
          }
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => {
          this.waiter = { resolve, reject };
        });
      },
      return: () => {
        this.detached = true;
        this.buffer.length = 0;
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    this.waiter = null;
    if (this.failure) {
      const { error } = this.failure;
      this.failure = null;
      w.reject(error);
    } else {
      w.resolve({ value: undefined, done: true });
    }
  }
}
