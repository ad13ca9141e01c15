import { RequestValidationError } from '@tinyserve/core';
import type { Priority, TinyServeRequest } from '@tinyserve/core';

/** Most choices one request may ask for (prompts x n): each is a full generation. */
export const MAX_CHOICES = 64;
export const MAX_N = 16;

/** Sampling and serving fields shared by completions and chat, already mapped to the library names. */
export type BaseRequest = Omit<TinyServeRequest, 'prompt' | 'signal' | 'requestId' | 'echo' | 'logprobs'>;

export interface ParsedCommon {
  model: string | undefined;
  n: number;
  stream: boolean;
  includeUsage: boolean;
  base: BaseRequest;
}

export interface ParsedCompletionRequest extends ParsedCommon {
  prompts: (string | number[])[];
  echo: boolean;
  /** OpenAI's integer `logprobs`; null when not asked for. Alternatives beyond the chosen token are not returned. */
  logprobs: number | null;
}

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
  name?: string;
}

export interface ParsedChatRequest extends ParsedCommon {
  messages: ChatMessage[];
  logprobs: boolean;
  topLogprobs: number;
}

type Body = Record<string, unknown>;

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return 'an object';
  return JSON.stringify(value);
}

function isPresent(value: unknown): boolean {
  return value !== undefined && value !== null;
}

function expectBool(field: string, value: unknown): boolean {
  if (!isPresent(value)) return false;
  if (typeof value !== 'boolean') throw new RequestValidationError(field, `must be true or false, got ${describe(value)}`);
  return value;
}

function expectInt(field: string, value: unknown, lo: number, hi: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) throw new RequestValidationError(field, `must be an integer, got ${describe(value)}`);
  if (value < lo || value > hi) throw new RequestValidationError(field, `must be in [${lo}, ${hi}], got ${value}`);
  return value;
}

function expectString(field: string, value: unknown): string {
  if (typeof value !== 'string') throw new RequestValidationError(field, `must be a string, got ${describe(value)}`);
  return value;
}

function checkBody(body: unknown): Body {
  if (body === undefined) throw new RequestValidationError('body', "is missing: send a JSON object with content-type 'application/json'");
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new RequestValidationError('body', `must be a JSON object, got ${describe(body)}`);
  }
  return body as Body;
}

function checkKnown(body: Body, known: ReadonlySet<string>): void {
  for (const key of Object.keys(body)) {
    if (!known.has(key)) throw new RequestValidationError(key, 'is not a recognized request field');
  }
}

/** OpenAI fields TinyServe does not implement: accepted only at the value that means "off". */
function checkInert(body: Body): void {
  for (const field of ['presence_penalty', 'frequency_penalty'] as const) {
    const v = body[field];
    if (isPresent(v) && v !== 0) throw new RequestValidationError(field, `is not supported (only 0), got ${describe(v)}`);
  }
  const bias = body.logit_bias;
  if (isPresent(bias) && (typeof bias !== 'object' || Array.isArray(bias) || Object.keys(bias as object).length > 0)) {
    throw new RequestValidationError('logit_bias', 'is not supported (only an empty object)');
  }
  if (isPresent(body.user)) expectString('user', body.user);
}

const COMMON_FIELDS = [
  'model',
  'max_tokens',
  'temperature',
  'top_p',
  'top_k',
  'n',
  'stream',
  'stream_options',
  'stop',
  'seed',
  'user',
  'presence_penalty',
  'frequency_penalty',
  'logit_bias',
  'ignore_eos',
  'session_id',
  'priority',
];

const COMPLETION_FIELDS = new Set([...COMMON_FIELDS, 'prompt', 'echo', 'logprobs', 'suffix', 'best_of']);
const CHAT_FIELDS = new Set([
  ...COMMON_FIELDS,
  'messages',
  'logprobs',
  'top_logprobs',
  'max_completion_tokens',
  'response_format',
  'tools',
  'tool_choice',
  'parallel_tool_calls',
  'store',
  'metadata',
]);

