import { ConfigError, TinyServeError, loadModel, resolveConfig } from '@tinyserve/core';
import type { Executor, LoadedModel, SelectionConfig, TinyServeConfig } from '@tinyserve/core';
import { createExecutor } from '@tinyserve/executor';
import { MODEL_TINY_NAME, modelTinyDir } from '@tinyserve/model-tiny';
import { EVAL_PLUGINS, EngineRunner } from './engine-runner.js';
import type { EvalPlugin } from './engine-runner.js';
import { EVAL_TASKS } from './eval-types.js';
import type { EvalBudget, EvalModelInfo, EvalParams, EvalResult, EvalRow, EvalSettings, EvalTask } from './eval-types.js';
import { ForkedDecoder, addTotals, canSwitchSelection, emptyTotals } from './forked-decode.js';
import type { DecodeSelectionTotals, SelectionSwitchOptions, SharedPrefix } from './forked-decode.js';
import { loadHeldOutText, perplexitySamples } from './held-out-text.js';
import type { PerplexitySample } from './held-out-text.js';
import { QualityAccumulator, argmax } from './metrics.js';
import { PASSKEY_FORMAT, buildPasskeyPrompt, passkeyDepth, passkeyKey, passkeyTargets, scorePasskeyAnswer } from './passkey.js';
import type { PasskeyContext, PasskeyPrompt } from './passkey.js';

/** A policy name with the plugins turned on for it. */
export interface EvalVariant {
  name: string;
  policy: string;
  plugins: EvalPlugin[];
}

/** Parses 'quest', 'dense+pruning', 'quest+early-exit+pruning' (plugins in any order). */
export function parseEvalVariant(spec: string): EvalVariant {
  const parts = spec.trim().split('+').map((s) => s.trim());
  const policy = parts[0];
  if (!policy || !/^[a-z0-9][a-z0-9_.-]*$/i.test(policy)) {
    throw new ConfigError('policies', `'${spec}' does not start with a policy name (e.g. quest, streaming, dense)`);
  }
  const plugins: EvalPlugin[] = [];
  for (const p of parts.slice(1)) {
    if (!(EVAL_PLUGINS as readonly string[]).includes(p)) {
      throw new ConfigError('policies', `'${spec}': unknown plugin '${p}' (known: ${EVAL_PLUGINS.join(', ')})`);
    }
    if (!plugins.includes(p as EvalPlugin)) plugins.push(p as EvalPlugin);
  }
  plugins.sort();
  return { name: spec.trim(), policy, plugins };
}

function describeBudget(b: EvalBudget): string {
  return b.kind === 'tokens' ? `${b.value} tokens` : `${b.kind} ${b.value}`;
}

function checkBudget(b: EvalBudget): EvalBudget {
  const ok =
    b !== null &&
    typeof b === 'object' &&
    (b.kind === 'tokens' ? Number.isInteger(b.value) && b.value >= 1 : (b.kind === 'ratio' || b.kind === 'fraction') && b.value > 0 && b.value <= 1);
  if (!ok) {
    throw new ConfigError(
      'budgets',
      `${JSON.stringify(b)} is not a budget: { kind: 'ratio' | 'fraction', value in (0, 1] } or { kind: 'tokens', value: positive integer }`,
    );
  }
  return { kind: b.kind, value: b.value };
}

function positiveInt(field: string, v: number): number {
  if (!Number.isInteger(v) || v < 1) throw new ConfigError(field, `must be a positive integer, got ${v}`);
  return v;
}

/** One row's worth of work: a variant at one budget (null for dense) on one page size. */
interface RunSpec {
  variant: EvalVariant;
  budget: EvalBudget | null;
}

function selectionFor(run: RunSpec, contextTokens: number, pageSize: number, base: TinyServeConfig): SelectionConfig {
  const common = { sinkPages: base.sinkPages, denseLayers: base.denseLayers, useFusedKernel: base.useFusedKernel };
  const b = run.budget;
  if (b === null) return { policy: run.variant.policy, selectionRatio: 1, tokenBudget: null, ...common };
  if (b.kind === 'ratio') return { policy: run.variant.policy, selectionRatio: b.value, tokenBudget: null, ...common };
  if (b.kind === 'tokens') return { policy: run.variant.policy, selectionRatio: 1, tokenBudget: b.value, ...common };
  // A fraction of the context; never below what the policy always keeps (the sinks and the current page).
  const floor = (base.sinkPages + 1) * pageSize;
  return { policy: run.variant.policy, selectionRatio: 1, tokenBudget: Math.max(Math.ceil(b.value * contextTokens), floor), ...common };
}

