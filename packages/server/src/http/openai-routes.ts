import { randomUUID } from 'node:crypto';
import { BackendUnavailableError, CancelledError, NotFoundError, TinyServeError, normalizeRequest } from '@tinyserve/core';
import type { StreamEvent, TinyServeRequest, TinyServeResponse, Tokenizer } from '@tinyserve/core';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { BackendLoadedModel, BackendModelInfo, ServingBackend } from './backend.js';
import { FALLBACK_STOP, renderChat } from './chat-template.js';
import { toHttpError } from './errors.js';
import { GenerationRun } from './generation.js';
import type { ServerMetrics } from './metrics.js';
import { parseChatRequest, parseCompletionRequest } from './openai-requests.js';
import type { BaseRequest, ParsedCommon } from './openai-requests.js';
import { chatLogprobEntry, completionLogprobs, openAiFinish, tokenText, usageOf } from './openai-responses.js';
import { SseWriter } from './sse.js';

/** What the generation routes share with the server: the backend, metrics, in-flight bookkeeping. */
export interface RouteContext {
  backend: ServingBackend;
  metrics: ServerMetrics;
  /** Registers a request's controller for shutdown; returns the function that unregisters it. */
  track(controller: AbortController): () => void;
  /** Headers every response carries (CORS), added by hand where a stream bypasses fastify's hooks. */
  extraHeaders(): Record<string, string>;
  isDraining(): boolean;
}

interface Served {
  info: BackendModelInfo;
  model: BackendLoadedModel;
}

function served(backend: ServingBackend, requested: string | undefined): Served {
  const info = backend.modelInfo;
  const model = backend.loadedModel;
  if (!info || !model) throw new BackendUnavailableError('no model is loaded yet');
  if (requested !== undefined && requested !== info.name) {
    throw new NotFoundError(`model '${requested}' does not exist: this server serves '${info.name}' (GET /v1/models)`);
  }
  return { info, model };
}

/** One generation per choice; seeds are `seed + i` so that n choices differ yet stay reproducible. */
function choiceRequests(
  base: BaseRequest,
  prompts: readonly { prompt: string | number[]; extra?: Partial<TinyServeRequest> }[],
  n: number,
  flags: { logprobs: boolean; echo: boolean },
  signal: AbortSignal,
  id: string,
): TinyServeRequest[] {
  const out: TinyServeRequest[] = [];
  prompts.forEach(({ prompt, extra }, pi) => {
    const first: TinyServeRequest = { ...base, ...extra, prompt, logprobs: flags.logprobs, echo: flags.echo };
    // Field errors (types, ranges) now, named in snake_case by the error mapper, before anything runs.
    normalizeRequest(first);
    for (let i = 0; i < n; i++) {
      const index = pi * n + i;
      const request: TinyServeRequest = { ...first, signal, requestId: `${id}-${index}` };
      if (base.seed !== undefined && i > 0) request.seed = base.seed + i;
      out.push(request);
    }
  });
  return out;
}

interface Collected {
  texts: string[];
  responses: TinyServeResponse[];
}

async function collect(run: GenerationRun, count: number): Promise<Collected> {
  const texts = new Array<string>(count).fill('');
  const responses = new Array<TinyServeResponse>(count);
  for await (const { index, event } of run.events()) {
    if (event.type === 'token') texts[index] += event.text;
    else responses[index] = event.response;
  }
  for (let i = 0; i < count; i++) {
    if (!responses[i]) throw new TinyServeError('internal_error', `generation ${i} ended without a result`);
  }
  return { texts, responses };
}

