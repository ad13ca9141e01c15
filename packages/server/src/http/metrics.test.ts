import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeBackend } from './fake-backend.js';
import { createHttpServer } from './server.js';
import type { TinyServeHttpServer } from './server.js';

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A strict reader of the Prometheus text format (0.0.4): throws on any line it does not understand. */
function parseExposition(text: string): { types: Map<string, string>; samples: Sample[] } {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const name = '[a-zA-Z_:][a-zA-Z0-9_:]*';
  const sampleRe = new RegExp(`^(${name})(?:\\{(.*)\\})? (\\S+)$`);
  for (const line of text.split('\n')) {
    if (line === '') continue;
    let m = new RegExp(`^# HELP (${name}) .+$`).exec(line);
    if (m) continue;
    m = new RegExp(`^# TYPE (${name}) (counter|gauge|histogram|summary|untyped)$`).exec(line);
    if (m) {
      if (types.has(m[1])) throw new Error(`TYPE twice for ${m[1]}`);
      types.set(m[1], m[2]);
      continue;
    }
    m = sampleRe.exec(line);
    if (!m) throw new Error(`not a valid exposition line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[2]) {
      for (const pair of m[2].match(/[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"/g) ?? []) {
        const eq = pair.indexOf('=');
        labels[pair.slice(0, eq)] = pair.slice(eq + 2, -1);
      }
    }
    // Go's ParseFloat (Prometheus' parser) takes Inf/NaN in any case; prom-client writes 'Nan'.
    const raw = m[3];
    const value = /^\+?inf$/i.test(raw) ? Infinity : /^-inf$/i.test(raw) ? -Infinity : /^nan$/i.test(raw) ? NaN : Number(raw);
    if (Number.isNaN(value) && !/^nan$/i.test(raw)) throw new Error(`bad value in: ${line}`);
    const family = [...types.keys()].find((t) => m![1] === t || m![1].startsWith(`${t}_`));
    if (!family) throw new Error(`sample before its TYPE: ${line}`);
    samples.push({ name: m[1], labels, value });
  }
  return { types, samples };
}

let backend: FakeBackend;
let server: TinyServeHttpServer;
let url: string;

beforeAll(async () => {
  backend = new FakeBackend({ tokenDelayMs: 1 });
  server = createHttpServer({ backend });
  url = await server.listen({ port: 0, host: '127.0.0.1' });
  const post = (body: object) =>
    fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }).then((r) => r.text());
  await post({ prompt: 'abc', max_tokens: 4 });
  await post({ prompt: 'abc', max_tokens: 4, stream: true });
  await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'x' }], max_tokens: 4 }),
  }).then((r) => r.text());
});

afterAll(async () => {
  await server.close();
});

const value = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.find((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))?.value;

describe('GET /metrics', () => {
  it('is valid Prometheus exposition with vLLM-style names under the tinyserve: prefix', async () => {
    const res = await fetch(`${url}/metrics`);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0.0.4/);
    const { types, samples } = parseExposition(await res.text());
    expect(types.get('tinyserve:time_to_first_token_seconds')).toBe('histogram');
    expect(types.get('tinyserve:inter_token_latency_seconds')).toBe('histogram');
    expect(types.get('tinyserve:e2e_request_latency_seconds')).toBe('histogram');
    for (const g of ['num_requests_running', 'num_requests_waiting', 'kv_cache_usage_perc']) expect(types.get(`tinyserve:${g}`)).toBe('gauge');
    for (const c of ['prefix_cache_hits', 'pages_selected', 'pages_scanned', 'kv_bytes_read', 'early_exits', 'tokens_pruned']) {
      expect(types.get(`tinyserve:${c}_total`)).toBe('counter');
    }
    // Node process metrics come along in the same registry.
    expect(types.has('process_cpu_user_seconds_total')).toBe(true);
    expect(samples.length).toBeGreaterThan(50);
  });

  it('histograms count what the streams did: 3 first tokens, 3 x 3 gaps, 3 requests', async () => {
    const { samples } = parseExposition(await (await fetch(`${url}/metrics`)).text());
    const m = { model_name: 'fake-model' };
    expect(value(samples, 'tinyserve:time_to_first_token_seconds_count', m)).toBe(3);
    expect(value(samples, 'tinyserve:inter_token_latency_seconds_count', m)).toBe(9);
    expect(value(samples, 'tinyserve:e2e_request_latency_seconds_count', m)).toBe(3);
    expect(value(samples, 'tinyserve:request_success_total', { ...m, finished_reason: 'length' })).toBe(3);
    expect(value(samples, 'tinyserve:generation_tokens_total', m)).toBe(12);
    // Buckets are cumulative and end at +Inf = count.
    const buckets = samples.filter((s) => s.name === 'tinyserve:e2e_request_latency_seconds_bucket');
    for (let i = 1; i < buckets.length; i++) expect(buckets[i].value).toBeGreaterThanOrEqual(buckets[i - 1].value);
    expect(buckets[buckets.length - 1]).toMatchObject({ labels: { le: '+Inf' }, value: 3 });
    const sum = value(samples, 'tinyserve:e2e_request_latency_seconds_sum', m)!;
    expect(sum).toBeGreaterThan(0.004);
  });

  it('reads gauges and engine counters from getStats() at scrape time', async () => {
    const { samples } = parseExposition(await (await fetch(`${url}/metrics`)).text());
    const engine = backend.getStats().engine as { selection: { pagesScanned: number; pagesSelected: number; kvBytesRead: number }; prefixCache: { queryTokens: number } };
    expect(value(samples, 'tinyserve:num_requests_running')).toBe(0);
    expect(value(samples, 'tinyserve:kv_cache_usage_perc')).toBe(0);
    expect(value(samples, 'tinyserve:pages_scanned_total')).toBe(engine.selection.pagesScanned);
    expect(value(samples, 'tinyserve:pages_selected_total')).toBe(engine.selection.pagesSelected);
    expect(value(samples, 'tinyserve:kv_bytes_read_total')).toBe(engine.selection.kvBytesRead);
    expect(value(samples, 'tinyserve:prefix_cache_queries_total')).toBe(engine.prefixCache.queryTokens);
    expect(engine.prefixCache.queryTokens).toBeGreaterThan(0);
    expect(value(samples, 'tinyserve:early_exits_total')).toBe(0);

    // A running request shows up in the gauges of the next scrape.
    const controller = new AbortController();
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', max_tokens: 2000, stream: true }),
      signal: controller.signal,
    });
    await res.body!.getReader().read();
    const during = parseExposition(await (await fetch(`${url}/metrics`)).text()).samples;
    expect(value(during, 'tinyserve:num_requests_running')).toBe(1);
    expect(value(during, 'tinyserve:kv_cache_usage_perc')).toBeGreaterThan(0);
    controller.abort();
  });

  it('leaves a gauge out when the backend does not report it, and honours metricsPrefix', async () => {
    const bare = new FakeBackend();
    const s = createHttpServer({
      backend: Object.assign(Object.create(bare) as FakeBackend, { getStats: () => ({ totalRequests: 0 }) }),
      metricsPrefix: 'ts_',
      processMetrics: false,
    });
    const u = await s.listen({ port: 0, host: '127.0.0.1' });
    try {
      const { types, samples } = parseExposition(await (await fetch(`${u}/metrics`)).text());
      expect(types.get('ts_num_requests_running')).toBe('gauge');
      expect(samples.find((x) => x.name === 'ts_num_requests_running')).toBeUndefined();
      expect(types.has('process_cpu_user_seconds_total')).toBe(false);
    } finally {
      await s.close();
    }
  });
});
