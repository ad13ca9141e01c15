import { describe, expect, it } from 'vitest';
import { ConfigError } from '@tinyserve/core';
import { attentionBenchmarks, benchmarkAttention } from './attention-benchmark.js';
import type { BenchmarkAttentionParams } from './attention-benchmark-params.js';

// A tiny shape: 2 sequences of 100 tokens in pages of 16 (7 pages, the last holding 4 tokens),
// 4 query heads over 2 KV heads of 8.
const B = 2;
const N = 100;
const PS = 16;
const HQ = 4;
const HK = 2;
const D = 8;
const PAGES = 7;
const LAST = N - (PAGES - 1) * PS;
const tiny = { executor: 'cpu', batchSize: B, inputSize: N, pageSize: PS, numQHeads: HQ, numKvHeads: HK, headDim: D, iterations: 3, warmup: 1 } as const;
/** Queries in, outputs out (fp32). */
const IO = 2 * B * HQ * D * 4;

describe('benchmarkAttention on the CPU kernels', () => {
  it('reads every token of every KV head densely and exactly the selected pages sparsely', async () => {
    const [dense, sparse] = await benchmarkAttention({
      ...tiny,
      kvDtype: 'fp32',
      modes: [{ kind: 'dense' }, { kind: 'sparse', selectionRatio: 0.5 }],
    });
    const row = 2 * D * 4;
    expect(dense).toMatchObject({ executor: 'cpu', mode: 'dense', numPages: PAGES, metaDtype: 'fp32', rotations: 1, iterations: 3 });
    expect(dense.bytes).toBe(B * N * HK * row + IO);
    expect(dense.pagesAttended).toBe(B * HK * PAGES);
    expect(dense.pagesTotal).toBe(B * HK * PAGES);
    // ceil(0.5 * 7) = 4 pages per (sequence, KV head): the sink, the current page (4 tokens), two by score.
    expect(sparse.mode).toBe('sparse ratio 0.5');
    expect(sparse.pagesAttended).toBe(B * HK * 4);
    const metadata = B * PAGES * HK * D * 2 * 4;
    const scores = 2 * B * PAGES * HK * 4;
    expect(sparse.bytes).toBe(B * HK * (3 * PS + LAST) * row + metadata + scores + IO);
    expect(sparse.bytes).toBeLessThan(dense.bytes);
    for (const r of [dense, sparse]) {
      expect(r.microseconds).toBeGreaterThan(0);
      expect(Number.isFinite(r.microseconds)).toBe(true);
      expect(r.throughputTokensPerMs).toBeCloseTo((B * N) / (r.microseconds / 1000), 6);
      expect(r.gbPerSecond).toBeCloseTo(r.bytes / r.microseconds / 1e3, 6);
      expect(r.fractionOfCopy).toBeCloseTo(r.gbPerSecond / r.copyGbPerSecond, 9);
      expect(r.copyGbPerSecond).toBeGreaterThan(0);
    }
    expect(sparse.scoreMicroseconds).toBeGreaterThan(0);
    expect(sparse.selectMicroseconds).toBeGreaterThan(0);
    expect(sparse.attendMicroseconds).toBeGreaterThan(0);
    expect(dense.scoreMicroseconds).toBeUndefined();
    // Plain data.
    expect(JSON.parse(JSON.stringify(sparse))).toEqual(sparse);
  });

  it('counts the KV format: fp16 halves, int8 adds a scale per (token, KV head); a budget covering the context reads no metadata', async () => {
    const [fp16] = await benchmarkAttention({ ...tiny, kvDtype: 'fp16', copyGbPerSecond: 10 });
    expect(fp16.bytes).toBe(B * N * HK * 2 * D * 2 + IO);
    expect(fp16.fractionOfCopy).toBeCloseTo(fp16.gbPerSecond / 10, 9);
    const [int8, all] = await benchmarkAttention({
      ...tiny,
      kvDtype: 'int8',
      copyGbPerSecond: 10,
      modes: [{ kind: 'dense' }, { kind: 'sparse', tokenBudget: 4096 }],
    });
    expect(int8.bytes).toBe(B * N * HK * 2 * (D + 4) + IO);
    // Quest selects everything when the budget covers every page, without scoring them.
    expect(all).toMatchObject({ mode: 'sparse budget 4096', pagesAttended: B * HK * PAGES, bytes: int8.bytes, scoreMicroseconds: 0 });
  });

  it('takes the seed parameters: numPages alone, or agreeing with inputSize', async () => {
    const base = { executor: 'wasm', numQHeads: 2, numKvHeads: 1, headDim: 4, iterations: 1, warmup: 0, copyGbPerSecond: 1 };
    const [a] = await benchmarkAttention({ ...base, numPages: 8 });
    expect(a).toMatchObject({ executor: 'wasm', inputSize: 128, numPages: 8, pageSize: 16, batchSize: 1, kvDtype: 'fp16' });
    const [b] = await benchmarkAttention({ ...base, inputSize: 120, numPages: 8 });
    expect(b).toMatchObject({ inputSize: 120, numPages: 8 });
    expect(b.bytes).toBeLessThan(a.bytes);
    await expect(benchmarkAttention({ ...base, inputSize: 2048, numPages: 64 })).rejects.toThrow(
      /numPages: 64 pages of 16 tokens hold 1009\.\.1024 tokens, but inputSize 2048 fills 128/,
    );
  });
});

