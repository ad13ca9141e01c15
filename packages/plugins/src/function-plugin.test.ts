import { PluginError } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { PluginManager } from './index.js';
import type { PluginContext } from './index.js';
import { attentionStats, requestInfo, tokenStep, uniformLogits } from './__fixtures__/steps.js';

describe("the seed's function plugin form", () => {
  it('calls the function once per accepted token with a plain context', () => {
    const seen: PluginContext[] = [];
    const m = new PluginManager();
    m.registerPlugin('log', (context) => {
      seen.push({ ...context });
      return context;
    });
    const info = { ...requestInfo('r', 3, 5), sessionId: 's' };
    m.onRequestStart(info);
    expect(m.onTokenAccepted(tokenStep(info, 1, { logits: uniformLogits(32, 4), logprob: -1.5 }))).toBeUndefined();
    expect(m.onTokenAccepted(tokenStep(info, 2))).toBeUndefined();
    expect(seen).toHaveLength(2);
    expect(seen[0]).toMatchObject({
      requestId: 'r',
      seqId: 3,
      sessionId: 's',
      promptLength: 5,
      generatedTokens: [100],
      tokenId: 100,
      logprob: -1.5,
      contextLength: 6,
      stop: false,
      state: {},
    });
    expect(seen[0].entropy).toBeCloseTo(Math.log(4), 6);
    expect(seen[1].entropy).toBeCloseTo(Math.log(16), 6);
    expect(seen[1].generatedTokens).toEqual([100, 101]);
    // Attention is only for plugins that ask for it.
    expect(seen[0].attention).toBeUndefined();
    expect(m.wantsAttentionStats()).toBe(false);
    expect(m.getPluginStats().plugins.log).toMatchObject({ calls: 2, errors: 0 });
  });

  it('finishes the sequence when the context says stop, or names a reason', () => {
    const m = new PluginManager();
    m.registerPlugin('stop-at-3', (context) => {
      if (context.generatedTokens.length >= 3) context.stop = true;
      return context;
    });
    const info = requestInfo('r');
    expect(m.onTokenAccepted(tokenStep(info, 2))).toBeUndefined();
    expect(m.onTokenAccepted(tokenStep(info, 3))).toEqual({ finish: 'early_exit' });
    m.unregister('stop-at-3');
    m.registerPlugin('eos-like', (context) => ({ ...context, finishReason: 'stop' }));
    expect(m.onTokenAccepted(tokenStep(info, 4))).toEqual({ finish: 'stop' });
    expect(m.getPluginStats().earlyExitCount).toBe(1);
  });

  it('can ask for pruning and keep its own state across calls', () => {
    const m = new PluginManager();
    m.registerPlugin('every-other', (context) => {
      const calls = ((context.state.calls as number | undefined) ?? 0) + 1;
      context.state.calls = calls;
      if (calls % 2 === 0) context.prunePositions = [calls];
      return context;
    });
    const info = requestInfo('r', 0, 10);
    expect(m.onTokenAccepted(tokenStep(info, 1))).toBeUndefined();
    expect(m.onTokenAccepted(tokenStep(info, 2))).toEqual({ prunePositions: [2] });
    expect(m.onTokenAccepted(tokenStep(info, 3))).toBeUndefined();
    expect(m.onTokenAccepted(tokenStep(info, 4))).toEqual({ prunePositions: [4] });
    // A fresh request starts from empty state; the old one is gone after its finish.
    m.onRequestFinish({ ...info, finishReason: 'stop', generatedTokens: [] });
    expect(m.onTokenAccepted(tokenStep(info, 1))).toBeUndefined();
    expect(m.onTokenAccepted(tokenStep(info, 2))).toEqual({ prunePositions: [2] });
  });

  it('sees attention statistics when registered with needsAttentionStats', () => {
    let seen: PluginContext | undefined;
    const m = new PluginManager();
    m.registerPlugin('att', (context) => ((seen = context), context), { needsAttentionStats: true });
    expect(m.wantsAttentionStats()).toBe(true);
    const stats = [...attentionStats(0, 2, 1), ...attentionStats(0, 1, 4), ...attentionStats(9, 1, 100)];
    m.onTokenAccepted(tokenStep(requestInfo('r'), 1, { attention: stats }));
    expect(seen?.attention).toBe(stats);
    expect(seen?.attentionEntropy).toBeCloseTo(2, 12);
  });

  it('turns a bad return into a recorded error, never a crash', () => {
    const m = new PluginManager();
    m.registerPlugin('forgot-return', ((context: PluginContext) => void context) as never);
    m.registerPlugin('async', (async (context: PluginContext) => context) as never);
    m.registerPlugin('bad-reason', (context) => ({ ...context, finishReason: 'length' as never }));
    m.registerPlugin('fine', (context) => ({ ...context, stop: true }));
    expect(m.onTokenAccepted(tokenStep(requestInfo('r'), 1))).toEqual({ finish: 'early_exit' });
    const stats = m.getPluginStats().plugins;
    expect(stats['forgot-return']).toMatchObject({
      errors: 1,
      lastError:
        'onTokenAccepted: returned undefined; a plugin function must synchronously return the context it was given (possibly modified)',
    });
    expect(stats.async.lastError).toMatch(/returned a Promise/);
    expect(stats['bad-reason'].lastError).toMatch(/set finishReason to a string \(length\); use 'early_exit' or 'stop'/);
    expect(stats.fine.errors).toBe(0);
    m.errorMode = 'fail_request';
    expect(() => m.onTokenAccepted(tokenStep(requestInfo('r'), 2))).toThrow(PluginError);
    expect(() => m.onTokenAccepted(tokenStep(requestInfo('r'), 2))).toThrow(/plugin 'forgot-return': onTokenAccepted failed/);
  });
});
