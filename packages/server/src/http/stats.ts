import type { BackendStats } from './backend.js';
import { camelToSnake } from './errors.js';

/**
 * The serving figures the metrics and the dashboard show, read from `getStats()` at scrape time.
 * A figure the backend does not report is `null` (and its gauge is left out of /metrics).
 */
export interface ServingGauges {
  numRequestsRunning: number | null;
  numRequestsWaiting: number | null;
  /** Fraction (0-1) of KV pages referenced by requests or sessions (evictable prefix-cache pages count as free). */
  kvCacheUsagePerc: number | null;
  numKvPages: number | null;
  numUsedKvPages: number | null;
  /** Prompt tokens looked up in / found in the prefix cache (vLLM counts tokens too). */
  prefixCacheQueries: number | null;
  prefixCacheHits: number | null;
  numPreemptions: number | null;
  pagesSelected: number | null;
  pagesScanned: number | null;
  kvBytesRead: number | null;
  earlyExits: number | null;
  tokensPruned: number | null;
}

/**
 * Where each figure is read in `TinyServe.getStats()` (the scheduler's `EngineStats` under
 * `engine`, the plugin manager's stats under `plugins`); the first path present wins.
 */
export const GAUGE_PATHS: { readonly [K in keyof ServingGauges]: readonly string[] } = {
  numRequestsRunning: ['engine.numRunning'],
  numRequestsWaiting: ['engine.numWaiting'],
  kvCacheUsagePerc: ['engine.kv.usage'],
  numKvPages: ['engine.kv.totalPages', 'model.numKvPages'],
  numUsedKvPages: ['engine.kv.usedPages'],
  prefixCacheQueries: ['engine.prefixCache.queryTokens'],
  prefixCacheHits: ['engine.prefixCache.hitTokens'],
  numPreemptions: ['engine.preemptions'],
  pagesSelected: ['engine.selection.pagesSelected'],
  pagesScanned: ['engine.selection.pagesScanned'],
  kvBytesRead: ['engine.selection.kvBytesRead'],
  earlyExits: ['plugins.earlyExitCount'],
  tokensPruned: ['engine.pruning.tokensPruned', 'plugins.tokensPruned'],
};

function lookup(root: unknown, path: string): unknown {
  let node = root;
  for (const part of path.split('.')) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string, unknown>)[part];
  }
  return node;
}

function firstNumber(root: unknown, paths: readonly string[]): number | null {
  for (const path of paths) {
    const v = lookup(root, path);
    if (typeof v === 'number' && Number.isFinite(v)) return v;
  }
  return null;
}

export type GaugeReader = (stats: BackendStats) => ServingGauges;

/** The default {@link GaugeReader}: {@link GAUGE_PATHS} over the stats object. */
export function readServingGauges(stats: BackendStats): ServingGauges {
  const out = {} as ServingGauges;
  for (const key of Object.keys(GAUGE_PATHS) as (keyof ServingGauges)[]) out[key] = firstNumber(stats, GAUGE_PATHS[key]);
  if (out.kvCacheUsagePerc === null && out.numKvPages !== null && out.numUsedKvPages !== null && out.numKvPages > 0) {
    out.kvCacheUsagePerc = out.numUsedKvPages / out.numKvPages;
  }
  return out;
}

/** Deep copy with camelCase keys turned into snake_case (the HTTP API's JSON convention). */
export function toSnakeJson(value: unknown): unknown {
  if (value === null || value === undefined) return value ?? null;
  if (typeof value === 'bigint') return Number(value);
  if (typeof value === 'number') return Number.isFinite(value) ? value : null;
  if (typeof value !== 'object') return value;
  if (ArrayBuffer.isView(value)) return Array.from(value as unknown as ArrayLike<number>);
  if (Array.isArray(value)) return value.map(toSnakeJson);
  if (value instanceof Map) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of value) out[camelToSnake(String(k))] = toSnakeJson(v);
    return out;
  }
  if (value instanceof Set) return [...value].map(toSnakeJson);
  if (value instanceof Date) return value.toISOString();
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    if (typeof v === 'function' || v === undefined) continue;
    out[camelToSnake(k)] = toSnakeJson(v);
  }
  return out;
}

/** Recent observations with timestamps, for the dashboard's "last minute" percentiles. */
export class RecentWindow {
  private readonly times: Float64Array;
  private readonly values: Float64Array;
  private next = 0;
  private size = 0;

  constructor(
    private readonly capacity = 4096,
    private readonly windowMs = 60_000,
  ) {
    this.times = new Float64Array(capacity);
    this.values = new Float64Array(capacity);
  }

  add(value: number, now = Date.now()): void {
    this.times[this.next] = now;
    this.values[this.next] = value;
    this.next = (this.next + 1) % this.capacity;
    this.size = Math.min(this.size + 1, this.capacity);
  }

  /** p50, p90 and p99 (nearest rank) and the count over the window; nulls when it is empty. */
  summary(now = Date.now()): { count: number; p50: number | null; p90: number | null; p99: number | null } {
    const vals: number[] = [];
    for (let i = 0; i < this.size; i++) if (now - this.times[i] <= this.windowMs) vals.push(this.values[i]);
    if (vals.length === 0) return { count: 0, p50: null, p90: null, p99: null };
    vals.sort((a, b) => a - b);
    const q = (p: number): number => vals[Math.min(vals.length - 1, Math.max(0, Math.ceil(p * vals.length) - 1))];
    return { count: vals.length, p50: q(0.5), p90: q(0.9), p99: q(0.99) };
  }
}
