import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BackendUnavailableError } from '@tinyserve/core';
import { CUDA_ADDON_ABI_VERSION } from './addon-types.js';
import type { CudaAddon, CudaDeviceInfo } from './addon-types.js';

const ADDON_FILE = 'tinyserve_cuda.node';
const BUILD_HINT = 'build it with `node packages/executor/native/build.mjs` (needs nvcc)';

/**
 * Where the addon is looked for: `$TINYSERVE_CUDA_ADDON`, then the package's build folder
 * seen from the sources (`src/cuda`) and from the bundle (`dist`).
 */
export function cudaAddonCandidates(env: NodeJS.ProcessEnv = process.env): string[] {
  const out: string[] = [];
  if (env.TINYSERVE_CUDA_ADDON) out.push(env.TINYSERVE_CUDA_ADDON);
  for (const rel of [`../../build/cuda/${ADDON_FILE}`, `../build/cuda/${ADDON_FILE}`]) {
    out.push(fileURLToPath(new URL(rel, import.meta.url)));
  }
  return out;
}

export interface LoadCudaAddonOptions {
  /** The `.node` file; default: the first of {@link cudaAddonCandidates} that exists. */
  path?: string;
  /** Milliseconds the child-process test load may take (default 60 s: first CUDA init can be slow). */
  timeoutMs?: number;
}

export interface LoadedCudaAddon {
  addon: CudaAddon;
  path: string;
  device: CudaDeviceInfo;
}

const loaded = new Map<string, LoadedCudaAddon>();
const failed = new Map<string, BackendUnavailableError>();

/**
 * Loads the CUDA addon. The binary is first loaded in a child process that initialises the
 * GPU: a missing driver, no GPU, an ABI mismatch or a crash there (which would take this
 * process down) becomes a `BackendUnavailableError` saying why; only then is it loaded here.
 * Results are cached per path, failures included.
 */
export function loadCudaAddon(options: LoadCudaAddonOptions = {}): LoadedCudaAddon {
  const found = options.path ?? cudaAddonCandidates().find((p) => existsSync(p));
  if (found === undefined) {
    throw new BackendUnavailableError(`the CUDA addon is not built (looked for ${cudaAddonCandidates().join(', ')}): ${BUILD_HINT}`);
  }
  const path = resolve(found);
  const hit = loaded.get(path);
  if (hit) return hit;
  const miss = failed.get(path);
  if (miss) throw miss;
  try {
    const device = testLoad(path, options.timeoutMs ?? 60_000);
    const addon = createRequire(import.meta.url)(path) as CudaAddon;
    const result = { addon, path, device: addon.deviceInfo() ?? device };
    loaded.set(path, result);
    return result;
  } catch (cause) {
    const err =
      cause instanceof BackendUnavailableError
        ? cause
        : new BackendUnavailableError(`the CUDA addon at ${path} could not be loaded: ${String(cause)}`, { cause });
    failed.set(path, err);
    throw err;
  }
}

const PROBE = `
let addon;
try {
  addon = require(process.argv[1]);
} catch (e) {
  process.stderr.write('cannot load the binary: ' + (e && e.message ? e.message.split('\\n')[0] : String(e)));
  process.exit(2);
}
if (addon.abiVersion !== Number(process.argv[2])) {
  process.stderr.write('ABI version ' + addon.abiVersion + ', expected ' + process.argv[2] + ': rebuild the addon');
  process.exit(3);
}
try {
  process.stdout.write(JSON.stringify(addon.deviceInfo()));
} catch (e) {
  process.stderr.write(String(e && e.message ? e.message : e));
  process.exit(4);
}
`;

function testLoad(path: string, timeoutMs: number): CudaDeviceInfo {
  if (!existsSync(path)) throw new BackendUnavailableError(`the CUDA addon ${path} does not exist: ${BUILD_HINT}`);
  const r = spawnSync(process.execPath, ['-e', PROBE, path, String(CUDA_ADDON_ABI_VERSION)], {
    encoding: 'utf8',
    timeout: timeoutMs,
    env: process.env,
  });
  const why = (r.stderr || '').trim().slice(0, 500);
  if (r.error) throw new BackendUnavailableError(`test load of the CUDA addon ${path} failed: ${r.error.message}`, { cause: r.error });
  if (r.signal) throw new BackendUnavailableError(`test load of the CUDA addon ${path} crashed (${r.signal})${why ? `: ${why}` : ''}`);
  if (r.status !== 0) {
    const what = r.status === 4 ? 'found no usable GPU' : r.status === 3 ? 'is out of date' : 'failed';
    throw new BackendUnavailableError(`test load of the CUDA addon ${path} ${what}: ${why || `exit code ${r.status}`}`);
  }
  return JSON.parse(r.stdout) as CudaDeviceInfo;
}

/** Forgets cached load results (tests). */
export function resetCudaAddonCache(): void {
  loaded.clear();
  failed.clear();
}
