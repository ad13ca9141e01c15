import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError } from '@tinyserve/core';
import { TinyServe } from './tinyserve.js';

const HF = fileURLToPath(new URL('../../../__fixtures__/hf/', import.meta.url));

describe('attentionExecutor.benchmarkAttention', () => {
  let tinyserve: TinyServe;
  beforeAll(async () => {
    // llama-tiny-gqa: 4 query heads over 2 KV heads of 16.
    tinyserve = new TinyServe({ executor: 'cpu', pageSize: 16, kvCacheDtype: 'fp16' });
    await tinyserve.loadModel(`${HF}llama-tiny-gqa`);
  });
  afterAll(() => tinyserve.close());

  it("takes the seed's call and defaults everything else from the loaded model and the config", async () => {
    const r = await tinyserve.attentionExecutor.benchmarkAttention({ inputSize: 2048, numPages: 128, iterations: 2, warmup: 1 });
    expect(r).toMatchObject({
      executor: 'cpu',
      mode: 'sparse ratio 0.3',
      batchSize: 1,
      inputSize: 2048,
      numPages: 128,
      numQHeads: 4,
      numKvHeads: 2,
      headDim: 16,
      pageSize: 16,
      kvDtype: 'fp16',
    });
    expect(r.throughputTokensPerMs).toBeCloseTo(2048 / (r.microseconds / 1000), 6);
    // ceil(0.3 * 128) = 39 pages per KV head.
    expect(r.pagesAttended).toBe(2 * 39);
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
  });

  it('returns one result per mode for modes, and lets parameters override the model', async () => {
    const rows = await tinyserve.attentionExecutor.benchmarkAttention({
      numPages: 8,
      batchSize: 2,
      numQHeads: 8,
      numKvHeads: 8,
      headDim: 4,
      kvDtype: 'fp32',
      iterations: 1,
      warmup: 0,
      modes: [{ kind: 'dense' }, { kind: 'sparse', tokenBudget: 32 }],
    });
    expect(rows.map((r) => [r.mode, r.inputSize, r.numQHeads, r.numKvHeads, r.headDim, r.kvDtype])).toEqual([
      ['dense', 128, 8, 8, 4, 'fp32'],
      ['sparse budget 32', 128, 8, 8, 4, 'fp32'],
    ]);
    expect(rows[1].bytes).toBeLessThan(rows[0].bytes);
  });

  it('rejects bad parameters by name', async () => {
    const api = tinyserve.attentionExecutor;
    await expect(api.benchmarkAttention({ inputSize: 2048, numPages: 64 })).rejects.toThrow(/^numPages: 64 pages of 16 tokens/);
    await expect(api.benchmarkAttention({ inputSize: 64, mode: { kind: 'dense' }, modes: [{ kind: 'dense' }] } as never)).rejects.toThrow(/^mode: give mode .* or modes/);
    await expect(api.benchmarkAttention({ inputSize: 64, executor: 'tpu' })).rejects.toThrow(ConfigError);
  });
});

describe('attentionExecutor without a model', () => {
  it('says which head fields are missing, and runs once they are given, on the configured executor', async () => {
    const tinyserve = new TinyServe({ executor: 'cpu', selectionPolicy: 'dense' });
    const err = await tinyserve.attentionExecutor.benchmarkAttention({ inputSize: 64, headDim: 8 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(/^numQHeads: no model is loaded to take the head shape from: give numQHeads, numKvHeads, or call loadModel\(\) first/);
    const r = await tinyserve.attentionExecutor.benchmarkAttention({ inputSize: 64, numQHeads: 2, numKvHeads: 1, headDim: 8, iterations: 1, warmup: 0 });
    expect(r).toMatchObject({ executor: 'cpu', mode: 'dense', kvDtype: 'fp32', numPages: 4 });
  });
});
