import type { StreamEvent, TinyServeRequest, Tokenizer } from '@tinyserve/core';

/** What the HTTP layer reads about the served model (the facade's `ModelInfo` fits it). */
export interface BackendModelInfo {
  name: string;
  maxModelLen?: number;
  architecture?: string;
  executor?: string;
  numKvPages?: number;
  kvBytesPerPage?: number;
  parameters?: number;
}

/** What the HTTP layer needs of the loaded model: tokens to text, and the chat template. */
export interface BackendLoadedModel {
  tokenizer: Tokenizer;
  /** The Jinja chat template, or null when the model has none (the fallback is used). */
  chatTemplate: string | null;
  /** tokenizer_config.json as parsed: the special tokens passed to the template. */
  tokenizerConfig: Record<string, unknown>;
}

/** Session management, as the facade's `scheduler` getter. Results may be plain or promised. */
export interface BackendSessions {
  listSessions(): readonly unknown[] | Promise<readonly unknown[]>;
  /** Info for one session; null/undefined (or a NotFoundError) for an unknown id. */
  getSessionInfo(id: string): unknown;
  /** Closes a session; `false` (or a NotFoundError) for an unknown id. */
  closeSession(id: string): unknown;
}

/**
 * Statistics as `TinyServe.getStats()` returns them (camelCase). The HTTP layer passes them
 * through as snake_case JSON and reads its gauges from them (see `readServingGauges`).
 */
export interface BackendStats {
  totalRequests?: number;
  completedRequests?: number;
  failedRequests?: number;
  kvHitRate?: number;
  engine?: object | null;
  plugins?: object;
}

/**
 * The part of the `TinyServe` facade the HTTP server uses. Kept narrow so that the server can
 * be tested against a small in-memory backend and stays independent of the engine internals.
 */
export interface ServingBackend {
  /** Token events, then one `done` event. Validation and `overloaded` errors reject the first `next()`. */
  serveStream(request: TinyServeRequest): AsyncIterable<StreamEvent>;
  getStats(): BackendStats;
  readonly scheduler: BackendSessions;
  /** Stops accepting requests and resolves once running ones have finished. */
  drain(): Promise<void>;
  close(): Promise<void>;
  readonly modelInfo: BackendModelInfo | null;
  readonly loadedModel: BackendLoadedModel | null;
}
