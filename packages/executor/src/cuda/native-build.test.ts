import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { buildCudaAddon, findNvcc } from '../../native/build.mjs';
import { CUDA_ADDON_ABI_VERSION } from './addon-types.js';
import type { CudaAddon } from './addon-types.js';

const nvcc = findNvcc();
const skip = nvcc === null || process.env.TINYSERVE_SKIP_CUDA_BUILD === '1';
if (skip) {
  console.warn(
    nvcc === null
      ? 'skipping the CUDA addon build: nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)'
      : 'skipping the CUDA addon build: TINYSERVE_SKIP_CUDA_BUILD=1',
  );
}

/** Every call of the typed surface, so a binding dropped from addon.cpp fails here. */
const CALLS: (keyof CudaAddon)[] = [
  'deviceInfo', 'alloc', 'free', 'upload', 'download', 'copy', 'fill', 'randomFill', 'synchronize', 'memoryInfo',
  'copyBandwidth', 'createPlan', 'planUpdate', 'releasePlan', 'decodeDense', 'decodeSparse', 'readSelection', 'appendKv',
  'prefill', 'timeCalls', 'gemm', 'binary', 'gather', 'norm', 'activation', 'cast', 'rebuildMetadata', 'copyTokens',
];

describe.skipIf(skip)('CUDA addon build (nvcc, sm_80 + sm_90 + PTX)', () => {
  // A cold build takes minutes on a small CI box; later runs find it cached by source hash.
  it('compiles, links, loads in Node and exposes the typed surface', { timeout: 20 * 60_000 }, async () => {
    const result = await buildCudaAddon({ jobs: 2 });
    expect(existsSync(result.path)).toBe(true);
    expect(result.hash).toMatch(/^[0-9a-f]{16}$/);
    // Rebuilding with nothing changed is a cache hit.
    const again = await buildCudaAddon();
    expect(again.cached).toBe(true);
    expect(again.hash).toBe(result.hash);

    // Loading needs no GPU; using it does.
    const addon = createRequire(import.meta.url)(result.path) as CudaAddon;
    expect(addon.abiVersion).toBe(CUDA_ADDON_ABI_VERSION);
    for (const name of CALLS) expect(typeof addon[name], name).toBe('function');
    let info: unknown = null;
    try {
      info = addon.deviceInfo();
    } catch (err) {
      // Without a GPU or driver: CUDA's reason, under the addon's error code.
      expect((err as { code?: string }).code).toBe('ERR_TINYSERVE_CUDA');
      expect(String(err)).toMatch(/cuda/i);
    }
    if (info !== null) expect((info as { abiVersion: number }).abiVersion).toBe(CUDA_ADDON_ABI_VERSION);
    // Argument errors are caught before any CUDA call and name the field.
    expect(() => addon.alloc(-1)).toThrow(/bytes/);
    expect(() => addon.planUpdate({} as never, {} as never)).toThrow(/plan: must be a plan from createPlan\(\)/);
  });
});
