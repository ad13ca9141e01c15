/**
 * Forward speed of the tfjs executors: prefill and decode tokens/s (batch 1 and 8) on each
 * backend for a tiny shape and a ~20M-parameter LLaMA shape, plus the measured overhead of
 * one trivial tfjs op. Random weights; a benchmark, not a test.
 *
 *   node --conditions=@tinyserve/source --import tsx packages/executor/bench/forward-speed.ts \
 *     [--backends wasm,cpu] [--shapes tiny-llama,tiny-gpt2,llama-20m] [--prefill 64] [--decode 16] [--json]
 */
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';
import { add, ones, tidy } from '@tensorflow/tfjs-core';
import type { ExecutorOptions, ForwardParams, ModelConfig } from '@tinyserve/core';
import { createExecutor, initTfjsBackend } from '../src/index.js';
import type { TfjsBackendName } from '../src/index.js';
import { createRandomModel, gpt2Config, llamaConfig } from '../src/__fixtures__/random-model.js';

const SHAPES: Record<string, ModelConfig> = {
  'tiny-llama': llamaConfig({ vocabSize: 512, hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 2, headDim: 16, intermediateSize: 176 }),
  'tiny-gpt2': gpt2Config({ vocabSize: 512, hiddenSize: 64, numLayers: 2, numHeads: 4, numKvHeads: 4, headDim: 16, maxPositionEmbeddings: 1024 }),
  'llama-20m': llamaConfig({
    vocabSize: 4096,
    hiddenSize: 512,
    numLayers: 6,
    numHeads: 8,
    numKvHeads: 2,
    headDim: 64,
    intermediateSize: 1408,
    maxPositionEmbeddings: 2048,
  }),
};

const { values: args } = parseArgs({
  options: {
    backends: { type: 'string', default: 'wasm,cpu' },
    shapes: { type: 'string', default: Object.keys(SHAPES).join(',') },
    prefill: { type: 'string', default: '64' },
    decode: { type: 'string', default: '16' },
    json: { type: 'boolean', default: false },
  },
});
const PREFILL = Number(args.prefill);
const DECODE = Number(args.decode);
const PAGE_SIZE = 16;

function paramCount(c: ModelConfig): number {
  const H = c.hiddenSize;
  const attn = H * (c.numHeads + 2 * c.numKvHeads) * c.headDim + c.numHeads * c.headDim * H;
  const mlp = c.architecture === 'llama' ? 3 * H * c.intermediateSize : 2 * H * c.intermediateSize;
  const head = c.tieWordEmbeddings ? 0 : c.vocabSize * H;
  const pos = c.architecture === 'gpt2' ? c.maxPositionEmbeddings * H : 0;
  return c.numLayers * (attn + mlp) + c.vocabSize * H + head + pos;
}

/**
 * Microseconds per trivial op (add of two [1, 8] tensors inside tidy): after 20k warm-up
 * ops, the best of 5 runs of 5000, in wall time and in this process's CPU time.
 */
async function opOverheadUs(backend: TfjsBackendName): Promise<{ wall: number; cpu: number }> {
  await initTfjsBackend(backend);
  const a = ones([1, 8]);
  for (let i = 0; i < 20000; i++) tidy(() => add(a, a)).dispose();
  let wall = Infinity;
  let cpu = Infinity;
  for (let r = 0; r < 5; r++) {
    const t = startTimer();
    for (let i = 0; i < 5000; i++) tidy(() => add(a, a)).dispose();
    const { wallMs, cpuMs } = t();
    wall = Math.min(wall, (wallMs * 1000) / 5000);
    cpu = Math.min(cpu, (cpuMs * 1000) / 5000);
  }
  a.dispose();
  return { wall, cpu };
}

/** Wall and CPU milliseconds since the call (CPU time is steadier on a shared machine). */
function startTimer(): () => { wallMs: number; cpuMs: number } {
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  return () => {
    const c = process.cpuUsage(c0);
    return { wallMs: performance.now() - t0, cpuMs: (c.user + c.system) / 1000 };
  };
}

/** CSR step for `seqs` sequences, each with its own contiguous pages. */
function step(seqs: number, tokensPer: number, startPos: number, pagesPerSeq: number, vocab: number, logitsMode: number): ForwardParams {
  const n = seqs * tokensPer;
  return {
    tokenIds: Int32Array.from({ length: n }, (_, i) => (i * 7919 + startPos * 31) % vocab),
    queryIndptr: Int32Array.from({ length: seqs + 1 }, (_, s) => s * tokensPer),
    startPos: new Int32Array(seqs).fill(startPos),
    pageIndptr: Int32Array.from({ length: seqs + 1 }, (_, s) => s * pagesPerSeq),
    pageIndices: Int32Array.from({ length: seqs * pagesPerSeq }, (_, i) => i),
    logitsMode: new Uint8Array(seqs).fill(logitsMode),
    seqIds: Int32Array.from({ length: seqs }, (_, s) => s),
  };
}

/** Tokens per second by wall clock and by CPU time. */
interface Rate {
  wall: number;
  cpu: number;
}