function selectionKey(s: SelectionConfig): string {
  return JSON.stringify([s.policy, s.selectionRatio, s.tokenBudget, s.sinkPages, s.denseLayers, s.useFusedKernel]);
}

/** What one run accumulates for one task. */
class TaskAcc {
  totals: DecodeSelectionTotals = emptyTotals();
  correct = new Map<number, number>();
  trials = new Map<number, number>();
  tokensGenerated = 0;
  answers = 0;
  quality = new QualityAccumulator();
  earlyExits = 0;
  tokensPruned = 0;
  tokenBudgets: Record<string, number> = {};
  note: string | null = null;

  addAnswer(target: number, correct: boolean, tokens: number): void {
    this.trials.set(target, (this.trials.get(target) ?? 0) + 1);
    this.correct.set(target, (this.correct.get(target) ?? 0) + (correct ? 1 : 0));
    this.tokensGenerated += tokens;
    this.answers++;
  }
}

/** The harness's executors for one page size: one that switches policies, or one per selection. */
class HarnessExecutors {
  private shared: ForkedDecoder | null = null;
  private readonly perSelection = new Map<string, ForkedDecoder>();
  private switchable: boolean | null = null;

  constructor(
    private readonly make: (selection: SelectionConfig) => Promise<Executor>,
    private readonly dense: SelectionConfig,
    private readonly prefillChunk: number,
    private readonly switchOptions: SelectionSwitchOptions,
  ) {}

  private decoder(executor: Executor): ForkedDecoder {
    return new ForkedDecoder(executor, { prefillChunk: this.prefillChunk, dense: this.dense, switchOptions: this.switchOptions });
  }

  get sharedPrefill(): boolean {
    return this.switchable !== false;
  }

  async decoderFor(selection: SelectionConfig): Promise<ForkedDecoder> {
    if (this.switchable === null) {
      const executor = await this.make(this.dense);
      this.switchable = canSwitchSelection(executor);
      const decoder = this.decoder(executor);
      if (this.switchable) this.shared = decoder;
      else this.perSelection.set(selectionKey(this.dense), decoder);
    }
    if (this.shared) return this.shared;
    const key = selectionKey(selection);
    let decoder = this.perSelection.get(key);
    if (!decoder) {
      decoder = this.decoder(await this.make(selection));
      this.perSelection.set(key, decoder);
    }
    return decoder;
  }

  dispose(): void {
    this.shared?.executor.dispose();
    for (const d of this.perSelection.values()) d.executor.dispose();
    this.shared = null;
    this.perSelection.clear();
  }
}

/** An engine runner per run, re-made when its selection must change and the executor cannot switch. */
class EngineRuns {
  private runner: EngineRunner | null = null;
  private key: string | null = null;
  constructor(private readonly make: (selection: SelectionConfig) => Promise<EngineRunner>) {}

  async get(selection: SelectionConfig): Promise<EngineRunner> {
    const key = selectionKey(selection);
    if (this.runner && this.key !== key) {
      if (this.runner.canSwitchSelection) {
        this.runner.setSelection(selection);
        this.key = key;
      } else {
        await this.runner.close();
        this.runner = null;
      }
    }
    if (!this.runner) {
      this.runner = await this.make(selection);
      this.key = key;
    }
    return this.runner;
  }

  async close(): Promise<void> {
    await this.runner?.close();
    this.runner = null;
  }
}

function resolveTasks(tasks: EvalTask[]): EvalTask[] {
  if (!Array.isArray(tasks) || tasks.length === 0) throw new ConfigError('tasks', `must name at least one of ${EVAL_TASKS.join(', ')}`);
  for (const t of tasks) {
    if (!EVAL_TASKS.includes(t)) throw new ConfigError('tasks', `unknown task '${String(t)}' (known: ${EVAL_TASKS.join(', ')})`);
  }
  return EVAL_TASKS.filter((t) => tasks.includes(t));
}

