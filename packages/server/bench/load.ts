/**
 * HTTP load test: C concurrent streaming clients (default 64) send completions back to back for
 * a fixed duration (default 60 s) to a server this script starts on loopback, then check that
 * the server is idle and every KV page is back in the pool (/v1/stats).
 *
 * Reported: requests and errors, generated tokens/s, time to first token, inter-token latency
 * (gap between consecutive SSE events as the client read them) and time per output token
 * ((last - first token) / (tokens - 1) per request, vLLM's TPOT), p50/p90/p99 in ms.
 *
 *   node --conditions=@tinyserve/source --import tsx packages/server/bench/load.ts \
 *     --model <dir> [--executor wasm] [--duration 60] [--concurrency 64] [--max-tokens 64] \
 *     [--prompt-words 24] [--<config-field> <v> ...] [--json]
 *   ... load.ts --fake [--token-ms 5]    (the in-memory fake backend: measures the HTTP layer alone)
 *
 * Exits 1 when any request failed or the pool did not return to empty.
 */
import os from 'node:os';
import { parseArgs } from 'node:util';
import { CONFIG_FIELDS, resolveConfigFromRecord } from '@tinyserve/core';
import type { TinyServeConfig } from '@tinyserve/core';
import type { ServingBackend } from '../src/http/backend.js';
import { FakeBackend } from '../src/http/fake-backend.js';
import { createHttpServer } from '../src/http/server.js';

const kebab = (name: string): string => name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
const configFlags = Object.fromEntries(CONFIG_FIELDS.map((f) => [kebab(f), { type: 'string' as const }]));

const { values } = parseArgs({
  options: {
    ...configFlags,
    model: { type: 'string' },
    fake: { type: 'boolean', default: false },
    'token-ms': { type: 'string', default: '5' },
    duration: { type: 'string', default: '60' },
    concurrency: { type: 'string', default: '64' },
    'max-tokens': { type: 'string', default: '64' },
    'prompt-words': { type: 'string', default: '24' },
    json: { type: 'boolean', default: false },
  },
});

const durationS = Number(values.duration);
const concurrency = Number(values.concurrency);
const maxTokens = Number(values['max-tokens']);
const promptWords = Number(values['prompt-words']);
for (const [name, v] of [['duration', durationS], ['concurrency', concurrency], ['max-tokens', maxTokens], ['prompt-words', promptWords]] as const) {
  if (!Number.isFinite(v) || v <= 0) throw new Error(`--${name} must be a positive number`);
}
if (!values.fake && values.model === undefined) throw new Error('give --model <dir> (a Hugging Face model directory) or --fake');

async function createBackend(): Promise<{ backend: ServingBackend; description: string }> {
  if (values.fake) {
    const tokenMs = Number(values['token-ms']);
    return {
      backend: new FakeBackend({ tokenDelayMs: tokenMs, maxRunning: concurrency, maxModelLen: 4096, numKvPages: 16384 }),
      description: `fake backend, ${tokenMs} ms/token`,
    };
  }
  const record: Record<string, unknown> = {};
  const flags = values as Record<string, unknown>;
  for (const f of CONFIG_FIELDS) {
    const raw = flags[kebab(f)];
    if (typeof raw === 'string') record[f] = /^-?\d+(\.\d+)?$/.test(raw) ? Number(raw) : raw === 'true' ? true : raw === 'false' ? false : raw;
  }
  const config: TinyServeConfig = resolveConfigFromRecord(record);
  // Imported here: the facade pulls in the whole engine stack, which --fake does not need.
  const { TinyServe } = await import('../src/tinyserve.js');
  const tinyserve = new TinyServe(config, { logger: { info: (m) => console.error(m), warn: (m) => console.error(`warning: ${m}`) } });
  const info = await tinyserve.loadModel(values.model);
  return { backend: tinyserve, description: `${info.name} (${info.architecture}) on ${info.executor}, ${info.numKvPages} KV pages` };
}

const WORDS = 'the of and to in a is that for it as was with be by on not he this are or his from at which but have an they you were her she there'.split(' ');

function prompt(seed: number): string {
  let x = seed * 2654435761;
  const out: string[] = [];
  for (let i = 0; i < promptWords; i++) {
    x = (x ^ (x >>> 13)) * 1274126177;
    out.push(WORDS[Math.abs(x) % WORDS.length]);
  }
  return out.join(' ');
}

interface RequestRecord {
  ok: boolean;
  error?: string;
  ttftMs: number | null;
  gapsMs: number[];
  /** Chunks that carried text (timed); a byte-level token may carry none. */
  tokens: number;
  /** Generated tokens by the server's usage chunk. */
  completionTokens: number;
  firstMs: number | null;
  lastMs: number | null;
}

