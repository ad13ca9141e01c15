import { afterAll, describe, expect, it } from 'vitest';
import type { Executor, ExecutorOptions, ForwardResult, LoadedModel, ModelConfig } from '@tinyserve/core';
import { BackendUnavailableError, DEFAULT_CONFIG } from '@tinyserve/core';
import { findBackend } from '@tensorflow/tfjs-core';
import { createExecutor } from './executor-registry.js';
import { checkWasmMemory } from './tfjs-executor.js';
import { createRandomModel, gpt2Config, llamaConfig } from './__fixtures__/random-model.js';
import { referenceForward } from './__fixtures__/reference-forward.js';
import { TestPager, randomTokens } from './__fixtures__/paging.js';

const TOL = 1e-4;

function options(model: LoadedModel, overrides: Partial<ExecutorOptions> = {}): ExecutorOptions {
  return {
    model,
    pageSize: 4,
    numKvPages: 64,
    kvCacheDtype: 'fp32',
    attentionChunkSize: 256,
    selection: {
      policy: 'dense',
      selectionRatio: DEFAULT_CONFIG.selectionRatio,
      tokenBudget: null,
      sinkPages: 1,
      denseLayers: 2,
      useFusedKernel: true,
    },
    ...overrides,
  };
}

/** Rows of sequence `s` in a ForwardResult. */
function rowsOf(result: ForwardResult, s: number, vocab: number): Float32Array[] {
  const rows: Float32Array[] = [];
  for (let r = result.logitsIndptr[s]; r < result.logitsIndptr[s + 1]; r++) {
    rows.push(result.logits.subarray(r * vocab, (r + 1) * vocab));
  }
  return rows;
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

const CASES: [string, ModelConfig][] = [
  ['gpt2 (tied)', gpt2Config()],
  ['llama GQA 4:2 (untied)', llamaConfig()],
  ['llama MQA 4:1 (tied, biases)', llamaConfig({ numKvHeads: 1, tieWordEmbeddings: true, attentionBias: true, mlpBias: true })],
  ['llama MHA headDim 16', llamaConfig({ numHeads: 2, numKvHeads: 2, headDim: 16, ropeTheta: 500000 })],
];

const executors: Executor[] = [];
async function make(backend: string, model: LoadedModel, overrides: Partial<ExecutorOptions> = {}): Promise<Executor> {
  const ex = await createExecutor(backend, options(model, overrides));
  executors.push(ex);
  return ex;
}
afterAll(() => executors.forEach((e) => e.dispose()));

describe.each(CASES)('%s on wasm', (_name, config) => {
  const model = createRandomModel(config, 11);
  const V = config.vocabSize;
  const prompt = randomTokens(23, V, 3);
  const reference = referenceForward(model, prompt);

  it('one-shot prefill matches the reference forward at every position', async () => {
    const ex = await make('wasm', model);
    const pager = new TestPager(64, 4);
    const result = await ex.forward(pager.step([{ seqId: 1, tokens: prompt, logitsMode: 2 }]));
    const rows = rowsOf(result, 0, V);
    expect(rows.length).toBe(prompt.length);
    rows.forEach((row, i) => expect(maxDiff(row, reference[i])).toBeLessThan(TOL));
  });

  it('chunked prefill of varied sizes, then decode, matches full recompute', async () => {
    const ex = await make('wasm', model, { attentionChunkSize: 4 });
    const pager = new TestPager(64, 4, 99);
    let pos = 0;
    for (const size of [5, 1, 7, 3]) {
      const chunk = prompt.slice(pos, pos + size);
      const result = await ex.forward(pager.step([{ seqId: 5, tokens: chunk, logitsMode: 2 }]));
      rowsOf(result, 0, V).forEach((row, i) => expect(maxDiff(row, reference[pos + i])).toBeLessThan(TOL));
      pos += size;
    }
    for (; pos < prompt.length; pos++) {
      const result = await ex.forward(pager.step([{ seqId: 5, tokens: [prompt[pos]], logitsMode: 1 }]));
      expect(maxDiff(rowsOf(result, 0, V)[0], reference[pos])).toBeLessThan(TOL);
    }
  });

  it('a batched step of mixed prefill and decode equals per-sequence forwards', async () => {
    const other = randomTokens(9, V, 4);
    const third = randomTokens(14, V, 5);
    const refOther = referenceForward(model, other);
    const refThird = referenceForward(model, third);
    const ex = await make('wasm', model);
    const pager = new TestPager(64, 4, 5);
    // Warm up: seq 1 has 20 tokens cached, seq 2 has 8, seq 3 starts now.
    await ex.forward(pager.step([{ seqId: 1, tokens: prompt.slice(0, 20), logitsMode: 0 }, { seqId: 2, tokens: other.slice(0, 8), logitsMode: 0 }]));
    const result = await ex.forward(
      pager.step([
        { seqId: 2, tokens: [other[8]], logitsMode: 1 },
        { seqId: 3, tokens: third, logitsMode: 2 },
        { seqId: 1, tokens: prompt.slice(20, 23), logitsMode: 1 },
        { seqId: 9, tokens: third.slice(0, 4), logitsMode: 0 },
      ]),
    );
    expect(Array.from(result.logitsIndptr)).toEqual([0, 1, 15, 16, 16]);
    expect(maxDiff(rowsOf(result, 0, V)[0], refOther[8])).toBeLessThan(TOL);
    rowsOf(result, 1, V).forEach((row, i) => expect(maxDiff(row, refThird[i])).toBeLessThan(TOL));
    expect(maxDiff(rowsOf(result, 2, V)[0], reference[22])).toBeLessThan(TOL);
  });
});

describe('backends', () => {
  const model = createRandomModel(llamaConfig(), 21);
  const prompt = randomTokens(17, 97, 8);

  it('wasm and cpu agree within 1e-4', async () => {
    const results: ForwardResult[] = [];
    for (const backend of ['wasm', 'cpu', 'wasm']) {
      const ex = await make(backend, model);
      const pager = new TestPager(64, 4, 1);
      await ex.forward(pager.step([{ seqId: 1, tokens: prompt.slice(0, 12), logitsMode: 0 }]));
      results.push(await ex.forward(pager.step([{ seqId: 1, tokens: prompt.slice(12), logitsMode: 2 }])));
    }
    expect(results[1].logits.length).toBe(5 * 97);
    expect(maxDiff(results[0].logits, results[1].logits)).toBeLessThan(TOL);
    expect(maxDiff(results[0].logits, results[2].logits)).toBe(0);
  });

  it('executors on different backends can run concurrently without migrating weights', async () => {
    const ref = referenceForward(model, prompt);
    const wasm = await make('wasm', model);
    const cpu = await make('cpu', model);
    const counts = () => ['wasm', 'cpu'].map((b) => (findBackend(b) as { numDataIds(): number }).numDataIds());
    const before = counts();
    const pagers = [new TestPager(64, 4, 1), new TestPager(64, 4, 2)];
    const results = await Promise.all(
      prompt.map((token, i) => [wasm, cpu][i % 2].forward(pagers[i % 2].step([{ seqId: i, tokens: prompt.slice(0, i + 1), logitsMode: 1 }]))),
    );
    results.forEach((r, i) => expect(maxDiff(r.logits, ref[i])).toBeLessThan(TOL));
    expect(counts()).toEqual(before);
  });

  it('gpt2 on cpu matches the reference', async () => {
    const gpt = createRandomModel(gpt2Config({ numLayers: 1 }), 2);
    const tokens = randomTokens(10, 97, 2);
    const ref = referenceForward(gpt, tokens);
    const ex = await make('cpu', gpt, { pageSize: 3 });
    const result = await ex.forward(new TestPager(64, 3).step([{ seqId: 0, tokens, logitsMode: 2 }]));
    rowsOf(result, 0, 97).forEach((row, i) => expect(maxDiff(row, ref[i])).toBeLessThan(TOL));
  });
});

describe('step outputs', () => {
  const model = createRandomModel(llamaConfig(), 31);
  const prompt = randomTokens(10, 97, 9);

  it('reports dense selection statistics for decode sequences over (sequence, layer, KV head, page)', async () => {
    const ex = await make('wasm', model);
    const pager = new TestPager(64, 4);
    const prefill = await ex.forward(pager.step([{ seqId: 1, tokens: prompt, logitsMode: 0 }, { seqId: 2, tokens: prompt.slice(0, 3), logitsMode: 1 }]));
    expect(prefill.logits.length).toBe(97);
    // Prefill chunks are not selection decisions.
    expect(prefill.selection).toEqual({ pagesScanned: 0, pagesSelected: 0, kvBytesRead: 0, kvBytesDense: 0 });
    const result = await ex.forward(pager.step([{ seqId: 1, tokens: [5], logitsMode: 1 }, { seqId: 2, tokens: [6, 7], logitsMode: 1 }]));
    // Sequence 1 decodes at 11 tokens: ceil(11/4) = 3 pages x 2 layers x 2 KV heads; 11 positions x 2 layers x 2 heads x (K+V) 8 dims x 4 bytes.
    expect(result.selection).toEqual({ pagesScanned: 12, pagesSelected: 12, kvBytesRead: 11 * 2 * 2 * 2 * 8 * 4, kvBytesDense: 11 * 2 * 2 * 2 * 8 * 4 });
    expect(ex.kvBytesPerPage).toBe(2 * 2 * 4 * 2 * 8 * 4);
    expect(result.attention).toBeUndefined();
  });

  it('collects attention statistics only when asked', async () => {
    const ex = await make('wasm', model);
    const pager = new TestPager(64, 4);
    const result = await ex.forward(pager.step([{ seqId: 4, tokens: prompt, logitsMode: 1 }, { seqId: 6, tokens: prompt.slice(0, 5), logitsMode: 0 }], true));
    const stats = result.attention ?? [];
    expect(stats.map((s) => [s.seqId, s.layer])).toEqual([[4, 0], [4, 1], [6, 0], [6, 1]]);
    for (const s of stats) {
      const mass = s.positionMass ?? new Float32Array();
      expect(mass.length).toBe(s.seqId === 4 ? 10 : 5);
      expect(mass.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
      expect(s.entropy).toBeGreaterThan(0);
      expect(s.entropy).toBeLessThanOrEqual(Math.log(mass.length) + 1e-9);
    }
  });

  it('copyTokens forks a cached prefix into other pages and decoding continues from it', async () => {
    const ref = referenceForward(model, prompt);
    const ex = await make('wasm', model);
    const pager = new TestPager(64, 4, 3);
    await ex.forward(pager.step([{ seqId: 1, tokens: prompt.slice(0, 9), logitsMode: 0 }]));
    const src = pager.pages.get(1) ?? [];
    const dst = pager.ensure(2, 10);
    const n = 9;
    ex.copyTokens({
      srcPages: Int32Array.from({ length: n }, (_, p) => src[Math.floor(p / 4)]),
      srcSlots: Int32Array.from({ length: n }, (_, p) => p % 4),
      dstPages: Int32Array.from({ length: n }, (_, p) => dst[Math.floor(p / 4)]),
      dstSlots: Int32Array.from({ length: n }, (_, p) => p % 4),
    });
    // Overwrite the source sequence's pages so that only the copy can give the right answer.
    await ex.forward(pager.step([{ seqId: 1, tokens: prompt.slice(1, 10).reverse(), startPos: 0, logitsMode: 0 }]));
    pager.lengths.set(2, 9);
    const result = await ex.forward(pager.step([{ seqId: 2, tokens: [prompt[9]], logitsMode: 1 }]));
    expect(maxDiff(rowsOf(result, 0, 97)[0], ref[9])).toBeLessThan(TOL);
  });

  it('refuses models whose doubled weights would overflow the 4 GiB wasm heap', () => {
    expect(() => checkWasmMemory(1.5 * 2 ** 30)).not.toThrow();
    expect(() => checkWasmMemory(1.9 * 2 ** 30)).toThrow(BackendUnavailableError);
    expect(() => checkWasmMemory(4.4e9)).toThrow(/needs about 8\.7 GiB of wasm memory .* use the 'cpu' executor/);
  });

  it('rejects use after dispose', async () => {
    const ex = await createExecutor('cpu', options(model));
    ex.dispose();
    await expect(ex.forward(new TestPager(64, 4).step([{ seqId: 1, tokens: [1] }]))).rejects.toThrow(/disposed/);
  });
});
