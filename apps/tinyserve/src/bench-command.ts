import os from 'node:os';
import { parseArgs } from 'node:util';
import { ConfigError, TinyServeError } from '@tinyserve/core';
import {
  TinyServe,
  formatAttentionTable,
  formatThroughputTable,
  formatTimeline,
  modeLabel,
  parseHeadShapes,
  parseKvDtype,
  parseModes,
  runSdpaBenchmark,
  sdpaShapes,
} from '@tinyserve/server';
import type { AttentionTableRow, HeadShape, SdpaRun, ThroughputRow } from '@tinyserve/server';
import { collectConfig, configFlagSpecs } from './config-sources.js';
import type { CommandIo } from './io.js';
import { allowDownloadFrom, createProgressBar, modelLoadingProgress, stderrWriter } from './progress.js';

export const BENCH_HELP = `tinyserve bench: engine throughput on a model; decode attention on any executor

Usage: tinyserve bench throughput [options]
       tinyserve bench attention [options]

  throughput              engine throughput and latency at several numbers of concurrent streams,
                          on a model (the bundled default when --model is not given)
    --streams <list>        concurrency levels (default 1,4,16,64)
    --requests-per-stream <n>  requests each stream sends back to back (default 2)
    --prompt-tokens <n>     prompt length in tokens (default 64)
    --max-tokens <n>        tokens generated per request (default 32)

  attention               decode attention on a synthetic paged KV cache: one query per sequence,
                          dense and query-aware sparse (score pages, keep the top-K, attend to them)
    --shapes <list>         head shapes: tinyllama (32/4/64), gpt2 (16/16/64), Q/KV/D, or model (the
                            --model's, the bundled one without --model); default: model with --model,
                            else tinyllama,gpt2
    --batches <list>        sequences per call (default 1,8,32 on cuda; 1,8 on wasm/cpu)
    --contexts <list>       context tokens per sequence (default 4096,8192,16384,32768,65536 on cuda;
                            2048,8192 on wasm/cpu)
    --modes <list>          dense, ratio:R, budget:TOKENS (default dense,ratio:0.3,ratio:0.125,budget:2048)
    --kv-dtype <t>          fp16 | fp32 | int8 (default: --kv-cache-dtype if given, else fp16)
    --page-size <n>         tokens per KV page (default 16)
    --iterations <n>        timed calls per mode (default 50 on cuda, 10 on wasm/cpu)
    --warmup <n>            untimed calls first (default 5)
    --sdpa                  cuda: also run PyTorch's scaled_dot_product_attention on the same shapes
                            (tools/bench-sdpa.py; needs Python with torch and a GPU) and compare
    --python <path>         the interpreter for --sdpa (default python3)
    --trace                 cuda: also time one launch of each sparse mode phase by phase (GPU timer:
                            scoring, selection, publish, attention, merge), printed under the table

  --model <dir|id>        Hugging Face model directory, or a hub id org/name[@revision] from the cache
  --allow-download        download a hub id missing from the cache (or TINYSERVE_ALLOW_DOWNLOAD=1)
  --executor <name>       wasm | cpu | cuda (default wasm)
  --json                  print JSON instead of a markdown table
  --config <file>         JSON config file (camelCase or snake_case keys)
  --<config-field> <v>    any config field in kebab-case
  -h, --help              this help

Progress goes to stderr; the table (or the JSON object) to stdout.`;

function positiveInts(flag: string, raw: string): number[] {
  const values = raw.split(',').map((s) => Number(s.trim()));
  if (values.length === 0 || values.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new ConfigError(`--${flag}`, `must be a comma-separated list of positive integers, got '${raw}'`);
  }
  return values;
}

/** A flag holding one non-negative integer, or undefined when absent. */
function optionalInt(flag: string, raw: string | undefined, min: number): number | undefined {
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(n) || n < min) throw new ConfigError(`--${flag}`, `must be an integer >= ${min}, got '${raw}'`);
  return n;
}