/**
 * Compares selection policies (and the pruning / early-exit plugins) against dense attention
 * on one model and one set of texts; see EvalParams. For every context, the prompt up to its
 * last token is prefilled once, densely; each policy then decodes from that shared prefix,
 * the last prompt token included, so every scored or generated token comes from a decode step
 * under the policy. Rows with plugins run through the Engine with a PluginManager instead.
 */
export async function runEval(params: EvalParams): Promise<EvalResult> {
  const startedAt = new Date();
  const t0 = performance.now();
  const progress = params.onProgress ?? (() => {});
  const base = resolveConfig(params.config ?? {});
  const tasks = resolveTasks(params.tasks);
  if (!Array.isArray(params.policies) || params.policies.length === 0) {
    throw new ConfigError('policies', 'must name at least one policy (e.g. quest, streaming, dense)');
  }
  const variants = params.policies.map(parseEvalVariant);
  const budgets = (params.budgets && params.budgets.length > 0 ? params.budgets : [{ kind: 'fraction', value: 0.125 } as EvalBudget]).map(checkBudget);
  const pageSizes = [...new Set(params.pageSizes && params.pageSizes.length > 0 ? params.pageSizes : [base.pageSize])].map((p) =>
    positiveInt('pageSizes', p),
  );
  const seed = params.seed ?? 0;
  if (!Number.isSafeInteger(seed) || seed < 0) throw new ConfigError('seed', `must be a non-negative integer, got ${seed}`);
  const measureRecall = params.measureRecall ?? true;
  const switchOptions = { measureRecall, seed };

  const model: LoadedModel =
    typeof params.model === 'object' && params.model !== null ? params.model : await loadModel(params.model ?? modelTinyDir(), params.modelType ?? 'auto');
  if (params.model === undefined) model.name = MODEL_TINY_NAME;
  const cfg = model.config;
  const maxPos = cfg.maxPositionEmbeddings;
  const eos = new Set(model.generationDefaults.eosTokenIds ?? cfg.eosTokenIds);
  const tokenizer = model.tokenizer;

  // ---- task inputs
  let passkeySettings: EvalSettings['passkey'] = null;
  const passkeyPrompts = new Map<number, PasskeyPrompt[]>();
  if (tasks.includes('passkey')) {
    const maxNewTokens = positiveInt('maxNewTokens', params.passkey?.maxNewTokens ?? PASSKEY_FORMAT.maxNewTokens);
    const contexts: PasskeyContext[] = params.passkey?.contexts ?? [1024, 2048, 'full'];
    passkeySettings = {
      targets: passkeyTargets(contexts, maxPos, maxNewTokens),
      trials: positiveInt('trials', params.passkey?.trials ?? 10),
      maxNewTokens,
      format: PASSKEY_FORMAT.name,
    };
    // Built up front, so a target too short for the format fails before any work.
    for (const target of passkeySettings.targets) {
      const prompts: PasskeyPrompt[] = [];
      for (let trial = 0; trial < passkeySettings.trials; trial++) {
        const key = passkeyKey(trial, target);
        prompts.push(buildPasskeyPrompt(tokenizer, { targetTokens: target, depth: passkeyDepth(trial, passkeySettings.trials), passkey: key }));
      }
      passkeyPrompts.set(target, prompts);
    }
  }
  let samples: PerplexitySample[] = [];
  let pplSettings: EvalSettings['perplexity'] = null;
  if (tasks.includes('perplexity')) {
    const windowTokens = positiveInt('windowTokens', params.perplexity?.windowTokens ?? Math.min(128, Math.floor(maxPos / 4)));
    const contextTokens = positiveInt('contextTokens', params.perplexity?.contextTokens ?? Math.min(1024, maxPos - windowTokens));
    if (contextTokens + windowTokens > maxPos) {
      throw new ConfigError('contextTokens', `context ${contextTokens} + window ${windowTokens} exceeds the model's ${maxPos} positions`);
    }
    const text = params.perplexity?.text ?? loadHeldOutText();
    samples = perplexitySamples(tokenizer, text, { contextTokens, windowTokens, samples: params.perplexity?.samples ?? 4 });
    pplSettings = { contextTokens, windowTokens, samples: samples.length, textSource: text.source };
  }
  if (variants.some((v) => v.plugins.includes('early-exit')) && passkeySettings && base.minTokensBeforeExit >= passkeySettings.maxNewTokens) {
    progress(
      `warning: minTokensBeforeExit ${base.minTokensBeforeExit} >= ${passkeySettings.maxNewTokens} answer tokens: early exit cannot fire on passkey answers`,
    );
  }

  const longest = Math.max(
    passkeySettings ? Math.max(...passkeySettings.targets) + passkeySettings.maxNewTokens : 0,
    pplSettings ? pplSettings.contextTokens + pplSettings.windowTokens : 0,
  );
  const executorName = params.executor ?? base.executor;
  let backend = executorName;
  let sharedPrefill = true;
  const makeExecutor = async (name: string, selection: SelectionConfig, pageSize: number, numKvPages: number): Promise<Executor> => {
    const options = {
      model,
      pageSize,
      numKvPages,
      kvCacheDtype: base.kvCacheDtype,
      attentionChunkSize: base.attentionChunkSize,
      selection,
    };
    try {
      const ex = await createExecutor(name, options);
      backend = ex.backend;
      return ex;
    } catch (error) {
      if (error instanceof TinyServeError && error.code === 'backend_unavailable' && name !== 'wasm') {
        progress(`warning: executor '${name}' is unavailable (${error.message}); falling back to 'wasm'`);
        const ex = await createExecutor('wasm', options);
        backend = ex.backend;
        return ex;
      }
      throw error;
    }
  };

  const rows: EvalRow[] = [];
  for (const pageSize of pageSizes) {
    const runs: RunSpec[] = [];
    for (const variant of variants) {
      if (variant.policy === 'dense') runs.push({ variant, budget: null });
      else for (const budget of budgets) runs.push({ variant, budget });
    }
    const harnessRuns = runs.filter((r) => r.variant.plugins.length === 0);
    const engineRuns = runs.filter((r) => r.variant.plugins.length > 0);
    const denseRun: RunSpec = { variant: { name: 'dense', policy: 'dense', plugins: [] }, budget: null };
    const dense = selectionFor(denseRun, 0, pageSize, base);
    const numKvPages = Math.ceil(longest / pageSize) + 4;
    const harness = new HarnessExecutors((s) => makeExecutor(executorName, s, pageSize, numKvPages), dense, base.maxBatchTokens, switchOptions);
    const engines = new Map<RunSpec, EngineRuns>();
    for (const run of engineRuns) {
      engines.set(
        run,
        new EngineRuns((selection) =>
          EngineRunner.create({
            model,
            executorName,
            createExecutor: makeExecutor,
            config: { ...base, seed },
            pageSize,
            numKvPages,
            plugins: run.variant.plugins,
            selection,
            switchOptions,
            maxModelLen: maxPos,
            eosTokenIds: [...eos],
          }),
        ),
      );
    }
    const markName = (run: RunSpec): string => (run.budget && budgets.length > 1 ? `${run.variant.name}@${run.budget.value}` : run.variant.name);
    const accs = new Map<RunSpec, Record<EvalTask, TaskAcc>>(runs.map((r) => [r, { passkey: new TaskAcc(), perplexity: new TaskAcc() }]));

    try {
      // ---- passkey
      if (passkeySettings) {
        const { targets, trials, maxNewTokens } = passkeySettings;
        for (const target of targets) {
          for (let trial = 0; trial < trials; trial++) {
            const prompt = passkeyPrompts.get(target)![trial];
            const key = prompt.passkey;
            const ids = prompt.ids;
            const L = ids.length;
            const prefixes = new Map<ForkedDecoder, SharedPrefix>();
            const marks: string[] = [];
            try {
              for (const run of harnessRuns) {
                const selection = selectionFor(run, target, pageSize, base);
                const acc = accs.get(run)!.passkey;
                if (selection.tokenBudget !== null) acc.tokenBudgets[String(target)] = selection.tokenBudget;
                const decoder = await harness.decoderFor(selection);
                let prefix = prefixes.get(decoder);
                if (!prefix) {
                  prefix = await decoder.prefill(ids.slice(0, L - 1));
                  prefixes.set(decoder, prefix);
                }
                const generated: number[] = [];
                const totals = await decoder.branch(prefix, {
                  selection,
                  tail: ids.slice(prefix.numTokens, L - 1),
                  firstInput: ids[L - 1],
                  next: (logits) => {
                    const token = argmax(logits);
                    generated.push(token);
                    return eos.has(token) || generated.length >= maxNewTokens ? null : token;
                  },
                });
                addTotals(acc.totals, totals);
                const ok = scorePasskeyAnswer(tokenizer.decode(generated, { skipSpecialTokens: true }), key);
                acc.addAnswer(target, ok, generated.length);
                marks.push(`${markName(run)}${ok ? '+' : '-'}`);
              }
            } finally {
              for (const [decoder, prefix] of prefixes) decoder.release(prefix);
            }
            for (const run of engineRuns) {
              const selection = selectionFor(run, target, pageSize, base);
              const acc = accs.get(run)!.passkey;
              if (selection.tokenBudget !== null) acc.tokenBudgets[String(target)] = selection.tokenBudget;
              const runner = await engines.get(run)!.get(selection);
              const before = runner.stats();
              const { result, totals } = await runner.generate(ids, maxNewTokens);
              const after = runner.stats();
              addTotals(acc.totals, totals);
              acc.earlyExits += after.earlyExitCount - before.earlyExitCount;
              acc.tokensPruned += after.tokensPruned - before.tokensPruned;
              const ok = scorePasskeyAnswer(tokenizer.decode(result.tokenIds, { skipSpecialTokens: true }), key);
              acc.addAnswer(target, ok, result.tokenIds.length);
              marks.push(`${markName(run)}${ok ? '+' : '-'}`);
            }
            progress(`[page ${pageSize}] passkey ${target} tokens, trial ${trial + 1}/${trials} (depth ${prompt.depth.toFixed(2)}): ${marks.join(' ')}`);
          }
        }
      }

      // ---- perplexity
      if (pplSettings) {
        for (const [si, sample] of samples.entries()) {
          const C = sample.contextTokens;
          const W = sample.windowTokens;
          const ids = sample.ids;
          const prefixes = new Map<ForkedDecoder, SharedPrefix>();
          const reference: Float32Array[] = [];
          const teacher =
            (onRow: (logits: Float32Array, i: number) => void) =>
            (logits: Float32Array, i: number): number | null => {
              onRow(logits, i);
              return i + 1 < W ? ids[C + i] : null;
            };
          const branchOn = async (run: RunSpec, onRow: (logits: Float32Array, i: number) => void): Promise<DecodeSelectionTotals> => {
            const selection = selectionFor(run, C, pageSize, base);
            const decoder = await harness.decoderFor(selection);
            let prefix = prefixes.get(decoder);
            if (!prefix) {
              prefix = await decoder.prefill(ids.slice(0, C - 1));
              prefixes.set(decoder, prefix);
            }
            return decoder.branch(prefix, { selection, tail: ids.slice(prefix.numTokens, C - 1), firstInput: ids[C - 1], next: teacher(onRow) });
          };
          try {
            await branchOn(denseRun, (logits) => reference.push(logits.slice()));
            for (const run of harnessRuns) {
              const acc = accs.get(run)!.perplexity;
              const selection = selectionFor(run, C, pageSize, base);
              if (selection.tokenBudget !== null) acc.tokenBudgets[String(C)] = selection.tokenBudget;
              const totals = await branchOn(run, (logits, i) => acc.quality.add(logits, ids[C + i], reference[i]));
              addTotals(acc.totals, totals);
            }
          } finally {
            for (const [decoder, prefix] of prefixes) decoder.release(prefix);
          }
          for (const run of engineRuns) {
            const acc = accs.get(run)!.perplexity;
            if (run.variant.plugins.includes('early-exit')) {
              acc.note = 'perplexity and KL are not applicable with early exit (teacher forcing decides the tokens)';
              continue;
            }
            const selection = selectionFor(run, C, pageSize, base);
            if (selection.tokenBudget !== null) acc.tokenBudgets[String(C)] = selection.tokenBudget;
            const runner = await engines.get(run)!.get(selection);
            const before = runner.stats();
            // The prompt stops before the last context token, which is forced as the first
            // generated token: every scored prediction then comes from a decode step.
            const { rows: predicted, totals } = await runner.force(ids.slice(0, C - 1), ids.slice(C - 1, C + W));
            acc.tokensPruned += runner.stats().tokensPruned - before.tokensPruned;
            addTotals(acc.totals, totals);
            for (let k = 1; k < predicted.length; k++) acc.quality.add(predicted[k], ids[C - 1 + k], reference[k - 1]);
          }
          progress(`[page ${pageSize}] perplexity sample ${si + 1}/${samples.length} (${sample.name}): ${C} + ${W} tokens`);
        }
      }
    } finally {
      sharedPrefill &&= harness.sharedPrefill;
      harness.dispose();
      for (const e of engines.values()) await e.close();
    }

    for (const task of tasks) {
      for (const run of runs) rows.push(makeRow(task, run, pageSize, accs.get(run)![task]));
    }
  }

  const settings: EvalSettings = {
    tasks,
    policies: variants.map((v) => v.name),
    budgets,
    pageSizes,
    sinkPages: base.sinkPages,
    denseLayers: base.denseLayers,
    kvCacheDtype: base.kvCacheDtype,
    seed,
    measureRecall,
    sharedPrefill,
    passkey: passkeySettings,
    perplexity: pplSettings,
    plugins: {
      entropyThreshold: base.entropyThreshold,
      minTokensBeforeExit: base.minTokensBeforeExit,
      entropySource: base.entropySource,
      pruningRatio: base.pruningRatio,
      minTokensAfterPruning: base.minTokensAfterPruning,
    },
  };
  let parameters = 0;
  for (const t of model.weights.values()) parameters += t.data.length;
  const modelInfo: EvalModelInfo = {
    name: model.name,
    dir: model.dir,
    architecture: cfg.architecture,
    parameters,
    numLayers: cfg.numLayers,
    numKvHeads: cfg.numKvHeads,
    maxPositionEmbeddings: maxPos,
  };
  return {
    model: modelInfo,
    executor: backend,
    settings,
    rows,
    startedAt: startedAt.toISOString(),
    durationSeconds: (performance.now() - t0) / 1000,
  };
}

