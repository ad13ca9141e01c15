import { TinyServeError } from '@tinyserve/core';
import type {
  Executor,
  ForwardParams,
  ForwardResult,
  LoadedModel,
  LogitsHookContext,
  SelectionConfig,
  TinyServeConfig,
} from '@tinyserve/core';
import { Engine } from '@tinyserve/scheduler';
import type { EngineResult } from '@tinyserve/scheduler';
import { createPluginManager } from '@tinyserve/plugins';
import type { PluginManager, PluginManagerStats, TinyServePlugin } from '@tinyserve/plugins';
import { canSwitchSelection, emptyTotals, lastStepRecall } from './forked-decode.js';
import type { DecodeSelectionTotals, SelectionSwitchOptions } from './forked-decode.js';

/** The plugins an eval row can turn on (issue 6's built-ins). */
export type EvalPlugin = 'pruning' | 'early-exit';

export const EVAL_PLUGINS: readonly EvalPlugin[] = ['pruning', 'early-exit'];

/**
 * Wraps an executor to count the selection work of decode steps only (the engine's own
 * counters mix in prefill). A step is a decode step once the current request's prompt has
 * been prefilled; requests run one at a time and prefix caching is off, so the tokens seen
 * tell. With pruning the cache is shorter than the sequence: `kvBytesDense` is what dense
 * attention over the unpruned sequence would read, scaled from the executor's own count by
 * unpruned / cached length, so the read fraction shows what pruning saves.
 */
class MeteredExecutor implements Executor {
  readonly backend: string;
  readonly model: Executor['model'];
  readonly pageSize: number;
  readonly numKvPages: number;
  readonly kvBytesPerPage: number;
  totals: DecodeSelectionTotals = emptyTotals();
  private promptTokens = 0;
  private tokensSeen = 0;
  private decodeSteps = 0;
  readonly rebuildPageMetadata?: Executor['rebuildPageMetadata'];

  constructor(private readonly inner: Executor) {
    this.backend = inner.backend;
    this.model = inner.model;
    this.pageSize = inner.pageSize;
    this.numKvPages = inner.numKvPages;
    this.kvBytesPerPage = inner.kvBytesPerPage;
    if (inner.rebuildPageMetadata) this.rebuildPageMetadata = inner.rebuildPageMetadata.bind(inner);
  }

  /** Starts counting for a new request of `promptTokens` tokens. */
  beginRequest(promptTokens: number): void {
    this.promptTokens = promptTokens;
    this.tokensSeen = 0;
    this.decodeSteps = 0;
  }

  get canSwitch(): boolean {
    return canSwitchSelection(this.inner);
  }

  setSelection(config: SelectionConfig, options?: SelectionSwitchOptions): void {
    if (!canSwitchSelection(this.inner)) throw new TinyServeError('internal_error', 'eval: the executor cannot switch selection');
    this.inner.setSelection(config, options);
  }

  async forward(params: ForwardParams): Promise<ForwardResult> {
    const started = performance.now();
    const result = await this.inner.forward(params);
    const tokens = params.queryIndptr[params.queryIndptr.length - 1];
    if (this.tokensSeen >= this.promptTokens) {
      const cached = params.startPos[0] + tokens;
      const unpruned = this.promptTokens + this.decodeSteps + 1;
      const t = this.totals;
      t.steps++;
      t.decodeMs += performance.now() - started;
      t.pagesScanned += result.selection.pagesScanned;
      t.pagesSelected += result.selection.pagesSelected;
      t.kvBytesRead += result.selection.kvBytesRead;
      t.kvBytesDense += (result.selection.kvBytesDense * unpruned) / cached;
      const recall = lastStepRecall(this.inner, params.seqIds[0]);
      if (recall) {
        t.recallSum += recall.sum;
        t.recallCount += recall.count;
      }
      this.decodeSteps++;
    }
    this.tokensSeen += tokens;
    return result;
  }

  copyTokens(params: Parameters<Executor['copyTokens']>[0]): void {
    this.inner.copyTokens(params);
  }

  dispose(): void {
    this.inner.dispose();
  }
}

/**
 * Forces the tokens of a teacher-forced request and keeps the raw logits of every step:
 * it runs first in `processLogits` (before any plugin that edits logits), copies the row, and
 * leaves only the forced token possible, so greedy sampling takes it.
 */
class TeacherForcingPlugin implements TinyServePlugin<{ forced: readonly number[] | null; rows: Float32Array[] }> {
  readonly name = 'eval-teacher-forcing';
  readonly order = -1_000_000;
  private readonly plans = new Map<string, { forced: readonly number[]; rows: Float32Array[] }>();

  plan(requestId: string, forced: readonly number[]): Float32Array[] {
    const rows: Float32Array[] = [];
    this.plans.set(requestId, { forced, rows });
    return rows;
  }

  createState(info: { requestId: string }): { forced: readonly number[] | null; rows: Float32Array[] } {
    const plan = this.plans.get(info.requestId);
    this.plans.delete(info.requestId);
    return plan ? { forced: plan.forced, rows: plan.rows } : { forced: null, rows: [] };
  }

