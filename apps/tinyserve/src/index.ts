export { runCli, MAIN_HELP } from './cli.js';
export { collectConfig, camelToKebab, envName, parseConfigValue } from './config-sources.js';
export type { CommandIo } from './io.js';
