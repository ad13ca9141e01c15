/**
 * The `cuda` tfjs backend against the `cpu` backend on the same inputs: each op the model
 * graph uses, then whole executors (random GPT-2 and LLaMA models, prefill then decode, dense
 * and Quest, fp32, fp16 and int8 KV) compared logit for logit. Needs a GPU (device run, GPU tests).
 */
import { add, fused, gather, getBackend, matMul, setBackend, tensor, tensor1d, tidy } from '@tensorflow/tfjs-core';
import type { Tensor } from '@tensorflow/tfjs-core';
import type { ExecutorOptions, KvCacheDtype, ModelConfig, SelectionConfig } from '@tinyserve/core';
import { TestPager, randomTokens } from '../__fixtures__/paging.js';
import { createRandomModel, gpt2Config, llamaConfig } from '../__fixtures__/random-model.js';
import { GELU_NEW_KERNEL, LAYER_NORM_KERNEL, RMS_NORM_KERNEL, SWIGLU_KERNEL, runTinyServeKernel } from '../kernels/register-kernels.js';
import { TfjsExecutor } from '../tfjs-executor.js';
import { initTfjsBackend } from '../tfjs-backend.js';
import type { CudaAddon } from './addon-types.js';
import { CudaExecutor, activateCudaBackend } from './cuda-executor.js';
import { CUDA_BACKEND_NAME } from './cuda-kernels.js';
import { relativeError } from './gpu-checks.js';
import type { GpuCheckResult } from './gpu-checks.js';

