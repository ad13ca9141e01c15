import { ConfigError } from '@tinyserve/core';
import type { TokenDecision, TokenHookContext } from '@tinyserve/core';
import type { PrunedInfo, TinyServePlugin } from './plugin.js';

export const TOKEN_PRUNING = 'token-pruning';

export interface TokenPruningOptions {
  /** Fraction of the context dropped per pruning pass, [0, 1]. Config `pruningRatio`. */
  pruningRatio: number;
  /** Pruning starts above, and never goes below, this many cached tokens. Config `minTokensAfterPruning`. */
  minTokensAfterPruning: number;
  /** Leading positions never pruned (attention sinks). Default 4. */
  sinkTokens?: number;
  /** Most recent positions never pruned. Default 32. */
  recentWindow?: number;
  /** At least this many steps between two pruning passes of a request. Default 16 (one default page). */
  pruneEvery?: number;
  order?: number;
}

interface PruningState {
  /** Accumulated attention mass per cache position, in current (compacted) coordinates. */
  importance: number[];
  /** Steps seen (accepted tokens) for this request. */
  step: number;
  lastPruneStep: number;
  /** The context length reported at the previous step, minus what was pruned since. */
  lastContextLength: number | null;
  /** Positions this plugin asked to drop, until the engine reports (or shows) the pruning. */
  pending: number[] | null;
}

function checkInt(field: string, value: unknown, min: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw new ConfigError(field, `must be an integer >= ${min}, got ${String(value)}`);
  }
  return value;
}

/** Removes sorted `positions` from `values` in place, keeping order (positions past the end are ignored). */
function removePositions(values: number[], positions: readonly number[]): void {
  let write = 0;
  let next = 0;
  for (let read = 0; read < values.length; read++) {
    while (next < positions.length && positions[next] < read) next++;
    if (next < positions.length && positions[next] === read) continue;
    values[write++] = values[read];
  }
  values.length = write;
}

/**
 * H2O-style token pruning: every cache position accumulates the attention mass it receives
 * (summed over steps and layers); when the context exceeds `minTokensAfterPruning`, at most
 * every `pruneEvery` steps, the `pruningRatio` least important positions are dropped, never
 * going below the floor, never the first `sinkTokens` nor the last `recentWindow` positions.
 * Positions without statistics yet are never chosen.
 *
 * Bookkeeping follows the cache: positions the engine reports pruned (`onPruned`, with the
 * merged positions the manager returned) are removed from the importance array, so later
 * passes speak current cache coordinates. If the engine prunes without reporting, the
 * context length shows it; an unexplained change restarts accumulation (counted in `resyncs`).
 */
export class TokenPruningPlugin implements TinyServePlugin<PruningState> {
  readonly name = TOKEN_PRUNING;
  readonly order: number | undefined;
  readonly needsAttentionStats = true;
  readonly pruningRatio: number;
  readonly minTokensAfterPruning: number;
  readonly sinkTokens: number;
  readonly recentWindow: number;
  readonly pruneEvery: number;
  private prunes = 0;
  private tokensRequested = 0;
  private tokensPruned = 0;
  private bytesFreed = 0;
  private pagesFreed = 0;
  private resyncs = 0;

  constructor(options: TokenPruningOptions) {
    const ratio: unknown = options.pruningRatio;
    if (typeof ratio !== 'number' || !(ratio >= 0 && ratio <= 1)) {
      throw new ConfigError('pruningRatio', `must be a number in [0, 1], got ${String(ratio)}`);
    }
    this.pruningRatio = ratio;
    this.minTokensAfterPruning = checkInt('minTokensAfterPruning', options.minTokensAfterPruning, 0);
    this.sinkTokens = checkInt('sinkTokens', options.sinkTokens ?? 4, 0);
    this.recentWindow = checkInt('recentWindow', options.recentWindow ?? 32, 0);
    this.pruneEvery = checkInt('pruneEvery', options.pruneEvery ?? 16, 1);
    this.order = options.order;
  }