function makeRow(task: EvalTask, run: RunSpec, pageSize: number, acc: TaskAcc): EvalRow {
  const b = run.budget;
  const t = acc.totals;
  let passkeyAccuracy: number | null = null;
  let byContext: Record<string, number> | null = null;
  if (task === 'passkey' && acc.answers > 0) {
    let correct = 0;
    byContext = {};
    for (const [target, n] of acc.trials) {
      const c = acc.correct.get(target) ?? 0;
      correct += c;
      byContext[String(target)] = c / n;
    }
    passkeyAccuracy = correct / acc.answers;
  }
  const isPpl = task === 'perplexity' && acc.quality.count > 0;
  const hasPlugins = run.variant.plugins.length > 0;
  return {
    task,
    policy: run.variant.name,
    selectionPolicy: run.variant.policy,
    plugins: [...run.variant.plugins],
    pageSize,
    budget: b === null ? null : describeBudget(b),
    selectionRatio: b?.kind === 'ratio' ? b.value : null,
    tokenBudget: b?.kind === 'tokens' ? b.value : null,
    budgetFraction: b?.kind === 'fraction' ? b.value : null,
    tokenBudgets: Object.keys(acc.tokenBudgets).length > 0 ? { ...acc.tokenBudgets } : null,
    kvReadFraction: t.kvBytesDense > 0 ? t.kvBytesRead / t.kvBytesDense : null,
    attentionRecall: t.recallCount > 0 ? t.recallSum / t.recallCount : null,
    decodeSteps: t.steps,
    decodeMsPerStep: t.steps > 0 ? t.decodeMs / t.steps : null,
    passkeyAccuracy,
    passkeyByContext: byContext,
    passkeyTrials: task === 'passkey' ? acc.answers : null,
    tokensGenerated: task === 'passkey' && acc.answers > 0 ? acc.tokensGenerated / acc.answers : null,
    perplexity: isPpl ? acc.quality.perplexity() : null,
    klDivergence: isPpl ? acc.quality.meanKl() : null,
    top1Agreement: isPpl ? acc.quality.top1Agreement() : null,
    tokensScored: task === 'perplexity' ? acc.quality.count : null,
    earlyExits: hasPlugins && task === 'passkey' ? acc.earlyExits : null,
    tokensPruned: hasPlugins ? acc.tokensPruned : null,
    note: acc.note,
  };
}
