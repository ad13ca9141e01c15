import { ConfigError } from '@tinyserve/core';
import type { EntropySource, TokenDecision, TokenHookContext } from '@tinyserve/core';
import { meanAttentionEntropy, nextTokenEntropy } from './entropy.js';
import type { TinyServePlugin } from './plugin.js';

export const ENTROPY_EARLY_EXIT = 'entropy-early-exit';

export interface EntropyEarlyExitOptions {
  /** Exit once the entropy (nats) is strictly below this. Config `entropyThreshold`. */
  entropyThreshold: number;
  /** No exit before this many generated tokens. Config `minTokensBeforeExit`. */
  minTokensBeforeExit: number;
  /** 'logits': next-token distribution; 'attention': mean attention entropy over layers. */
  entropySource: EntropySource;
  /**
   * Consecutive steps the entropy must stay below the threshold. Default 1: the seed's rule,
   * "stop when entropy is below a threshold"; raise it to ignore a single confident token.
   */
  consecutiveSteps?: number;
  order?: number;
}

interface EarlyExitState {
  /** Index (1-based) of the next generated token this request will produce. */
  nextIndex: number;
  /** Consecutive checked steps below the threshold. */
  below: number;
}

function checkNumber(field: string, value: unknown, min: number, integer: boolean): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || (integer && !Number.isInteger(value))) {
    throw new ConfigError(field, `must be ${integer ? 'an integer' : 'a number'} >= ${min}, got ${String(value)}`);
  }
  return value;
}

/**
 * Finishes a sequence with `early_exit` once the entropy of its next-token distribution (or
 * its mean attention entropy) has stayed below `entropyThreshold` for `consecutiveSteps`
 * steps, at the earliest when `minTokensBeforeExit` tokens have been generated.
 */
export class EntropyEarlyExitPlugin implements TinyServePlugin<EarlyExitState> {
  readonly name = ENTROPY_EARLY_EXIT;
  readonly order: number | undefined;
  readonly needsAttentionStats: boolean;
  readonly entropyThreshold: number;
  readonly minTokensBeforeExit: number;
  readonly entropySource: EntropySource;
  readonly consecutiveSteps: number;
  /** The first generated-token index whose entropy can matter to an exit. */
  private readonly armFrom: number;
  private earlyExits = 0;
  private checks = 0;
  private missingStats = 0;

  constructor(options: EntropyEarlyExitOptions) {
    this.entropyThreshold = checkNumber('entropyThreshold', options.entropyThreshold, 0, false);
    this.minTokensBeforeExit = checkNumber('minTokensBeforeExit', options.minTokensBeforeExit, 0, true);
    this.consecutiveSteps = checkNumber('consecutiveSteps', options.consecutiveSteps ?? 1, 1, true);
    if (options.entropySource !== 'logits' && options.entropySource !== 'attention') {
      throw new ConfigError('entropySource', `must be 'logits' or 'attention', got ${String(options.entropySource)}`);
    }
    this.entropySource = options.entropySource;
    this.needsAttentionStats = options.entropySource === 'attention';
    this.order = options.order;
    this.armFrom = this.minTokensBeforeExit - this.consecutiveSteps + 1;
  }

  /** Attention statistics only on steps where some request's entropy can still matter. */
  wantsAttentionStats(activeStates: Iterable<EarlyExitState>): boolean {
    for (const state of activeStates) if (state.nextIndex >= this.armFrom) return true;
    return false;
  }

  createState(): EarlyExitState {
    return { nextIndex: 1, below: 0 };
  }

  onTokenAccepted(ctx: TokenHookContext, state: EarlyExitState): TokenDecision | undefined {
    const n = ctx.generatedTokens.length;
    state.nextIndex = n + 1;
    // Entropy before the window that can end in an exit is never needed: skip its cost.
    if (n < this.armFrom) return undefined;
    const entropy = this.entropySource === 'logits' ? nextTokenEntropy(ctx) : meanAttentionEntropy(ctx.attention, ctx.seqId);
    if (entropy === undefined) {
      // No statistics this step (the plugin was just enabled): the streak is unknown.
      this.missingStats++;
      state.below = 0;
      return undefined;
    }
    this.checks++;
    // NaN (a degenerate row) compares false: never an exit.
    state.below = entropy < this.entropyThreshold ? state.below + 1 : 0;
    if (n >= this.minTokensBeforeExit && state.below >= this.consecutiveSteps) {
      this.earlyExits++;
      return { finish: 'early_exit' };
    }
    return undefined;
  }

  getStats(): Record<string, number> {
    return { earlyExits: this.earlyExits, checks: this.checks, missingStats: this.missingStats };
  }
}