interface Row {
  shape: string;
  params: number;
  backend: string;
  prefill: Rate;
  decodeB1: Rate;
  decodeB8: Rate;
}

async function rate(tokens: number, run: () => Promise<void>): Promise<Rate> {
  const t = startTimer();
  await run();
  const { wallMs, cpuMs } = t();
  return { wall: tokens / (wallMs / 1000), cpu: tokens / (cpuMs / 1000) };
}

/** Warm-up decode steps: until both batch sizes ran WARM_MS each, at least 4 and at most 200 steps. */
const WARM_MS = 1500;

async function measure(shape: string, backend: TfjsBackendName): Promise<Row> {
  const config = SHAPES[shape];
  const model = createRandomModel(config, 1);
  const pagesPerSeq = Math.ceil((PREFILL + DECODE) / PAGE_SIZE);
  const options: ExecutorOptions = {
    model,
    pageSize: PAGE_SIZE,
    numKvPages: 8 * pagesPerSeq,
    kvCacheDtype: 'fp32',
    attentionChunkSize: 256,
    selection: { policy: 'dense', selectionRatio: 1, tokenBudget: null, sinkPages: 0, denseLayers: 0, useFusedKernel: true },
  };
  const ex = await createExecutor(backend, options);
  const V = config.vocabSize;
  const decodeStep = (batch: number, i: number) => ex.forward(step(batch, 1, PREFILL + (i % DECODE), pagesPerSeq, V, 1));
  // Warm-up (JIT tiers, XNNPACK weight packing): prefill sequence 0, copy its KV into the
  // pages of sequences 1-7 (cheaper than 7 more prefills on cpu), then decode steps.
  await ex.forward(step(1, PREFILL, 0, pagesPerSeq, V, 1));
  const slots = pagesPerSeq * PAGE_SIZE;
  const src = Int32Array.from({ length: 7 * slots }, (_, i) => Math.floor((i % slots) / PAGE_SIZE));
  ex.copyTokens({
    srcPages: src,
    srcSlots: Int32Array.from(src, (_, i) => i % PAGE_SIZE),
    dstPages: Int32Array.from(src, (p, i) => (1 + Math.floor(i / slots)) * pagesPerSeq + p),
    dstSlots: Int32Array.from(src, (_, i) => i % PAGE_SIZE),
  });
  for (const batch of [1, 8]) {
    const t0 = performance.now();
    for (let i = 0; i < 200 && (i < 4 || performance.now() - t0 < WARM_MS); i++) await decodeStep(batch, i);
  }

  const prefillRuns = 2;
  const prefill = await rate(prefillRuns * PREFILL, async () => {
    for (let r = 0; r < prefillRuns; r++) await ex.forward(step(1, PREFILL, 0, pagesPerSeq, V, 1));
  });
  // Contexts grow from PREFILL to PREFILL + DECODE tokens.
  const decodeB1 = await rate(DECODE, async () => {
    for (let i = 0; i < DECODE; i++) await decodeStep(1, i);
  });
  const decodeB8 = await rate(8 * DECODE, async () => {
    for (let i = 0; i < DECODE; i++) await decodeStep(8, i);
  });
  ex.dispose();
  return { shape, params: paramCount(config), backend, prefill, decodeB1, decodeB8 };
}

const backends = args.backends.split(',') as TfjsBackendName[];
const overhead: Record<string, { wall: number; cpu: number }> = {};
for (const b of backends) overhead[b] = await opOverheadUs(b);
const rows: Row[] = [];
for (const shape of args.shapes.split(',')) {
  if (!(shape in SHAPES)) throw new Error(`unknown shape '${shape}' (known: ${Object.keys(SHAPES).join(', ')})`);
  for (const b of backends) rows.push(await measure(shape, b));
}

if (args.json) {
  console.log(JSON.stringify({ cpu: cpus()[0]?.model, prefillTokens: PREFILL, decodeSteps: DECODE, opOverheadUs: overhead, rows }, null, 2));
} else {
  const f = (r: Rate) => `${r.wall.toFixed(1)} (${r.cpu.toFixed(1)})`;
  console.log(`cpu: ${cpus()[0]?.model} (${cpus().length} logical cores); node ${process.version}`);
  console.log(`prefill: one sequence of ${PREFILL} tokens; decode: ${DECODE} steps at contexts ${PREFILL}..${PREFILL + DECODE}; pageSize ${PAGE_SIZE}`);
  for (const b of backends) {
    console.log(`per-op overhead (add [1,8] in tidy) on ${b}: ${overhead[b].wall.toFixed(2)} us wall, ${overhead[b].cpu.toFixed(2)} us CPU`);
  }
  console.log('\ntokens/s by wall clock (by CPU time of this process)\n');
  console.log('| shape | params | backend | prefill | decode batch 1 | decode batch 8 |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    const m = (r.params / 1e6).toFixed(1);
    console.log(`| ${r.shape} | ${m}M | ${r.backend} | ${f(r.prefill)} | ${f(r.decodeB1)} | ${f(r.decodeB8)} |`);
  }
}
