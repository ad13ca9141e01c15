import { Registry } from '@tinyserve/core';
import type { Executor, ExecutorFactory, ExecutorOptions } from '@tinyserve/core';
import { TfjsExecutor } from './tfjs-executor.js';
// cuda
import { CudaExecutor } from './cuda/cuda-executor.js';

/** Executor backends by name. `wasm` (the default) and `cpu` run the tfjs graph; later issues add `cuda`. */
export const executorBackends = new Registry<ExecutorFactory>('executor backend');
executorBackends.register('wasm', (options) => TfjsExecutor.create('wasm', options));
executorBackends.register('cpu', (options) => TfjsExecutor.create('cpu', options));
// cuda: rejects with a BackendUnavailableError when the addon is not built, cannot load, or finds no GPU.
executorBackends.register('cuda', (options) => CudaExecutor.create(options));

/**
 * Creates an executor on the named backend. An unknown name rejects with a `RegistryError`
 * that lists the registered backends.
 */
export async function createExecutor(backendName: string, options: ExecutorOptions): Promise<Executor> {
  return executorBackends.get(backendName)(options);
}