/** Runs the shared request lifecycle: cancellation on disconnect, in-flight tracking, stream or JSON. */
async function runGeneration<T>(
  ctx: RouteContext,
  request: FastifyRequest,
  reply: FastifyReply,
  requests: (signal: AbortSignal) => TinyServeRequest[],
  parsed: ParsedCommon,
  id: string,
  handlers: {
    stream: (run: GenerationRun, sse: SseWriter, signal: AbortSignal) => Promise<void>;
    json: (run: GenerationRun, count: number) => Promise<T>;
  },
): Promise<T | undefined> {
  const arrival = performance.now();
  const controller = new AbortController();
  const res = reply.raw;
  // A client that goes away cancels its generations, so their KV pages are freed at once.
  let clientGone = false;
  const onClose = (): void => {
    if (res.writableFinished) return;
    clientGone = true;
    controller.abort(new CancelledError('client disconnected'));
  };
  res.on('close', onClose);
  const untrack = ctx.track(controller);
  try {
    const list = requests(controller.signal);
    const run = new GenerationRun(ctx.backend, list, ctx.metrics, controller, arrival);
    await run.start();
    if (!parsed.stream) {
      reply.header('x-request-id', id);
      return await handlers.json(run, list.length);
    }
    reply.hijack();
    const sse = SseWriter.open(res, {
      ...ctx.extraHeaders(),
      'x-request-id': id,
      ...(ctx.isDraining() ? { connection: 'close' } : {}),
    });
    try {
      await handlers.stream(run, sse, controller.signal);
      sse.end();
    } catch (error) {
      // Headers are out: the error becomes an event (OpenAI's clients raise it), then the stream ends.
      if (!clientGone) {
        const mapped = toHttpError(error);
        if (mapped.internal) request.log.error({ err: error }, 'generation failed');
        await sse.send(mapped.body);
      }
      sse.end();
    }
    return undefined;
  } catch (error) {
    if (clientGone) {
      // Nobody is listening: end quietly instead of answering a closed socket.
      if (!reply.sent) reply.hijack();
      return undefined;
    }
    throw error;
  } finally {
    res.off('close', onClose);
    untrack();
  }
}

function decodePrompt(tokenizer: Tokenizer, prompt: string | number[]): string {
  return typeof prompt === 'string' ? prompt : tokenizer.decode(prompt);
}

/** `POST /v1/completions`. */
export async function completionsRoute(ctx: RouteContext, request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const parsed = parseCompletionRequest(request.body);
  const { info, model } = served(ctx.backend, parsed.model);
  const tokenizer = model.tokenizer;
  const id = `cmpl-${randomUUID().replace(/-/g, '')}`;
  const created = Math.floor(Date.now() / 1000);
  const { n, echo } = parsed;
  const wantLogprobs = parsed.logprobs !== null;
  const promptText = (index: number): string => decodePrompt(tokenizer, parsed.prompts[Math.floor(index / n)]);
  const chunk = (choices: unknown[], usage?: unknown): Record<string, unknown> => ({
    id,
    object: 'text_completion',
    created,
    model: info.name,
    choices,
    ...(parsed.includeUsage ? { usage: usage ?? null } : {}),
  });

  return runGeneration(
    ctx,
    request,
    reply,
    (signal) =>
      choiceRequests(
        parsed.base,
        parsed.prompts.map((prompt) => ({ prompt })),
        n,
        { logprobs: wantLogprobs, echo },
        signal,
        id,
      ),
    parsed,
    id,
    {
      json: async (run, count) => {
        const { responses } = await collect(run, count);
        const choices = responses.map((r, index) => {
          const prefix = echo ? promptText(index) : '';
          let logprobs = null;
          if (wantLogprobs) {
            const ids = [...(echo ? (r.promptTokens ?? []) : []), ...r.tokens];
            const lps = [...(echo ? (r.promptLogprobs ?? []) : []), ...(r.logprobs ?? [])];
            logprobs = completionLogprobs(tokenizer, ids, lps, 0);
          }
          return { index, text: prefix + r.generatedText, logprobs, ...openAiFinish(r.finishReason) };
        });
        return {
          id,
          object: 'text_completion',
          created,
          model: info.name,
          choices,
          usage: usageOf(responses.map((response, i) => ({ response, countPrompt: i % n === 0 }))),
        };
      },
      stream: async (run, sse) => {
        const count = parsed.prompts.length * n;
        const emitted = new Array<string>(count).fill('');
        const responses: { response: TinyServeResponse; countPrompt: boolean }[] = [];
        if (echo) {
          for (let index = 0; index < count; index++) {
            await sse.send(chunk([{ index, text: promptText(index), logprobs: null, finish_reason: null }]));
          }
        }
        const base = (index: number): number => (echo ? promptText(index).length : 0);
        for await (const { index, event } of run.events()) {
          if (event.type === 'token') {
            if (event.text === '' && !wantLogprobs) continue;
            const logprobs = wantLogprobs
              ? { tokens: [tokenText(tokenizer, event.tokenId)], token_logprobs: [event.logprob ?? null], top_logprobs: null, text_offset: [base(index) + emitted[index].length] }
              : null;
            emitted[index] += event.text;
            await sse.send(chunk([{ index, text: event.text, logprobs, finish_reason: null }]));
          } else {
            await finishChoice(event, emitted[index], (text) => sse.send(chunk([{ index, text, logprobs: null, finish_reason: null }])));
            await sse.send(chunk([{ index, text: '', logprobs: null, ...openAiFinish(event.response.finishReason) }]));
            responses.push({ response: event.response, countPrompt: index % n === 0 });
          }
        }
        if (parsed.includeUsage) await sse.send(chunk([], usageOf(responses)));
      },
    },
  );
}

