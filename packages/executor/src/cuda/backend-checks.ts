/**
 * The `cuda` tfjs backend against the `cpu` backend on the same inputs: each op the model
 * graph uses, then whole executors (random GPT-2 and LLaMA models, prefill then decode, dense
 * and Quest, fp32, fp16 and int8 KV) compared logit for logit. Needs a GPU (device run, GPU tests).
 */
import { add, fused, gather, getBackend, matMul, setBackend, tensor, tensor1d, tidy } from '@tensorflow/tfjs-core';
import type { Tensor } from '@tensorflow/tfjs-core';
import type { ExecutorOptions, ForwardResult, KvCacheDtype, ModelConfig, SelectionConfig } from '@tinyserve/core';
import { TestPager, randomTokens } from '../__fixtures__/paging.js';
import type { StepEntry } from '../__fixtures__/paging.js';
import type { LayerSelectionRecord, SelectionOptions } from '../decode-selection.js';
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
      let statsWorst = 0;
      let agree = 0;
      let steps = 0;
      let sparsePages = 0;
      let densePages = 0;
      let next = prompts.map(() => 0);
      for (let step = 0; step <= c.decodeSteps; step++) {
        const entries = step === 0 ? prompts : prompts.map((p, i) => ({ seqId: p.seqId, tokens: [next[i]], logitsMode: 1 as const }));
        const a = await cpu.forward(pagerA.step(entries, true));
        const b = await gpu.forward(pagerB.step(entries, true));
        worst = Math.max(worst, relativeError(b.logits, a.logits));
        statsWorst = Math.max(statsWorst, statsDifference(a.attention, b.attention));
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
        ok: worst < tol && agree === steps && statsWorst < tol,
        relErr: worst,
        detail: `${agree}/${steps} greedy tokens agree; decode pages attended ${sparsePages}/${densePages}; attention statistics within ${statsWorst.toExponential(1)}`,
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

/** One cuda executor of a policy case: its selection (and when to switch it). */
interface PolicyVariant {
  label: string;
  selection: SelectionConfig;
  options?: SelectionOptions;
}

interface PolicyCase {
  name: string;
  config: ModelConfig;
  kvCacheDtype: KvCacheDtype;
  pageSize: number;
  /** The cpu executor's selection (its fused flag changes nothing there: the policy runs in JavaScript). */
  reference: PolicyVariant;
  /** Cuda executors, each compared with the cpu executor; with two, also with each other. */
  cuda: PolicyVariant[];
  /**
   * Compare the two cuda executors with each other only (the cpu executor still picks the
   * tokens): with fp16 KV, the cpu's and the GPU's halves of nearly equal keys can round apart,
   * so their quest scores may order near-tied pages differently; two cuda executors share the
   * same rounding.
   */
  pairOnly?: boolean;
  /** `setSelection` on every executor before these steps. */
  switches?: { beforeStep: number; selection: SelectionConfig; options?: SelectionOptions }[];
  prompts: [number, number];
  decodeSteps: number;
}

function policyCases(): PolicyCase[] {
  const llama = llamaConfig({ vocabSize: 211, hiddenSize: 64, numLayers: 3, numHeads: 8, numKvHeads: 2, headDim: 8, intermediateSize: 96, maxPositionEmbeddings: 1024 });
  const llama64 = llamaConfig({ vocabSize: 301, hiddenSize: 256, numLayers: 3, numHeads: 8, numKvHeads: 2, headDim: 64, intermediateSize: 320, maxPositionEmbeddings: 1024 });
  const gpt2 = gpt2Config({ vocabSize: 157, hiddenSize: 64, numLayers: 3, numHeads: 4, numKvHeads: 4, headDim: 16, maxPositionEmbeddings: 512 });
  const sel = (policy: string, over: Partial<SelectionConfig> = {}): SelectionConfig => ({
    policy,
    selectionRatio: 0.4,
    tokenBudget: null,
    sinkPages: 1,
    denseLayers: 1,
    useFusedKernel: false,
    ...over,
  });
  const same = (label: string, selection: SelectionConfig, options?: SelectionOptions) => ({ reference: { label, selection, options }, cuda: [{ label, selection, options }] });
  return [
    { name: 'llama 8:2 dim 8 fp16, streaming', config: llama, kvCacheDtype: 'fp16', pageSize: 4, ...same('streaming', sel('streaming', { useFusedKernel: true })), prompts: [41, 23], decodeSteps: 6 },
    { name: 'llama 8:2 dim 64 fp16 (tensor cores), random', config: llama64, kvCacheDtype: 'fp16', pageSize: 4, ...same('random', sel('random', { selectionRatio: 0.3 }), { seed: 3 }), prompts: [57, 30], decodeSteps: 5 },
    { name: 'gpt2 dim 16 fp32, oracle with recall', config: gpt2, kvCacheDtype: 'fp32', pageSize: 4, ...same('oracle', sel('oracle'), { measureRecall: true }), prompts: [45, 19], decodeSteps: 5 },
    { name: 'llama 8:2 dim 8 fp32, quest (policy route), sum aggregation, recall', config: llama, kvCacheDtype: 'fp32', pageSize: 4, ...same('quest', sel('quest'), { gqaAggregation: 'sum', measureRecall: true }), prompts: [41, 23], decodeSteps: 6 },
    { name: 'gpt2 dim 16 fp32, quest (policy route), budget 24', config: gpt2, kvCacheDtype: 'fp32', pageSize: 8, ...same('quest', sel('quest', { tokenBudget: 24, sinkPages: 1 })), prompts: [90, 44], decodeSteps: 5 },
    {
      name: 'llama 8:2 dim 8 fp32, setSelection dense -> quest -> streaming',
      config: llama,
      kvCacheDtype: 'fp32',
      pageSize: 4,
      ...same('dense', sel('dense')),
      switches: [
        { beforeStep: 2, selection: sel('quest', { denseLayers: 0 }) },
        { beforeStep: 5, selection: sel('streaming', { selectionRatio: 0.5 }) },
      ],
      prompts: [41, 23],
      decodeSteps: 6,
    },
    {
      name: 'llama 8:2 dim 8 fp32, quest fused vs policy route, recall',
      config: llama,
      kvCacheDtype: 'fp32',
      pageSize: 4,
      reference: { label: 'cpu quest', selection: sel('quest'), options: { measureRecall: true } },
      cuda: [
        { label: 'fused', selection: sel('quest', { useFusedKernel: true }), options: { measureRecall: true } },
        { label: 'policy route', selection: sel('quest'), options: { measureRecall: true } },
      ],
      prompts: [41, 23],
      decodeSteps: 6,
    },
    {
      name: 'llama 8:2 dim 64 fp16 (tensor cores), quest fused vs policy route',
      config: llama64,
      kvCacheDtype: 'fp16',
      pageSize: 4,
      reference: { label: 'cpu quest', selection: sel('quest', { selectionRatio: 0.3 }) },
      cuda: [
        { label: 'fused', selection: sel('quest', { selectionRatio: 0.3, useFusedKernel: true }) },
        { label: 'policy route', selection: sel('quest', { selectionRatio: 0.3 }) },
      ],
      pairOnly: true,
      prompts: [57, 30],
      decodeSteps: 5,
    },
  ];
}

/** (record, KV head) selections that differ between two executors' last steps, plus records present in one only. */
function selectionDifferences(a: readonly LayerSelectionRecord[], b: readonly LayerSelectionRecord[]): number {
  let differ = Math.abs(a.length - b.length);
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    if (x.seqId !== y.seqId || x.layer !== y.layer || x.numTokens !== y.numTokens || x.scored !== y.scored) {
      differ++;
      continue;
    }
    const H = x.selection.numKvHeads;
    for (let j = 0; j < H; j++) {
      const p = x.selection.indices.subarray(x.selection.indptr[j], x.selection.indptr[j + 1]);
      const q = y.selection.indices.subarray(y.selection.indptr[j], y.selection.indptr[j + 1]);
      if (p.length !== q.length || p.some((v, k) => v !== q[k])) differ++;
    }
  }
  return differ;
}

