/**
 * `benchmarkAttention`: the decode-attention benchmark on any executor, dispatched by name
 * through a registry like the executors' own (`executorBackends`), so another backend can
 * register its runner beside them.
 */
import { ConfigError, Registry } from '@tinyserve/core';
import { benchmarkCpuAttention } from './attention-benchmark-cpu.js';
import { resolveBenchmarkAttentionParams } from './attention-benchmark-params.js';
import type {
  BenchmarkAttentionParams,
  BenchmarkAttentionResult,
  BenchmarkExecutorTraits,
  ResolvedBenchmarkAttentionParams,
} from './attention-benchmark-params.js';
import { benchmarkCudaAttention } from './cuda/benchmark-attention.js';

/** One executor's benchmark: its defaults and what it accepts, and the runner of validated parameters. */
export interface AttentionBenchmarkRunner extends BenchmarkExecutorTraits {
  run(params: ResolvedBenchmarkAttentionParams): BenchmarkAttentionResult[] | Promise<BenchmarkAttentionResult[]>;
}

/** Attention benchmarks by executor name: `wasm`, `cpu` and `cuda`. */
export const attentionBenchmarks = new Registry<AttentionBenchmarkRunner>('attention benchmark');

const cpuRunner: AttentionBenchmarkRunner = { iterations: 10, warmup: 5, metaDtypes: ['fp32'], cudaOptions: false, run: benchmarkCpuAttention };
// wasm and cpu run decode attention through the same TypeScript kernels.
attentionBenchmarks.register('wasm', cpuRunner);
attentionBenchmarks.register('cpu', cpuRunner);
// cuda: rejects with a BackendUnavailableError when the addon is not built, cannot load, or finds no GPU.
attentionBenchmarks.register('cuda', {
  iterations: 50,
  warmup: 5,
  metaDtypes: ['fp16', 'fp32'],
  cudaOptions: true,
  run: (p) =>
    benchmarkCudaAttention({
      ...p.cuda,
      batchSize: p.batchSize,
      inputSize: p.inputSize,
      numQHeads: p.numQHeads,
      numKvHeads: p.numKvHeads,
      headDim: p.headDim,
      pageSize: p.pageSize,
      kvDtype: p.kvDtype,
      metaDtype: p.metaDtype,
      modes: p.modes,
      iterations: p.iterations,
      warmup: p.warmup,
      ...(p.copyGbPerSecond !== null ? { copyGbPerSecond: p.copyGbPerSecond } : {}),
    }),
});

function runnerFor(executor: string): AttentionBenchmarkRunner {
  if (!attentionBenchmarks.has(executor)) {
    throw new ConfigError('executor', `no attention benchmark for executor '${executor}' (registered: ${attentionBenchmarks.names().sort().join(', ')})`);
  }
  return attentionBenchmarks.get(executor);
}

/**
 * The seed's `attention_executor.benchmark_attention`: times decode attention on one
 * synthetic paged KV cache, every mode of `params.modes` (default dense), on the named
 * executor (default wasm). Every parameter is checked first (a `ConfigError` names the bad
 * one); `inputSize` and `numPages` (pages per sequence) may be given alone or together.
 */
export async function benchmarkAttention(params: BenchmarkAttentionParams): Promise<BenchmarkAttentionResult[]> {
  const resolved = resolveBenchmarkAttentionParams(params, runnerFor);
  return runnerFor(resolved.executor).run(resolved);
}