function parseCommon(body: Body, maxTokensField: 'max_tokens' | 'max_completion_tokens'): ParsedCommon {
  checkInert(body);
  let model: string | undefined;
  if (isPresent(body.model)) model = expectString('model', body.model);
  const n = isPresent(body.n) ? expectInt('n', body.n, 1, MAX_N) : 1;
  const stream = expectBool('stream', body.stream);
  let includeUsage = false;
  if (isPresent(body.stream_options)) {
    const so = body.stream_options;
    if (!stream) throw new RequestValidationError('stream_options', 'is only allowed when stream is true');
    if (typeof so !== 'object' || Array.isArray(so)) throw new RequestValidationError('stream_options', `must be an object, got ${describe(so)}`);
    for (const key of Object.keys(so as object)) {
      if (key !== 'include_usage') throw new RequestValidationError(`stream_options.${key}`, 'is not a recognized field');
    }
    includeUsage = expectBool('stream_options.include_usage', (so as Body).include_usage);
  }
  // Types and ranges of the sampling fields are checked by core's normalizeRequest; its errors
  // name the camelCase field, which the error mapper turns back into the snake_case name.
  const base: BaseRequest = {};
  const maxTokens = body[maxTokensField] ?? body.max_tokens;
  if (isPresent(maxTokens)) base.maxTokens = maxTokens as number;
  if (isPresent(body.temperature)) base.temperature = body.temperature as number;
  if (isPresent(body.top_p)) base.topP = body.top_p as number;
  if (isPresent(body.top_k)) base.topK = body.top_k as number;
  if (isPresent(body.seed)) base.seed = body.seed as number;
  if (isPresent(body.stop)) base.stop = body.stop as string | string[];
  if (isPresent(body.ignore_eos)) base.ignoreEos = body.ignore_eos as boolean;
  if (isPresent(body.session_id)) base.sessionId = body.session_id as string;
  if (isPresent(body.priority)) base.priority = body.priority as Priority;
  return { model, n, stream, includeUsage, base };
}

/** Parses and checks a `POST /v1/completions` body. Errors name the offending snake_case field. */
export function parseCompletionRequest(raw: unknown): ParsedCompletionRequest {
  const body = checkBody(raw);
  checkKnown(body, COMPLETION_FIELDS);
  if (!('prompt' in body) || body.prompt === undefined) throw new RequestValidationError('prompt', 'is required');
  const common = parseCommon(body, 'max_tokens');
  if (isPresent(body.suffix)) throw new RequestValidationError('suffix', 'is not supported');
  if (isPresent(body.best_of) && body.best_of !== common.n) throw new RequestValidationError('best_of', 'is not supported (only equal to n)');
  const echo = expectBool('echo', body.echo);
  const logprobs = isPresent(body.logprobs) ? expectInt('logprobs', body.logprobs, 0, 5) : null;
  if (common.stream && echo && logprobs !== null) {
    throw new RequestValidationError('echo', 'cannot be combined with logprobs when streaming (prompt logprobs arrive only with the finished response)');
  }
  const prompt = body.prompt;
  let prompts: (string | number[])[];
  // One prompt (text or token ids) or a batch of them (texts or token-id lists), as OpenAI accepts.
  if (typeof prompt === 'string' || (Array.isArray(prompt) && prompt.length > 0 && typeof prompt[0] === 'number')) {
    prompts = [prompt as string | number[]];
  } else if (Array.isArray(prompt) && prompt.length > 0) {
    prompts = prompt.map((p, i) => {
      if (typeof p !== 'string' && !Array.isArray(p)) throw new RequestValidationError(`prompt[${i}]`, `must be a string or an array of token ids, got ${describe(p)}`);
      return p as string | number[];
    });
  } else if (Array.isArray(prompt)) {
    throw new RequestValidationError('prompt', 'must not be empty');
  } else {
    throw new RequestValidationError('prompt', `must be a string, an array of token ids or an array of those, got ${describe(prompt)}`);
  }
  if (prompts.length * common.n > MAX_CHOICES) {
    throw new RequestValidationError('n', `${prompts.length} prompts x n=${common.n} asks for ${prompts.length * common.n} generations; at most ${MAX_CHOICES}`);
  }
  return { ...common, prompts, echo, logprobs };
}