export async function benchCommand(argv: string[], io: CommandIo): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '-h' || sub === '--help') {
    io.stdout(BENCH_HELP + '\n');
    return sub === undefined ? 2 : 0;
  }
  if (sub === 'attention') return attentionCommand(rest, io);
  if (sub !== 'throughput') {
    io.stderr(`error: unknown benchmark '${sub}' (benchmarks: throughput, attention)\n`);
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

const CUDA_GRID = { batches: '1,8,32', contexts: '4096,8192,16384,32768,65536' };
const CPU_GRID = { batches: '1,8', contexts: '2048,8192' };

/** `tinyserve bench attention`: the attention benchmark over shapes x batches x contexts, every mode each. */
async function attentionCommand(argv: string[], io: CommandIo): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      ...configFlagSpecs(),
      model: { type: 'string' },
      'allow-download': { type: 'boolean', default: false },
      shapes: { type: 'string' },
      batches: { type: 'string' },
      contexts: { type: 'string' },
      modes: { type: 'string' },
      'kv-dtype': { type: 'string' },
      iterations: { type: 'string' },
      warmup: { type: 'string' },
      sdpa: { type: 'boolean', default: false },
      trace: { type: 'boolean', default: false },
      python: { type: 'string', default: 'python3' },
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
  // Everything from the command line is checked before any model loads or anything is timed.
  const shapeSpec = values.shapes ?? (values.model !== undefined ? 'model' : 'tinyllama,gpt2');
  const modelPlaceholder: HeadShape = { name: 'model', numQHeads: 1, numKvHeads: 1, headDim: 1 };
  const wantsModel = parseHeadShapes(shapeSpec, { model: modelPlaceholder }).includes(modelPlaceholder);
  const modes = parseModes(values.modes);
  const kvDtype = parseKvDtype(values['kv-dtype'] ?? config.kvCacheDtype);
  const iterations = optionalInt('iterations', values.iterations, 1);
  const warmup = optionalInt('warmup', values.warmup, 0);
  if (values.model !== undefined && !wantsModel) {
    throw new ConfigError('--shapes', `'${shapeSpec}' does not include 'model', so --model ${values.model} would not be used`);
  }

  const loading = modelLoadingProgress(io, values.model, allowDownloadFrom(values['allow-download'], io.env));
  const tinyserve = new TinyServe(config, { logger: { info: () => {}, warn: (m) => loading.log(`warning: ${m}\n`) } });
  try {
    const info = wantsModel ? await loading.run(() => tinyserve.loadModel(values.model, 'auto', loading.options)) : null;
    const executor = info?.executor ?? tinyserve.config.executor;
    const named: Record<string, HeadShape> = {};
    if (info) {
      const c = tinyserve.loadedModel!.config;
      named.model = { name: `${info.name} (${c.numHeads}/${c.numKvHeads}/${c.headDim})`, numQHeads: c.numHeads, numKvHeads: c.numKvHeads, headDim: c.headDim };
    }
    const shapes = parseHeadShapes(shapeSpec, named);
    const grid = executor === 'cuda' ? CUDA_GRID : CPU_GRID;
    const batches = positiveInts('batches', values.batches ?? grid.batches);
    const contexts = positiveInts('contexts', values.contexts ?? grid.contexts);
    if (values.sdpa && executor !== 'cuda') {
      throw new ConfigError('--sdpa', `compares against PyTorch SDPA on the GPU: run it with --executor cuda (the executor here is '${executor}')`);
    }
    if (values.trace && executor !== 'cuda') {
      throw new ConfigError('--trace', `times the phases of the fused CUDA sparse kernel: run it with --executor cuda (the executor here is '${executor}')`);
    }
    const log = stderrWriter(io);
    let sdpa: SdpaRun | null = null;
    if (values.sdpa) {
      // SDPA first, in its own process: its GPU memory is back before ours is taken.
      io.stderr(`PyTorch SDPA on ${shapes.length * batches.length * contexts.length} shapes (tools/bench-sdpa.py)\n`);
      sdpa = await runSdpaBenchmark({ shapes: sdpaShapes(shapes, batches, contexts), python: values.python, onOutput: (t) => log.write(t) });
    }
    io.stderr(
      `benchmarking attention on ${executor}: ${shapes.map((s) => s.name).join(', ')}; batches ${batches.join(', ')}; ` +
        `contexts ${contexts.join(', ')}; ${modes.map(modeLabel).join(', ')}; ${kvDtype} KV, page size ${tinyserve.config.pageSize}\n`,
    );
    const bar = createProgressBar(log, { label: 'bench attention', total: shapes.length * batches.length * contexts.length });
    const rows: AttentionTableRow[] = [];
    const failures: { shape: string; batchSize: number; inputSize: number; error: string }[] = [];
    let copyGbPerSecond: number | undefined;
    let done = 0;
    for (const shape of shapes) {
      for (const batchSize of batches) {
        for (const inputSize of contexts) {
          const at = `${shape.name} batch ${batchSize} context ${inputSize}`;
          bar.update(done, at);
          try {
            const results = await tinyserve.attentionExecutor.benchmarkAttention({
              executor,
              batchSize,
              inputSize,
              numQHeads: shape.numQHeads,
              numKvHeads: shape.numKvHeads,
              headDim: shape.headDim,
              kvDtype,
              modes,
              iterations,
              warmup,
              // One copy bandwidth for the whole run, so the shares compare.
              copyGbPerSecond,
              ...(values.trace ? { cuda: { traceSparse: true } } : {}),
            });
            copyGbPerSecond ??= results[0].copyGbPerSecond;
            for (const r of results) rows.push({ shape: shape.name, ...r });
          } catch (error) {
            // A bad parameter or a missing backend fails every shape alike: stop at once.
            if (error instanceof TinyServeError && (error.code === 'invalid_config' || error.code === 'backend_unavailable')) {
              bar.clear();
              throw error;
            }
            const message = error instanceof Error ? error.message : String(error);
            failures.push({ shape: shape.name, batchSize, inputSize, error: message });
            bar.interject(`${at}: ${message}\n`);
          }
          bar.update(++done);
        }
      }
    }
    bar.done();
    const meta = {
      executor,
      device: rows[0]?.device ?? null,
      model: info?.name ?? null,
      kvDtype,
      pageSize: tinyserve.config.pageSize,
      copyGbPerSecond: copyGbPerSecond ?? null,
      node: process.version,
      date: new Date().toISOString(),
    };
    if (values.json) {
      io.stdout(JSON.stringify({ ...meta, rows, sdpa, failures }) + '\n');
    } else {
      const copy = copyGbPerSecond !== undefined ? `copy ${copyGbPerSecond.toFixed(copyGbPerSecond < 100 ? 1 : 0)} GB/s` : 'copy not measured';
      const sdpaNote = sdpa ? `, PyTorch ${sdpa.torch} SDPA on ${sdpa.device}` : '';
      io.stdout(`${meta.device ?? executor} (${executor}), ${copy}, ${kvDtype} KV, page size ${meta.pageSize}${sdpaNote}, node ${meta.node}, ${meta.date}\n`);
      io.stdout(`${formatAttentionTable(rows, sdpa?.results)}\n`);
      const traced = rows.filter((r) => r.sparseTimeline !== undefined);
      if (traced.length > 0) {
        io.stdout('\nFused sparse launch timelines (median over (sequence, KV head) pairs, us since the first CTA started):\n');
        for (const r of traced) io.stdout(`- ${r.shape} batch ${r.batchSize} context ${r.inputSize} ${r.mode}: ${formatTimeline(r.sparseTimeline!)}\n`);
      }
    }
    if (failures.length > 0) {
      io.stderr(`bench attention: ${failures.length} of ${done} shapes failed\n`);
      return 1;
    }
    return 0;
  } finally {
    await tinyserve.close();
  }
}
