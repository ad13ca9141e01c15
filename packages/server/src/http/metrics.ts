import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ServingBackend } from './backend.js';
import { RecentWindow } from './stats.js';
import type { GaugeReader, ServingGauges } from './stats.js';

// Bucket edges in seconds: vLLM's, extended downwards because a tiny model decodes in milliseconds.
const TTFT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640];
const ITL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export interface ServerCounters {
  requests: number;
  failedRequests: number;
  promptTokens: number;
  generationTokens: number;
}

export interface LatencySummary {
  count: number;
  p50: number | null;
  p90: number | null;
  p99: number | null;
}

/** What the server measured itself (from the streams it relayed), for /v1/stats and the dashboard. */
export interface ServerStatsSnapshot {
  uptimeS: number;
  totals: ServerCounters;
  /** Milliseconds over the last minute. */
  latencyMs: { timeToFirstToken: LatencySummary; interToken: LatencySummary; e2eRequest: LatencySummary };
  gauges: ServingGauges;
  draining: boolean;
}

export interface ServerMetrics {
  readonly registry: Registry;
  /** The registry in Prometheus text format, gauges read from one fresh getStats(). */
  exposition(): Promise<string>;
  observeFirstToken(seconds: number): void;
  observeInterToken(seconds: number): void;
  observeFinished(params: { e2eSeconds: number; finishReason: string; promptTokens: number; completionTokens: number }): void;
  observeFailed(code: string): void;
  snapshot(draining: boolean): ServerStatsSnapshot;
}

export interface MetricsOptions {
  prefix: string;
  backend: ServingBackend;
  readGauges: GaugeReader;
  /** Node process metrics (CPU, memory, event loop lag) in the same registry. Default true. */
  processMetrics?: boolean;
}

const GAUGES: { key: keyof ServingGauges; name: string; help: string }[] = [
  { key: 'numRequestsRunning', name: 'num_requests_running', help: 'Requests being decoded or prefilled now.' },
  { key: 'numRequestsWaiting', name: 'num_requests_waiting', help: 'Requests queued for admission.' },
  { key: 'kvCacheUsagePerc', name: 'kv_cache_usage_perc', help: 'Fraction of KV cache pages in use (1 means 100 percent).' },
];

// Cumulative engine figures: exposed as counters (`_total`), their value set from getStats() at scrape.
const TOTALS: { key: keyof ServingGauges; name: string; help: string }[] = [
  { key: 'prefixCacheQueries', name: 'prefix_cache_queries_total', help: 'Prompt tokens looked up in the prefix cache.' },
  { key: 'prefixCacheHits', name: 'prefix_cache_hits_total', help: 'Prompt tokens whose KV was found in the prefix cache.' },
  { key: 'numPreemptions', name: 'num_preemptions_total', help: 'Sequences preempted because KV pages ran out.' },
  { key: 'pagesSelected', name: 'pages_selected_total', help: 'KV pages attended to by query-aware selection.' },
  { key: 'pagesScanned', name: 'pages_scanned_total', help: 'KV pages scored by query-aware selection.' },
  { key: 'kvBytesRead', name: 'kv_bytes_read_total', help: 'Bytes of KV cache read by decode attention.' },
  { key: 'earlyExits', name: 'early_exits_total', help: 'Sequences stopped by entropy early exit.' },
  { key: 'tokensPruned', name: 'tokens_pruned_total', help: 'Tokens dropped from KV caches by token pruning.' },
];

/**
 * A prom-client registry of its own (several servers may live in one process) with vLLM's
 * metric names under `prefix`: latency histograms observed from the relayed streams, and
 * gauges/counters read from the backend's statistics at scrape time.
 */
