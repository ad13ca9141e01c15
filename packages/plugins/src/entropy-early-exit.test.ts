import { ConfigError, resolveConfig } from '@tinyserve/core';
import type { RequestHookInfo } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { createPluginManager, ENTROPY_EARLY_EXIT, EntropyEarlyExitPlugin, PluginManager } from './index.js';
import type { EntropyEarlyExitOptions } from './index.js';
import { attentionStats, requestInfo, tokenStep, uniformLogits } from './__fixtures__/steps.js';

const LOW = uniformLogits(64, 1); // entropy 0
const LN2 = uniformLogits(64, 2); // entropy ln 2 ≈ 0.693
const HIGH = uniformLogits(64, 8); // entropy ln 8 ≈ 2.079

function managerWith(options: EntropyEarlyExitOptions): PluginManager {
  return new PluginManager().register(new EntropyEarlyExitPlugin(options));
}

/** Feeds rows as consecutive tokens; returns the 1-based token index that finished, or 0. */
function run(m: PluginManager, info: RequestHookInfo, rows: Float32Array[]): number {
  m.onRequestStart(info);
  for (let n = 1; n <= rows.length; n++) {
    const decision = m.onTokenAccepted(tokenStep(info, n, { logits: rows[n - 1] }));
    if (decision?.finish !== undefined) {
      expect(decision).toEqual({ finish: 'early_exit' });
      m.onRequestFinish({ ...info, finishReason: 'early_exit', generatedTokens: [] });
      return n;
    }
  }
  m.onRequestFinish({ ...info, finishReason: 'length', generatedTokens: [] });
  return 0;
}

describe('entropy early exit (next-token entropy)', () => {
  it('fires at the first low-entropy token once minTokensBeforeExit tokens exist', () => {
    const m = managerWith({ entropyThreshold: 0.5, minTokensBeforeExit: 3, entropySource: 'logits' });
    expect(run(m, requestInfo('a'), [LOW, LOW, LOW, LOW])).toBe(3);
    expect(run(m, requestInfo('b'), [HIGH, HIGH, HIGH, LOW, HIGH])).toBe(4);
    expect(run(m, requestInfo('c'), Array(6).fill(HIGH))).toBe(0);
    const stats = m.getPluginStats();
    expect(stats.earlyExitCount).toBe(2);
    expect(stats.plugins[ENTROPY_EARLY_EXIT].custom).toMatchObject({ earlyExits: 2 });
    expect(stats.activeRequests).toBe(0);
  });

  it('compares strictly below the threshold, in nats', () => {
    expect(run(managerWith({ entropyThreshold: 0.7, minTokensBeforeExit: 0, entropySource: 'logits' }), requestInfo('r'), [LN2])).toBe(1);
    expect(run(managerWith({ entropyThreshold: Math.log(2) * 0.999, minTokensBeforeExit: 0, entropySource: 'logits' }), requestInfo('r'), [LN2, LN2])).toBe(0);
    expect(run(managerWith({ entropyThreshold: 0, minTokensBeforeExit: 0, entropySource: 'logits' }), requestInfo('r'), [LOW, LOW])).toBe(0);
  });

  it('with consecutiveSteps, needs that many low steps in a row', () => {
    const m = managerWith({ entropyThreshold: 0.5, minTokensBeforeExit: 2, entropySource: 'logits', consecutiveSteps: 3 });
    expect(run(m, requestInfo('a'), [LOW, HIGH, LOW, LOW, HIGH, LOW, LOW, LOW, LOW])).toBe(8);
    // Low steps before minTokensBeforeExit count towards the streak that ends after it.
    expect(run(m, requestInfo('b'), [LOW, LOW, LOW, HIGH])).toBe(3);
  });

  it('skips the entropy pass on tokens that cannot lead to an exit', () => {
    const m = managerWith({ entropyThreshold: 0.5, minTokensBeforeExit: 10, entropySource: 'logits', consecutiveSteps: 2 });
    expect(run(m, requestInfo('r'), Array(9).fill(HIGH))).toBe(0);
    // Only token 9 is checked: a 2-step streak ending at token 10 starts there.
    expect(m.getPluginStats().plugins[ENTROPY_EARLY_EXIT].custom).toMatchObject({ checks: 1 });
  });

  it('validates its options', () => {
    expect(() => new EntropyEarlyExitPlugin({ entropyThreshold: -1, minTokensBeforeExit: 1, entropySource: 'logits' })).toThrow(
      /entropyThreshold: must be a number >= 0, got -1/,
    );
    expect(() => new EntropyEarlyExitPlugin({ entropyThreshold: 1, minTokensBeforeExit: 1.5, entropySource: 'logits' })).toThrow(ConfigError);
    expect(() => new EntropyEarlyExitPlugin({ entropyThreshold: 1, minTokensBeforeExit: 1, entropySource: 'logits', consecutiveSteps: 0 })).toThrow(
      /consecutiveSteps/,
    );
    expect(() => new EntropyEarlyExitPlugin({ entropyThreshold: 1, minTokensBeforeExit: 1, entropySource: 'x' as never })).toThrow(
      /entropySource: must be 'logits' or 'attention', got x/,
    );
  });
});

