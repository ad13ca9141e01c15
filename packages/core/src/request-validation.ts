import { RequestValidationError } from './errors.js';
import type { Priority, TinyServeRequest } from './request-types.js';

/** A request with every sampling field resolved and checked. */
export interface NormalizedRequest {
  prompt: string | number[];
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number | undefined;
  stop: string[];
  logprobs: boolean;
  echo: boolean;
  ignoreEos: boolean;
  addSpecialTokens: boolean;
  sessionId: string | undefined;
  priority: Priority;
  signal: AbortSignal | undefined;
  requestId: string | undefined;
}

export interface RequestDefaults {
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number | null;
}

/** The seed's example request values (max_tokens=100, temperature=0.7). */
export const DEFAULT_REQUEST: Readonly<RequestDefaults> = Object.freeze({
  maxTokens: 100,
  temperature: 0.7,
  topP: 1,
  topK: 0,
  seed: null,
});

const KNOWN_FIELDS = new Set([
  'prompt',
  'maxTokens',
  'temperature',
  'topP',
  'topK',
  'seed',
  'stop',
  'logprobs',
  'echo',
  'ignoreEos',
  'addSpecialTokens',
  'sessionId',
  'priority',
  'signal',
  'requestId',
]);

const MAX_STOP_STRINGS = 16;

function num(field: string, value: unknown, fallback: number, lo: number, hi: number, integer: boolean, loExclusive = false): number {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    throw new RequestValidationError(field, `must be ${integer ? 'an integer' : 'a number'}, got ${JSON.stringify(value)}`);
  }
  if ((loExclusive ? value <= lo : value < lo) || value > hi) {
    throw new RequestValidationError(field, `must be in ${loExclusive ? '(' : '['}${lo}, ${hi}], got ${value}`);
  }
  return value;
}

function bool(field: string, value: unknown, fallback: boolean): boolean {
  if (value === undefined || value === null) return fallback;
  if (typeof value !== 'boolean') throw new RequestValidationError(field, `must be true or false, got ${JSON.stringify(value)}`);
  return value;
}

/** Checks a library request and fills in defaults; errors name the offending field. */
export function normalizeRequest(request: TinyServeRequest, defaults: RequestDefaults = DEFAULT_REQUEST): NormalizedRequest {
  if (request === null || typeof request !== 'object' || Array.isArray(request)) {
    throw new RequestValidationError('request', 'must be an object');
  }
  for (const key of Object.keys(request)) {
    if (!KNOWN_FIELDS.has(key)) throw new RequestValidationError(key, 'is not a request field');
  }
  const { prompt } = request;
  if (typeof prompt === 'string') {
    if (prompt.length === 0) throw new RequestValidationError('prompt', 'must not be empty');
  } else if (Array.isArray(prompt)) {
    if (prompt.length === 0) throw new RequestValidationError('prompt', 'must not be an empty token list');
    prompt.forEach((id, i) => {
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
        throw new RequestValidationError(`prompt[${i}]`, `must be a non-negative integer token id, got ${JSON.stringify(id)}`);
      }
    });
  } else {
    throw new RequestValidationError('prompt', 'must be a string or an array of token ids');
  }
  let stop: string[] = [];
  if (request.stop !== undefined && request.stop !== null) {
    stop = typeof request.stop === 'string' ? [request.stop] : (request.stop as unknown as string[]);
    if (!Array.isArray(stop)) throw new RequestValidationError('stop', 'must be a string or an array of strings');
    if (stop.length > MAX_STOP_STRINGS) throw new RequestValidationError('stop', `has ${stop.length} entries; at most ${MAX_STOP_STRINGS}`);
    stop.forEach((s, i) => {
      if (typeof s !== 'string' || s.length === 0) throw new RequestValidationError(`stop[${i}]`, 'must be a non-empty string');
    });
  }
  const priority = request.priority ?? 'normal';
  if (priority !== 'high' && priority !== 'normal' && priority !== 'low') {
    throw new RequestValidationError('priority', `must be 'high', 'normal' or 'low', got ${JSON.stringify(priority)}`);
  }
  if (request.sessionId !== undefined && (typeof request.sessionId !== 'string' || !/^[\w.:-]{1,128}$/.test(request.sessionId))) {
    throw new RequestValidationError('sessionId', 'must be 1-128 characters of letters, digits, _ . : -');
  }
  if (request.requestId !== undefined && (typeof request.requestId !== 'string' || request.requestId.length === 0 || request.requestId.length > 256)) {
    throw new RequestValidationError('requestId', 'must be a non-empty string of at most 256 characters');
  }
  if (request.signal !== undefined && !(request.signal instanceof AbortSignal)) {
    throw new RequestValidationError('signal', 'must be an AbortSignal');
  }
  const seed = request.seed ?? defaults.seed ?? undefined;
  return {
    prompt,
    maxTokens: num('maxTokens', request.maxTokens, defaults.maxTokens, 0, 2 ** 31 - 1, true),
    temperature: num('temperature', request.temperature, defaults.temperature, 0, 100, false),
    topP: num('topP', request.topP, defaults.topP, 0, 1, false, true),
    topK: num('topK', request.topK, defaults.topK, 0, 2 ** 31 - 1, true),
    seed: seed === undefined ? undefined : num('seed', seed, 0, 0, 2 ** 53 - 1, true),
    stop,
    logprobs: bool('logprobs', request.logprobs, false),
    echo: bool('echo', request.echo, false),
    ignoreEos: bool('ignoreEos', request.ignoreEos, false),
    addSpecialTokens: bool('addSpecialTokens', request.addSpecialTokens, true),
    sessionId: request.sessionId,
    priority,
    signal: request.signal,
    requestId: request.requestId,
  };
}
