import { PluginError, RegistryError } from '@tinyserve/core';
import type { RequestHookInfo, TokenDecision } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { PluginManager } from './index.js';
import type { PrunedInfo, TinyServePlugin } from './index.js';
import { requestInfo, tokenStep } from './__fixtures__/steps.js';

function logitsRecorder(name: string, log: string[], order?: number): TinyServePlugin {
  return { name, order, processLogits: () => void log.push(name) };
}

function logitsCtx(info: RequestHookInfo) {
  return { ...info, logits: new Float32Array(4), generatedTokens: [] };
}

function decider(name: string, decision: TokenDecision | undefined): TinyServePlugin {
  return { name, onTokenAccepted: () => decision };
}

describe('PluginManager registration', () => {
  it('runs plugins by order, then registration order', () => {
    const log: string[] = [];
    const m = new PluginManager();
    m.register(logitsRecorder('c', log, 5));
    m.register(logitsRecorder('a', log));
    m.register(logitsRecorder('b', log, -1));
    m.register(logitsRecorder('d', log, 0));
    m.register(logitsRecorder('e', log), { order: -2 });
    m.processLogits(logitsCtx(requestInfo('r')));
    expect(log).toEqual(['e', 'b', 'a', 'd', 'c']);
    expect(m.names()).toEqual(['e', 'b', 'a', 'd', 'c']);
    expect(Object.keys(m.getPluginStats().plugins)).toEqual(['e', 'b', 'a', 'd', 'c']);
  });

  it('rejects duplicate and invalid names, bad hooks and bad orders clearly', () => {
    const m = new PluginManager();
    m.register({ name: 'p' });
    expect(() => m.register({ name: 'p' })).toThrow(RegistryError);
    expect(() => m.register({ name: 'p' })).toThrow(/plugin 'p' is already registered/);
    expect(() => m.register({ name: 'bad name' })).toThrow(/plugin name 'bad name' is invalid/);
    expect(() => m.register({ name: '' })).toThrow(RegistryError);
    expect(() => m.register({ name: 42 } as unknown as TinyServePlugin)).toThrow(/plugin name must be a string, got 42/);
    expect(() => m.register({ name: 'q', processLogits: 'no' } as unknown as TinyServePlugin)).toThrow(
      /plugin 'q': processLogits must be a function, got 'no'/,
    );
    expect(() => m.register({ name: 'q', order: Number.NaN })).toThrow(/plugin 'q': order must be a finite number, got NaN/);
    expect(() => m.registerPlugin('q', 'x' as never)).toThrow(PluginError);
    expect(() => m.enable('nope')).toThrow(/unknown plugin 'nope' \(registered: p\)/);
    expect(m.names()).toEqual(['p']);
  });

  it('registers the seed form and plugin objects through registerPlugin', () => {
    const m = new PluginManager();
    m.registerPlugin('seed', (context) => context);
    m.registerPlugin({ name: 'typed' }, { enabled: false });
    expect(m.names()).toEqual(['seed', 'typed']);
    expect(m.isEnabled('seed')).toBe(true);
    expect(m.isEnabled('typed')).toBe(false);
    expect(m.get('seed').name).toBe('seed');
    expect(m.unregister('seed')).toBe(true);
    expect(m.unregister('seed')).toBe(false);
    expect(m.has('seed')).toBe(false);
  });
});

describe('PluginManager enable/disable at run time', () => {
  it('skips disabled plugins and resumes them with fresh state', () => {
    const log: string[] = [];
    let created = 0;
    const m = new PluginManager();
    m.register({ name: 'a', createState: () => ({ id: ++created }), processLogits: () => void log.push('a') });
    m.register(logitsRecorder('b', log));
    const info = requestInfo('r');
    m.onRequestStart(info);
    m.processLogits(logitsCtx(info));
    m.disable('a');
    expect(m.getPluginStats().plugins.a.enabled).toBe(false);
    m.processLogits(logitsCtx(info));
    m.enable('a');
    m.processLogits(logitsCtx(info));
    expect(log).toEqual(['a', 'b', 'b', 'a', 'b']);
    // Disabling dropped a's state; re-enabling created it anew mid-request.
    expect(created).toBe(2);
  });
});

