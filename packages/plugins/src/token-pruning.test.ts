import { ConfigError } from '@tinyserve/core';
import type { AttentionStats, EngineHooks, RequestHookInfo, TokenDecision } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { PluginManager, TOKEN_PRUNING, TokenPruningPlugin } from './index.js';
import type { TokenPruningOptions } from './index.js';
import { attentionStats, requestInfo, tokenStep, uniformLogits } from './__fixtures__/steps.js';

const PAGE_SIZE = 4;
const BYTES_PER_PAGE = 1024;

/** A distinct attention weight per original token id. */
const weight = (id: number): number => 1 + ((id * 7919) % 1009) / 100;

/**
 * A stand-in for the engine: keeps the cache as original token ids, emits per-layer position
 * mass from those ids, applies the pruning decisions it gets and (optionally) reports them.
 * `acc` is the ground truth of accumulated mass by id, independent of cache coordinates.
 */
class SimulatedSequence {
  readonly cache: number[] = [];
  readonly acc = new Map<number, number>();
  private readonly generated: number[] = [];
  private pendingToken: number | null = null;
  private nextId: number;

  constructor(
    private readonly hooks: EngineHooks,
    readonly info: RequestHookInfo,
    private readonly options: { layers: number; report: boolean },
  ) {
    for (let id = 0; id < info.promptLength; id++) this.cache.push(id);
    this.nextId = info.promptLength;
    hooks.onRequestStart(info);
  }

  /** One decode step; returns the decision and the cache ids it was made against. */
  step(): { decision: TokenDecision | undefined; cacheIds: number[]; contextLength: number } {
    if (this.pendingToken !== null) this.cache.push(this.pendingToken);
    let attention: AttentionStats[] | undefined;
    if (this.hooks.wantsAttentionStats()) {
      attention = [];
      for (let layer = 0; layer < this.options.layers; layer++) {
        const raw = this.cache.map((id) => weight(id) ** (layer + 1));
        const total = raw.reduce((a, b) => a + b, 0);
        const mass = Float32Array.from(raw, (x) => x / total);
        mass.forEach((m, i) => this.acc.set(this.cache[i], (this.acc.get(this.cache[i]) ?? 0) + m));
        attention.push({ seqId: this.info.seqId, layer, entropy: 1, positionMass: mass });
      }
    }
    const token = this.nextId++;
    this.generated.push(token);
    this.pendingToken = token;
    const contextLength = this.cache.length + 1;
    const cacheIds = [...this.cache];
    const decision = this.hooks.onTokenAccepted({
      ...this.info,
      tokenId: token,
      logprob: -1,
      logits: uniformLogits(8, 8),
      generatedTokens: [...this.generated],
      contextLength,
      attention,
    });
    if (decision?.prunePositions !== undefined) this.prune(decision.prunePositions);
    return { decision, cacheIds, contextLength };
  }

  /** Drops cache positions as the engine would (the position past the cache is the new token). */
  prune(positions: readonly number[], report = this.options.report): void {
    const pagesBefore = Math.ceil((this.cache.length + 1) / PAGE_SIZE);
    const drop = new Set(positions);
    if (drop.has(this.cache.length)) this.pendingToken = null;
    const kept = this.cache.filter((_, i) => !drop.has(i));
    this.cache.splice(0, this.cache.length, ...kept);
    const pagesFreed = pagesBefore - Math.ceil((this.cache.length + 1) / PAGE_SIZE);
    if (report) {
      this.hooks.onPruned({ ...this.info, tokensPruned: positions.length, pagesFreed, bytesFreed: pagesFreed * BYTES_PER_PAGE });
    }
  }

  finish(): void {
    this.hooks.onRequestFinish({ ...this.info, finishReason: 'length', generatedTokens: [...this.generated] });
  }
}

/** The rule, stated over original ids and the ground-truth importance. */
function expectedPrune(cacheIds: number[], contextLength: number, acc: Map<number, number>, o: Required<TokenPruningOptions>): number[] {
  if (contextLength <= o.minTokensAfterPruning) return [];
  const hi = Math.min(cacheIds.length, contextLength - o.recentWindow);
  const k = Math.min(Math.floor(o.pruningRatio * contextLength), contextLength - o.minTokensAfterPruning, hi - o.sinkTokens);
  if (k <= 0) return [];
  const eligible: number[] = [];
  for (let p = o.sinkTokens; p < hi; p++) eligible.push(p);
  eligible.sort((a, b) => (acc.get(cacheIds[a]) ?? 0) - (acc.get(cacheIds[b]) ?? 0) || a - b);
  return eligible.slice(0, k).sort((a, b) => a - b);
}

