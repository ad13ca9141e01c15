import { RequestValidationError, TinyServeError } from '@tinyserve/core';

/** OpenAI's error body: `{ error: { message, type, param, code } }`. */
export interface OpenAiErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

export interface HttpErrorResult {
  status: number;
  body: OpenAiErrorBody;
  headers?: Record<string, string>;
  /** True for errors the server did not expect: they are logged, and their text never reaches the client. */
  internal: boolean;
}

/** `maxTokens` -> `max_tokens`; `messages[0].toolCalls` -> `messages[0].tool_calls`. Already snake_case stays. */
export function camelToSnake(name: string): string {
  return name.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase();
}

export function errorBody(message: string, type: string, param: string | null = null, code: string | null = null): OpenAiErrorBody {
  return { error: { message, type, param, code } };
}

const STATUS_OF_CODE: Partial<Record<string, { status: number; type: string }>> = {
  invalid_request: { status: 400, type: 'invalid_request_error' },
  invalid_config: { status: 400, type: 'invalid_request_error' },
  tokenizer_error: { status: 400, type: 'invalid_request_error' },
  not_found: { status: 404, type: 'invalid_request_error' },
  overloaded: { status: 429, type: 'overloaded_error' },
  // The client went away; nobody reads this status, but logs show what happened (nginx's 499).
  cancelled: { status: 499, type: 'cancelled' },
  out_of_pages: { status: 503, type: 'overloaded_error' },
  backend_unavailable: { status: 503, type: 'server_error' },
  plugin_error: { status: 500, type: 'server_error' },
};

interface FastifyLikeError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
}

/**
 * Maps anything thrown while serving a request to an OpenAI-shaped error. TinyServe errors keep
 * their message (they are written for users); any other error becomes a generic 500.
 */
export function toHttpError(error: unknown): HttpErrorResult {
  if (error instanceof RequestValidationError) {
    const param = camelToSnake(error.field);
    const prefix = `${error.field}: `;
    const message = error.message.startsWith(prefix) ? `${param}: ${error.message.slice(prefix.length)}` : error.message;
    return { status: 400, body: errorBody(message, 'invalid_request_error', param, 'invalid_value'), internal: false };
  }
  if (error instanceof TinyServeError) {
    const mapped = STATUS_OF_CODE[error.code];
    if (mapped) {
      const headers = mapped.status === 429 || mapped.status === 503 ? { 'retry-after': '1' } : undefined;
      const param = 'field' in error && typeof error.field === 'string' ? camelToSnake(error.field) : null;
      return { status: mapped.status, body: errorBody(error.message, mapped.type, param, error.code), headers, internal: false };
    }
    return { status: 500, body: errorBody('internal server error', 'server_error', null, 'internal_error'), internal: true };
  }
  const e = (error ?? {}) as FastifyLikeError;
  const code = typeof e.code === 'string' ? e.code : '';
  const status = typeof e.statusCode === 'number' ? e.statusCode : 500;
  switch (code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { status: 413, body: errorBody('request body is larger than the server accepts', 'invalid_request_error', null, 'request_too_large'), internal: false };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return {
        status: 415,
        body: errorBody("unsupported content type: send the body as 'application/json'", 'invalid_request_error', null, 'unsupported_media_type'),
        internal: false,
      };
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return { status: 400, body: errorBody('request body is not valid JSON', 'invalid_request_error', null, 'invalid_json'), internal: false };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { status: 400, body: errorBody('request body is empty: expected a JSON object', 'invalid_request_error', null, 'invalid_json'), internal: false };
  }
  if (error instanceof SyntaxError && status === 400) {
    return { status: 400, body: errorBody(`request body is not valid JSON: ${error.message}`, 'invalid_request_error', null, 'invalid_json'), internal: false };
  }
  if (status >= 400 && status < 500 && typeof e.message === 'string') {
    // Fastify's own client errors (bad content length, prototype poisoning, ...) carry safe messages.
    return { status, body: errorBody(e.message, 'invalid_request_error', null, code ? code.toLowerCase() : null), internal: false };
  }
  return { status: 500, body: errorBody('internal server error', 'server_error', null, 'internal_error'), internal: true };
}