describe('PluginManager error isolation', () => {
  const boom: TinyServePlugin = {
    name: 'boom',
    onTokenAccepted: (ctx) => {
      if (ctx.requestId === 'bad') throw new Error('kaput');
      return undefined;
    },
  };

  it("'skip' records the error and lets the request and the other plugins carry on", () => {
    const m = new PluginManager({ errorMode: 'skip' });
    m.register(boom);
    m.register(decider('stopper', { finish: 'stop' }));
    expect(m.onTokenAccepted(tokenStep(requestInfo('bad'), 1))).toEqual({ finish: 'stop' });
    expect(m.onTokenAccepted(tokenStep(requestInfo('bad'), 2))).toEqual({ finish: 'stop' });
    const stats = m.getPluginStats().plugins;
    expect(stats.boom).toMatchObject({ calls: 2, errors: 2, lastError: 'onTokenAccepted: kaput' });
    expect(stats.stopper).toMatchObject({ calls: 2, errors: 0, lastError: null });
  });

  it("'fail_request' throws a PluginError naming the plugin, for that request only", () => {
    const m = new PluginManager({ errorMode: 'fail_request' });
    m.register(boom);
    m.onRequestStart(requestInfo('bad'));
    m.onRequestStart(requestInfo('good'));
    let caught: unknown;
    try {
      m.onTokenAccepted(tokenStep(requestInfo('bad'), 1));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(PluginError);
    const err = caught as PluginError;
    expect(err.code).toBe('plugin_error');
    expect(err.plugin).toBe('boom');
    expect(err.message).toBe("plugin 'boom': onTokenAccepted failed for request 'bad': kaput");
    expect((err.cause as Error).message).toBe('kaput');
    expect(m.onTokenAccepted(tokenStep(requestInfo('good'), 1))).toBeUndefined();
    expect(m.getPluginStats().plugins.boom).toMatchObject({ calls: 2, errors: 1 });
  });

  it('the error mode can change at run time and rejects unknown modes', () => {
    const m = new PluginManager();
    m.register(boom);
    expect(() => m.onTokenAccepted(tokenStep(requestInfo('bad'), 1))).not.toThrow();
    m.errorMode = 'fail_request';
    expect(() => m.onTokenAccepted(tokenStep(requestInfo('bad'), 1))).toThrow(PluginError);
    expect(() => {
      m.errorMode = 'ignore' as never;
    }).toThrow(/pluginErrorMode: must be 'skip' or 'fail_request', got 'ignore'/);
    expect(() => new PluginManager({ errorMode: 'x' as never })).toThrow(/pluginErrorMode/);
  });

  it('a failing finish hook still lets every plugin finish and drops the state, then fails', () => {
    const finished: string[] = [];
    const m = new PluginManager({ errorMode: 'fail_request' });
    m.register({ name: 'x', onRequestFinish: () => void (finished.push('x'), (() => { throw new Error('bad finish'); })()) });
    m.register({ name: 'y', onRequestFinish: () => void finished.push('y') });
    m.onRequestStart(requestInfo('r'));
    expect(m.getPluginStats().activeRequests).toBe(1);
    expect(() => m.onRequestFinish({ ...requestInfo('r'), finishReason: 'stop', generatedTokens: [] })).toThrow(
      /plugin 'x': onRequestFinish failed for request 'r': bad finish/,
    );
    expect(finished).toEqual(['x', 'y']);
    expect(m.getPluginStats().activeRequests).toBe(0);
  });

  it('rejects malformed decisions as errors of the plugin that made them', () => {
    const m = new PluginManager();
    m.register(decider('far', { prunePositions: [2, 99] }));
    m.register(decider('length', { finish: 'length' as never }));
    m.register({ name: 'junk', onTokenAccepted: () => 7 as never });
    m.register(decider('ok', { prunePositions: [1] }));
    const ctx = tokenStep(requestInfo('r', 0, 8), 2);
    expect(m.onTokenAccepted(ctx)).toEqual({ prunePositions: [1] });
    const stats = m.getPluginStats().plugins;
    expect(stats.far.lastError).toBe('onTokenAccepted: returned prune position 99; positions must be integers in [0, 10)');
    expect(stats.length.lastError).toBe("onTokenAccepted: returned finish 'length'; use 'early_exit' or 'stop'");
    expect(stats.junk.lastError).toMatch(/returned 7, expected a TokenDecision/);
  });
});

describe('PluginManager statistics', () => {
  it('times and counts every hook call per plugin', () => {
    const spin = (ms: number): void => {
      const end = process.hrtime.bigint() + BigInt(ms * 1e6);
      while (process.hrtime.bigint() < end);
    };
    const m = new PluginManager();
    m.register({ name: 'slow', processLogits: () => spin(2), onTokenAccepted: () => spin(2) });
    m.register({ name: 'fast', processLogits: () => undefined });
    const info = requestInfo('r');
    m.onRequestStart(info);
    m.processLogits(logitsCtx(info));
    m.onTokenAccepted(tokenStep(info, 1));
    m.processLogits(logitsCtx(info));
    const { slow, fast } = m.getPluginStats().plugins;
    expect(slow.calls).toBe(3);
    expect(fast.calls).toBe(2);
    expect(slow.totalMs).toBeGreaterThanOrEqual(6);
    expect(slow.meanUs).toBeCloseTo((slow.totalMs * 1000) / 3, 6);
    expect(fast.totalMs).toBeLessThan(slow.totalMs);
    m.resetStats();
    expect(m.getPluginStats().plugins.slow).toMatchObject({ calls: 0, totalMs: 0, meanUs: 0, errors: 0 });
  });

  it('merges decisions: the first finish wins, prune positions are unioned and sorted', () => {
    const m = new PluginManager();
    m.register(decider('p1', { prunePositions: [5, 1] }));
    m.register(decider('p2', { prunePositions: [1, 3] }));
    const info = requestInfo('r', 0, 8);
    expect(m.onTokenAccepted(tokenStep(info, 1))).toEqual({ prunePositions: [1, 3, 5] });
    m.register(decider('stop', { finish: 'stop' }));
    m.register(decider('exit', { finish: 'early_exit' }));
    // Finishing wins over pruning: the sequence's pages are released anyway.
    expect(m.onTokenAccepted(tokenStep(info, 2))).toEqual({ finish: 'stop' });
    expect(m.getPluginStats().earlyExitCount).toBe(0);
    m.disable('stop');
    expect(m.onTokenAccepted(tokenStep(info, 3))).toEqual({ finish: 'early_exit' });
    expect(m.getPluginStats().earlyExitCount).toBe(1);
  });

  it('totals pruning reports and forwards the positions it returned', () => {
    const seen: PrunedInfo[] = [];
    const m = new PluginManager();
    m.register(decider('p', { prunePositions: [2, 4] }));
    m.register({ name: 'watch', onPruned: (info) => void seen.push(info) });
    const info = requestInfo('r', 0, 8);
    m.onRequestStart(info);
    m.onTokenAccepted(tokenStep(info, 1));
    m.onPruned({ ...info, tokensPruned: 2, pagesFreed: 1, bytesFreed: 4096 });
    // A report that does not match the decision carries no positions.
    m.onPruned({ ...info, tokensPruned: 3, pagesFreed: 0, bytesFreed: 0 });
    expect(seen.map((s) => s.positions)).toEqual([[2, 4], undefined]);
    expect(m.getPluginStats()).toMatchObject({ tokensPruned: 5, pagesFreed: 1, bytesFreed: 4096 });
  });

  it('reports plugin counters under custom, and a failing getStats as an error', () => {
    const m = new PluginManager();
    m.register({ name: 'c', getStats: () => ({ things: 3 }) });
    m.register({ name: 'e', getStats: () => { throw new Error('no stats'); } });
    const stats = m.getPluginStats().plugins;
    expect(stats.c.custom).toEqual({ things: 3 });
    expect(stats.e).toMatchObject({ errors: 1, lastError: 'getStats: no stats' });
    const snapshot = m.getPluginStats();
    expect(JSON.parse(JSON.stringify(snapshot))).toEqual(snapshot);
  });
});

describe('PluginManager attention statistics and per-request state', () => {
  it('wants attention statistics only while an enabled plugin needs them', () => {
    let asked: number[] = [];
    const m = new PluginManager();
    m.register({ name: 'plain', onTokenAccepted: () => undefined });
    expect(m.wantsAttentionStats()).toBe(false);
    m.register({
      name: 'att',
      needsAttentionStats: true,
      createState: () => ({ n: 0 }),
      wantsAttentionStats(states: Iterable<{ n: number }>) {
        asked = [...states].map((s) => s.n);
        return asked.length > 0;
      },
    });
    expect(m.wantsAttentionStats()).toBe(false);
    m.onRequestStart(requestInfo('r1'));
    m.onRequestStart(requestInfo('r2'));
    expect(m.wantsAttentionStats()).toBe(true);
    expect(asked).toEqual([0, 0]);
    m.disable('att');
    expect(m.wantsAttentionStats()).toBe(false);
    m.enable('att');
    m.register({ name: 'always', needsAttentionStats: true }, { enabled: false });
    expect(m.wantsAttentionStats()).toBe(false);
    m.enable('always');
    expect(m.wantsAttentionStats()).toBe(true);
  });

  it('reads a failing refinement as no, recorded, in either mode', () => {
    const m = new PluginManager({ errorMode: 'fail_request' });
    m.register({ name: 'att', needsAttentionStats: true, wantsAttentionStats: () => { throw new Error('oops'); } });
    expect(m.wantsAttentionStats()).toBe(false);
    expect(m.getPluginStats().plugins.att).toMatchObject({ errors: 1, lastError: 'wantsAttentionStats: oops' });
  });

  it('keeps state per request and plugin, and leaves none after finish', () => {
    type Counter = { requestId: string; count: number };
    let live: Counter[] = [];
    const m = new PluginManager();
    m.register({
      name: 'counter',
      needsAttentionStats: true,
      createState: (info: RequestHookInfo): Counter => ({ requestId: info.requestId, count: 0 }),
      // The refinement sees the plugin's live states: a window onto what the manager holds.
      wantsAttentionStats: (states: Iterable<Counter>) => ((live = [...states]), false),
      onTokenAccepted: (_ctx, state: Counter) => void state.count++,
    });
    const a = requestInfo('a');
    const b = requestInfo('b', 1);
    m.onRequestStart(a);
    m.onRequestStart(b);
    m.onTokenAccepted(tokenStep(a, 1));
    m.onTokenAccepted(tokenStep(a, 2));
    m.onTokenAccepted(tokenStep(b, 1));
    // The engine never started 'c': its state is created on first use and dropped at finish.
    m.onTokenAccepted(tokenStep(requestInfo('c', 2), 1));
    m.wantsAttentionStats();
    expect(live).toEqual([
      { requestId: 'a', count: 2 },
      { requestId: 'b', count: 1 },
      { requestId: 'c', count: 1 },
    ]);
    expect(m.getPluginStats().activeRequests).toBe(3);
    const finish = (info: RequestHookInfo): void => m.onRequestFinish({ ...info, finishReason: 'stop', generatedTokens: [] });
    finish(a);
    m.wantsAttentionStats();
    expect(live.map((s) => s.requestId)).toEqual(['b', 'c']);
    finish(b);
    finish(requestInfo('c', 2));
    m.wantsAttentionStats();
    expect(live).toEqual([]);
    expect(m.getPluginStats().activeRequests).toBe(0);
    // A restarted id begins with fresh state.
    m.onRequestStart(a);
    m.onTokenAccepted(tokenStep(a, 1));
    m.onRequestStart(a);
    m.wantsAttentionStats();
    expect(live).toEqual([{ requestId: 'a', count: 0 }]);
  });
});
