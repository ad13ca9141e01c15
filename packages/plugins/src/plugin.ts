import type {
  FinishHookContext,
  LogitsHookContext,
  PruneHookInfo,
  RequestHookInfo,
  TokenDecision,
  TokenHookContext,
} from '@tinyserve/core';

/**
 * A pruning the engine carried out, as a plugin sees it: the engine's report plus, when the
 * manager knows them, the cache positions that were dropped (the merged `prunePositions` it
 * returned for this request, in the cache coordinates of that step, sorted).
 */
export interface PrunedInfo extends PruneHookInfo {
  /** Absent when the engine's report does not match the decision the manager returned. */
  positions?: readonly number[];
}

/**
 * A typed plugin. Every hook is optional; each receives the plugin's own per-request state
 * (from `createState`, `{}` by default), created at request start (or lazily, when a plugin is
 * enabled mid-request) and dropped when the request finishes or the plugin is disabled.
 *
 * Hooks run synchronously inside the decode step, in the manager's order. Methods (not
 * function-valued properties) keep `TinyServePlugin<MyState>` assignable to `TinyServePlugin`.
 */
export interface TinyServePlugin<S extends object = object> {
  /** Registry name: letters, digits, '_', '.', '-'. */
  readonly name: string;
  /** Lower runs first; ties run in registration order. Default 0. */
  readonly order?: number;
  /** The plugin reads attention statistics (`TokenHookContext.attention`). */
  readonly needsAttentionStats?: boolean;
  /**
   * Refines `needsAttentionStats` per step, given the plugin's live per-request states (for
   * example: only once some request is close enough to its exit window). Default: true.
   */
  wantsAttentionStats?(activeStates: Iterable<S>): boolean;
  createState?(info: RequestHookInfo): S;
  onRequestStart?(info: RequestHookInfo, state: S): void;
  /** May modify `ctx.logits` in place before sampling. */
  processLogits?(ctx: LogitsHookContext, state: S): void;
  onTokenAccepted?(ctx: TokenHookContext, state: S): TokenDecision | undefined | void;
  onPruned?(info: PrunedInfo, state: S): void;
  onRequestFinish?(ctx: FinishHookContext, state: S): void;
  /** Plugin-specific counters, reported under `custom` in the manager's stats. */
  getStats?(): Record<string, number>;
}

export interface RegisterPluginOptions {
  /** Overrides the plugin's own `order`. */
  order?: number;
  /** Start enabled (default true). */
  enabled?: boolean;
}

/** Statistics of one plugin: plain data. */
export interface PluginStats {
  name: string;
  order: number;
  enabled: boolean;
  /** Hook invocations (every hook, `wantsAttentionStats` included). */
  calls: number;
  errors: number;
  /** `hook: message` of the most recent error, or null. */
  lastError: string | null;
  /** Wall time spent inside this plugin's hooks. */
  totalMs: number;
  meanUs: number;
  custom?: Record<string, number>;
}

/** `getPluginStats()`'s result: plain data, safe to serialize. */
export interface PluginManagerStats {
  /** By plugin name, in run order. */
  plugins: Record<string, PluginStats>;
  /** Sequences finished with `early_exit` by a plugin decision (the seed's `early_exit_count`). */
  earlyExitCount: number;
  /** Totals of the engine's pruning reports (`onPruned`): memory actually freed. */
  tokensPruned: number;
  bytesFreed: number;
  pagesFreed: number;
  /** Requests started and not yet finished (each holds per-plugin state). */
  activeRequests: number;
}
