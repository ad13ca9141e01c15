/**
 * Everything the accelerator machine runs in one go (bundled with esbuild, carried to the
 * device with the built addon): the kernel checks against the TypeScript references, the
 * `cuda` backend and executor against `cpu`, then PyTorch SDPA and our attention benchmark on
 * the same shapes. Writes checks.json, sdpa.json, bench.json and bench.md under --out.
 *
 *   TINYSERVE_CUDA_ADDON=.device/tinyserve_cuda.node node .device/device-run.mjs --out $OUT
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadCudaAddon } from './addon-loader.js';
import { checkBackendOps, checkExecutors, checkPolicies } from './backend-checks.js';
import { parseHeadShapes, parseKvDtype, parseModes, runSdpaBenchmark, sdpaShapes } from '../attention-benchmark-report.js';
import type { SdpaResult } from '../attention-benchmark-report.js';
import type { BenchmarkTuning } from './benchmark-attention.js';
import { formatSuiteTable, runAttentionSuite } from './benchmark-suite.js';
import { defaultScenarios, runGpuChecks } from './gpu-checks.js';
import type { GpuCheckResult } from './gpu-checks.js';

const { values: args } = parseArgs({
  options: {
    out: { type: 'string', default: 'out' },
    'skip-checks': { type: 'boolean', default: false },
    'skip-bench': { type: 'boolean', default: false },
    'skip-sdpa': { type: 'boolean', default: false },
    'sdpa-script': { type: 'string', default: 'tools/bench-sdpa.py' },
    /** SDPA results of an earlier run on the same shapes (sdpa.json): not measured again. */
    'sdpa-from': { type: 'string' },
    /** Comma-separated: dense, ratio:R, budget:TOKENS (default: dense, ratio 0.3, ratio 1/8, budget 2048). */
    modes: { type: 'string' },
    shapes: { type: 'string', default: 'tinyllama,gpt2' },
    batches: { type: 'string', default: '1,8,32' },
    contexts: { type: 'string', default: '4096,8192,16384,32768,65536' },
    tunings: { type: 'string', default: '[{}]' },
    iterations: { type: 'string', default: '40' },
    /** KV format of our kernels in the benchmark: fp16 (default), fp32 or int8 (SDPA stays fp16). */
    'kv-dtype': { type: 'string', default: 'fp16' },
    /** One traced launch per sparse row: where the fused step's time goes. */
    trace: { type: 'boolean', default: false },
  },
});

const started = Date.now();
function log(line: string): void {
  console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${line}`);
}

function fmt(r: GpuCheckResult): string {
  return `${r.ok ? 'PASS' : 'FAIL'} ${r.name}${r.relErr !== undefined ? ` rel ${r.relErr.toExponential(2)}` : ''}${r.detail ? ` - ${r.detail}` : ''}`;
}

async function main(): Promise<void> {
  const out = args.out!;
  mkdirSync(out, { recursive: true });
  const { addon, device, path } = loadCudaAddon();
  log(`addon ${path}: ${device.name} sm_${device.major}${device.minor}, ${device.multiProcessors} SMs, ${(device.totalMemory / 2 ** 30).toFixed(0)} GiB, L2 ${(device.l2CacheBytes / 2 ** 20).toFixed(0)} MiB, driver ${device.driverVersion}, runtime ${device.runtimeVersion}`);

  if (!args['skip-checks']) {
    const checks: GpuCheckResult[] = runGpuChecks(addon, defaultScenarios(), (r) => log(fmt(r)));
    for (const r of await checkBackendOps(addon)) {
      log(fmt(r));
      checks.push(r);
    }
    for (const r of [...(await checkExecutors()), ...(await checkPolicies(addon))]) {
      log(fmt(r));
      checks.push(r);
    }
    writeFileSync(join(out, 'checks.json'), JSON.stringify({ device, checks }, null, 1));
    const failed = checks.filter((c) => !c.ok);
    log(`checks: ${checks.length - failed.length}/${checks.length} passed${failed.length ? `; FAILED: ${failed.map((f) => f.name).join('; ')}` : ''}`);
  }

  if (args['skip-bench']) return;
  const shapes = parseHeadShapes(args.shapes!);
  const batches = args.batches!.split(',').map(Number);
  const contexts = args.contexts!.split(',').map(Number);
  const modes = parseModes(args.modes);
  const kvDtype = parseKvDtype(args['kv-dtype']);
  let sdpa: SdpaResult[] = [];
  if (args['sdpa-from'] !== undefined) {
    sdpa = (JSON.parse(readFileSync(args['sdpa-from'], 'utf8')) as { results: SdpaResult[] }).results;
    log(`PyTorch SDPA from ${args['sdpa-from']} (${sdpa.length} shapes)`);
  } else if (!args['skip-sdpa']) {
    log('PyTorch SDPA on the same shapes (tools/bench-sdpa.py)');
    try {
      // Writes sdpa-shapes.json and sdpa.json under --out.
      const run = await runSdpaBenchmark({ shapes: sdpaShapes(shapes, batches, contexts), script: args['sdpa-script'], workDir: out, onOutput: (t) => process.stdout.write(t) });
      sdpa = run.results;
    } catch (err) {
      log(`SDPA run failed (${err instanceof Error ? err.message : String(err)})`);
    }
  }
  const suite = runAttentionSuite({
    addon,
    shapes,
    batches,
    contexts,
    modes,
    kvDtype,
    iterations: Number(args.iterations),
    tunings: JSON.parse(args.tunings!) as BenchmarkTuning[],
    traceSparse: args.trace,
    log,
  });
  const table = formatSuiteTable(suite, sdpa);
  const header = `${suite.device.name}, copy ${suite.copyGbPerSecond.toFixed(0)} GB/s, ${new Date().toISOString()}, ${kvDtype} KV, fp16 page metadata, page size 16`;
  writeFileSync(join(out, 'bench.json'), JSON.stringify({ ...suite, sdpa }, null, 1));
  writeFileSync(join(out, 'bench.md'), `${header}\n\n${table}\n`);
  console.log(`\n${header}\n\n${table}`);
  log('done');
}

main().catch((err) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : String(err));
  process.exit(1);
});
