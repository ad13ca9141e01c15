import { afterEach, describe, expect, it, vi } from 'vitest';
import { ConfigError, DEFAULT_CONFIG, ModelLoadError, RegistryError, RequestValidationError, UnsupportedModelError } from '@tinyserve/core';
import type { ExecutorOptions, LoadedModel } from '@tinyserve/core';
import { createExecutor, executorBackends } from './executor-registry.js';
import { createRandomModel, gpt2Config, llamaConfig } from './__fixtures__/random-model.js';
import { TestPager } from './__fixtures__/paging.js';

function options(model: LoadedModel, overrides: Partial<ExecutorOptions> = {}): ExecutorOptions {
  return {
    model,
    pageSize: 4,
    numKvPages: 8,
    kvCacheDtype: 'fp32',
    attentionChunkSize: 64,
    selection: { policy: 'dense', selectionRatio: 0.3, tokenBudget: null, sinkPages: 1, denseLayers: 2, useFusedKernel: true },
    ...overrides,
  };
}

afterEach(() => vi.restoreAllMocks());

describe('createExecutor', () => {
  const model = createRandomModel(llamaConfig({ numLayers: 1 }), 3);

  it('registers wasm, cpu and cuda, and an unknown name lists them', async () => {
    expect(executorBackends.names().sort()).toEqual(['cpu', 'cuda', 'wasm']);
    await expect(createExecutor('tpu', options(model))).rejects.toThrow(RegistryError);
    await expect(createExecutor('tpu', options(model))).rejects.toThrow(/unknown executor backend 'tpu' \(registered: cpu, cuda, wasm\)/);
  });

  it('creates executors that describe themselves', async () => {
    const ex = await createExecutor('wasm', options(model));
    expect(ex.backend).toBe('wasm');
    expect(ex.model).toBe(model.config);
    expect(ex.pageSize).toBe(4);
    expect(ex.numKvPages).toBe(8);
    // 1 layer x (K + V) x 4 slots x 2 KV heads x 8 dims x 4 bytes
    expect(ex.kvBytesPerPage).toBe(1 * 2 * 4 * 2 * 8 * 4);
    ex.dispose();
  });

  it('prints no tfjs banner on the cpu backend', async () => {
    const warn = vi.spyOn(console, 'warn');
    const log = vi.spyOn(console, 'log');
    const ex = await createExecutor('cpu', options(model));
    await ex.forward(new TestPager(8, 4).step([{ seqId: 1, tokens: [1, 2, 3] }]));
    ex.dispose();
    expect(warn).not.toHaveBeenCalled();
    expect(log).not.toHaveBeenCalled();
  });

  it('rejects options it cannot honour, naming the field', async () => {
    const bad: [Partial<ExecutorOptions>, string, RegExp][] = [
      [{ pageSize: 0 }, 'pageSize', /positive integer/],
      [{ numKvPages: 2.5 }, 'numKvPages', /positive integer/],
      [{ attentionChunkSize: -1 }, 'attentionChunkSize', /positive integer/],
      [{ kvCacheDtype: 'fp8' as ExecutorOptions['kvCacheDtype'] }, 'kvCacheDtype', /must be one of 'fp32', 'fp16', 'int8', got 'fp8'/],
      [{ selection: { ...options(model).selection, policy: 'h2o' } }, 'selectionPolicy', /unknown selection policy 'h2o'/],
    ];
    for (const [override, field, message] of bad) {
      const err = await createExecutor('wasm', options(model, override)).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).field).toBe(field);
      expect((err as Error).message).toMatch(message);
    }
  });

  it('validates copyTokens', async () => {
    const ex = await createExecutor('cpu', options(model));
    const ok = { srcPages: Int32Array.from([0]), srcSlots: Int32Array.from([1]), dstPages: Int32Array.from([2]), dstSlots: Int32Array.from([3]) };
    expect(() => ex.copyTokens(ok)).not.toThrow();
    expect(() => ex.copyTokens({ ...ok, dstPages: Int32Array.from([8]) })).toThrow(/dstPages\[0\]: 8 is outside \[0, 8\)/);
    expect(() => ex.copyTokens({ ...ok, srcSlots: Int32Array.from([4]) })).toThrow(/srcSlots\[0\]: 4 is outside \[0, 4\) \(pageSize = 4\)/);
    expect(() => ex.copyTokens({ ...ok, dstSlots: Int32Array.from([0, 1]) })).toThrow(RequestValidationError);
    ex.dispose();
  });

  it('copyTokens moves one slot in every layer, K and V, and nothing else', async () => {
    const two = createRandomModel(llamaConfig({ numLayers: 2 }), 4);
    const ex = await createExecutor('cpu', options(two));
    const cache = (ex as unknown as { kvCache: { keys: Float32Array[]; values: Float32Array[] } }).kvCache;
    const row = 2 * 8;
    const filled = [...cache.keys, ...cache.values];
    filled.forEach((buf, b) => buf.forEach((_, i) => (buf[i] = b * 10000 + i)));
    // page 1 slot 2 -> page 5 slot 0 (pageSize 4)
    ex.copyTokens({ srcPages: Int32Array.from([1]), srcSlots: Int32Array.from([2]), dstPages: Int32Array.from([5]), dstSlots: Int32Array.from([0]) });
    const src = (1 * 4 + 2) * row;
    const dst = (5 * 4 + 0) * row;
    filled.forEach((buf, b) => {
      buf.forEach((v, i) => {
        const expected = i >= dst && i < dst + row ? b * 10000 + src + (i - dst) : b * 10000 + i;
        if (v !== expected) throw new Error(`buffer ${b} element ${i}: ${v} != ${expected}`);
      });
    });
    ex.dispose();
  });
});

