import { parseArgs } from 'node:util';
import { TinyServe } from '@tinyserve/server';
import type { TinyServeRequest } from '@tinyserve/core';
import { collectConfig, configFlagSpecs, modelTypeFlag } from './config-sources.js';
import type { CommandIo } from './io.js';
import { allowDownloadFrom, modelLoadingProgress } from './progress.js';

export const GENERATE_HELP = `tinyserve generate: generate text with a model (the bundled default when --model is not given)

Usage: tinyserve generate --prompt <text> [options]

  --model <dir|id>        Hugging Face model directory (config.json, *.safetensors, tokenizer.json),
                          or a hub id org/name[@revision] found in the Hugging Face cache
  --allow-download        download a hub id missing from the cache (or TINYSERVE_ALLOW_DOWNLOAD=1)
  --model-type <t>        auto | gpt2 | llama (default auto: read from config.json)
  --prompt <text>         the prompt (required)
  --max-tokens <n>        tokens to generate (default 100)
  --temperature <t>       0 for greedy (default 0.7)
  --top-p <p>             nucleus sampling mass (default 1)
  --top-k <k>             keep the k most likely tokens, 0 for all (default 0)
  --seed <n>              sampling seed (reproducible output)
  --stop <s>              stop string (repeatable)
  --logprobs              report the logprob of each generated token
  --echo                  also return the prompt and score its tokens (teacher forcing), as OpenAI's echo
  --ignore-eos            keep going past the end-of-sequence token
  --json                  print one JSON object { text, token_ids, logprobs, ... } instead of streaming text
  --executor <name>       wasm | cpu | cuda (default wasm)
  --config <file>         JSON config file (camelCase or snake_case keys)
  --<config-field> <v>    any config field in kebab-case, e.g. --page-size 32 --selection-policy quest
  -h, --help              this help

Environment: every config field as TINYSERVE_<FIELD>, e.g. TINYSERVE_PAGE_SIZE=32.`;

export async function generateCommand(argv: string[], io: CommandIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      ...configFlagSpecs(),
      model: { type: 'string' },
      'allow-download': { type: 'boolean', default: false },
      'model-type': { type: 'string', default: 'auto' },
      prompt: { type: 'string' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-p': { type: 'string' },
      'top-k': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      logprobs: { type: 'boolean', default: false },
      echo: { type: 'boolean', default: false },
      'ignore-eos': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(GENERATE_HELP + '\n');
    return 0;
  }
  if (values.prompt === undefined) {
    io.stderr('error: --prompt is required (see tinyserve generate --help)\n');
    return 2;
  }
  const modelType = modelTypeFlag(values['model-type'], io.stderr);
  if (modelType === null) return 2;
  const flags = values as unknown as Record<string, string | undefined>;
  // `--seed` is the request's sampling seed; the config field of that name is its default.
  const config = collectConfig({ file: values.config, env: io.env, flags: { ...flags, seed: undefined } });
  const loading = modelLoadingProgress(io, values.model, allowDownloadFrom(values['allow-download'], io.env));
  const tinyserve = new TinyServe(config, { logger: { info: () => {}, warn: (m) => loading.log(`warning: ${m}\n`) } });
  try {
    await loading.run(() => tinyserve.loadModel(values.model, modelType, loading.options));
    const request: TinyServeRequest = {
      prompt: values.prompt,
      logprobs: values.logprobs || values.json,
      echo: values.echo,
      ignoreEos: values['ignore-eos'],
    };
    const num = (flag: string): number | undefined => {
      const raw = flags[flag];
      if (raw === undefined) return undefined;
      const n = Number(raw);
      if (raw.trim() === '' || Number.isNaN(n)) throw new Error(`--${flag} must be a number, got '${raw}'`);
      return n;
    };
    request.maxTokens = num('max-tokens');
    request.temperature = num('temperature');
    request.topP = num('top-p');
    request.topK = num('top-k');
    request.seed = num('seed');
    if (values.stop) request.stop = values.stop;
    for (const key of Object.keys(request) as (keyof TinyServeRequest)[]) if (request[key] === undefined) delete request[key];

    if (values.json) {
      const response = await tinyserve.serve(request);
      const model = tinyserve.loadedModel!;
      const promptText = typeof request.prompt === 'string' ? request.prompt : model.tokenizer.decode(request.prompt);
      const out = values.echo
        ? {
            text: promptText + response.generatedText,
            token_ids: [...(response.promptTokens ?? []), ...response.tokens],
            logprobs: [...(response.promptLogprobs ?? []), ...(response.logprobs ?? [])],
          }
        : { text: response.generatedText, token_ids: response.tokens, logprobs: response.logprobs ?? [] };
      io.stdout(
        JSON.stringify({
          ...out,
          finish_reason: response.finishReason,
          usage: {
            prompt_tokens: response.usage.promptTokens,
            completion_tokens: response.usage.completionTokens,
            total_tokens: response.usage.totalTokens,
          },
          latency_ms: response.latencyMs,
          model: tinyserve.modelInfo?.name,
          executor: tinyserve.modelInfo?.executor,
        }) + '\n',
      );
    } else {
      if (values.echo) io.stdout(values.prompt);
      for await (const event of tinyserve.serveStream(request)) {
        if (event.type === 'token') io.stdout(event.text);
        else {
          const r = event.response;
          const tps = r.usage.completionTokens / Math.max(r.latencyMs / 1000, 1e-9);
          io.stdout('\n');
          io.stderr(
            `[${r.usage.completionTokens} tokens, ${r.finishReason}, ${r.latencyMs.toFixed(0)} ms, ` +
              `${tps.toFixed(1)} tokens/s, first token ${r.timeToFirstTokenMs.toFixed(0)} ms, ${tinyserve.modelInfo?.executor}]\n`,
          );
        }
      }
    }
    return 0;
  } finally {
    await tinyserve.close();
  }
}