/** Largest |recall difference| between matching records (Infinity when one measured and the other did not). */
function recallDifference(a: readonly LayerSelectionRecord[], b: readonly LayerSelectionRecord[]): number {
  let worst = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i].recall;
    const y = b[i].recall;
    if (x === null && y === null) continue;
    worst = x === null || y === null ? Infinity : Math.max(worst, Math.abs(x - y));
  }
  return worst;
}

/**
 * Largest difference between two steps' attention statistics: entropies relative to
 * max(1, |entropy|), position masses absolute; Infinity when either is missing or their
 * records (sequence, layer, length) do not match.
 */
export function statsDifference(a: ForwardResult['attention'], b: ForwardResult['attention']): number {
  if (a === undefined || b === undefined || a.length !== b.length) return Infinity;
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i];
    const y = b[i];
    const mx = x.positionMass;
    const my = y.positionMass;
    if (x.seqId !== y.seqId || x.layer !== y.layer || mx === undefined || my === undefined || mx.length !== my.length) return Infinity;
    worst = Math.max(worst, Math.abs(x.entropy - y.entropy) / Math.max(1, Math.abs(x.entropy)));
    for (let j = 0; j < mx.length; j++) worst = Math.max(worst, Math.abs(mx[j] - my[j]));
  }
  return Number.isNaN(worst) ? Infinity : worst;
}