const SIM_OPTIONS: Required<TokenPruningOptions> = {
  pruningRatio: 0.25,
  minTokensAfterPruning: 48,
  sinkTokens: 4,
  recentWindow: 8,
  pruneEvery: 5,
  order: 0,
};

/** Runs a sequence against the oracle; returns the steps that pruned. */
function runAgainstOracle(m: PluginManager, sim: SimulatedSequence, steps: number, extra?: (step: number, cacheLength: number) => number[]): number[] {
  const pruneSteps: number[] = [];
  let lastPrune = -Infinity;
  for (let step = 1; step <= steps; step++) {
    const { decision, cacheIds, contextLength } = sim.step();
    const ours = step - lastPrune >= SIM_OPTIONS.pruneEvery ? expectedPrune(cacheIds, contextLength, sim.acc, SIM_OPTIONS) : [];
    if (ours.length > 0) {
      lastPrune = step;
      pruneSteps.push(step);
      expect(contextLength - ours.length).toBeGreaterThanOrEqual(SIM_OPTIONS.minTokensAfterPruning);
    }
    const merged = [...new Set([...ours, ...(extra?.(step, cacheIds.length) ?? [])])].sort((a, b) => a - b);
    expect(decision?.prunePositions ?? [], `step ${step}`).toEqual(merged);
  }
  return pruneSteps;
}

describe('token pruning choices', () => {
  // Prompt of 8 positions, one layer; the new token makes the context 9.
  const mass = [0.01, 0.5, 0.02, 0.3, 0.03, 0.04, 0.05, 0.001];
  const decide = (options: Partial<TokenPruningOptions>, stats: AttentionStats[] | null = attentionStats(0, 1, 1, mass)) => {
    const m = new PluginManager().register(
      new TokenPruningPlugin({ pruningRatio: 0.5, minTokensAfterPruning: 6, sinkTokens: 1, recentWindow: 2, pruneEvery: 1, ...options }),
    );
    return m.onTokenAccepted(tokenStep(requestInfo('r', 0, 8), 1, { attention: stats ?? undefined }));
  };

  it('drops the least important positions, never the sinks nor the recent window', () => {
    // Positions 0 (sink) and 7 (recent) hold less mass than 2, 4 and 5 but are protected.
    expect(decide({})).toEqual({ prunePositions: [2, 4, 5] });
    expect(decide({ sinkTokens: 0, recentWindow: 0 })).toEqual({ prunePositions: [0, 2, 7] });
    // Only positions 3 and 4 are eligible here: the ratio's 4 is capped to them.
    expect(decide({ sinkTokens: 3, recentWindow: 4, minTokensAfterPruning: 0 })).toEqual({ prunePositions: [3, 4] });
    expect(decide({ sinkTokens: 3, recentWindow: 4, minTokensAfterPruning: 0, pruningRatio: 0.15 })).toEqual({ prunePositions: [4] });
  });

  it('drops pruningRatio of the context, never below minTokensAfterPruning', () => {
    expect(decide({ minTokensAfterPruning: 7 })).toEqual({ prunePositions: [2, 4] });
    expect(decide({ pruningRatio: 0.25, minTokensAfterPruning: 0 })).toEqual({ prunePositions: [2, 4] });
    expect(decide({ pruningRatio: 0.1, minTokensAfterPruning: 0 })).toBeUndefined();
    expect(decide({ minTokensAfterPruning: 9 })).toBeUndefined();
  });

  it('never chooses positions it has no statistics for', () => {
    expect(decide({}, null)).toBeUndefined();
    expect(decide({ minTokensAfterPruning: 0 }, attentionStats(1, 1, 1, mass))).toBeUndefined();
  });

  it('validates its options', () => {
    const base = { pruningRatio: 0.1, minTokensAfterPruning: 10 };
    expect(() => new TokenPruningPlugin({ ...base, pruningRatio: 1.5 })).toThrow(/pruningRatio: must be a number in \[0, 1\], got 1.5/);
    expect(() => new TokenPruningPlugin({ ...base, minTokensAfterPruning: -1 })).toThrow(ConfigError);
    expect(() => new TokenPruningPlugin({ ...base, sinkTokens: 0.5 })).toThrow(/sinkTokens: must be an integer >= 0/);
    expect(() => new TokenPruningPlugin({ ...base, pruneEvery: 0 })).toThrow(/pruneEvery: must be an integer >= 1, got 0/);
    const defaults = new TokenPruningPlugin(base);
    expect([defaults.sinkTokens, defaults.recentWindow, defaults.pruneEvery]).toEqual([4, 32, 16]);
  });
});

