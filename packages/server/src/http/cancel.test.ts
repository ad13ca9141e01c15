import { request as httpRequest } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeBackend } from './fake-backend.js';
import { createHttpServer } from './server.js';
import type { TinyServeHttpServer } from './server.js';

let backend: FakeBackend;
let server: TinyServeHttpServer;
let url: string;

beforeAll(async () => {
  // Slow tokens: a generation of 1000 would take 10 s, far beyond the test.
  backend = new FakeBackend({ tokenDelayMs: 10, numKvPages: 256 });
  server = createHttpServer({ backend, processMetrics: false });
  url = await server.listen({ port: 0, host: '127.0.0.1' });
});

afterAll(async () => {
  await server.close();
});

async function until(check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 10));
  }
}

interface EngineView {
  numRunning: number;
  numWaiting: number;
  kv: { totalPages: number; usedPages: number };
}
const engineOf = (b: FakeBackend) => b.getStats().engine as EngineView;
const freePages = () => engineOf(backend).kv.totalPages - engineOf(backend).kv.usedPages;

describe('a client that disconnects cancels its generation', () => {
  it('streaming: the backend sees the abort and every page returns to the pool', async () => {
    const controller = new AbortController();
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'long', max_tokens: 1000, stream: true, n: 2 }),
      signal: controller.signal,
    });
    const id = res.headers.get('x-request-id');
    expect(id).toMatch(/^cmpl-/);
    const reader = res.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toMatch(/^data: /);
    expect(freePages()).toBeLessThan(256);
    controller.abort();
    await until(() => backend.aborted.includes(`${id}-0`) && backend.aborted.includes(`${id}-1`));
    await until(() => freePages() === 256);
    expect(backend.getStats().engine).toMatchObject({ numRunning: 0, numWaiting: 0 });
  });

  it('non-streaming: closing the socket mid-generation cancels too', async () => {
    const before = backend.aborted.length;
    const req = httpRequest(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' } });
    req.on('error', () => {});
    req.end(JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 1000 }));
    await until(() => (backend.getStats().totalRequests ?? 0) > 0 && freePages() < 256);
    req.destroy();
    await until(() => backend.aborted.length === before + 1);
    expect(backend.aborted[before]).toMatch(/^chatcmpl-/);
    await until(() => freePages() === 256);
  });

  it('a request still queued is cancelled without ever running', async () => {
    const small = new FakeBackend({ tokenDelayMs: 10, maxRunning: 1 });
    const s = createHttpServer({ backend: small, processMetrics: false });
    const u = await s.listen({ port: 0, host: '127.0.0.1' });
    try {
      const running = new AbortController();
      const queued = new AbortController();
      const post = (signal: AbortSignal) =>
        fetch(`${u}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt: 'x', max_tokens: 1000, stream: true }),
          signal,
        }).catch(() => null);
      const a = post(running.signal);
      await until(() => engineOf(small).numRunning === 1);
      const b = post(queued.signal);
      await until(() => engineOf(small).numWaiting === 1);
      queued.abort();
      await until(() => engineOf(small).numWaiting === 0);
      expect(small.aborted).toHaveLength(1);
      running.abort();
      await until(() => small.aborted.length === 2);
      await Promise.all([a, b]);
      expect(engineOf(small).kv.usedPages).toBe(0);
    } finally {
      await s.close();
    }
  });
});
