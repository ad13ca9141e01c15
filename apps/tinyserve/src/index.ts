export { runCli, mainHelp } from './cli.js';
export { collectConfig, camelToKebab, envName, parseConfigValue } from './config-sources.js';
export type { CommandIo } from './io.js';