  /** Importance accumulates from the first step, so any live request needs statistics. */
  wantsAttentionStats(activeStates: Iterable<PruningState>): boolean {
    for (const _ of activeStates) return true;
    return false;
  }

  createState(): PruningState {
    return { importance: [], step: 0, lastPruneStep: -Infinity, lastContextLength: null, pending: null };
  }

  onTokenAccepted(ctx: TokenHookContext, state: PruningState): TokenDecision | undefined {
    this.reconcile(ctx.contextLength, state);
    this.accumulate(ctx, state);
    state.step++;
    state.lastContextLength = ctx.contextLength;
    const positions = this.choose(ctx.contextLength, state);
    if (positions === undefined) return undefined;
    state.pending = positions;
    state.lastPruneStep = state.step;
    this.prunes++;
    this.tokensRequested += positions.length;
    return { prunePositions: positions };
  }

  onPruned(info: PrunedInfo, state: PruningState): void {
    this.tokensPruned += info.tokensPruned;
    this.bytesFreed += info.bytesFreed;
    this.pagesFreed += info.pagesFreed;
    if (state.lastContextLength !== null) state.lastContextLength -= info.tokensPruned;
    if (info.positions !== undefined) {
      removePositions(state.importance, info.positions);
    } else if (info.tokensPruned > 0) {
      this.resync(state);
    }
    state.pending = null;
  }

  getStats(): Record<string, number> {
    return {
      prunes: this.prunes,
      tokensRequested: this.tokensRequested,
      tokensPruned: this.tokensPruned,
      bytesFreed: this.bytesFreed,
      pagesFreed: this.pagesFreed,
      resyncs: this.resyncs,
    };
  }

  /** Brings the importance array in line with the cache the engine reports this step. */
  private reconcile(contextLength: number, state: PruningState): void {
    const last = state.lastContextLength;
    if (last === null) return;
    if (state.pending !== null) {
      // The engine pruned (or not) without an onPruned report: the length tells which.
      const pending = state.pending;
      state.pending = null;
      if (contextLength === last - pending.length + 1) {
        removePositions(state.importance, pending);
        return;
      }
    }
    if (contextLength !== last + 1) this.resync(state);
  }

  private resync(state: PruningState): void {
    state.importance.length = 0;
    this.resyncs++;
  }

  private accumulate(ctx: TokenHookContext, state: PruningState): void {
    if (ctx.attention === undefined) return;
    const importance = state.importance;
    for (const stats of ctx.attention) {
      const mass = stats.positionMass;
      if (stats.seqId !== ctx.seqId || mass === undefined) continue;
      // A shorter row than our bookkeeping means positions vanished unseen: start over.
      if (mass.length < importance.length) this.resync(state);
      while (importance.length < mass.length) importance.push(0);
      for (let i = 0; i < mass.length; i++) importance[i] += mass[i];
    }
  }

  /** The positions to drop this step (sorted), or undefined. */
  private choose(contextLength: number, state: PruningState): number[] | undefined {
    if (contextLength <= this.minTokensAfterPruning) return undefined;
    if (state.step - state.lastPruneStep < this.pruneEvery) return undefined;
    const lo = this.sinkTokens;
    const hi = Math.min(state.importance.length, contextLength - this.recentWindow);
    const k = Math.min(
      Math.floor(this.pruningRatio * contextLength),
      contextLength - this.minTokensAfterPruning,
      hi - lo,
    );
    if (k <= 0) return undefined;
    const importance = state.importance;
    const candidates: number[] = [];
    for (let p = lo; p < hi; p++) candidates.push(p);
    // Least important first; among equals the older position (it had more steps to earn mass).
    candidates.sort((a, b) => importance[a] - importance[b] || a - b);
    return candidates.slice(0, k).sort((a, b) => a - b);
  }
}