describe('entropy early exit (attention entropy)', () => {
  it('uses the mean attention entropy, and asks for statistics only once armed', () => {
    const m = createPluginManager(
      resolveConfig({ enableEntropyEarlyExit: true, entropySource: 'attention', entropyThreshold: 0.5, minTokensBeforeExit: 4 }),
    );
    const info = requestInfo('r', 7);
    expect(m.wantsAttentionStats()).toBe(false);
    m.onRequestStart(info);
    const wants: boolean[] = [];
    let finishedAt = 0;
    for (let n = 1; n <= 6 && finishedAt === 0; n++) {
      const want = m.wantsAttentionStats();
      wants.push(want);
      // The logits are confident throughout: only the attention source can hold the exit back.
      // Mean over layers (0.2, 0.2, 1.4) = 0.6 until token 5, then (0.2, 0.2, 0.5) = 0.3.
      const third = n >= 5 ? 0.5 : 1.4;
      const attention = want ? [...attentionStats(7, 2, 0.2), { seqId: 7, layer: 2, entropy: third }] : undefined;
      if (m.onTokenAccepted(tokenStep(info, n, { logits: LOW, attention }))?.finish === 'early_exit') finishedAt = n;
    }
    expect(wants).toEqual([false, false, false, true, true]);
    expect(finishedAt).toBe(5);
    m.onRequestFinish({ ...info, finishReason: 'early_exit', generatedTokens: [] });
    expect(m.wantsAttentionStats()).toBe(false);
  });

  it('never exits on a step without statistics', () => {
    const m = managerWith({ entropyThreshold: 0.5, minTokensBeforeExit: 0, entropySource: 'attention' });
    const info = requestInfo('r');
    expect(m.onTokenAccepted(tokenStep(info, 1, { logits: LOW }))).toBeUndefined();
    expect(m.onTokenAccepted(tokenStep(info, 2, { attention: attentionStats(0, 1, 0.1) }))).toEqual({ finish: 'early_exit' });
    expect(m.getPluginStats().plugins[ENTROPY_EARLY_EXIT].custom).toMatchObject({ missingStats: 1, earlyExits: 1 });
  });
});

describe('createPluginManager', () => {
  it('registers both built-ins, enabled per config, switchable at run time', () => {
    const off = createPluginManager(resolveConfig());
    expect(off.names()).toEqual(['entropy-early-exit', 'token-pruning']);
    expect(off.isEnabled('entropy-early-exit')).toBe(false);
    expect(off.isEnabled('token-pruning')).toBe(false);
    expect(off.errorMode).toBe('skip');
    expect(off.wantsAttentionStats()).toBe(false);
    const info = requestInfo('r');
    off.onRequestStart(info);
    expect(off.onTokenAccepted(tokenStep(info, 20, { logits: LOW }))).toBeUndefined();
    off.enable('entropy-early-exit');
    expect(off.onTokenAccepted(tokenStep(info, 21, { logits: LOW }))).toEqual({ finish: 'early_exit' });

    const on = createPluginManager(
      resolveConfig({ enableEntropyEarlyExit: true, enableTokenPruning: true, pluginErrorMode: 'fail_request' }),
      { pruning: { recentWindow: 8 } },
    );
    expect(on.isEnabled('entropy-early-exit')).toBe(true);
    expect(on.isEnabled('token-pruning')).toBe(true);
    expect(on.errorMode).toBe('fail_request');
    expect((on.get('token-pruning') as unknown as { recentWindow: number }).recentWindow).toBe(8);
  });
});
