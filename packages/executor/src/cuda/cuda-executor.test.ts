import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BackendUnavailableError, ConfigError } from '@tinyserve/core';
import type { ExecutorOptions } from '@tinyserve/core';
import { createExecutor, executorBackends } from '../executor-registry.js';
import { createRandomModel, llamaConfig } from '../__fixtures__/random-model.js';
import { loadCudaAddon, resetCudaAddonCache } from './addon-loader.js';

function options(overrides: Partial<ExecutorOptions> = {}): ExecutorOptions {
  return {
    model: createRandomModel(llamaConfig({ numLayers: 1 }), 3),
    pageSize: 4,
    numKvPages: 8,
    kvCacheDtype: 'fp32',
    attentionChunkSize: 64,
    selection: { policy: 'dense', selectionRatio: 1, tokenBudget: null, sinkPages: 0, denseLayers: 0, useFusedKernel: true },
    ...overrides,
  };
}

const saved = process.env.TINYSERVE_CUDA_ADDON;
afterEach(() => {
  if (saved === undefined) delete process.env.TINYSERVE_CUDA_ADDON;
  else process.env.TINYSERVE_CUDA_ADDON = saved;
  resetCudaAddonCache();
});

describe('createExecutor("cuda") without a usable addon', () => {
  it('is registered', () => {
    expect(executorBackends.has('cuda')).toBe(true);
  });

  it('rejects with BackendUnavailableError when the binary is missing', async () => {
    process.env.TINYSERVE_CUDA_ADDON = join(tmpdir(), 'no-such-dir', 'tinyserve_cuda.node');
    const err = await createExecutor('cuda', options()).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendUnavailableError);
    expect((err as BackendUnavailableError).code).toBe('backend_unavailable');
  });

  it('test-loads a broken binary in a child process and reports why', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'tinyserve-cuda-'));
    const path = join(dir, 'tinyserve_cuda.node');
    writeFileSync(path, 'not an ELF file');
    process.env.TINYSERVE_CUDA_ADDON = path;
    // The child fails to dlopen it; this process never tries.
    await expect(createExecutor('cuda', options())).rejects.toThrow(/test load of the CUDA addon .* failed: cannot load the binary/);
    // The failure is cached: the second attempt does not spawn again, and says the same.
    expect(() => loadCudaAddon()).toThrow(BackendUnavailableError);
  });

  it('accepts int8 KV: without an addon it fails only for want of the GPU', async () => {
    process.env.TINYSERVE_CUDA_ADDON = join(tmpdir(), 'no-such-dir', 'tinyserve_cuda.node');
    await expect(createExecutor('cuda', options({ kvCacheDtype: 'int8' }))).rejects.toThrow(BackendUnavailableError);
  });

  it('rejects configurations the cuda executor cannot run before touching the GPU', async () => {
    const bf16 = options({ kvCacheDtype: 'bf16' as never });
    await expect(createExecutor('cuda', bf16)).rejects.toThrow(ConfigError);
    await expect(createExecutor('cuda', bf16)).rejects.toThrow(/kvCacheDtype: 'bf16' is not supported by the cuda executor \(supported: fp32, fp16, int8\)/);
    // Selection errors are the tfjs executors' own (every policy runs on the cuda executor).
    const unknown = { policy: 'nope', selectionRatio: 0.5, tokenBudget: null, sinkPages: 1, denseLayers: 0, useFusedKernel: true };
    const cpuError = await createExecutor('cpu', options({ selection: unknown })).catch((e: unknown) => e);
    const cudaError = await createExecutor('cuda', options({ selection: unknown })).catch((e: unknown) => e);
    expect(cudaError).toBeInstanceOf(ConfigError);
    expect((cudaError as Error).message).toBe((cpuError as Error).message);
    const odd = createRandomModel(llamaConfig({ numLayers: 1, headDim: 12, hiddenSize: 48 }), 3);
    await expect(createExecutor('cuda', options({ model: odd }))).rejects.toThrow(/headDim 12 is not supported/);
  });
});
