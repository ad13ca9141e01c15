import { describe, expect, it } from 'vitest';
import { camelToSnake } from './errors.js';
import { RecentWindow, readServingGauges, toSnakeJson } from './stats.js';

describe('toSnakeJson', () => {
  it('renames keys deeply and turns maps, typed arrays and non-finite numbers into JSON', () => {
    const out = toSnakeJson({
      avgLatencyMs: 1.5,
      engine: { kvCacheUsagePerc: 0.25, perLayer: new Float32Array([1, 2]), byName: new Map([['entropyEarlyExit', { earlyExits: 2 }]]) },
      list: [{ pagesHeld: 3 }],
      nan: NaN,
      fn: () => 1,
      missing: undefined,
    });
    expect(out).toEqual({
      avg_latency_ms: 1.5,
      engine: { kv_cache_usage_perc: 0.25, per_layer: [1, 2], by_name: { entropy_early_exit: { early_exits: 2 } } },
      list: [{ pages_held: 3 }],
      nan: null,
    });
  });

  it('maps camelCase field names as the error param does', () => {
    expect(camelToSnake('maxTokens')).toBe('max_tokens');
    expect(camelToSnake('messages[0].content')).toBe('messages[0].content');
    expect(camelToSnake('prompt[3]')).toBe('prompt[3]');
    expect(camelToSnake('kvBytesRead')).toBe('kv_bytes_read');
  });
});

describe('readServingGauges', () => {
  it('reads the documented names and derives KV usage from page counts', () => {
    const g = readServingGauges({
      engine: {
        numRunning: 2,
        numWaiting: 5,
        kv: { totalPages: 100, usedPages: 25 },
        prefixCache: { queryTokens: 90, hitTokens: 9 },
        selection: { pagesSelected: 30, pagesScanned: 100, kvBytesRead: 4096 },
        pruning: { tokensPruned: 40 },
      },
      plugins: { earlyExitCount: 1, tokensPruned: 7 },
    });
    expect(g).toMatchObject({
      numRequestsRunning: 2,
      numRequestsWaiting: 5,
      kvCacheUsagePerc: 0.25,
      numKvPages: 100,
      numUsedKvPages: 25,
      prefixCacheQueries: 90,
      prefixCacheHits: 9,
      pagesSelected: 30,
      pagesScanned: 100,
      kvBytesRead: 4096,
      earlyExits: 1,
      tokensPruned: 40,
    });
    expect(g.numPreemptions).toBeNull();
  });

  it('gives nulls for what is not reported', () => {
    const g = readServingGauges({ engine: null });
    expect(Object.values(g).every((v) => v === null)).toBe(true);
  });
});

describe('RecentWindow', () => {
  it('gives nearest-rank percentiles over the last window only', () => {
    const w = new RecentWindow(8, 1000);
    for (let i = 1; i <= 4; i++) w.add(i * 10, 0);
    for (let i = 1; i <= 100; i++) w.add(i, 5000);
    // Capacity 8: only the last 8 of the 100 remain (93..100), all inside the window at t=5000.
    expect(w.summary(5000)).toEqual({ count: 8, p50: 96, p90: 100, p99: 100 });
    expect(w.summary(7000)).toEqual({ count: 0, p50: null, p90: null, p99: null });
  });
});