/** Text the final response holds beyond what was streamed (a detokenizer's held-back tail). */
async function finishChoice(event: Extract<StreamEvent, { type: 'done' }>, emitted: string, send: (text: string) => Promise<void>): Promise<void> {
  const full = event.response.generatedText;
  if (full.length > emitted.length && full.startsWith(emitted)) await send(full.slice(emitted.length));
}

/** `POST /v1/chat/completions`. */
export async function chatCompletionsRoute(ctx: RouteContext, request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
  const parsed = parseChatRequest(request.body);
  const { info, model } = served(ctx.backend, parsed.model);
  const tokenizer = model.tokenizer;
  const rendered = renderChat(model, parsed.messages);
  const extra: Partial<TinyServeRequest> = {};
  if (!rendered.usedFallback) {
    // The template already wrote the special tokens (BOS) it wants.
    extra.addSpecialTokens = false;
  } else {
    // Without a template the model sees "User: ..." turns; stop where it would write the next one.
    const userStop: unknown = parsed.base.stop;
    const stops = userStop === undefined ? [] : typeof userStop === 'string' ? [userStop] : Array.isArray(userStop) ? [...(userStop as string[])] : null;
    // A wrongly typed `stop` (null here) is reported by normalizeRequest with its field name.
    if (stops && stops.length < 16 && !stops.includes(FALLBACK_STOP)) extra.stop = [...stops, FALLBACK_STOP];
  }
  const id = `chatcmpl-${randomUUID().replace(/-/g, '')}`;
  const created = Math.floor(Date.now() / 1000);
  const { n } = parsed;
  const chunk = (choices: unknown[], usage?: unknown): Record<string, unknown> => ({
    id,
    object: 'chat.completion.chunk',
    created,
    model: info.name,
    choices,
    ...(parsed.includeUsage ? { usage: usage ?? null } : {}),
  });

  return runGeneration(
    ctx,
    request,
    reply,
    (signal) => choiceRequests(parsed.base, [{ prompt: rendered.prompt, extra }], n, { logprobs: parsed.logprobs, echo: false }, signal, id),
    parsed,
    id,
    {
      json: async (run, count) => {
        const { responses } = await collect(run, count);
        const choices = responses.map((r, index) => ({
          index,
          message: { role: 'assistant', content: r.generatedText, refusal: null },
          logprobs: parsed.logprobs
            ? { content: r.tokens.map((t, i) => chatLogprobEntry(tokenizer, t, r.logprobs?.[i] ?? 0)), refusal: null }
            : null,
          ...openAiFinish(r.finishReason),
        }));
        return {
          id,
          object: 'chat.completion',
          created,
          model: info.name,
          choices,
          usage: usageOf(responses.map((response, i) => ({ response, countPrompt: i === 0 }))),
        };
      },
      stream: async (run, sse) => {
        const emitted = new Array<string>(n).fill('');
        const responses: { response: TinyServeResponse; countPrompt: boolean }[] = [];
        for (let index = 0; index < n; index++) {
          await sse.send(chunk([{ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]));
        }
        for await (const { index, event } of run.events()) {
          if (event.type === 'token') {
            if (event.text === '' && !parsed.logprobs) continue;
            const logprobs = parsed.logprobs ? { content: [chatLogprobEntry(tokenizer, event.tokenId, event.logprob ?? 0)], refusal: null } : null;
            emitted[index] += event.text;
            await sse.send(chunk([{ index, delta: { content: event.text }, logprobs, finish_reason: null }]));
          } else {
            await finishChoice(event, emitted[index], (text) => sse.send(chunk([{ index, delta: { content: text }, logprobs: null, finish_reason: null }])));
            await sse.send(chunk([{ index, delta: {}, logprobs: null, ...openAiFinish(event.response.finishReason) }]));
            responses.push({ response: event.response, countPrompt: index === 0 });
          }
        }
        if (parsed.includeUsage) await sse.send(chunk([], usageOf(responses)));
      },
    },
  );
}
