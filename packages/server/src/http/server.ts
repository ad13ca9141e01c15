import { createHash, timingSafeEqual } from 'node:crypto';
import { NotFoundError } from '@tinyserve/core';
import Fastify from 'fastify';
import type { FastifyInstance, FastifyServerOptions } from 'fastify';
import { DASHBOARD_HTML } from '../dashboard/page.js';
import { DASHBOARD_SCRIPT } from '../dashboard/script.js';
import type { ServingBackend } from './backend.js';
import { errorBody, toHttpError } from './errors.js';
import { createServerMetrics } from './metrics.js';
import type { ServerMetrics } from './metrics.js';
import { chatCompletionsRoute, completionsRoute } from './openai-routes.js';
import type { RouteContext } from './openai-routes.js';
import { readServingGauges, toSnakeJson } from './stats.js';
import type { GaugeReader } from './stats.js';

export interface HttpServerOptions {
  backend: ServingBackend;
  /** When set, /v1/* and /metrics require `Authorization: Bearer <one of these>`. */
  apiKeys?: readonly string[];
  /** Largest accepted request body. Default 1 MiB. */
  bodyLimitBytes?: number;
  /** `Access-Control-Allow-Origin` value ('*' or an origin); no CORS headers when unset. */
  corsOrigin?: string;
  /** Prefix of every TinyServe metric name. Default 'tinyserve:'. */
  metricsPrefix?: string;
  /** How serving gauges are read from `getStats()`; default {@link readServingGauges}. */
  readGauges?: GaugeReader;
  /** Node process metrics in /metrics. Default true. */
  processMetrics?: boolean;
  /** Fastify's logger option (pino). Default false. */
  logger?: FastifyServerOptions['logger'];
}

/** Drain state and in-flight generations, for the shutdown helper. */
export interface HttpServerControl {
  readonly metrics: ServerMetrics;
  readonly draining: boolean;
  /** From now on every new request is answered 503. */
  startDraining(): void;
  /** Generations being served now. */
  inFlight(): number;
  /** Cancels every in-flight generation (a forced shutdown). */
  abortAll(): void;
}

export type TinyServeHttpServer = FastifyInstance & { readonly tinyserve: HttpServerControl };

const DEFAULT_BODY_LIMIT = 1 << 20;

function keyDigest(key: string): Buffer {
  return createHash('sha256').update(key).digest();
}

/** Constant-time over the candidates: no early exit reveals which key prefix matched. */
function keyMatches(given: string, digests: readonly Buffer[]): boolean {
  const g = keyDigest(given);
  let ok = false;
  for (const d of digests) ok = timingSafeEqual(g, d) || ok;
  return ok;
}

