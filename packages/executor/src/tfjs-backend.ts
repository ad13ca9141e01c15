import { findBackend, getBackend, setBackend } from '@tensorflow/tfjs-core';
import { BackendUnavailableError } from '@tinyserve/core';
import { registerTinyServeKernels } from './kernels/register-kernels.js';

/** The tfjs backends the executor runs on, each loaded on first use. */
export const TFJS_BACKENDS = ['wasm', 'cpu'] as const;
export type TfjsBackendName = (typeof TFJS_BACKENDS)[number];

const loaders: Record<TfjsBackendName, () => Promise<unknown>> = {
  // In Node the wasm backend reads its .wasm binary from its own dist folder (no fetch).
  wasm: () => import('@tensorflow/tfjs-backend-wasm'),
  cpu: () => import('@tensorflow/tfjs-backend-cpu'),
};

const ready = new Map<TfjsBackendName, Promise<void>>();

/**
 * Loads and initialises a tfjs backend once, registers TinyServe's kernels for it and makes
 * it tfjs's active backend.
 */
export function initTfjsBackend(name: TfjsBackendName): Promise<void> {
  let pending = ready.get(name);
  if (pending === undefined) {
    pending = initOnce(name);
    ready.set(name, pending);
    // A failed start may be retried (e.g. after the caller fixes the install).
    pending.catch(() => ready.delete(name));
  }
  return pending.then(() => activateTfjsBackend(name));
}

async function initOnce(name: TfjsBackendName): Promise<void> {
  try {
    await loaders[name]();
  } catch (cause) {
    throw new BackendUnavailableError(`tfjs backend '${name}' could not be loaded: ${String(cause)}`, { cause });
  }
  let ok: boolean;
  try {
    ok = await setBackend(name);
  } catch (cause) {
    throw new BackendUnavailableError(`tfjs backend '${name}' failed to initialise: ${String(cause)}`, { cause });
  }
  if (!ok) throw new BackendUnavailableError(`tfjs backend '${name}' failed to initialise`);
  silenceNodeBanner(name);
  registerTinyServeKernels(name);
}

let queue: Promise<unknown> = Promise.resolve();

/**
 * Runs `fn` after every earlier call has settled. tfjs has one global active backend: an
 * executor switches to its own and then runs its ops synchronously; serialising the
 * switch-and-run sections keeps another executor's switch from landing in between (which
 * would make tfjs migrate weights across backends).
 */
export function runExclusive<T>(fn: () => Promise<T>): Promise<T> {
  const run = queue.then(fn, fn);
  queue = run.catch(() => undefined);
  return run;
}

/**
 * Makes `name` tfjs's active backend. tfjs has one global active backend, so every executor
 * switches to its own before running ops; the switch is skipped when already active.
 */
export async function activateTfjsBackend(name: string): Promise<void> {
  if (getBackend() !== name) await setBackend(name);
}

/**
 * tfjs's cpu backend prints a "looks like you are running TensorFlow.js in Node.js" banner
 * on its first tensor write. Clearing that one first-use mark silences exactly this banner;
 * the `PROD` flag would also silence every other tfjs warning process-wide.
 */
function silenceNodeBanner(name: TfjsBackendName): void {
  if (name !== 'cpu') return;
  const backend = findBackend('cpu') as { firstUse?: boolean } | null;
  if (backend !== null && backend.firstUse === true) backend.firstUse = false;
}
