/**
 * Every error TinyServe throws extends {@link TinyServeError} and carries a stable `code`,
 * so callers (and the HTTP layer) can branch on it without parsing messages.
 */
export type TinyServeErrorCode =
  | 'invalid_config'
  | 'invalid_request'
  | 'model_load_error'
  | 'corrupt_model_file'
  | 'unsupported_model'
  | 'tokenizer_error'
  | 'backend_unavailable'
  | 'out_of_pages'
  | 'overloaded'
  | 'cancelled'
  | 'not_found'
  | 'plugin_error'
  | 'registry_error'
  | 'internal_error';

export class TinyServeError extends Error {
  readonly code: TinyServeErrorCode;
  constructor(code: TinyServeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A configuration value is missing, of the wrong type or out of range. `field` names it. */
export class ConfigError extends TinyServeError {
  readonly field: string;
  constructor(field: string, message: string) {
    super('invalid_config', `${field}: ${message}`);
    this.field = field;
  }
}

/** A request (library or HTTP) is malformed. `field` names the offending field. */
export class RequestValidationError extends TinyServeError {
  readonly field: string;
  constructor(field: string, message: string) {
    super('invalid_request', `${field}: ${message}`);
    this.field = field;
  }
}

export class ModelLoadError extends TinyServeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('model_load_error', message, options);
  }
}

/** A model file (safetensors, index, config) is truncated or inconsistent. */
export class CorruptModelFileError extends TinyServeError {
  readonly file: string;
  constructor(file: string, message: string) {
    super('corrupt_model_file', `${file}: ${message}`);
    this.file = file;
  }
}

export class UnsupportedModelError extends TinyServeError {
  constructor(message: string) {
    super('unsupported_model', message);
  }
}

export class TokenizerError extends TinyServeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('tokenizer_error', message, options);
  }
}

export class BackendUnavailableError extends TinyServeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('backend_unavailable', message, options);
  }
}

/** The KV block pool has no free page left for this allocation. */
export class OutOfPagesError extends TinyServeError {
  constructor(message: string) {
    super('out_of_pages', message);
  }
}

export class OverloadedError extends TinyServeError {
  constructor(message: string) {
    super('overloaded', message);
  }
}

export class CancelledError extends TinyServeError {
  constructor(message = 'request was cancelled') {
    super('cancelled', message);
  }
}

export class NotFoundError extends TinyServeError {
  constructor(message: string) {
    super('not_found', message);
  }
}

export class PluginError extends TinyServeError {
  readonly plugin: string;
  constructor(plugin: string, message: string, options?: { cause?: unknown }) {
    super('plugin_error', `plugin '${plugin}': ${message}`, options);
    this.plugin = plugin;
  }
}

/** A name was looked up in a registry (backends, policies, plugins) and is not there, or twice. */
export class RegistryError extends TinyServeError {
  constructor(message: string) {
    super('registry_error', message);
  }
}