function pathOf(url: string): string {
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

function needsAuth(path: string): boolean {
  return path === '/metrics' || path === '/v1' || path.startsWith('/v1/');
}

/**
 * The OpenAI-compatible HTTP server over a {@link ServingBackend} (the `TinyServe` facade).
 * Returns the fastify instance, not yet listening: call `listen({ port, host })`.
 */
export function createHttpServer(options: HttpServerOptions): TinyServeHttpServer {
  const { backend } = options;
  const apiKeys = (options.apiKeys ?? []).filter((k) => k.length > 0).map(keyDigest);
  const metrics = createServerMetrics({
    prefix: options.metricsPrefix ?? 'tinyserve:',
    backend,
    readGauges: options.readGauges ?? readServingGauges,
    processMetrics: options.processMetrics,
  });
  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: options.bodyLimitBytes ?? DEFAULT_BODY_LIMIT,
    // close() ends every connection, including pre-opened ones that never sent a request (they
    // would hold it open forever). Running streams are drained before that: installGracefulShutdown.
    forceCloseConnections: true,
  });
  // Only JSON bodies: anything else is a 415, not a string handed to a handler.
  app.removeContentTypeParser(['text/plain']);

  let draining = false;
  const inFlight = new Set<AbortController>();
  const corsHeaders: Record<string, string> = options.corsOrigin
    ? { 'access-control-allow-origin': options.corsOrigin, ...(options.corsOrigin === '*' ? {} : { vary: 'Origin' }) }
    : {};

  const control: HttpServerControl = {
    metrics,
    get draining() {
      return draining;
    },
    startDraining() {
      draining = true;
    },
    inFlight: () => inFlight.size,
    abortAll() {
      for (const c of inFlight) c.abort();
    },
  };
  app.decorate('tinyserve', control);

  const ctx: RouteContext = {
    backend,
    metrics,
    track(controller) {
      inFlight.add(controller);
      return () => void inFlight.delete(controller);
    },
    extraHeaders: () => corsHeaders,
    isDraining: () => draining,
  };

  app.addHook('onRequest', async (request, reply) => {
    const path = pathOf(request.url);
    if (options.corsOrigin && request.method === 'OPTIONS') {
      return reply
        .code(204)
        .headers({
          ...corsHeaders,
          'access-control-allow-methods': 'GET, POST, DELETE, OPTIONS',
          'access-control-allow-headers': 'authorization, content-type',
          'access-control-max-age': '600',
        })
        .send();
    }
    if (draining) {
      return reply
        .code(503)
        .headers({ connection: 'close', 'retry-after': '5' })
        .send(errorBody('the server is shutting down', 'server_error', null, 'shutting_down'));
    }
    if (apiKeys.length > 0 && needsAuth(path)) {
      const header = request.headers.authorization;
      const match = typeof header === 'string' ? /^Bearer\s+(.+)$/i.exec(header.trim()) : null;
      if (!match || !keyMatches(match[1], apiKeys)) {
        const message = match
          ? 'incorrect API key provided'
          : "missing API key: send 'Authorization: Bearer <key>'";
        return reply
          .code(401)
          .header('www-authenticate', 'Bearer')
          .send(errorBody(message, 'authentication_error', null, 'invalid_api_key'));
      }
    }
  });

  app.addHook('onSend', async (_request, reply, payload) => {
    if (options.corsOrigin) reply.headers(corsHeaders);
    if (draining) reply.header('connection', 'close');
    return payload;
  });

  app.setErrorHandler((error, request, reply) => {
    const mapped = toHttpError(error);
    if (mapped.internal) request.log.error({ err: error }, 'request failed');
    if (mapped.headers) reply.headers(mapped.headers);
    return reply.code(mapped.status).send(mapped.body);
  });

  app.setNotFoundHandler((request, reply) =>
    reply
      .code(404)
      .send(errorBody(`unknown route: ${request.method} ${pathOf(request.url)}`, 'invalid_request_error', null, 'not_found')),
  );

  // --- dashboard and health ----------------------------------------------------------------
  const csp = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'";
  app.get('/', async (_request, reply) =>
    reply.type('text/html; charset=utf-8').header('content-security-policy', csp).header('cache-control', 'no-cache').send(DASHBOARD_HTML),
  );
  app.get('/dashboard.js', async (_request, reply) =>
    reply.type('text/javascript; charset=utf-8').header('cache-control', 'no-cache').send(DASHBOARD_SCRIPT),
  );
  app.get('/favicon.ico', async (_request, reply) => reply.code(204).send());

  app.get('/health', async (_request, reply) => {
    const info = backend.modelInfo;
    if (!info) return reply.code(503).send({ status: 'loading', model: null });
    return { status: 'ok', model: info.name };
  });

  app.get('/metrics', async (_request, reply) => {
    const text = await metrics.exposition();
    return reply.type(metrics.registry.contentType).send(text);
  });

  // --- OpenAI API ----------------------------------------------------------------------------
  const startedAt = Math.floor(Date.now() / 1000);
  const modelCard = (): { id: string; object: 'model'; created: number; owned_by: string; max_model_len: number | null }[] => {
    const info = backend.modelInfo;
    if (!info) return [];
    return [{ id: info.name, object: 'model', created: startedAt, owned_by: 'tinyserve', max_model_len: info.maxModelLen ?? null }];
  };
  app.get('/v1/models', async () => ({ object: 'list', data: modelCard() }));
  app.get<{ Params: { id: string } }>('/v1/models/*', async (request) => {
    const id = (request.params as Record<string, string>)['*'];
    const card = modelCard().find((m) => m.id === id);
    if (!card) throw new NotFoundError(`model '${id}' does not exist`);
    return card;
  });

  app.post('/v1/completions', (request, reply) => completionsRoute(ctx, request, reply));
  app.post('/v1/chat/completions', (request, reply) => chatCompletionsRoute(ctx, request, reply));

  // --- TinyServe extensions ------------------------------------------------------------------
  app.get('/v1/stats', async () => ({
    ...(toSnakeJson(backend.getStats()) as Record<string, unknown>),
    server: toSnakeJson(metrics.snapshot(draining)),
  }));

  const sessionJson = (id: string, info: unknown): Record<string, unknown> => {
    const body = toSnakeJson(info);
    return { id, object: 'session', ...(body !== null && typeof body === 'object' && !Array.isArray(body) ? body : { info: body }) };
  };
  const sessionInfo = async (id: string): Promise<Record<string, unknown>> => {
    const info = await backend.scheduler.getSessionInfo(id);
    if (info === null || info === undefined) throw new NotFoundError(`session '${id}' does not exist`);
    return sessionJson(id, info);
  };
  app.get('/v1/sessions', async () => {
    const list = await backend.scheduler.listSessions();
    // Engines may list ids or info objects; both come out as session objects.
    const data = await Promise.all(
      list.map(async (entry) => {
        if (typeof entry === 'string') return sessionInfo(entry).catch(() => ({ id: entry, object: 'session' }));
        const id = (entry as { id?: unknown; sessionId?: unknown }).sessionId ?? (entry as { id?: unknown }).id;
        return sessionJson(String(id), entry);
      }),
    );
    return { object: 'list', data };
  });
  app.get<{ Params: { id: string } }>('/v1/sessions/:id', async (request) => sessionInfo(request.params.id));
  app.delete<{ Params: { id: string } }>('/v1/sessions/:id', async (request) => {
    const id = request.params.id;
    const closed = await backend.scheduler.closeSession(id);
    if (closed === false) throw new NotFoundError(`session '${id}' does not exist`);
    return { id, object: 'session', deleted: true };
  });

  return app as unknown as TinyServeHttpServer;
}
