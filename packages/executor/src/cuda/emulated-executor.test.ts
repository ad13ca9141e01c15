import { describe, expect, it } from 'vitest';
import { ConfigError, RequestValidationError } from '@tinyserve/core';
import { selectionPolicies } from '@tinyserve/kv-retriever';
import type { ExecutorOptions, SelectionConfig } from '@tinyserve/core';
import { TestPager, randomTokens } from '../__fixtures__/paging.js';
import { emulatedCudaAddon } from '../__fixtures__/emulated-cuda-addon.js';
import { createRandomModel, llamaConfig } from '../__fixtures__/random-model.js';
import { checkPolicies, statsDifference } from './backend-checks.js';
import { CudaExecutor } from './cuda-executor.js';
import { TfjsExecutor } from '../tfjs-executor.js';

/**
 * The cuda backend, its kernels and the cuda executor over an emulated addon (each call done by
 * the TypeScript reference the GPU kernel is checked against): the TypeScript wiring of the
 * policy route and of the fused launch's selection log, where there is no GPU. The GPU run of
 * the same checks (gpu.test.ts, device-run.ts) tests the kernels themselves.
 */
const addon = emulatedCudaAddon();

const quest: SelectionConfig = { policy: 'quest', selectionRatio: 0.4, tokenBudget: null, sinkPages: 1, denseLayers: 1, useFusedKernel: false };

function options(selection: SelectionConfig): ExecutorOptions {
  return { model: createRandomModel(llamaConfig({ numLayers: 2 }), 3), pageSize: 4, numKvPages: 32, kvCacheDtype: 'fp32', attentionChunkSize: 64, selection };
}

describe('the cuda executor over an emulated addon', () => {
  it('runs every policy, fused and policy route, like the cpu executor (the GPU checks, emulated)', { timeout: 60_000 }, async () => {
    const results = await checkPolicies(addon);
    expect(results.length).toBeGreaterThanOrEqual(10);
    expect(results.filter((r) => !r.ok)).toEqual([]);
  });

  it('rejects what the tfjs executors reject, with the same errors', async () => {
    await expect(CudaExecutor.withAddon(addon, options({ ...quest, policy: 'nope' }))).rejects.toThrow(/unknown selection policy 'nope'/);
    await expect(CudaExecutor.withAddon(addon, options({ ...quest, tokenBudget: 2 }))).rejects.toThrow(ConfigError);
    await expect(CudaExecutor.withAddon(addon, options(quest), { measureRecall: 'yes' as never })).rejects.toThrow(/measureRecall/);
    const ex = await CudaExecutor.withAddon(addon, options(quest));
    try {
      expect(() => ex.setSelection({ ...quest, selectionRatio: 2 })).toThrow(/selectionRatio/);
      expect(ex.selection.selectionRatio).toBe(0.4);
    } finally {
      ex.dispose();
    }
  });

  it('checks a page selection handed to the sparse kernel as the cpu kernel does', async () => {
    // A policy that lists a page past the sequence's end.
    selectionPolicies.register('test-out-of-range', (config) => ({
      name: 'test-out-of-range',
      config,
      select: ({ layout, pages }) => {
        const indptr = Int32Array.from({ length: layout.numKvHeads + 1 }, (_, j) => j);
        return { numKvHeads: layout.numKvHeads, numPages: pages.length, indptr, indices: new Int32Array(layout.numKvHeads).fill(pages.length), dense: false };
      },
    }));
    const ex = await CudaExecutor.withAddon(addon, options({ ...quest, policy: 'test-out-of-range' }));
    try {
      const pager = new TestPager(32, 4, 1);
      await ex.forward(pager.step([{ seqId: 1, tokens: randomTokens(30, 97, 1), logitsMode: 1 }]));
      const step = ex.forward(pager.step([{ seqId: 1, tokens: [5], logitsMode: 1 }]));
      await expect(step).rejects.toThrow(RequestValidationError);
      await expect(ex.forward(pager.step([{ seqId: 1, tokens: [5], logitsMode: 1, startPos: 30 }]))).rejects.toThrow(/ascending logical pages in \[0, 8\) of sequence 0, got 8/);
    } finally {
      ex.dispose();
    }
  });

  it('collects attention statistics in the steps that ask, as the cpu executor does', async () => {
    const fused = { ...quest, useFusedKernel: true };
    const cpu = await TfjsExecutor.create('cpu', options(fused));
    const gpu = await CudaExecutor.withAddon(addon, options(fused));
    try {
      const pagers = [new TestPager(32, 4, 1), new TestPager(32, 4, 1)];
      const run = (entries: Parameters<TestPager['step']>[0], stats: boolean) => Promise.all([cpu.forward(pagers[0].step(entries, stats)), gpu.forward(pagers[1].step(entries, stats))]);
      const [a0, b0] = await run([{ seqId: 1, tokens: randomTokens(37, 97, 2), logitsMode: 1 }], true);
      expect(b0.attention).toHaveLength(2);
      expect(statsDifference(a0.attention, b0.attention)).toBeLessThan(1e-5);
      const [a1, b1] = await run([{ seqId: 1, tokens: [3], logitsMode: 1 }], false);
      expect(a1.attention).toBeUndefined();
      expect(b1.attention).toBeUndefined();
      // A decode step of the fused launch: layer 1 attends quest's pages, layer 0 (dense) all.
      const [a2, b2] = await run([{ seqId: 1, tokens: [4], logitsMode: 1 }], true);
      expect(b2.attention!.map((r) => [r.seqId, r.layer, r.positionMass!.length])).toEqual([
        [1, 0, 39],
        [1, 1, 39],
      ]);
      expect(b2.attention![1].positionMass!.filter((m) => m === 0).length).toBeGreaterThan(0);
      expect(statsDifference(a2.attention, b2.attention)).toBeLessThan(1e-5);
    } finally {
      cpu.dispose();
      gpu.dispose();
    }
  });
});