describe('model checks', () => {
  it('rejects missing or misshapen tensors and unsupported configurations', async () => {
    const missing = createRandomModel(llamaConfig(), 1);
    missing.weights.delete('model.layers.1.mlp.up_proj.weight');
    await expect(createExecutor('cpu', options(missing))).rejects.toThrow(new ModelLoadError("missing tensor 'model.layers.1.mlp.up_proj.weight'"));

    const misshapen = createRandomModel(gpt2Config(), 1);
    const t = misshapen.weights.get('transformer.h.0.attn.c_attn.weight');
    if (t) t.shape = [96, 32];
    await expect(createExecutor('cpu', options(misshapen))).rejects.toThrow(/'transformer.h.0.attn.c_attn.weight' has shape \[96,32\], expected \[32,96\]/);

    const untiedWithoutHead = createRandomModel(llamaConfig({ tieWordEmbeddings: true }), 1);
    untiedWithoutHead.config = { ...untiedWithoutHead.config, tieWordEmbeddings: false };
    await expect(createExecutor('cpu', options(untiedWithoutHead))).rejects.toThrow(/missing tensor 'lm_head.weight'/);

    const gelu = createRandomModel(llamaConfig(), 1);
    gelu.config = { ...gelu.config, hiddenAct: 'gelu' };
    await expect(createExecutor('cpu', options(gelu))).rejects.toThrow(UnsupportedModelError);

    const groups = createRandomModel(llamaConfig({ numHeads: 4, numKvHeads: 3 }), 1);
    await expect(createExecutor('cpu', options(groups))).rejects.toThrow(/numHeads \(4\) must be a multiple of numKvHeads \(3\)/);
  });

  it('reads GPT-2 checkpoints saved without the transformer. prefix', async () => {
    const prefixed = createRandomModel(gpt2Config({ numLayers: 1 }), 5);
    const bare = createRandomModel(gpt2Config({ numLayers: 1 }), 5);
    bare.weights = new Map([...bare.weights].map(([k, v]) => [k.replace(/^transformer\./, ''), v]));
    const step = () => new TestPager(8, 4).step([{ seqId: 1, tokens: [3, 1, 4, 1, 5] }]);
    const a = await createExecutor('cpu', options(prefixed));
    const b = await createExecutor('cpu', options(bare));
    expect(Array.from((await b.forward(step())).logits)).toEqual(Array.from((await a.forward(step())).logits));
    a.dispose();
    b.dispose();
  });

  it('keeps DEFAULT_CONFIG-shaped options working', async () => {
    const model = createRandomModel(gpt2Config({ numLayers: 1 }), 6);
    const ex = await createExecutor('wasm', options(model, { pageSize: DEFAULT_CONFIG.pageSize, attentionChunkSize: DEFAULT_CONFIG.attentionChunkSize }));
    const r = await ex.forward(new TestPager(8, DEFAULT_CONFIG.pageSize).step([{ seqId: 1, tokens: [5, 6, 7], logitsMode: 1 }]));
    expect(r.logits.length).toBe(97);
    ex.dispose();
  });
});
