/**
 * Engine throughput and latency at several numbers of concurrent streams.
 *
 * Each of C streams sends `requestsPerStream` requests back to back (distinct random prompts,
 * greedy, ignoreEos, so every request generates exactly maxTokens tokens) and reads every
 * token event, after one short untimed warm-up level. Reported per level: generated tokens/s,
 * requests/s, TTFT, inter-token latency and end-to-end latency percentiles, mean batch size, and
 * how the wall time splits between the executor's forward and everything else (scheduling,
 * sampling, streaming). It takes an Executor factory, so it runs on a real model
 * (`tinyserve bench throughput`) or on the mock executor (packages/scheduler/bench/throughput.ts).
 */
import { resolveConfig } from '@tinyserve/core';
import type { Executor, ForwardParams, ForwardResult, TinyServeConfig, Tokenizer } from '@tinyserve/core';
import { Engine } from './engine.js';
import type { EngineRequest } from './engine-types.js';

export interface ThroughputBenchOptions {
  /** A fresh executor per concurrency level (its KV pool starts empty). */
  createExecutor: () => Executor | Promise<Executor>;
  tokenizer: Tokenizer;
  maxModelLen: number;
  eosTokenIds?: number[];
  /** Engine settings (pageSize must match the executor's). */
  config?: Partial<TinyServeConfig>;
  concurrency?: number[];
  requestsPerStream?: number;
  promptTokens?: number;
  maxTokens?: number;
  /** Prompt token ids are drawn from [1, promptVocab). Default: the tokenizer's vocabulary. */
  promptVocab?: number;
  /** Disposes each executor after its level (default true). */
  disposeExecutors?: boolean;
  /** Runs one short untimed level first so that the JIT has warmed up (default true). */
  warmup?: boolean;
}

export interface Percentiles {
  mean: number;
  p50: number;
  p90: number;
  p99: number;
}

export interface ThroughputRow {
  concurrency: number;
  requests: number;
  wallSeconds: number;
  generatedTokens: number;
  outputTokensPerSec: number;
  /** Prompt + generated tokens per second. */
  totalTokensPerSec: number;
  requestsPerSec: number;
  ttftMs: Percentiles;
  itlMs: Percentiles;
  e2eMs: Percentiles;
  steps: number;
  meanBatchSize: number;
  preemptions: number;
  /** Share of the wall time spent inside executor.forward. */
  executorShare: number;
  /** Wall time outside the forward, per engine step (scheduling, sampling, streaming, event loop). */
  overheadUsPerStep: number;
}

function percentiles(values: number[]): Percentiles {
  if (values.length === 0) return { mean: 0, p50: 0, p90: 0, p99: 0 };
  const s = [...values].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))];
  return { mean: s.reduce((a, b) => a + b, 0) / s.length, p50: at(0.5), p90: at(0.9), p99: at(0.99) };
}

/** Wraps an executor to add up the time its forward takes. */
function timed(executor: Executor): { executor: Executor; forwardMs: () => number } {
  let total = 0;
  // Explicit delegation, so executors with private state keep their own `this`.
  const wrapped: Executor = {
    backend: executor.backend,
    model: executor.model,
    pageSize: executor.pageSize,
    numKvPages: executor.numKvPages,
    kvBytesPerPage: executor.kvBytesPerPage,
    forward: async (params: ForwardParams): Promise<ForwardResult> => {
      const t0 = performance.now();
      try {
        return await executor.forward(params);
      } finally {
        total += performance.now() - t0;
      }
    },
    copyTokens: (params) => executor.copyTokens(params),
    dispose: () => executor.dispose(),
  };
  if (executor.rebuildPageMetadata) {
    wrapped.rebuildPageMetadata = (pages, fills) => executor.rebuildPageMetadata?.(pages, fills);
  }
  return { executor: wrapped, forwardMs: () => total };
}

function randomPrompt(seed: number, length: number, vocab: number): number[] {
  let x = (seed * 2654435761 + 12345) >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.push(1 + (x % (vocab - 1)));
  }
  return out;
}