function values(seed: number, n: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    a = (Math.imul(a ^ (a >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    out[i] = (a / 4294967296) * 2 - 1;
  }
  return out;
}

type OpCase = { name: string; run: () => Tensor };

function opCases(): OpCase[] {
  const t = (shape: number[], seed: number) => tensor(values(seed, shape.reduce((x, y) => x * y, 1)), shape, 'float32');
  return [
    { name: 'matMul [5,7]x[7,9]', run: () => matMul(t([5, 7], 1), t([7, 9], 2)) },
    { name: 'matMul [40,33]x[33,70] (tiled)', run: () => matMul(t([40, 33], 3), t([33, 70], 4)) },
    { name: 'matMul transposeA/B', run: () => matMul(t([33, 40], 5), t([70, 33], 6), true, true) },
    { name: 'matMul batch [3,4,6]x[6,5]', run: () => matMul(t([3, 4, 6], 7), t([6, 5], 8)) },
    { name: 'fused matMul + bias', run: () => fused.matMul({ a: t([3, 64], 9), b: t([64, 130], 10), bias: t([130], 11) }) },
    { name: 'fused matMul + bias [20,64]', run: () => fused.matMul({ a: t([20, 64], 12), b: t([64, 96], 13), bias: t([96], 14) }) },
    { name: 'add [4,6]+[6]', run: () => add(t([4, 6], 15), t([6], 16)) },
    { name: 'add [4,1]+[1,6]', run: () => add(t([4, 1], 17), t([1, 6], 18)) },
    { name: 'gather rows', run: () => gather(t([6, 5], 19), tensor1d([4, 0, 5, 5], 'int32')) },
    { name: 'rms norm', run: () => runTinyServeKernel(RMS_NORM_KERNEL, { x: t([3, 48], 20), weight: t([48], 21) }, { eps: 1e-6 }) },
    { name: 'layer norm', run: () => runTinyServeKernel(LAYER_NORM_KERNEL, { x: t([3, 48], 22), weight: t([48], 23), bias: t([48], 24) }, { eps: 1e-5 }) },
    { name: 'swiglu', run: () => runTinyServeKernel(SWIGLU_KERNEL, { x: t([3, 40], 25) }) },
    { name: 'gelu_new', run: () => runTinyServeKernel(GELU_NEW_KERNEL, { x: t([3, 40], 26) }) },
  ];
}

/** Each op on cpu and on cuda. */
export async function checkBackendOps(addon: CudaAddon): Promise<GpuCheckResult[]> {
  const results: GpuCheckResult[] = [];
  const before = getBackend();
  await initTfjsBackend('cpu');
  const refs = opCases().map((c) => tidy(() => c.run().dataSync() as Float32Array));
  await activateCudaBackend(addon);
  for (const [i, c] of opCases().entries()) {
    try {
      const got = tidy(() => c.run().dataSync() as Float32Array);
      const err = relativeError(got, refs[i]);
      results.push({ name: `cuda op: ${c.name}`, ok: got.length === refs[i].length && err < 1e-5, relErr: err, detail: `${got.length} values` });
    } catch (e) {
      results.push({ name: `cuda op: ${c.name}`, ok: false, detail: e instanceof Error ? e.message : String(e) });
    }
  }
  if (before) await setBackend(before);
  return results;
}

interface ExecutorCase {
  name: string;
  config: ModelConfig;
  kvCacheDtype: KvCacheDtype;
  selection: SelectionConfig;
  pageSize: number;
  prompts: number[];
  decodeSteps: number;
}

function executorCases(): ExecutorCase[] {
  const dense: SelectionConfig = { policy: 'dense', selectionRatio: 1, tokenBudget: null, sinkPages: 1, denseLayers: 1, useFusedKernel: true };
  const quest: SelectionConfig = { policy: 'quest', selectionRatio: 0.4, tokenBudget: null, sinkPages: 1, denseLayers: 1, useFusedKernel: true };
  const llama = llamaConfig({ vocabSize: 211, hiddenSize: 64, numLayers: 3, numHeads: 8, numKvHeads: 2, headDim: 8, intermediateSize: 96, maxPositionEmbeddings: 1024 });
  const llama64 = llamaConfig({ vocabSize: 301, hiddenSize: 256, numLayers: 2, numHeads: 4, numKvHeads: 1, headDim: 64, intermediateSize: 320, maxPositionEmbeddings: 1024 });
  const gpt2 = gpt2Config({ vocabSize: 157, hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 4, headDim: 16, maxPositionEmbeddings: 512 });
  return [
    { name: 'llama gqa 8:2 dim 8, dense fp32', config: llama, kvCacheDtype: 'fp32', selection: dense, pageSize: 4, prompts: [37, 5, 90], decodeSteps: 6 },
    { name: 'llama gqa 4:1 dim 64, dense fp16', config: llama64, kvCacheDtype: 'fp16', selection: dense, pageSize: 16, prompts: [150, 33], decodeSteps: 5 },
    { name: 'gpt2 dim 16, dense fp32', config: gpt2, kvCacheDtype: 'fp32', selection: dense, pageSize: 8, prompts: [70, 12], decodeSteps: 5 },
    { name: 'llama quest 0.4 fp32', config: llama, kvCacheDtype: 'fp32', selection: quest, pageSize: 4, prompts: [120, 61], decodeSteps: 6 },
    { name: 'gpt2 quest 0.4 fp16', config: gpt2, kvCacheDtype: 'fp16', selection: quest, pageSize: 8, prompts: [200, 90], decodeSteps: 5 },
    { name: 'llama gqa 8:2 dim 8, dense int8', config: llama, kvCacheDtype: 'int8', selection: dense, pageSize: 4, prompts: [37, 5, 90], decodeSteps: 6 },
    { name: 'llama gqa 4:1 dim 64, quest 0.4 int8', config: llama64, kvCacheDtype: 'int8', selection: quest, pageSize: 16, prompts: [150, 33], decodeSteps: 5 },
    { name: 'gpt2 quest 0.4 int8', config: gpt2, kvCacheDtype: 'int8', selection: quest, pageSize: 8, prompts: [200, 90], decodeSteps: 5 },
  ];
}

/**
 * The cuda executor against the cpu executor: the same prompts (prefill), then greedy decode
 * steps fed the cpu executor's tokens, every step's logits compared.
 */
export async function checkExecutors(): Promise<GpuCheckResult[]> {
  const results: GpuCheckResult[] = [];
  for (const c of executorCases()) {
    const model = createRandomModel(c.config, 5);
    const maxLen = Math.max(...c.prompts) + c.decodeSteps + 1;
    const options: ExecutorOptions = {
      model,
      pageSize: c.pageSize,
      numKvPages: c.prompts.length * Math.ceil(maxLen / c.pageSize) + 4,
      kvCacheDtype: c.kvCacheDtype,
      attentionChunkSize: 64,
      selection: c.selection,
    };
    let cpu: TfjsExecutor | null = null;
    let gpu: CudaExecutor | null = null;
    try {
      cpu = await TfjsExecutor.create('cpu', options);
      gpu = await CudaExecutor.create(options);
      const pagerA = new TestPager(options.numKvPages, c.pageSize, 3);
      const pagerB = new TestPager(options.numKvPages, c.pageSize, 3);
      const prompts = c.prompts.map((n, i) => ({ seqId: i + 1, tokens: randomTokens(n, c.config.vocabSize, 40 + i), logitsMode: 1 as const }));
      let worst = 0;
      let agree = 0;
      let steps = 0;
      let sparsePages = 0;
      let densePages = 0;
      let next = prompts.map(() => 0);
      for (let step = 0; step <= c.decodeSteps; step++) {
        const entries = step === 0 ? prompts : prompts.map((p, i) => ({ seqId: p.seqId, tokens: [next[i]], logitsMode: 1 as const }));
        const a = await cpu.forward(pagerA.step(entries));
        const b = await gpu.forward(pagerB.step(entries));
        worst = Math.max(worst, relativeError(b.logits, a.logits));
        const V = c.config.vocabSize;
        next = prompts.map((_, i) => argmax(a.logits, i * V, V));
        const mine = prompts.map((_, i) => argmax(b.logits, i * V, V));
        agree += next.filter((t, i) => t === mine[i]).length;
        steps += next.length;
        if (step > 0) {
          sparsePages += b.selection.pagesSelected;
          densePages += a.selection.pagesScanned;
        }
      }
      // int8: both executors store the same quantised KV, except where fp32 rounding differences
      // upstream move a value across a rounding boundary (one step of that row's scale).
      const tol = c.kvCacheDtype === 'int8' ? 5e-3 : c.kvCacheDtype === 'fp16' ? 2e-3 : 2e-4;
      results.push({
        name: `cuda executor vs cpu: ${c.name}`,
        ok: worst < tol && agree === steps,
        relErr: worst,
        detail: `${agree}/${steps} greedy tokens agree; decode pages attended ${sparsePages}/${densePages}`,
      });
    } catch (e) {
      results.push({ name: `cuda executor vs cpu: ${c.name}`, ok: false, detail: e instanceof Error ? (e.stack ?? e.message) : String(e) });
    } finally {
      cpu?.dispose();
      gpu?.dispose();
    }
  }
  if (getBackend() !== CUDA_BACKEND_NAME) await setBackend(CUDA_BACKEND_NAME);
  return results;
}

function argmax(x: Float32Array, off: number, n: number): number {
  let best = 0;
  for (let i = 1; i < n; i++) if (x[off + i] > x[off + best]) best = i;
  return best;
}
