import { describe, expect, it } from 'vitest';
import { loadCudaAddon } from './addon-loader.js';
import { checkBackendOps, checkExecutors, checkPolicies } from './backend-checks.js';
import { defaultScenarios, runGpuChecks } from './gpu-checks.js';

/** The kernels and the backend on a real GPU; everywhere else this suite is skipped. */
function gpu(): { ok: true; addon: ReturnType<typeof loadCudaAddon>['addon'] } | { ok: false; reason: string } {
  try {
    return { ok: true, addon: loadCudaAddon().addon };
  } catch (err) {
    return { ok: false, reason: err instanceof Error ? err.message : String(err) };
  }
}

const probe = gpu();
if (!probe.ok) console.warn(`skipping the CUDA GPU tests: ${probe.reason}`);

describe.skipIf(!probe.ok)('CUDA kernels and backend on the GPU', () => {
  const addon = probe.ok ? probe.addon : (null as never);

  it('match the TypeScript references (append, metadata, dense, fused sparse, page scores, page lists, prefill)', { timeout: 120_000 }, () => {
    const results = runGpuChecks(addon, defaultScenarios());
    expect(results.filter((r) => !r.ok)).toEqual([]);
  });

  it('run every op of the model graph like the cpu backend', async () => {
    expect((await checkBackendOps(addon)).filter((r) => !r.ok)).toEqual([]);
  });

  it('run the executors like the cpu executor', { timeout: 120_000 }, async () => {
    expect((await checkExecutors()).filter((r) => !r.ok)).toEqual([]);
  });

  it('run every selection policy like the cpu executor, fused and policy route alike', { timeout: 180_000 }, async () => {
    expect((await checkPolicies(addon)).filter((r) => !r.ok)).toEqual([]);
  });
});