async function oneRequest(url: string, seed: number): Promise<RequestRecord> {
  const t0 = performance.now();
  const rec: RequestRecord = { ok: false, ttftMs: null, gapsMs: [], tokens: 0, completionTokens: 0, firstMs: null, lastMs: null };
  try {
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: prompt(seed), max_tokens: maxTokens, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
    });
    if (res.status !== 200 || !res.body) {
      rec.error = `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`;
      return rec;
    }
    const decoder = new TextDecoder();
    let buffer = '';
    let done = false;
    for await (const bytes of res.body) {
      const now = performance.now();
      buffer += decoder.decode(bytes as Uint8Array, { stream: true });
      let cut: number;
      while ((cut = buffer.indexOf('\n\n')) !== -1) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith('data: ')) continue;
        const data = event.slice(6);
        if (data === '[DONE]') {
          done = true;
          continue;
        }
        const chunk = JSON.parse(data) as {
          error?: { message: string };
          choices?: { text: string; finish_reason: string | null }[];
          usage?: { completion_tokens: number } | null;
        };
        if (chunk.error) {
          rec.error = `stream error: ${chunk.error.message}`;
          return rec;
        }
        if (chunk.usage) rec.completionTokens = chunk.usage.completion_tokens;
        const text = chunk.choices?.[0]?.text ?? '';
        if (text === '') continue;
        rec.tokens += 1;
        if (rec.lastMs === null) {
          rec.ttftMs = now - t0;
          rec.firstMs = now;
        } else {
          rec.gapsMs.push(now - rec.lastMs);
        }
        rec.lastMs = now;
      }
    }
    rec.ok = done;
    if (!done) rec.error = 'stream ended without [DONE]';
  } catch (error) {
    rec.error = (error as Error).message;
  }
  return rec;
}

function percentiles(values: number[]): { p50: number; p90: number; p99: number; mean: number; n: number } {
  if (values.length === 0) return { p50: NaN, p90: NaN, p99: NaN, mean: NaN, n: 0 };
  const v = [...values].sort((a, b) => a - b);
  const q = (p: number): number => v[Math.min(v.length - 1, Math.max(0, Math.ceil(p * v.length) - 1))];
  return { p50: q(0.5), p90: q(0.9), p99: q(0.99), mean: v.reduce((a, b) => a + b, 0) / v.length, n: v.length };
}

async function main(): Promise<void> {
  const { backend, description } = await createBackend();
  const server = createHttpServer({ backend, bodyLimitBytes: 1 << 20, processMetrics: false });
  const url = await server.listen({ port: 0, host: '127.0.0.1' });
  console.error(`serving ${description} at ${url}; ${concurrency} streams for ${durationS} s, ${maxTokens} tokens each`);

  await oneRequest(url, 0); // warm-up, not counted
  const records: RequestRecord[] = [];
  const start = performance.now();
  const deadline = start + durationS * 1000;
  let seed = 1;
  let progress = 0;
  const ticker = setInterval(() => {
    progress += 5;
    const errors = records.filter((r) => !r.ok).length;
    console.error(`  ${progress} s: ${records.length} requests done, ${errors} errors`);
  }, 5000);
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) records.push(await oneRequest(url, seed++));
    }),
  );
  clearInterval(ticker);
  const wallS = (performance.now() - start) / 1000;

  // The server must be idle with an empty pool: poll briefly, streams may still be unwinding.
  type StatsView = { server: { gauges: Record<string, number | null> } };
  let stats: StatsView | null = null;
  let pagesBack = false;
  for (let i = 0; i < 100 && !pagesBack; i++) {
    const current = (await (await fetch(`${url}/v1/stats`)).json()) as StatsView;
    stats = current;
    const g = current.server.gauges;
    pagesBack = g.num_requests_running === 0 && g.num_requests_waiting === 0 && (g.num_used_kv_pages ?? (g.kv_cache_usage_perc === 0 ? 0 : 1)) === 0;
    if (!pagesBack) await new Promise((r) => setTimeout(r, 50));
  }
  await server.close();
  await backend.close();

  const ok = records.filter((r) => r.ok);
  const errors = records.filter((r) => !r.ok);
  const tokens = ok.reduce((a, r) => a + r.completionTokens, 0);
  const result = {
    date: new Date().toISOString(),
    host: `${os.cpus()[0]?.model ?? 'cpu'} x${os.cpus().length}, node ${process.version}`,
    backend: description,
    concurrency,
    durationS: wallS,
    maxTokens,
    requests: records.length,
    errors: errors.length,
    errorSamples: [...new Set(errors.map((r) => r.error))].slice(0, 5),
    tokensPerS: tokens / wallS,
    requestsPerS: ok.length / wallS,
    ttftMs: percentiles(ok.map((r) => r.ttftMs!).filter((v) => v !== null)),
    interTokenMs: percentiles(ok.flatMap((r) => r.gapsMs)),
    tpotMs: percentiles(ok.filter((r) => r.tokens > 1).map((r) => (r.lastMs! - r.firstMs!) / (r.tokens - 1))),
    finalGauges: stats?.server.gauges ?? null,
    allPagesReturned: pagesBack,
  };
  if (values.json) {
    console.log(JSON.stringify(result));
  } else {
    const fmt = (p: { p50: number; p90: number; p99: number }) => `p50 ${p.p50.toFixed(2)}  p90 ${p.p90.toFixed(2)}  p99 ${p.p99.toFixed(2)} ms`;
    console.log(`\n${result.backend}; ${result.host}`);
    console.log(`requests      ${result.requests} in ${wallS.toFixed(1)} s (${result.requestsPerS.toFixed(2)}/s), errors ${result.errors}`);
    console.log(`throughput    ${result.tokensPerS.toFixed(1)} generated tokens/s`);
    console.log(`TTFT          ${fmt(result.ttftMs)}`);
    console.log(`inter-token   ${fmt(result.interTokenMs)}`);
    console.log(`TPOT          ${fmt(result.tpotMs)}`);
    console.log(`KV pool       ${pagesBack ? 'every page back in the pool' : `NOT empty at the end: ${JSON.stringify(result.finalGauges)}`}`);
    for (const e of result.errorSamples) console.log(`error sample  ${e}`);
  }
  process.exitCode = errors.length > 0 || !pagesBack ? 1 : 0;
}

await main();
