import { parseArgs } from 'node:util';
import { ConfigError } from '@tinyserve/core';
import type { ModelType } from '@tinyserve/core';
import { EVAL_TASKS, evalResultToJson, formatEvalMarkdown, loadTextFile, runEval, writeEvalReport } from '@tinyserve/server';
import type { EvalBudget, EvalParams, EvalTask, PasskeyContext } from '@tinyserve/server';
import { collectConfig, configFlagSpecs, modelTypeFlag } from './config-sources.js';
import type { CommandIo } from './io.js';

export const EVAL_HELP = `tinyserve eval: compare KV selection policies (and pruning / early exit) against dense attention

Usage: tinyserve eval [options]

Every context is prefilled once, densely; each policy then decodes from that shared prefix,
the last prompt token included, so every answer or scored token comes from a sparse decode step.

  --task <t>               passkey | perplexity | all, or a comma list (default passkey)
  --policies <list>        comma list of policies (default quest,streaming,dense); add plugins with '+':
                           dense+pruning, quest+early-exit (those rows run through the engine and plugin manager)
  --budget-fraction <f>    token budget as a fraction of each context, (0, 1]; comma list to sweep
  --ratios <r,...>         selection ratios to sweep, (0, 1]
  --budgets <n,...>        token budgets to sweep
                           (the three combine; with none of them: --budget-fraction 0.125)
  --page-sizes <n,...>     page sizes to sweep, one executor each (default the config's page size, 16)
  --contexts <n,...>       passkey prompt lengths in tokens, or 'full' (default 1024,2048,full; capped at the
                           model's positions minus the answer tokens)
  --trials <n>             passkey trials per length, spread over needle depths (default 10)
  --max-new-tokens <n>     passkey answer tokens, greedy (default 8, the format's)
  --context-tokens <n>     perplexity: context before the scored window (default min(1024, positions - window))
  --window-tokens <n>      perplexity: tokens scored, each a decode step (default min(128, positions / 4))
  --samples <n>            perplexity: samples, one per held-out document (default 4)
  --text-file <path>       perplexity: your own held-out text instead of the bundled SOTU sample
  --model <dir>            Hugging Face model directory (default: the bundled model)
  --model-type <t>         auto | gpt2 | llama (default auto)
  --executor <name>        wasm | cpu | cuda (default wasm)
  --seed <n>               recorded with the results; the engine rows' sampling seed (default 0)
  --json                   print one JSON object { model, executor, settings, rows: [{ policy, passkey_accuracy, ... }] }
  --out-dir <dir>          also write table.md, results.json and chart.html (accuracy against KV read) there
  --config <file>          JSON config file (camelCase or snake_case keys)
  --<config-field> <v>     any config field in kebab-case, e.g. --sink-pages 1 --dense-layers 0 --kv-cache-dtype fp16
                           --min-tokens-before-exit 2 --pruning-ratio 0.2
  -h, --help               this help

Progress goes to stderr; the table (or the JSON object) to stdout.`;

function list(flag: string, raw: string | undefined): string[] {
  if (raw === undefined) return [];
  const items = raw.split(',').map((s) => s.trim());
  if (items.some((s) => s === '')) throw new ConfigError(flag, `has an empty item in '${raw}'`);
  return items;
}

function numbers(flag: string, raw: string | undefined): number[] {
  return list(flag, raw).map((s) => {
    const n = Number(s);
    if (Number.isNaN(n)) throw new ConfigError(flag, `expected numbers, got '${s}'`);
    return n;
  });
}

function int(flag: string, raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(n)) throw new ConfigError(flag, `expected an integer, got '${raw}'`);
  return n;
}

export async function evalCommand(argv: string[], io: CommandIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      ...configFlagSpecs(),
      task: { type: 'string', default: 'passkey' },
      policies: { type: 'string', default: 'quest,streaming,dense' },
      'budget-fraction': { type: 'string' },
      ratios: { type: 'string' },
      budgets: { type: 'string' },
      'page-sizes': { type: 'string' },
      contexts: { type: 'string' },
      trials: { type: 'string' },
      'max-new-tokens': { type: 'string' },
      'context-tokens': { type: 'string' },
      'window-tokens': { type: 'string' },
      samples: { type: 'string' },
      'text-file': { type: 'string' },
      model: { type: 'string' },
      'model-type': { type: 'string', default: 'auto' },
      seed: { type: 'string' },
      json: { type: 'boolean', default: false },
      'out-dir': { type: 'string' },
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(EVAL_HELP + '\n');
    return 0;
  }
  const modelType = modelTypeFlag(values['model-type'], io.stderr);
  if (modelType === null) return 2;
  const taskItems = list('--task', values.task);
  const tasks = (taskItems.includes('all') ? [...EVAL_TASKS] : taskItems) as EvalTask[];
  for (const t of tasks) {
    if (!EVAL_TASKS.includes(t)) throw new ConfigError('--task', `unknown task '${t}' (known: ${EVAL_TASKS.join(', ')}, all)`);
  }
  const budgets: EvalBudget[] = [
    ...numbers('--budget-fraction', values['budget-fraction']).map((value) => ({ kind: 'fraction' as const, value })),
    ...numbers('--ratios', values.ratios).map((value) => ({ kind: 'ratio' as const, value })),
    ...numbers('--budgets', values.budgets).map((value) => ({ kind: 'tokens' as const, value })),
  ];
  const contexts: PasskeyContext[] | undefined =
    values.contexts === undefined
      ? undefined
      : list('--contexts', values.contexts).map((s) => {
          if (s === 'full') return 'full';
          const n = Number(s);
          if (!Number.isInteger(n) || n < 1) throw new ConfigError('--contexts', `expected token counts or 'full', got '${s}'`);
          return n;
        });
  const flags = values as unknown as Record<string, string | undefined>;
  // `--seed` is the eval's own flag; the config field of that name follows it.
  const seed = int('--seed', values.seed) ?? 0;
  const config = collectConfig({ file: values.config, env: io.env, flags: { ...flags, seed: undefined } });
  const pageSizes = numbers('--page-sizes', values['page-sizes']);
  const params: EvalParams = {
    model: values.model,
    modelType: modelType as ModelType,
    executor: config.executor,
    tasks,
    policies: list('--policies', values.policies),
    budgets,
    pageSizes: pageSizes.length > 0 ? pageSizes : undefined,
    passkey: {
      contexts,
      trials: int('--trials', values.trials),
      maxNewTokens: int('--max-new-tokens', values['max-new-tokens']),
    },
    perplexity: {
      contextTokens: int('--context-tokens', values['context-tokens']),
      windowTokens: int('--window-tokens', values['window-tokens']),
      samples: int('--samples', values.samples),
      text: values['text-file'] === undefined ? undefined : loadTextFile(values['text-file']),
    },
    config: { ...config, seed },
    seed,
    onProgress: (message) => io.stderr(message + '\n'),
  };
  const result = await runEval(params);
  if (values['out-dir'] !== undefined) {
    const files = writeEvalReport(result, values['out-dir']);
    io.stderr(`wrote ${files.table}, ${files.json}, ${files.chart}\n`);
  }
  if (values.json) io.stdout(JSON.stringify(evalResultToJson(result)) + '\n');
  else io.stdout(formatEvalMarkdown(result));
  io.stderr(`[eval done in ${result.durationSeconds.toFixed(1)} s on ${result.executor}]\n`);
  return 0;
}