function sameStepStats(a: ForwardResult['selection'], b: ForwardResult['selection']): boolean {
  return a.pagesScanned === b.pagesScanned && a.pagesSelected === b.pagesSelected && a.kvBytesRead === b.kvBytesRead && a.kvBytesDense === b.kvBytesDense;
}

/**
 * Every policy on the cuda executor against the cpu executor: a prompt prefilled alone, then
 * a step mixing its first decode token with a second prompt (prefill rows and a sparse decode
 * row in one launch), then both decoding, teacher-forced with the cpu executor's greedy tokens.
 * Per step: greedy tokens, logits, the records of `getLastSelections` (pages per KV head,
 * scored or not, recall) and the step's selection counters; at the end the cumulative
 * statistics. Fused and policy-route cuda executors are compared with each other too.
 */
export async function checkPolicies(addon: CudaAddon): Promise<GpuCheckResult[]> {
  const results: GpuCheckResult[] = [];
  for (const c of policyCases()) {
    const model = createRandomModel(c.config, 9);
    const maxLen = Math.max(...c.prompts) + c.decodeSteps + 2;
    const options = (v: PolicyVariant): ExecutorOptions => ({
      model,
      pageSize: c.pageSize,
      numKvPages: 2 * Math.ceil(maxLen / c.pageSize) + 4,
      kvCacheDtype: c.kvCacheDtype,
      attentionChunkSize: 64,
      selection: v.selection,
    });
    const created: { dispose(): void }[] = [];
    try {
      const cpu = await TfjsExecutor.create('cpu', options(c.reference), c.reference.options);
      created.push(cpu);
      const gpus: CudaExecutor[] = [];
      for (const v of c.cuda) {
        const g = await CudaExecutor.withAddon(addon, options(v), v.options);
        created.push(g);
        gpus.push(g);
      }
      const all = [cpu, ...gpus];
      const pagers = all.map(() => new TestPager(2 * Math.ceil(maxLen / c.pageSize) + 4, c.pageSize, 3));
      const [lenA, lenB] = c.prompts;
      const V = c.config.vocabSize;
      const worst = gpus.map(() => 0);
      const agree = gpus.map(() => 0);
      const selDiff = gpus.map(() => 0);
      const recallDiff = gpus.map(() => 0);
      const statsDiff = gpus.map(() => 0);
      const attnDiff = gpus.map(() => 0);
      let pairDiff = 0;
      let pairWorst = 0;
      let pairAttn = 0;
      let pairAgree = 0;
      let steps = 0;
      let decodeRecords = 0;
      let nextA = 0;
      let nextB = 0;
      for (let step = 0; step <= c.decodeSteps + 1; step++) {
        for (const sw of c.switches ?? []) if (sw.beforeStep === step) for (const ex of all) ex.setSelection(sw.selection, sw.options);
        const entries: StepEntry[] =
          step === 0
            ? [{ seqId: 1, tokens: randomTokens(lenA, V, 61), logitsMode: 1 }]
            : step === 1
              ? [
                  { seqId: 1, tokens: [nextA], logitsMode: 1 },
                  { seqId: 2, tokens: randomTokens(lenB, V, 62), logitsMode: 1 },
                ]
              : [
                  { seqId: 2, tokens: [nextB], logitsMode: 1 },
                  { seqId: 1, tokens: [nextA], logitsMode: 1 },
                ];
        const outs: ForwardResult[] = [];
        for (let i = 0; i < all.length; i++) outs.push(await all[i].forward(pagers[i].step(entries, true)));
        const ref = outs[0];
        const refTokens = entries.map((_, i) => argmax(ref.logits, i * V, V));
        const refSel = cpu.getLastSelections();
        decodeRecords += refSel.length;
        for (let g = 0; g < gpus.length; g++) {
          const got = outs[g + 1];
          worst[g] = Math.max(worst[g], relativeError(got.logits, ref.logits));
          agree[g] += entries.filter((_, i) => argmax(got.logits, i * V, V) === refTokens[i]).length;
          selDiff[g] += selectionDifferences(refSel, gpus[g].getLastSelections());
          recallDiff[g] = Math.max(recallDiff[g], recallDifference(refSel, gpus[g].getLastSelections()));
          if (!sameStepStats(ref.selection, got.selection)) statsDiff[g]++;
          attnDiff[g] = Math.max(attnDiff[g], statsDifference(ref.attention, got.attention));
        }
        if (gpus.length > 1) {
          pairDiff += selectionDifferences(gpus[0].getLastSelections(), gpus[1].getLastSelections());
          pairWorst = Math.max(pairWorst, relativeError(outs[2].logits, outs[1].logits));
          pairAttn = Math.max(pairAttn, statsDifference(outs[1].attention, outs[2].attention));
          pairAgree += entries.filter((_, i) => argmax(outs[2].logits, i * V, V) === argmax(outs[1].logits, i * V, V)).length;
        }
        steps += entries.length;
        // Step 1 decodes A and prefills B: B's next token comes from its prompt's last row.
        if (step === 0) nextA = refTokens[0];
        else if (step === 1) [nextA, nextB] = refTokens;
        else [nextB, nextA] = refTokens;
      }
      const refStats = cpu.getSelectionStats().cumulative;
      const tol = c.kvCacheDtype === 'fp16' ? 2e-3 : 2e-4;
      for (let g = 0; g < (c.pairOnly ? 0 : gpus.length); g++) {
        const st = gpus[g].getSelectionStats().cumulative;
        const cumulativeOk =
          st.pagesScanned === refStats.pagesScanned &&
          st.pagesSelected === refStats.pagesSelected &&
          st.metadataBytesRead === refStats.metadataBytesRead &&
          st.recallSamples === refStats.recallSamples &&
          (refStats.recallMean === null ? st.recallMean === null : st.recallMean !== null && Math.abs(st.recallMean - refStats.recallMean) < 1e-4);
        results.push({
          name: `cuda ${c.cuda[g].label} vs cpu: ${c.name}`,
          ok: worst[g] < tol && agree[g] === steps && selDiff[g] === 0 && recallDiff[g] < 1e-4 && statsDiff[g] === 0 && cumulativeOk && attnDiff[g] < tol,
          relErr: worst[g],
          detail:
            `${agree[g]}/${steps} greedy tokens agree; ${selDiff[g]} (record, KV head) selections differ of ${decodeRecords} records; ` +
            `recall within ${recallDiff[g].toExponential(1)}; ${statsDiff[g]} steps' counters differ; cumulative ${cumulativeOk ? 'equal' : 'DIFFER'} ` +
            `(kv hit rate ${st.kvHitRate?.toFixed(3) ?? '-'}, recall ${st.recallMean?.toFixed(4) ?? '-'}); attention statistics within ${attnDiff[g].toExponential(1)}`,
        });
      }
      if (gpus.length > 1) {
        const a = gpus[0].getSelectionStats().cumulative;
        const b = gpus[1].getSelectionStats().cumulative;
        const sameTotals = a.pagesSelected === b.pagesSelected && a.pagesScanned === b.pagesScanned && a.metadataBytesRead === b.metadataBytesRead;
        results.push({
          name: `cuda ${c.cuda[0].label} vs ${c.cuda[1].label}: ${c.name}, same pages`,
          ok: pairDiff === 0 && pairWorst < tol && pairAgree === steps && sameTotals && pairAttn < tol,
          relErr: pairWorst,
          detail: `${pairDiff} (record, KV head) selections differ; ${pairAgree}/${steps} greedy tokens agree; cumulative counters ${sameTotals ? 'equal' : 'DIFFER'}; attention statistics within ${pairAttn.toExponential(1)}`,
        });
      }
    } catch (e) {
      results.push({ name: `cuda policies vs cpu: ${c.name}`, ok: false, detail: e instanceof Error ? (e.stack ?? e.message) : String(e) });
    } finally {
      for (const ex of created) ex.dispose();
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
