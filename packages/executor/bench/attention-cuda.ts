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
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatSuiteTable, loadCudaAddon, parseHeadShapes, parseKvDtype, parseModes, runAttentionSuite, runSdpaBenchmark, sdpaShapes } from '../src/index.js';
import type { BenchmarkTuning, SdpaResult } from '../src/index.js';

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

const shapes = parseHeadShapes(args.shapes!);
const batches = args.batches!.split(',').map(Number);
const contexts = args.contexts!.split(',').map(Number);
const out = args.out ?? mkdtempSync(join(tmpdir(), 'attention-cuda-'));
mkdirSync(out, { recursive: true });

const { addon } = loadCudaAddon();
let sdpa: SdpaResult[] = [];
if (!args['no-sdpa']) {
  // SDPA first, in its own process: its memory is back before ours is taken.
  try {
    const run = await runSdpaBenchmark({ shapes: sdpaShapes(shapes, batches, contexts), python: args.python, workDir: out, onOutput: (t) => process.stderr.write(t) });
    sdpa = run.results;
  } catch (err) {
    console.error(`PyTorch SDPA did not run (${err instanceof Error ? err.message : String(err)}); the table has no SDPA column`);
  }
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
