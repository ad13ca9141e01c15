import { ConfigError } from '@tinyserve/core';
import type { ExecutorOptions } from '@tinyserve/core';
import { DecodeSelector } from './decode-selection.js';
import type { SelectionOptions } from './decode-selection.js';

/**
 * The checks every executor makes of its options, whatever the backend: the model is given,
 * the sizes are positive integers, and the selection (policy object built, so its own errors
 * surface here) is valid. Backend-specific checks (KV formats, head dims) come after. Throws a
 * `ConfigError` naming the field; returns the validated selection.
 */
export function checkExecutorOptions(options: ExecutorOptions, selectionOptions: SelectionOptions, backendChecks: () => void = () => {}): DecodeSelector {
  if (options === null || typeof options !== 'object' || options.model === undefined) {
    throw new ConfigError('model', 'ExecutorOptions.model is required');
  }
  for (const field of ['pageSize', 'numKvPages', 'attentionChunkSize'] as const) {
    const v: unknown = options[field];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new ConfigError(field, `must be a positive integer, got ${String(v)}`);
  }
  backendChecks();
  return new DecodeSelector(options.selection, options.pageSize, selectionOptions);
}
