export { TinyServe } from './tinyserve.js';
export type { ModelInfo, TinyServeLogger, TinyServeOptions, TinyServeStats } from './tinyserve.js';
