import { parseArgs } from 'node:util';
import { ConfigError } from '@tinyserve/core';
import type { ModelType, TinyServeConfig } from '@tinyserve/core';
import { TinyServe, createHttpServer, installGracefulShutdown } from '@tinyserve/server';
import type { ServingBackend } from '@tinyserve/server';
import { collectConfig, configFlagSpecs, modelTypeFlag } from './config-sources.js';
import type { CommandIo } from './io.js';
import { allowDownloadFrom, modelLoadingProgress } from './progress.js';

export const SERVE_HELP = `tinyserve serve: an OpenAI-compatible HTTP server (the bundled model when --model is not given)

Usage: tinyserve serve [options]

  --port <n>              port to listen on (default 8000; 0 picks a free one)
  --host <addr>           address to bind (default 127.0.0.1; 0.0.0.0 for every interface)
  --model <dir|id>        Hugging Face model directory (config.json, *.safetensors, tokenizer.json),
                          or a hub id org/name[@revision] found in the Hugging Face cache
  --allow-download        download a hub id missing from the cache (or TINYSERVE_ALLOW_DOWNLOAD=1)
  --model-type <t>        auto | gpt2 | llama (default auto: read from config.json)
  --executor <name>       wasm | cpu | cuda (default wasm)
  --api-key <key>         require 'Authorization: Bearer <key>' on /v1 and /metrics (repeatable;
                          or TINYSERVE_API_KEY, comma-separated)
  --cors-origin <origin>  send Access-Control-Allow-Origin (e.g. '*')
  --body-limit <bytes>    largest request body (default 1048576)
  --drain-timeout <s>     on SIGTERM/SIGINT, how long running requests may finish (default 30)
  --log-requests          log every request (JSON lines on stdout; server errors are always logged)
  --config <file>         JSON config file (camelCase or snake_case keys)
  --<config-field> <v>    any config field in kebab-case, e.g. --page-size 32 --selection-policy quest
  -h, --help              this help

Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /v1/stats,
GET|DELETE /v1/sessions[/:id], GET /metrics (Prometheus), GET /health, and the dashboard at /.
Environment: every config field as TINYSERVE_<FIELD>, e.g. TINYSERVE_PAGE_SIZE=32.`;

/** What `serve` needs from outside, replaceable in tests. */
export interface ServeDeps {
  /** Loads the model and returns the backend to serve (default: a TinyServe facade). */
  createBackend?: (params: { config: Partial<TinyServeConfig>; model: string | undefined; modelType: ModelType; io: CommandIo; allowDownload?: boolean }) => Promise<ServingBackend>;
  /** Signals that start a graceful shutdown (default SIGTERM and SIGINT). */
  signals?: readonly NodeJS.Signals[];
}

async function loadFacade(params: { config: Partial<TinyServeConfig>; model: string | undefined; modelType: ModelType; io: CommandIo; allowDownload?: boolean }): Promise<ServingBackend> {
  const { io } = params;
  const loading = modelLoadingProgress(io, params.model, params.allowDownload ?? false);
  const tinyserve = new TinyServe(params.config, { logger: { info: (m) => loading.log(`${m}\n`), warn: (m) => loading.log(`warning: ${m}\n`) } });
  try {
    await loading.run(() => tinyserve.loadModel(params.model, params.modelType, loading.options));
  } catch (error) {
    await tinyserve.close();
    throw error;
  }
  return tinyserve;
}

function intFlag(name: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(name, `--${name} must be an integer in [${min}, ${max}], got '${raw}'`);
  }
  return n;
}

/** `tinyserve serve`: runs until SIGTERM/SIGINT, then drains; returns the exit code. */
export async function serveCommand(argv: string[], io: CommandIo, deps: ServeDeps = {}): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    allowPositionals: false,
    options: {
      ...configFlagSpecs(),
      port: { type: 'string' },
      host: { type: 'string', default: '127.0.0.1' },
      model: { type: 'string' },
      'allow-download': { type: 'boolean', default: false },
      'model-type': { type: 'string', default: 'auto' },
      'api-key': { type: 'string', multiple: true },
      'cors-origin': { type: 'string' },
      'body-limit': { type: 'string' },
      'drain-timeout': { type: 'string' },
      'log-requests': { type: 'boolean', default: false },
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(SERVE_HELP + '\n');
    return 0;
  }
  const modelType = modelTypeFlag(values['model-type'], io.stderr);
  if (modelType === null) return 2;
  const port = intFlag('port', values.port, 8000, 0, 65535);
  const bodyLimit = intFlag('body-limit', values['body-limit'], 1 << 20, 1024, 1 << 30);
  const drainTimeoutS = intFlag('drain-timeout', values['drain-timeout'], 30, 0, 86400);
  const apiKeys = [...(values['api-key'] ?? []), ...(io.env.TINYSERVE_API_KEY ?? '').split(',')].map((k) => k.trim()).filter((k) => k.length > 0);
  const config = collectConfig({ file: values.config, env: io.env, flags: values as unknown as Record<string, string | undefined> });

  const allowDownload = allowDownloadFrom(values['allow-download'], io.env);
  const backend = await (deps.createBackend ?? loadFacade)({ config, model: values.model, modelType, io, allowDownload });
  const server = createHttpServer({
    backend,
    apiKeys,
    bodyLimitBytes: bodyLimit,
    corsOrigin: values['cors-origin'],
    // Server errors (5xx) are always logged; every request with --log-requests.
    logger: { level: values['log-requests'] ? 'info' : 'error' },
  });
  let address: string;
  try {
    address = await server.listen({ port, host: values.host });
  } catch (error) {
    await backend.close();
    throw error;
  }
  const exited = new Promise<number>((resolve) => {
    installGracefulShutdown(server, backend, {
      signals: deps.signals,
      timeoutMs: drainTimeoutS * 1000,
      exit: resolve,
      log: (m) => io.stderr(`${m}\n`),
    });
  });
  const info = backend.modelInfo;
  io.stdout(
    `TinyServe is serving ${info?.name ?? 'a model'}${info?.executor ? ` on ${info.executor}` : ''} at ${address}\n` +
      `  OpenAI API: ${address}/v1   dashboard: ${address}/   metrics: ${address}/metrics` +
      `${apiKeys.length > 0 ? `   (API key required)` : ''}\n`,
  );
  return exited;
}