export async function runThroughputBench(options: ThroughputBenchOptions): Promise<ThroughputRow[]> {
  const levels = options.concurrency ?? [1, 4, 16, 64];
  const perStream = options.requestsPerStream ?? 2;
  const promptTokens = options.promptTokens ?? 64;
  const maxTokens = options.maxTokens ?? 32;
  const promptVocab = options.promptVocab ?? options.tokenizer.vocabSize;
  const rows: ThroughputRow[] = [];
  let seed = 1;
  if (options.warmup ?? true) {
    await runThroughputBench({ ...options, warmup: false, concurrency: [4], requestsPerStream: 1 });
  }
  for (const concurrency of levels) {
    const base = await options.createExecutor();
    const { executor, forwardMs } = timed(base);
    const config = resolveConfig({ maxNumSeqs: Math.max(64, concurrency), ...options.config, pageSize: base.pageSize });
    const engine = new Engine({
      executor,
      tokenizer: options.tokenizer,
      config,
      maxModelLen: options.maxModelLen,
      eosTokenIds: options.eosTokenIds ?? [...options.tokenizer.eosTokenIds],
    });
    const ttft: number[] = [];
    const itl: number[] = [];
    const e2e: number[] = [];
    let generated = 0;
    const t0 = performance.now();
    const stream = async (s: number): Promise<void> => {
      for (let r = 0; r < perStream; r++) {
        const req: EngineRequest = {
          requestId: `bench-${concurrency}-${s}-${r}`,
          promptTokenIds: randomPrompt(seed++, promptTokens, promptVocab),
          sampling: {
            temperature: 0,
            topP: 1,
            topK: 0,
            maxTokens,
            stop: [],
            stopTokenIds: [],
            ignoreEos: true,
            logprobs: false,
            promptLogprobs: false,
          },
          priority: 'normal',
        };
        const start = performance.now();
        let last = -1;
        const handle = engine.submit(req);
        for await (const _event of handle) {
          const now = performance.now();
          if (last < 0) ttft.push(now - start);
          else itl.push(now - last);
          last = now;
          generated++;
        }
        await handle.result;
        e2e.push(performance.now() - start);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, (_, s) => stream(s)));
    const wallMs = performance.now() - t0;
    const stats = engine.getStats();
    await engine.shutdown();
    if (options.disposeExecutors ?? true) base.dispose();
    const requests = concurrency * perStream;
    rows.push({
      concurrency,
      requests,
      wallSeconds: wallMs / 1000,
      generatedTokens: generated,
      outputTokensPerSec: generated / (wallMs / 1000),
      totalTokensPerSec: (generated + requests * promptTokens) / (wallMs / 1000),
      requestsPerSec: requests / (wallMs / 1000),
      ttftMs: percentiles(ttft),
      itlMs: percentiles(itl),
      e2eMs: percentiles(e2e),
      steps: stats.steps,
      meanBatchSize: stats.batchSize.mean,
      preemptions: stats.preemptions,
      executorShare: forwardMs() / wallMs,
      overheadUsPerStep: stats.steps === 0 ? 0 : ((wallMs - forwardMs()) * 1000) / stats.steps,
    });
  }
  return rows;
}

export function formatThroughputTable(rows: ThroughputRow[]): string {
  const f = (x: number, d = 1): string => x.toFixed(d);
  const lines = [
    '| streams | requests | gen tok/s | req/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | e2e p50 / p99 (ms) | steps | mean batch | preempt | forward share | overhead/step (µs) |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.concurrency} | ${r.requests} | ${f(r.outputTokensPerSec, 0)} | ${f(r.requestsPerSec, 2)} | ${f(r.ttftMs.p50, 2)} / ${f(r.ttftMs.p99, 2)} | ` +
        `${f(r.itlMs.p50, 3)} / ${f(r.itlMs.p99, 3)} | ${f(r.e2eMs.p50)} / ${f(r.e2eMs.p99)} | ${r.steps} | ${f(r.meanBatchSize)} | ${r.preemptions} | ` +
        `${f(r.executorShare * 100, 0)}% | ${f(r.overheadUsPerStep, 0)} |`,
    );
  }
  return lines.join('\n');
}