  processLogits(ctx: LogitsHookContext, state: { forced: readonly number[] | null; rows: Float32Array[] }): void {
    if (state.forced === null) return;
    const k = ctx.generatedTokens.length;
    if (k >= state.forced.length) return;
    state.rows.push(ctx.logits.slice());
    const keep = state.forced[k];
    ctx.logits.fill(-Infinity);
    ctx.logits[keep] = 0;
  }
}

export interface EngineRunnerOptions {
  model: LoadedModel;
  /** Backend name for `createExecutor`. */
  executorName: string;
  createExecutor: (name: string, selection: SelectionConfig, pageSize: number, numKvPages: number) => Promise<Executor>;
  /** Base config (plugin knobs, batching); pageSize and the plugin switches are set here. */
  config: TinyServeConfig;
  pageSize: number;
  numKvPages: number;
  plugins: readonly EvalPlugin[];
  /** Selection the executor starts with. */
  selection: SelectionConfig;
  /** Recall measurement and random seed, applied with every selection switch. */
  switchOptions: SelectionSwitchOptions;
  maxModelLen: number;
  eosTokenIds: readonly number[];
}

export interface EngineGeneration {
  result: EngineResult;
  totals: DecodeSelectionTotals;
}

export interface EngineForcedRun {
  /** Raw logits of each forced step, in order. */
  rows: Float32Array[];
  result: EngineResult;
  totals: DecodeSelectionTotals;
}

/**
 * Runs eval requests through the serving path, the `Engine` with a `PluginManager` (entropy
 * early exit and token pruning as configured), one request at a time, so their quality cost
 * is measured on the same prompts as the harness's own decode loop.
 */
export class EngineRunner {
  readonly pluginManager: PluginManager;
  private readonly engine: Engine;
  private readonly executor: MeteredExecutor;
  private readonly forcing = new TeacherForcingPlugin();
  private readonly switchOptions: SelectionSwitchOptions;
  private nextId = 1;

  private constructor(executor: MeteredExecutor, engine: Engine, pluginManager: PluginManager, switchOptions: SelectionSwitchOptions) {
    this.executor = executor;
    this.engine = engine;
    this.pluginManager = pluginManager;
    this.switchOptions = switchOptions;
    pluginManager.register(this.forcing);
  }

  static async create(options: EngineRunnerOptions): Promise<EngineRunner> {
    const config: TinyServeConfig = {
      ...options.config,
      pageSize: options.pageSize,
      enableTokenPruning: options.plugins.includes('pruning'),
      enableEntropyEarlyExit: options.plugins.includes('early-exit'),
    };
    const inner = await options.createExecutor(options.executorName, options.selection, options.pageSize, options.numKvPages);
    const executor = new MeteredExecutor(inner);
    if (executor.canSwitch) executor.setSelection(options.selection, options.switchOptions);
    const pluginManager = createPluginManager(config);
    const engine = new Engine({
      executor,
      tokenizer: options.model.tokenizer,
      config,
      hooks: pluginManager,
      maxModelLen: options.maxModelLen,
      eosTokenIds: options.eosTokenIds,
      enablePrefixCaching: false,
    });
    return new EngineRunner(executor, engine, pluginManager, { ...options.switchOptions });
  }

  get canSwitchSelection(): boolean {
    return this.executor.canSwitch;
  }

  setSelection(selection: SelectionConfig): void {
    this.executor.setSelection(selection, this.switchOptions);
  }

  /** Greedy generation of up to `maxTokens` tokens (stops at EOS or a plugin's decision). */
  async generate(promptTokenIds: number[], maxTokens: number): Promise<EngineGeneration> {
    const result = await this.run(`eval-${this.nextId++}`, promptTokenIds, maxTokens, false);
    return { result, totals: this.takeTotals() };
  }

  /**
   * Teacher forcing: prefills `prompt`, then runs each of `forced` as a generated token; the
   * logits rows returned are the raw predictions made at each forced step, the first one (from
   * the prefill) included.
   */
  async force(prompt: number[], forced: readonly number[]): Promise<EngineForcedRun> {
    const requestId = `eval-${this.nextId++}`;
    const rows = this.forcing.plan(requestId, forced);
    const result = await this.run(requestId, prompt, forced.length, true);
    return { rows, result, totals: this.takeTotals() };
  }

  stats(): PluginManagerStats {
    return this.pluginManager.getPluginStats();
  }

  async close(): Promise<void> {
    await this.engine.shutdown();
    this.executor.dispose();
  }

  private async run(requestId: string, promptTokenIds: number[], maxTokens: number, ignoreEos: boolean): Promise<EngineResult> {
    this.executor.beginRequest(promptTokenIds.length);
    const handle = this.engine.submit({
      requestId,
      promptTokenIds,
      sampling: {
        temperature: 0,
        topP: 1,
        topK: 0,
        seed: 0,
        maxTokens,
        stop: [],
        stopTokenIds: [],
        ignoreEos,
        logprobs: false,
        promptLogprobs: false,
      },
      priority: 'normal',
    });
    for await (const _event of handle) {
      /* the result carries the tokens */
    }
    const result = await handle.result;
    if (result.finishReason === 'error') throw new TinyServeError('internal_error', `eval: engine request ${requestId} failed`);
    return result;
  }

  private takeTotals(): DecodeSelectionTotals {
    const t = this.executor.totals;
    this.executor.totals = emptyTotals();
    return t;
  }
}