function parseContent(field: string, content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part, j) => {
        const f = `${field}[${j}]`;
        if (part === null || typeof part !== 'object' || Array.isArray(part)) throw new RequestValidationError(f, `must be an object, got ${describe(part)}`);
        const p = part as Body;
        if (p.type !== 'text') throw new RequestValidationError(`${f}.type`, `only 'text' content parts are supported, got ${describe(p.type)}`);
        return expectString(`${f}.text`, p.text);
      })
      .join('');
  }
  throw new RequestValidationError(field, `must be a string or an array of text parts, got ${describe(content)}`);
}

function parseMessages(value: unknown): ChatMessage[] {
  if (value === undefined) throw new RequestValidationError('messages', 'is required');
  if (!Array.isArray(value)) throw new RequestValidationError('messages', `must be an array, got ${describe(value)}`);
  if (value.length === 0) throw new RequestValidationError('messages', 'must not be empty');
  return value.map((m, i): ChatMessage => {
    const f = `messages[${i}]`;
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw new RequestValidationError(f, `must be an object, got ${describe(m)}`);
    const msg = m as Body;
    for (const key of Object.keys(msg)) {
      if (key !== 'role' && key !== 'content' && key !== 'name') {
        throw new RequestValidationError(`${f}.${key}`, key === 'tool_calls' ? 'tool calls are not supported' : 'is not a recognized message field');
      }
    }
    const role = msg.role;
    if (role !== 'system' && role !== 'developer' && role !== 'user' && role !== 'assistant') {
      throw new RequestValidationError(`${f}.role`, `must be 'system', 'developer', 'user' or 'assistant', got ${describe(role)}`);
    }
    const out: ChatMessage = { role: role === 'developer' ? 'system' : role, content: parseContent(`${f}.content`, msg.content) };
    if (isPresent(msg.name)) out.name = expectString(`${f}.name`, msg.name);
    return out;
  });
}

/** Parses and checks a `POST /v1/chat/completions` body. */
export function parseChatRequest(raw: unknown): ParsedChatRequest {
  const body = checkBody(raw);
  checkKnown(body, CHAT_FIELDS);
  const messages = parseMessages(body.messages);
  const common = parseCommon(body, 'max_completion_tokens');
  const logprobs = expectBool('logprobs', body.logprobs);
  let topLogprobs = 0;
  if (isPresent(body.top_logprobs)) {
    topLogprobs = expectInt('top_logprobs', body.top_logprobs, 0, 20);
    if (!logprobs) throw new RequestValidationError('top_logprobs', 'requires logprobs to be true');
  }
  const rf = body.response_format;
  if (isPresent(rf) && (typeof rf !== 'object' || (rf as Body).type !== 'text')) {
    throw new RequestValidationError('response_format', "only { type: 'text' } is supported");
  }
  if (isPresent(body.tools) && !(Array.isArray(body.tools) && body.tools.length === 0)) throw new RequestValidationError('tools', 'tool calling is not supported');
  if (isPresent(body.tool_choice) && body.tool_choice !== 'none') throw new RequestValidationError('tool_choice', "only 'none' is supported");
  if (isPresent(body.parallel_tool_calls)) expectBool('parallel_tool_calls', body.parallel_tool_calls);
  if (isPresent(body.store) && body.store !== false) throw new RequestValidationError('store', 'is not supported (only false)');
  if (isPresent(body.metadata) && (typeof body.metadata !== 'object' || Array.isArray(body.metadata))) {
    throw new RequestValidationError('metadata', `must be an object, got ${describe(body.metadata)}`);
  }
  if (common.n > MAX_CHOICES) throw new RequestValidationError('n', `must be at most ${MAX_CHOICES}`);
  return { ...common, messages, logprobs, topLogprobs };
}
