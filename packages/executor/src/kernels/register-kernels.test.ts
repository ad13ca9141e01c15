import { describe, expect, it } from 'vitest';
import { getBackend, getKernel, registerBackend, removeBackend, setBackend, tensor1d, tensor2d } from '@tensorflow/tfjs-core';
import { MathBackendCPU } from '@tensorflow/tfjs-backend-cpu';
import { rmsNormRows } from './elementwise-cpu.js';
import { RMS_NORM_KERNEL, TINYSERVE_KERNELS, registerTinyServeKernels, runTinyServeKernel } from './register-kernels.js';

describe('kernel registration', () => {
  it('registers every TinyServe kernel by name for a backend', () => {
    registerTinyServeKernels('cpu');
    for (const name of TINYSERVE_KERNELS) expect(getKernel(name, 'cpu')).toBeDefined();
    expect(TINYSERVE_KERNELS).toEqual(
      expect.arrayContaining(['TinyServePagedAttention', 'TinyServeKvAppend', 'TinyServePageScore', 'TinyServeSparsePagedAttention', 'TinyServeFusedSparseAttention']),
    );
  });

  it('gives a backend that never registered them the generic versions on first use', async () => {
    const name = 'tinyserve-test-backend';
    registerBackend(name, () => {
      const backend = new MathBackendCPU();
      // Mute tfjs's "running in Node.js" banner (see tfjs-backend.ts).
      (backend as unknown as { firstUse: boolean }).firstUse = false;
      return backend;
    });
    registerTinyServeKernels('cpu');
    await setBackend('cpu');
    const previous = getBackend();
    try {
      await setBackend(name);
      expect(getKernel(RMS_NORM_KERNEL, name)).toBeUndefined();
      const x = Float32Array.from([1, -2, 3, 0.5, 4, -1]);
      const w = Float32Array.from([1, 0.5, 2]);
      const out = runTinyServeKernel(RMS_NORM_KERNEL, { x: tensor2d(x, [2, 3]), weight: tensor1d(w) }, { eps: 1e-6 });
      const expected = new Float32Array(6);
      rmsNormRows(x, w, 1e-6, 3, expected);
      expect(Array.from(out.dataSync())).toEqual(Array.from(expected));
      expect(getKernel(RMS_NORM_KERNEL, name)).toBeDefined();
    } finally {
      if (previous) await setBackend(previous);
      removeBackend(name);
    }
  });
});