describe('token pruning over a running sequence', () => {
  it('keeps its importance in current cache coordinates across prunes (reported)', () => {
    const m = new PluginManager().register(new TokenPruningPlugin(SIM_OPTIONS));
    const sim = new SimulatedSequence(m, requestInfo('r', 3, 40), { layers: 2, report: true });
    const pruneSteps = runAgainstOracle(m, sim, 60);
    expect(pruneSteps.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < pruneSteps.length; i++) expect(pruneSteps[i] - pruneSteps[i - 1]).toBeGreaterThanOrEqual(SIM_OPTIONS.pruneEvery);
    // Sinks survive every pass.
    expect(sim.cache.slice(0, 4)).toEqual([0, 1, 2, 3]);
    const stats = m.getPluginStats();
    const custom = stats.plugins[TOKEN_PRUNING].custom ?? {};
    expect(custom.prunes).toBe(pruneSteps.length);
    expect(custom.tokensPruned).toBe(custom.tokensRequested);
    expect(stats.tokensPruned).toBe(custom.tokensPruned);
    expect(stats.pagesFreed).toBe(custom.pagesFreed);
    expect(stats.pagesFreed).toBeGreaterThan(0);
    expect(stats.bytesFreed).toBe(stats.pagesFreed * BYTES_PER_PAGE);
    expect(custom.resyncs).toBe(0);
    sim.finish();
    expect(stats.activeRequests).toBe(1);
    expect(m.getPluginStats().activeRequests).toBe(0);
    expect(m.wantsAttentionStats()).toBe(false);
  });

  it('infers an unreported pruning from the context length', () => {
    const m = new PluginManager().register(new TokenPruningPlugin(SIM_OPTIONS));
    const sim = new SimulatedSequence(m, requestInfo('r', 0, 40), { layers: 1, report: false });
    expect(runAgainstOracle(m, sim, 40).length).toBeGreaterThanOrEqual(2);
    expect(m.getPluginStats().plugins[TOKEN_PRUNING].custom?.resyncs).toBe(0);
  });

  it('follows positions other plugins pruned in the same decision', () => {
    const m = new PluginManager().register(new TokenPruningPlugin(SIM_OPTIONS));
    // Another plugin drops position 6 every 7th step: the union is what the cache loses.
    const extra = (step: number): number[] => (step % 7 === 0 ? [6] : []);
    m.registerPlugin('extra', (context) => ({ ...context, prunePositions: extra(context.generatedTokens.length) }));
    const sim = new SimulatedSequence(m, requestInfo('r', 0, 40), { layers: 2, report: true });
    runAgainstOracle(m, sim, 50, extra);
    expect(m.getPluginStats().plugins[TOKEN_PRUNING].custom?.resyncs).toBe(0);
  });

  it('restarts accumulation when the cache changed in a way it cannot explain', () => {
    const m = new PluginManager().register(new TokenPruningPlugin({ ...SIM_OPTIONS, minTokensAfterPruning: 1000 }));
    const sim = new SimulatedSequence(m, requestInfo('r', 0, 20), { layers: 1, report: false });
    sim.step();
    sim.step();
    sim.prune([5]);
    sim.step();
    expect(m.getPluginStats().plugins[TOKEN_PRUNING].custom?.resyncs).toBe(1);
  });

  it('asks for attention statistics only while it tracks a request', () => {
    const m = new PluginManager().register(new TokenPruningPlugin(SIM_OPTIONS));
    expect(m.wantsAttentionStats()).toBe(false);
    const sim = new SimulatedSequence(m, requestInfo('r'), { layers: 1, report: true });
    expect(m.wantsAttentionStats()).toBe(true);
    m.disable(TOKEN_PRUNING);
    expect(m.wantsAttentionStats()).toBe(false);
    m.enable(TOKEN_PRUNING);
    // Re-enabled mid-request: its state comes back on the next token.
    sim.step();
    expect(m.wantsAttentionStats()).toBe(true);
    sim.finish();
    expect(m.wantsAttentionStats()).toBe(false);
  });
});