export function createServerMetrics(options: MetricsOptions): ServerMetrics {
  const { prefix, backend, readGauges } = options;
  const registry = new Registry();
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry });
  const labelNames = ['model_name'] as const;
  const modelName = (): string => backend.modelInfo?.name ?? '';
  const started = Date.now();
  const totals: ServerCounters = { requests: 0, failedRequests: 0, promptTokens: 0, generationTokens: 0 };
  const recent = { ttft: new RecentWindow(), itl: new RecentWindow(8192), e2e: new RecentWindow() };

  const ttft = new Histogram({
    name: `${prefix}time_to_first_token_seconds`,
    help: 'Time from request arrival to the first generated token.',
    labelNames,
    buckets: TTFT_BUCKETS,
    registers: [registry],
  });
  const itl = new Histogram({
    name: `${prefix}inter_token_latency_seconds`,
    help: 'Time between consecutive generated tokens of one request.',
    labelNames,
    buckets: ITL_BUCKETS,
    registers: [registry],
  });
  const e2e = new Histogram({
    name: `${prefix}e2e_request_latency_seconds`,
    help: 'Time from request arrival to its last token.',
    labelNames,
    buckets: E2E_BUCKETS,
    registers: [registry],
  });
  const success = new Counter({
    name: `${prefix}request_success_total`,
    help: 'Generations finished, by finish reason.',
    labelNames: ['model_name', 'finished_reason'],
    registers: [registry],
  });
  const failures = new Counter({
    name: `${prefix}request_failure_total`,
    help: 'Generations that failed, by error code.',
    labelNames: ['model_name', 'code'],
    registers: [registry],
  });
  const promptTokens = new Counter({ name: `${prefix}prompt_tokens_total`, help: 'Prefilled prompt tokens.', labelNames, registers: [registry] });
  const generationTokens = new Counter({ name: `${prefix}generation_tokens_total`, help: 'Generated tokens.', labelNames, registers: [registry] });

  // One getStats() per scrape (see exposition()), shared by every collect() of that scrape.
  let scrape: ServingGauges | null = null;
  const currentGauges = (): ServingGauges => scrape ?? readGauges(backend.getStats());
  for (const g of GAUGES) {
    new Gauge({
      name: `${prefix}${g.name}`,
      help: g.help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        const v = currentGauges()[g.key];
        if (v !== null) this.set({ model_name: modelName() }, v);
      },
    });
  }
  for (const t of TOTALS) {
    new Counter({
      name: `${prefix}${t.name}`,
      help: t.help,
      labelNames,
      registers: [registry],
      collect() {
        this.reset();
        const v = currentGauges()[t.key];
        if (v !== null && v >= 0) this.inc({ model_name: modelName() }, v);
      },
    });
  }

  return {
    registry,
    async exposition() {
      scrape = readGauges(backend.getStats());
      try {
        return await registry.metrics();
      } finally {
        scrape = null;
      }
    },
    observeFirstToken(seconds) {
      ttft.observe({ model_name: modelName() }, seconds);
      recent.ttft.add(seconds * 1000);
    },
    observeInterToken(seconds) {
      itl.observe({ model_name: modelName() }, seconds);
      recent.itl.add(seconds * 1000);
    },
    observeFinished({ e2eSeconds, finishReason, promptTokens: p, completionTokens: c }) {
      const labels = { model_name: modelName() };
      e2e.observe(labels, e2eSeconds);
      recent.e2e.add(e2eSeconds * 1000);
      success.inc({ ...labels, finished_reason: finishReason });
      promptTokens.inc(labels, p);
      generationTokens.inc(labels, c);
      totals.requests += 1;
      totals.promptTokens += p;
      totals.generationTokens += c;
    },
    observeFailed(code) {
      failures.inc({ model_name: modelName(), code });
      totals.failedRequests += 1;
    },
    snapshot(draining) {
      return {
        uptimeS: (Date.now() - started) / 1000,
        totals: { ...totals },
        latencyMs: { timeToFirstToken: recent.ttft.summary(), interToken: recent.itl.summary(), e2eRequest: recent.e2e.summary() },
        gauges: readGauges(backend.getStats()),
        draining,
      };
    },
  };
}
