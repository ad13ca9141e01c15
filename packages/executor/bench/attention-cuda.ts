/**
 * Decode attention on the GPU: TinyServe's CUDA kernels (dense, and the fused Quest-style
 * sparse step at selection ratio 0.3, 1/8 and a 2048-token budget) against PyTorch's
 * scaled_dot_product_attention on the same shapes in the same run (tools/bench-sdpa.py).
 * Microseconds per call by CUDA events, bytes the call must read, GB/s as a fraction of the
 * device-to-device copy bandwidth measured in the same run. A benchmark, not a test.
 *
 *   node packages/executor/native/build.mjs
 *   node --conditions=@tinyserve/source --import tsx packages/executor/bench/attention-cuda.ts \
 *     [--shapes tinyllama,gpt2] [--batches 1,8,32] [--contexts 4096,...,65536] [--no-sdpa] \
 *     [--modes dense,ratio:0.3,ratio:0.125,budget:2048] [--tunings '[{},{"headsPerCta":4}]'] [--kv-dtype fp16|fp32|int8]
 *     [--out dir] [--json]
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadCudaAddon } from '../src/index.js';
import type { BenchmarkTuning } from '../src/index.js';
import { HEAD_SHAPES, formatSuiteTable, parseKvDtype, parseModes, runAttentionSuite, sdpaShapes } from '../src/cuda/benchmark-suite.js';
import type { SdpaResult } from '../src/cuda/benchmark-suite.js';

const { values: args } = parseArgs({
  options: {
    shapes: { type: 'string', default: 'tinyllama,gpt2' },
    batches: { type: 'string', default: '1,8,32' },
    contexts: { type: 'string', default: '4096,8192,16384,32768,65536' },
    'no-sdpa': { type: 'boolean', default: false },
    modes: { type: 'string' },
    python: { type: 'string', default: 'python3' },
    tunings: { type: 'string', default: '[{}]' },
    iterations: { type: 'string', default: '40' },
    /** Our kernels' KV format (SDPA stays fp16). */
    'kv-dtype': { type: 'string', default: 'fp16' },
    out: { type: 'string' },
    json: { type: 'boolean', default: false },
  },
});

const shapes = args.shapes!.split(',').map((s) => {
  const shape = HEAD_SHAPES[s];
  if (!shape) throw new Error(`unknown head shape '${s}' (known: ${Object.keys(HEAD_SHAPES).join(', ')})`);
  return shape;
});
const batches = args.batches!.split(',').map(Number);
const contexts = args.contexts!.split(',').map(Number);
const out = args.out ?? mkdtempSync(join(tmpdir(), 'attention-cuda-'));
mkdirSync(out, { recursive: true });

const { addon } = loadCudaAddon();
let sdpa: SdpaResult[] = [];
if (!args['no-sdpa']) {
  // SDPA first, in its own process: its memory is back before ours is taken.
  const shapesFile = join(out, 'sdpa-shapes.json');
  const sdpaFile = join(out, 'sdpa.json');
  writeFileSync(shapesFile, JSON.stringify(sdpaShapes(shapes, batches, contexts)));
  const script = new URL('../../../tools/bench-sdpa.py', import.meta.url).pathname;
  const r = spawnSync(args.python!, [script, '--shapes', shapesFile, '--out', sdpaFile], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status === 0 && existsSync(sdpaFile)) sdpa = (JSON.parse(readFileSync(sdpaFile, 'utf8')) as { results: SdpaResult[] }).results;
  else console.error(`PyTorch SDPA did not run (exit ${r.status}); the table has no SDPA column`);
}
const suite = runAttentionSuite({
  addon,
  shapes,
  batches,
  contexts,
  modes: parseModes(args.modes),
  kvDtype: parseKvDtype(args['kv-dtype']),
  iterations: Number(args.iterations),
  tunings: JSON.parse(args.tunings!) as BenchmarkTuning[],
  log: args.json ? undefined : (line) => console.error(line),
});
writeFileSync(join(out, 'bench.json'), JSON.stringify({ ...suite, sdpa }, null, 1));
if (args.json) console.log(JSON.stringify({ ...suite, sdpa }, null, 1));
else console.log(`${suite.device.name}, copy ${suite.copyGbPerSecond.toFixed(0)} GB/s, ${new Date().toISOString()}, ${parseKvDtype(args['kv-dtype'])} KV\n\n${formatSuiteTable(suite, sdpa)}`);
