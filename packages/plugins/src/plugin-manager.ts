import { ConfigError, PluginError, Registry, RegistryError } from '@tinyserve/core';
import type {
  EngineHooks,
  FinishHookContext,
  LogitsHookContext,
  PluginErrorMode,
  PruneHookInfo,
  RequestHookInfo,
  TokenDecision,
  TokenHookContext,
} from '@tinyserve/core';
import { functionPlugin } from './function-plugin.js';
import type { FunctionPluginOptions, PluginFunction } from './function-plugin.js';
import type { PluginManagerStats, PluginStats, PrunedInfo, RegisterPluginOptions, TinyServePlugin } from './plugin.js';

type HookName =
  | 'wantsAttentionStats'
  | 'onRequestStart'
  | 'processLogits'
  | 'onTokenAccepted'
  | 'onPruned'
  | 'onRequestFinish'
  | 'getStats';

const HOOKS: readonly HookName[] = [
  'wantsAttentionStats',
  'onRequestStart',
  'processLogits',
  'onTokenAccepted',
  'onPruned',
  'onRequestFinish',
  'getStats',
];

interface Entry {
  readonly name: string;
  readonly plugin: TinyServePlugin;
  readonly order: number;
  /** Registration sequence: the tie-breaker of `order`. */
  readonly seq: number;
  enabled: boolean;
  /** Per-request state by requestId. */
  readonly states: Map<string, object>;
  calls: number;
  errors: number;
  lastError: string | null;
  totalNs: bigint;
}

interface RequestRecord {
  /** The merged prune positions last returned, until the engine reports the pruning. */
  pendingPrune: number[] | null;
}

export interface PluginManagerOptions {
  /** What a throwing plugin does (config `pluginErrorMode`). Default 'skip'. */
  errorMode?: PluginErrorMode;
}