describe('benchmarkAttention parameters', () => {
  const ok: BenchmarkAttentionParams = { executor: 'cpu', inputSize: 64, numQHeads: 4, numKvHeads: 2, headDim: 8, iterations: 1 };
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['an unknown executor', { executor: 'tpu' }, /^executor: no attention benchmark for executor 'tpu' \(registered: cpu, cuda, wasm\)/],
    ['no context', { inputSize: undefined }, /^inputSize: give inputSize .* or numPages/],
    ['a missing head shape', { numQHeads: undefined, headDim: undefined }, /^numQHeads: is required \(missing: numQHeads, headDim\)/],
    ['ungrouped query heads', { numQHeads: 3 }, /^numQHeads: must be a multiple of numKvHeads \(2\)/],
    ['a fractional batch', { batchSize: 1.5 }, /^batchSize: must be an integer in \[1, /],
    ['a zero page size', { pageSize: 0 }, /^pageSize: must be an integer in \[1, 4096\]/],
    ['a string context', { inputSize: '64' }, /^inputSize: must be an integer .* got '64'/],
    ['an unknown KV format', { kvDtype: 'bf16' }, /^kvDtype: must be one of 'fp32', 'fp16', 'int8', got 'bf16'/],
    ['fp16 boxes on cpu', { metaDtype: 'fp16' }, /^metaDtype: executor 'cpu' keeps page metadata in 'fp32', got 'fp16'/],
    ['no modes', { modes: [] }, /^modes: must be a non-empty array/],
    ['an unknown mode', { modes: [{ kind: 'dense' }, { kind: 'topk' }] }, /^modes\[1\]\.kind: must be 'dense' or 'sparse', got 'topk'/],
    ['a sparse mode without a size', { modes: [{ kind: 'sparse' }] }, /^modes\[0\]: a sparse mode needs selectionRatio .* or tokenBudget/],
    ['a ratio above 1', { modes: [{ kind: 'sparse', selectionRatio: 2 }] }, /^modes\[0\]\.selectionRatio: must be a number in \(0, 1\], got 2/],
    ['a budget below the forced pages', { modes: [{ kind: 'sparse', tokenBudget: 20, sinkPages: 2 }] }, /^modes\[0\]\.tokenBudget: 20 tokens gives 2 pages of 16, but policy 'quest' always keeps 3/],
    ['a budget below one page', { modes: [{ kind: 'sparse', tokenBudget: 10 }] }, /^modes\[0\]\.tokenBudget: 10 tokens is less than one page/],
    ['a field of another mode', { modes: [{ kind: 'dense', selectionRatio: 0.5 }] }, /^modes\[0\]\.selectionRatio: is not a field of a dense mode/],
    ['zero iterations', { iterations: 0 }, /^iterations: must be an integer in \[1, /],
    ['negative warmup', { warmup: -1 }, /^warmup: must be an integer in \[0, /],
    ['a zero chunk', { chunkSize: 0 }, /^chunkSize: must be an integer in \[1, /],
    ['a negative copy bandwidth', { copyGbPerSecond: -1 }, /^copyGbPerSecond: must be a positive number of GB\/s, got -1/],
    ['cuda options on cpu', { cuda: { poolPages: 10 } }, /^cuda: options apply to executor 'cuda' only, not 'cpu'/],
    ['a misspelt field', { inputsize: 64 }, /^inputsize: is not a benchmarkAttention parameter \(known: executor, batchSize, inputSize, numPages/],
    ['a context too large for the CPU buffers', { inputSize: 2 ** 28, headDim: 64 }, /^inputSize: batch 1 x 16777216 pages of 16 tokens x 2 KV heads x 64 .* at most 1073741824 per buffer/],
  ];
  it.each(cases)('rejects %s with a ConfigError naming the field', async (_name, patch, message) => {
    const params = { ...ok, ...patch } as BenchmarkAttentionParams;
    const err = await benchmarkAttention(params).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(message);
  });

  it('dispatches by registered executor name', () => {
    expect(attentionBenchmarks.names().sort()).toEqual(['cpu', 'cuda', 'wasm']);
    expect(attentionBenchmarks.get('cuda')).toMatchObject({ metaDtypes: ['fp16', 'fp32'], cudaOptions: true });
  });
});
