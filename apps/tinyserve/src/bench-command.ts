import os from 'node:os';
import { parseArgs } from 'node:util';
import { TinyServe, formatThroughputTable } from '@tinyserve/server';
import type { ThroughputRow } from '@tinyserve/server';
import { collectConfig, configFlagSpecs } from './config-sources.js';
import type { CommandIo } from './io.js';
import { allowDownloadFrom, createProgressBar, modelLoadingProgress, stderrWriter } from './progress.js';

export const BENCH_HELP = `tinyserve bench: benchmarks on a model (the bundled default when --model is not given)

Usage: tinyserve bench throughput [options]

  throughput              engine throughput and latency at several numbers of concurrent streams
    --streams <list>        concurrency levels (default 1,4,16,64)
    --requests-per-stream <n>  requests each stream sends back to back (default 2)
    --prompt-tokens <n>     prompt length in tokens (default 64)
    --max-tokens <n>        tokens generated per request (default 32)
  --model <dir|id>        Hugging Face model directory, or a hub id org/name[@revision] from the cache
  --allow-download        download a hub id missing from the cache (or TINYSERVE_ALLOW_DOWNLOAD=1)
  --executor <name>       wasm | cpu | cuda (default wasm)
  --json                  print JSON instead of a markdown table
  --<config-field> <v>    any config field in kebab-case
  -h, --help              this help`;

function positiveInts(flag: string, raw: string): number[] {
  const values = raw.split(',').map((s) => Number(s.trim()));
  if (values.length === 0 || values.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new Error(`--${flag} must be a comma-separated list of positive integers, got '${raw}'`);
  }
  return values;
}

export async function benchCommand(argv: string[], io: CommandIo): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '-h' || sub === '--help') {
    io.stdout(BENCH_HELP + '\n');
    return sub === undefined ? 2 : 0;
  }
  if (sub !== 'throughput') {
    io.stderr(`error: unknown benchmark '${sub}' (benchmarks: throughput)\n`);
    return 2;
  }
  const { values } = parseArgs({
    args: rest,
    strict: true,
    options: {
      ...configFlagSpecs(),
      model: { type: 'string' },
      'allow-download': { type: 'boolean', default: false },
      streams: { type: 'string', default: '1,4,16,64' },
      'requests-per-stream': { type: 'string', default: '2' },
      'prompt-tokens': { type: 'string', default: '64' },
      'max-tokens': { type: 'string', default: '32' },
      json: { type: 'boolean', default: false },
      config: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    io.stdout(BENCH_HELP + '\n');
    return 0;
  }
  const config = collectConfig({ file: values.config, env: io.env, flags: values as unknown as Record<string, string | undefined> });
  const loading = modelLoadingProgress(io, values.model, allowDownloadFrom(values['allow-download'], io.env));
  const tinyserve = new TinyServe(config, { logger: { info: () => {}, warn: (m) => loading.log(`warning: ${m}\n`) } });
  try {
    const info = await loading.run(() => tinyserve.loadModel(values.model, 'auto', loading.options));
    const concurrency = positiveInts('streams', values.streams);
    const [requestsPerStream] = positiveInts('requests-per-stream', values['requests-per-stream']);
    const [promptTokens] = positiveInts('prompt-tokens', values['prompt-tokens']);
    const [maxTokens] = positiveInts('max-tokens', values['max-tokens']);
    io.stderr(`benchmarking ${info.name} on ${info.executor}: streams ${concurrency.join(', ')}\n`);
    // One level per call so the bar moves between levels; only the first call warms the JIT up.
    const bar = createProgressBar(stderrWriter(io), { label: 'bench throughput', total: concurrency.length });
    const rows: ThroughputRow[] = [];
    for (const [i, streams] of concurrency.entries()) {
      bar.update(i, `${streams} streams running`);
      rows.push(...(await tinyserve.benchmarkThroughput({ concurrency: [streams], requestsPerStream, promptTokens, maxTokens, warmup: i === 0 })));
      bar.update(i + 1, `${streams} streams: ${rows[rows.length - 1].outputTokensPerSec.toFixed(1)} tokens/s`);
    }
    bar.done();
    const meta = {
      model: info.name,
      executor: info.executor,
      cpu: os.cpus()[0]?.model ?? 'unknown',
      node: process.version,
      date: new Date().toISOString(),
    };
    if (values.json) io.stdout(JSON.stringify({ ...meta, rows }) + '\n');
    else io.stdout(`${meta.model} on ${meta.executor}, ${meta.cpu}, node ${meta.node}, ${meta.date}\n${formatThroughputTable(rows)}\n`);
    return 0;
  } finally {
    await tinyserve.close();
  }
}