const FAILED: unique symbol = Symbol('failed');

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'number' || typeof value === 'boolean' || value === undefined) return String(value);
  return `a ${typeof value}`;
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function isPlainDecisionObject(value: unknown): value is TokenDecision {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/**
 * Runs plugins at the engine's hook points (core's `EngineHooks`). Plugins register by name,
 * run in `order` then registration order, can be enabled and disabled at run time, are
 * timed and counted per plugin, and are isolated: a throwing plugin is recorded and, by
 * `errorMode`, skipped ('skip') or turned into a `PluginError` naming it ('fail_request'),
 * which the engine applies to that request only.
 *
 * The engine must call `onRequestFinish` for every request it started (failed ones too):
 * that is where per-request plugin state is dropped.
 */
export class PluginManager implements EngineHooks {
  private mode: PluginErrorMode = 'skip';
  private readonly registry = new Registry<Entry>('plugin');
  private nextSeq = 0;
  /** Enabled entries in run order; replaced (never mutated) so a hook loop is never disturbed. */
  private active: readonly Entry[] = [];
  private readonly requests = new Map<string, RequestRecord>();
  private earlyExitCount = 0;
  private tokensPruned = 0;
  private bytesFreed = 0;
  private pagesFreed = 0;

  constructor(options: PluginManagerOptions = {}) {
    this.errorMode = options.errorMode ?? 'skip';
  }

  /** What a throwing plugin does; may be changed at run time. */
  get errorMode(): PluginErrorMode {
    return this.mode;
  }

  set errorMode(mode: PluginErrorMode) {
    if (mode !== 'skip' && mode !== 'fail_request') {
      throw new ConfigError('pluginErrorMode', `must be 'skip' or 'fail_request', got ${describe(mode)}`);
    }
    this.mode = mode;
  }

  /** Registers a typed plugin. */
  register<S extends object>(plugin: TinyServePlugin<S>, options: RegisterPluginOptions = {}): this {
    if (plugin === null || typeof plugin !== 'object') {
      throw new RegistryError(`a plugin must be an object with a name and hooks, got ${describe(plugin)}`);
    }
    const name: unknown = plugin.name;
    if (typeof name !== 'string') throw new RegistryError(`plugin name must be a string, got ${describe(name)}`);
    for (const hook of HOOKS) {
      const fn: unknown = (plugin as unknown as Record<string, unknown>)[hook];
      if (fn !== undefined && typeof fn !== 'function') {
        throw new PluginError(name, `${hook} must be a function, got ${describe(fn)}`);
      }
    }
    if (plugin.createState !== undefined && typeof plugin.createState !== 'function') {
      throw new PluginError(name, `createState must be a function, got ${describe(plugin.createState)}`);
    }
    if (plugin.needsAttentionStats !== undefined && typeof plugin.needsAttentionStats !== 'boolean') {
      throw new PluginError(name, `needsAttentionStats must be true or false, got ${describe(plugin.needsAttentionStats)}`);
    }
    const order = options.order ?? plugin.order ?? 0;
    if (typeof order !== 'number' || !Number.isFinite(order)) {
      throw new PluginError(name, `order must be a finite number, got ${describe(order)}`);
    }
    const enabled = options.enabled ?? true;
    if (typeof enabled !== 'boolean') throw new PluginError(name, `enabled must be true or false, got ${describe(enabled)}`);
    const entry: Entry = {
      name,
      plugin: plugin as TinyServePlugin,
      order,
      seq: this.nextSeq++,
      enabled,
      states: new Map(),
      calls: 0,
      errors: 0,
      lastError: null,
      totalNs: 0n,
    };
    this.registry.register(name, entry);
    this.refreshActive();
    return this;
  }

  /**
   * Registers a plugin. The seed's form, `registerPlugin('name', (context) => context)`,
   * wraps a function called once per accepted token (see `PluginContext`); a plugin object
   * is registered as with `register`.
   */
  registerPlugin(name: string, fn: PluginFunction, options?: FunctionPluginOptions & RegisterPluginOptions): this;
  registerPlugin<S extends object>(plugin: TinyServePlugin<S>, options?: RegisterPluginOptions): this;
  registerPlugin<S extends object>(
    nameOrPlugin: string | TinyServePlugin<S>,
    fnOrOptions?: PluginFunction | RegisterPluginOptions,
    options: FunctionPluginOptions & RegisterPluginOptions = {},
  ): this {
    if (typeof nameOrPlugin !== 'string') return this.register(nameOrPlugin, fnOrOptions as RegisterPluginOptions | undefined);
    if (typeof fnOrOptions !== 'function') {
      throw new PluginError(nameOrPlugin, `registerPlugin(name, fn) needs a function (context) => context, got ${describe(fnOrOptions)}`);
    }
    const { enabled, ...fnOptions } = options;
    return this.register(functionPlugin(nameOrPlugin, fnOrOptions, fnOptions), { enabled });
  }

  /** Removes a plugin and its per-request state; false when no such plugin. */
  unregister(name: string): boolean {
    if (!this.registry.unregister(name)) return false;
    this.refreshActive();
    return true;
  }

  has(name: string): boolean {
    return this.registry.has(name);
  }

  /** The registered plugin object (throws RegistryError listing the names when unknown). */
  get(name: string): TinyServePlugin {
    return this.registry.get(name).plugin;
  }

  /** Plugin names in run order, disabled ones included. */
  names(): string[] {
    return this.sorted(this.registry.names().map((n) => this.registry.get(n))).map((e) => e.name);
  }

  isEnabled(name: string): boolean {
    return this.registry.get(name).enabled;
  }

  enable(name: string): void {
    this.setEnabled(name, true);
  }

  /** Disables a plugin at run time; its per-request state is dropped (recreated on re-enable). */
  disable(name: string): void {
    this.setEnabled(name, false);
  }

  setEnabled(name: string, enabled: boolean): void {
    const entry = this.registry.get(name);
    if (entry.enabled === enabled) return;
    entry.enabled = enabled;
    if (!enabled) entry.states.clear();
    this.refreshActive();
  }

  // ---- EngineHooks -------------------------------------------------------------------------

  wantsAttentionStats(): boolean {
    for (const entry of this.active) {
      if (entry.plugin.needsAttentionStats !== true) continue;
      const ask = entry.plugin.wantsAttentionStats;
      if (ask === undefined) return true;
      // A failing refinement is recorded and read as "no": this call belongs to no request.
      const wants = this.invoke(entry, 'wantsAttentionStats', null, () => ask.call(entry.plugin, entry.states.values()), false);
      if (wants === true) return true;
    }
    return false;
  }

  onRequestStart(info: RequestHookInfo): void {
    // A restarted id begins clean: state from an unfinished earlier run must not leak into it.
    this.dropRequestState(info.requestId);
    this.requests.set(info.requestId, { pendingPrune: null });
    for (const entry of this.active) {
      const plugin = entry.plugin;
      // Stateless plugins without a start hook have nothing to run here.
      if (plugin.onRequestStart === undefined && plugin.createState === undefined) continue;
      this.invoke(entry, 'onRequestStart', info.requestId, () => {
        const state = this.stateFor(entry, info);
        plugin.onRequestStart?.(info, state);
      });
    }
  }

  processLogits(ctx: LogitsHookContext): void {
    for (const entry of this.active) {
      const plugin = entry.plugin;
      if (plugin.processLogits === undefined) continue;
      this.invoke(entry, 'processLogits', ctx.requestId, () => plugin.processLogits?.(ctx, this.stateFor(entry, ctx)));
    }
  }

  onTokenAccepted(ctx: TokenHookContext): TokenDecision | undefined {
    let record = this.requests.get(ctx.requestId);
    if (record === undefined) {
      record = { pendingPrune: null };
      this.requests.set(ctx.requestId, record);
    }
    // A prune returned last step and never reported is stale now.
    record.pendingPrune = null;
    let finish: TokenDecision['finish'];
    let prune: Set<number> | undefined;
    for (const entry of this.active) {
      const plugin = entry.plugin;
      if (plugin.onTokenAccepted === undefined) continue;
      const decision = this.invoke(entry, 'onTokenAccepted', ctx.requestId, () => {
        const d = plugin.onTokenAccepted?.(ctx, this.stateFor(entry, ctx));
        if (d !== undefined) checkDecision(d, ctx.contextLength);
        return d;
      });
      if (decision === FAILED || decision === undefined) continue;
      if (decision.finish !== undefined && finish === undefined) finish = decision.finish;
      if (decision.prunePositions !== undefined && decision.prunePositions.length > 0) {
        prune ??= new Set();
        for (const p of decision.prunePositions) prune.add(p);
      }
    }
    if (finish !== undefined) {
      if (finish === 'early_exit') this.earlyExitCount++;
      // A finishing sequence is not worth compacting: its pages are released anyway.
      return { finish };
    }
    if (prune === undefined) return undefined;
    const positions = [...prune].sort((a, b) => a - b);
    record.pendingPrune = positions;
    return { prunePositions: [...positions] };
  }

  onPruned(info: PruneHookInfo): void {
    this.tokensPruned += info.tokensPruned;
    this.bytesFreed += info.bytesFreed;
    this.pagesFreed += info.pagesFreed;
    const record = this.requests.get(info.requestId);
    const pending = record?.pendingPrune ?? null;
    if (record !== undefined) record.pendingPrune = null;
    const pruned: PrunedInfo =
      pending !== null && pending.length === info.tokensPruned ? { ...info, positions: pending } : { ...info };
    for (const entry of this.active) {
      const plugin = entry.plugin;
      if (plugin.onPruned === undefined) continue;
      this.invoke(entry, 'onPruned', info.requestId, () => plugin.onPruned?.(pruned, this.stateFor(entry, info)));
    }
  }

  onRequestFinish(ctx: FinishHookContext): void {
    let firstError: unknown;
    try {
      for (const entry of this.active) {
        const plugin = entry.plugin;
        if (plugin.onRequestFinish === undefined) continue;
        try {
          this.invoke(entry, 'onRequestFinish', ctx.requestId, () => plugin.onRequestFinish?.(ctx, this.stateFor(entry, ctx)));
        } catch (err) {
          // Every plugin still gets its finish hook; the first failure is reported after.
          firstError ??= err;
        }
      }
    } finally {
      this.dropRequestState(ctx.requestId);
    }
    if (firstError !== undefined) throw firstError;
  }

  // ---- statistics --------------------------------------------------------------------------

  getPluginStats(): PluginManagerStats {
    const plugins: Record<string, PluginStats> = {};
    for (const name of this.names()) {
      const entry = this.registry.get(name);
      const totalMs = Number(entry.totalNs) / 1e6;
      const stats: PluginStats = {
        name,
        order: entry.order,
        enabled: entry.enabled,
        calls: entry.calls,
        errors: entry.errors,
        lastError: entry.lastError,
        totalMs,
        meanUs: entry.calls === 0 ? 0 : (totalMs * 1000) / entry.calls,
      };
      const getStats = entry.plugin.getStats;
      if (getStats !== undefined) {
        try {
          stats.custom = { ...getStats.call(entry.plugin) };
        } catch (err) {
          entry.errors++;
          entry.lastError = `getStats: ${errorMessage(err)}`;
          stats.errors = entry.errors;
          stats.lastError = entry.lastError;
        }
      }
      plugins[name] = stats;
    }
    return {
      plugins,
      earlyExitCount: this.earlyExitCount,
      tokensPruned: this.tokensPruned,
      bytesFreed: this.bytesFreed,
      pagesFreed: this.pagesFreed,
      activeRequests: this.requests.size,
    };
  }

  /** Zeroes the manager's counters (not the plugins' own `getStats` counters). */
  resetStats(): void {
    for (const name of this.registry.names()) {
      const entry = this.registry.get(name);
      entry.calls = 0;
      entry.errors = 0;
      entry.lastError = null;
      entry.totalNs = 0n;
    }
    this.earlyExitCount = 0;
    this.tokensPruned = 0;
    this.bytesFreed = 0;
    this.pagesFreed = 0;
  }

  // ---- internals ---------------------------------------------------------------------------

  private sorted(entries: Entry[]): Entry[] {
    return entries.sort((a, b) => a.order - b.order || a.seq - b.seq);
  }

  private refreshActive(): void {
    this.active = this.sorted(this.registry.names().map((n) => this.registry.get(n)).filter((e) => e.enabled));
  }

  private stateFor(entry: Entry, info: RequestHookInfo): object {
    let state = entry.states.get(info.requestId);
    if (state === undefined) {
      state = entry.plugin.createState?.(info) ?? {};
      if (state === null || typeof state !== 'object') {
        throw new TypeError(`createState returned ${describe(state)}, expected an object`);
      }
      entry.states.set(info.requestId, state);
    }
    return state;
  }

  private dropRequestState(requestId: string): void {
    this.requests.delete(requestId);
    for (const name of this.registry.names()) this.registry.get(name).states.delete(requestId);
  }

  /**
   * Runs one hook of one plugin, timed and counted. On a throw: recorded, then either
   * `onError` is returned (skip mode) or a PluginError naming the plugin is thrown.
   */
  private invoke<R, F = typeof FAILED>(
    entry: Entry,
    hook: HookName,
    requestId: string | null,
    body: () => R,
    onError: F = FAILED as F,
  ): R | F {
    const t0 = process.hrtime.bigint();
    try {
      return body();
    } catch (err) {
      entry.errors++;
      entry.lastError = `${hook}: ${errorMessage(err)}`;
      if (this.errorMode === 'fail_request' && requestId !== null) {
        throw new PluginError(entry.name, `${hook} failed for request '${requestId}': ${errorMessage(err)}`, { cause: err });
      }
      return onError;
    } finally {
      entry.calls++;
      entry.totalNs += process.hrtime.bigint() - t0;
    }
  }
}

function checkDecision(decision: unknown, contextLength: number): void {
  if (!isPlainDecisionObject(decision)) {
    throw new TypeError(`returned ${describe(decision)}, expected a TokenDecision object or undefined`);
  }
  const { finish, prunePositions } = decision;
  if (finish !== undefined && finish !== 'early_exit' && finish !== 'stop') {
    throw new TypeError(`returned finish ${describe(finish)}; use 'early_exit' or 'stop'`);
  }
  if (prunePositions !== undefined) {
    if (!Array.isArray(prunePositions)) {
      throw new TypeError(`returned prunePositions ${describe(prunePositions)}, expected an array of cache positions`);
    }
    for (const p of prunePositions) {
      if (!Number.isInteger(p) || p < 0 || p >= contextLength) {
        throw new TypeError(`returned prune position ${describe(p)}; positions must be integers in [0, ${contextLength})`);
      }
    }
  }
}
