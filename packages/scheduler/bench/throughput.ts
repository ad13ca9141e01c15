/**
 * Engine throughput and latency at several numbers of concurrent streams.
 *
 * Each of C streams sends `requestsPerStream` requests back to back (distinct random prompts,
 * greedy, ignoreEos, so every request generates exactly maxTokens tokens) and reads every
 * token event, after one short untimed warm-up level. Reported per level: generated tokens/s, requests/s, TTFT, inter-token latency
 * and end-to-end latency percentiles, mean batch size, and how the wall time splits between
 * the executor's forward and everything else (scheduling, sampling, streaming).
 *
 * This script runs `runThroughputBench` (src/throughput-bench.ts) on the deterministic mock
 * executor (no model needed), which measures the engine's own overhead; `tinyserve bench
 * throughput` runs it on a real model:
 *
 *   node --conditions=@tinyserve/source --import tsx packages/scheduler/bench/throughput.ts \
 *     [--concurrency 1,4,16,64] [--requests-per-stream 2] [--prompt-tokens 64] [--max-tokens 32] \
 *     [--vocab 32000] [--step-ms 0] [--us-per-token 0] [--page-size 16] [--json]
 */
import os from 'node:os';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { formatThroughputTable, runThroughputBench } from '../src/index.js';
import { MockExecutor } from '../src/__fixtures__/mock-executor.js';
import { MockTokenizer } from '../src/__fixtures__/mock-tokenizer.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      concurrency: { type: 'string', default: '1,4,16,64' },
      'requests-per-stream': { type: 'string', default: '2' },
      'prompt-tokens': { type: 'string', default: '64' },
      'max-tokens': { type: 'string', default: '32' },
      vocab: { type: 'string', default: '32000' },
      'page-size': { type: 'string', default: '16' },
      'num-kv-pages': { type: 'string', default: '2048' },
      'max-batch-tokens': { type: 'string', default: '512' },
      'step-ms': { type: 'string', default: '0' },
      'us-per-token': { type: 'string', default: '0' },
      json: { type: 'boolean', default: false },
    },
  });
  const int = (name: keyof typeof values): number => {
    const v = Number(values[name]);
    if (!Number.isFinite(v) || v < 0) throw new Error(`--${name} must be a non-negative number, got ${String(values[name])}`);
    return v;
  };
  const vocab = int('vocab');
  const pageSize = int('page-size');
  const numKvPages = int('num-kv-pages');
  const tokenizer = new MockTokenizer(vocab);
  const rows = await runThroughputBench({
    createExecutor: () =>
      new MockExecutor({ pageSize, numKvPages, vocabSize: vocab, stepDelayMs: int('step-ms'), busyUsPerToken: int('us-per-token') }),
    tokenizer,
    maxModelLen: 4096,
    config: { pageSize, maxBatchTokens: int('max-batch-tokens') },
    concurrency: String(values.concurrency).split(',').map(Number),
    requestsPerStream: int('requests-per-stream'),
    promptTokens: int('prompt-tokens'),
    maxTokens: int('max-tokens'),
  });
  if (values.json) {
    console.log(JSON.stringify({ executor: 'mock', vocab, pageSize, rows }, null, 2));
    return;
  }
  console.log(
    `engine throughput on the mock executor (vocab ${vocab}, page ${pageSize}, step ${values['step-ms']} ms + ${values['us-per-token']} µs/token), ` +
      `node ${process.version}, ${os.cpus()[0]?.model ?? 'cpu'}, ${new Date().toISOString().slice(0, 10)}`,
  );
  console.log(formatThroughputTable(rows));
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
