import { afterEach, describe, expect, it } from 'vitest';
import { FakeBackend } from './fake-backend.js';
import type { FakeBackendOptions } from './fake-backend.js';
import { createHttpServer } from './server.js';
import type { HttpServerOptions, TinyServeHttpServer } from './server.js';

const servers: TinyServeHttpServer[] = [];

async function start(options: Partial<HttpServerOptions> = {}, fake: FakeBackendOptions = {}): Promise<{ url: string; backend: FakeBackend }> {
  const backend = new FakeBackend({ tokenDelayMs: 0, ...fake });
  const server = createHttpServer({ backend, processMetrics: false, ...options });
  servers.push(server);
  return { url: await server.listen({ port: 0, host: '127.0.0.1' }), backend };
}

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

interface ErrorJson {
  error: { message: string; type: string; param: string | null; code: string | null };
}

async function post(url: string, body: string | object, headers: Record<string, string> = {}): Promise<{ status: number; json: ErrorJson; headers: Headers }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, json: JSON.parse(text) as ErrorJson, headers: res.headers };
}

function expectOpenAiError(json: ErrorJson): void {
  expect(Object.keys(json)).toEqual(['error']);
  expect(Object.keys(json.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof json.error.message).toBe('string');
}

describe('malformed requests get OpenAI-shaped errors', () => {
  it('400 for a body that is not JSON', async () => {
    const { url } = await start();
    const r = await post(`${url}/v1/completions`, '{"prompt": "x",');
    expect(r.status).toBe(400);
    expectOpenAiError(r.json);
    expect(r.json.error.code).toBe('invalid_json');
  });

  it('400 for an empty JSON body and for a JSON value that is not an object', async () => {
    const { url } = await start();
    const empty = await post(`${url}/v1/completions`, '');
    expect(empty.status).toBe(400);
    expectOpenAiError(empty.json);
    const arr = await post(`${url}/v1/completions`, '[1, 2]');
    expect(arr.status).toBe(400);
    expect(arr.json.error.param).toBe('body');
  });

  it.each([
    [{}, 'prompt', /required/],
    [{ prompt: 5 }, 'prompt', /string/],
    [{ prompt: '' }, 'prompt', /empty/],
    [{ prompt: [1, -2] }, 'prompt[1]', /token id/],
    [{ prompt: 'x', max_tokens: 'ten' }, 'max_tokens', /integer/],
    [{ prompt: 'x', max_tokens: -1 }, 'max_tokens', /\[0,/],
    [{ prompt: 'x', temperature: 'hot' }, 'temperature', /number/],
    [{ prompt: 'x', top_p: 0 }, 'top_p', /\(0, 1\]/],
    [{ prompt: 'x', top_k: 1.5 }, 'top_k', /integer/],
    [{ prompt: 'x', seed: 'abc' }, 'seed', /integer/],
    [{ prompt: 'x', stop: 3 }, 'stop', /string/],
    [{ prompt: 'x', stop: ['ok', ''] }, 'stop[1]', /non-empty/],
    [{ prompt: 'x', n: 0 }, 'n', /\[1, 16\]/],
    [{ prompt: 'x', logprobs: 9 }, 'logprobs', /\[0, 5\]/],
    [{ prompt: 'x', echo: 'yes' }, 'echo', /true or false/],
    [{ prompt: 'x', stream: 1 }, 'stream', /true or false/],
    [{ prompt: 'x', stream_options: { include_usage: true } }, 'stream_options', /stream is true/],
    [{ prompt: 'x', priority: 'urgent' }, 'priority', /'high'/],
    [{ prompt: 'x', session_id: 'has space' }, 'session_id', /characters/],
    [{ prompt: 'x', frequency_penalty: 0.5 }, 'frequency_penalty', /not supported/],
    [{ prompt: 'x', suffix: 'end' }, 'suffix', /not supported/],
    [{ prompt: 'x', temprature: 1 }, 'temprature', /not a recognized/],
    [{ prompt: 'x', max_tokens: 5000 }, 'max_tokens', /context/],
  ])('completions %j -> 400 on %s', async (body, param, message) => {
    const { url, backend } = await start();
    const r = await post(`${url}/v1/completions`, body);
    expect(r.status).toBe(400);
    expectOpenAiError(r.json);
    expect(r.json.error.type).toBe('invalid_request_error');
    expect(r.json.error.param).toBe(param);
    expect(r.json.error.message).toMatch(message);
    expect(r.json.error.message.startsWith(`${param}:`)).toBe(true);
    // Nothing was generated (the last case is rejected by the backend itself, before admission).
    expect(backend.getStats().completedRequests).toBe(0);
  });

  it.each([
    [{}, 'messages', /required/],
    [{ messages: [] }, 'messages', /empty/],
    [{ messages: 'hi' }, 'messages', /array/],
    [{ messages: [{ role: 'robot', content: 'x' }] }, 'messages[0].role', /'user'/],
    [{ messages: [{ role: 'user', content: 7 }] }, 'messages[0].content', /string/],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: {} }] }] }, 'messages[0].content[0].type', /text/],
    [{ messages: [{ role: 'user', content: 'x', tool_calls: [] }] }, 'messages[0].tool_calls', /not supported/],
    [{ messages: [{ role: 'user', content: 'x' }], top_logprobs: 2 }, 'top_logprobs', /logprobs/],
    [{ messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function' }] }, 'tools', /not supported/],
    [{ messages: [{ role: 'user', content: 'x' }], response_format: { type: 'json_object' } }, 'response_format', /text/],
    [{ messages: [{ role: 'user', content: 'x' }], temperature: -1 }, 'temperature', /\[0, 100\]/],
  ])('chat %j -> 400 on %s', async (body, param, message) => {
    const { url } = await start();
    const r = await post(`${url}/v1/chat/completions`, body);
    expect(r.status).toBe(400);
    expectOpenAiError(r.json);
    expect(r.json.error.param).toBe(param);
    expect(r.json.error.message).toMatch(message);
  });

  it('400 when the model chat template rejects the conversation', async () => {
    const { url } = await start({}, { chatTemplate: "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}" });
    const r = await post(`${url}/v1/chat/completions`, { messages: [{ role: 'system', content: 'x' }] });
    expect(r.status).toBe(400);
    expect(r.json.error.param).toBe('messages');
    expect(r.json.error.message).toMatch(/System role not supported/);
  });

  it('413 for a body over the limit', async () => {
    const { url } = await start({ bodyLimitBytes: 1024 });
    const r = await post(`${url}/v1/completions`, { prompt: 'x'.repeat(5000) });
    expect(r.status).toBe(413);
    expectOpenAiError(r.json);
    expect(r.json.error.code).toBe('request_too_large');
  });

  it('415 for a body that is not JSON by content type', async () => {
    const { url } = await start();
    for (const type of ['text/plain', 'application/x-www-form-urlencoded']) {
      const r = await post(`${url}/v1/completions`, 'prompt=x', { 'content-type': type });
      expect(r.status).toBe(415);
      expectOpenAiError(r.json);
      expect(r.json.error.code).toBe('unsupported_media_type');
    }
  });

  it('404 for an unknown route and an unknown model', async () => {
    const { url } = await start();
    const route = await fetch(`${url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(route.status).toBe(404);
    const json = (await route.json()) as ErrorJson;
    expectOpenAiError(json);
    expect(json.error.message).toMatch(/POST \/v1\/embeddings/);
    const model = await post(`${url}/v1/completions`, { model: 'llama-70b', prompt: 'x' });
    expect(model.status).toBe(404);
    expect(model.json.error.message).toMatch(/llama-70b/);
  });

  it('401 when API keys are configured and the key is missing or wrong; the right key passes', async () => {
    const { url } = await start({ apiKeys: ['key-one', 'key-two'] });
    const missing = await post(`${url}/v1/completions`, { prompt: 'x', max_tokens: 1 });
    expect(missing.status).toBe(401);
    expectOpenAiError(missing.json);
    expect(missing.json.error.code).toBe('invalid_api_key');
    expect(missing.headers.get('www-authenticate')).toBe('Bearer');
    const wrong = await post(`${url}/v1/completions`, { prompt: 'x', max_tokens: 1 }, { authorization: 'Bearer key-three' });
    expect(wrong.status).toBe(401);
    const basic = await post(`${url}/v1/completions`, { prompt: 'x', max_tokens: 1 }, { authorization: 'Basic a2V5LW9uZQ==' });
    expect(basic.status).toBe(401);
    const ok = await post(`${url}/v1/completions`, { prompt: 'x', max_tokens: 1 }, { authorization: 'Bearer key-two' });
    expect(ok.status).toBe(200);
    expect((await fetch(`${url}/metrics`)).status).toBe(401);
    expect((await fetch(`${url}/metrics`, { headers: { authorization: 'Bearer key-one' } })).status).toBe(200);
    // The dashboard page and the health check stay public.
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect((await fetch(`${url}/`)).status).toBe(200);
  });

  it('429 with Retry-After when the engine says overloaded', async () => {
    const { url } = await start({}, { maxRunning: 1, maxQueueSize: 0, tokenDelayMs: 20 });
    const first = fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: 'x', max_tokens: 5 }) });
    await new Promise((r) => setTimeout(r, 30));
    const second = await post(`${url}/v1/completions`, { prompt: 'y', max_tokens: 5 });
    expect(second.status).toBe(429);
    expectOpenAiError(second.json);
    expect(second.json.error.code).toBe('overloaded');
    expect(second.headers.get('retry-after')).toBe('1');
    const streamed = await post(`${url}/v1/completions`, { prompt: 'y', max_tokens: 5, stream: true });
    expect(streamed.status).toBe(429);
    expect((await first).status).toBe(200);
  });

  it('500 never leaks internal details, as JSON or mid-stream', async () => {
    const { url } = await start({}, { failAfterTokens: 2 });
    const r = await post(`${url}/v1/completions`, { prompt: 'x', max_tokens: 5 });
    expect(r.status).toBe(500);
    expectOpenAiError(r.json);
    expect(r.json.error.message).toBe('internal server error');
    expect(JSON.stringify(r.json)).not.toMatch(/secret|fake backend|at /);

    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', max_tokens: 5, stream: true }),
    });
    expect(res.status).toBe(200);
    const text = await res.text();
    const events = text.split('\n\n').filter(Boolean);
    const error = JSON.parse(events[events.length - 2].slice('data: '.length)) as ErrorJson;
    expectOpenAiError(error);
    expect(error.error.message).toBe('internal server error');
    expect(text).not.toMatch(/secret/);
    expect(events[events.length - 1]).toBe('data: [DONE]');
  });

  it('503 while there is no model loaded', async () => {
    const { url, backend } = await start();
    await backend.close();
    const r = await post(`${url}/v1/completions`, { prompt: 'x' });
    expect(r.status).toBe(503);
    expectOpenAiError(r.json);
    expect((await fetch(`${url}/health`)).status).toBe(503);
  });

  it('answers CORS preflights when an origin is configured', async () => {
    const { url } = await start({ corsOrigin: 'https://app.example' });
    const pre = await fetch(`${url}/v1/completions`, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' } });
    expect(pre.status).toBe(204);
    expect(pre.headers.get('access-control-allow-origin')).toBe('https://app.example');
    expect(pre.headers.get('access-control-allow-headers')).toMatch(/authorization/);
    const res = await fetch(`${url}/v1/models`);
    expect(res.headers.get('access-control-allow-origin')).toBe('https://app.example');
    const stream = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'x', max_tokens: 1, stream: true }),
    });
    expect(stream.headers.get('access-control-allow-origin')).toBe('https://app.example');
    await stream.text();
  });
});
