import type { TinyServeConfig } from '@tinyserve/core';
import { EntropyEarlyExitPlugin } from './entropy-early-exit.js';
import type { EntropyEarlyExitOptions } from './entropy-early-exit.js';
import { PluginManager } from './plugin-manager.js';
import { TokenPruningPlugin } from './token-pruning.js';
import type { TokenPruningOptions } from './token-pruning.js';

type PluginConfig = Pick<
  TinyServeConfig,
  | 'enableEntropyEarlyExit'
  | 'entropyThreshold'
  | 'minTokensBeforeExit'
  | 'entropySource'
  | 'enableTokenPruning'
  | 'pruningRatio'
  | 'minTokensAfterPruning'
  | 'pluginErrorMode'
>;

/** Knobs of the built-ins that the config does not carry. */
export interface CreatePluginManagerOptions {
  earlyExit?: Pick<EntropyEarlyExitOptions, 'consecutiveSteps' | 'order'>;
  pruning?: Pick<TokenPruningOptions, 'sinkTokens' | 'recentWindow' | 'pruneEvery' | 'order'>;
}

/**
 * A manager with both built-ins registered ('entropy-early-exit', 'token-pruning'), each
 * enabled per the config (`enableEntropyEarlyExit`, `enableTokenPruning`) and switchable at
 * run time with `enable`/`disable`; `pluginErrorMode` sets the error mode.
 */
export function createPluginManager(config: PluginConfig, options: CreatePluginManagerOptions = {}): PluginManager {
  const manager = new PluginManager({ errorMode: config.pluginErrorMode });
  manager.register(
    new EntropyEarlyExitPlugin({
      entropyThreshold: config.entropyThreshold,
      minTokensBeforeExit: config.minTokensBeforeExit,
      entropySource: config.entropySource,
      ...options.earlyExit,
    }),
    { enabled: config.enableEntropyEarlyExit },
  );
  manager.register(
    new TokenPruningPlugin({
      pruningRatio: config.pruningRatio,
      minTokensAfterPruning: config.minTokensAfterPruning,
      ...options.pruning,
    }),
    { enabled: config.enableTokenPruning },
  );
  return manager;
}
