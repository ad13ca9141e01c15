import { describe, expect, it } from 'vitest';
import { FakeBackend } from './fake-backend.js';
import { createHttpServer } from './server.js';
import { installGracefulShutdown } from './shutdown.js';

async function setup(tokenDelayMs: number) {
  const backend = new FakeBackend({ tokenDelayMs });
  const server = createHttpServer({ backend, processMetrics: false });
  const url = await server.listen({ port: 0, host: '127.0.0.1' });
  const exits: number[] = [];
  const logs: string[] = [];
  return { backend, server, url, exits, logs };
}

async function openStream(url: string, maxTokens: number): Promise<{ rest: Promise<string> }> {
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'x', max_tokens: maxTokens, stream: true }),
  });
  expect(res.status).toBe(200);
  const reader = res.body!.getReader();
  const first = await reader.read();
  const rest = (async () => {
    let text = new TextDecoder().decode(first.value);
    for (;;) {
      const { done, value } = await reader.read().catch(() => ({ done: true, value: undefined }));
      if (done) return text;
      text += new TextDecoder().decode(value);
    }
  })();
  return { rest };
}

describe('graceful shutdown', () => {
  it('answers new requests 503, lets running streams finish, closes the backend, exits 0', async () => {
    const { backend, server, url, exits, logs } = await setup(5);
    const { rest } = await openStream(url, 40);
    const shutdown = installGracefulShutdown(server, backend, { signals: [], exit: (c) => exits.push(c), log: (m) => logs.push(m) });
    const done = shutdown.shutdown('test');
    const refused = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'y' }),
    });
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error: { code: string } }).error.code).toBe('shutting_down');
    expect((await fetch(`${url}/health`)).status).toBe(503);
    await done;
    const text = await rest;
    const events = text.split('\n\n').filter(Boolean);
    expect(events[events.length - 1]).toBe('data: [DONE]');
    const finish = events.map((e) => (e.startsWith('data: {') ? JSON.parse(e.slice(6)) : null)).filter((e) => e?.choices[0]?.finish_reason);
    expect(finish[0].choices[0].finish_reason).toBe('length');
    expect(backend.aborted).toEqual([]);
    expect(backend.drained).toBe(true);
    expect(backend.closed).toBe(true);
    expect(exits).toEqual([0]);
    expect(logs[0]).toMatch(/test: draining 1 running request/);
    await expect(fetch(`${url}/health`)).rejects.toThrow();
    // Idempotent.
    await shutdown.shutdown();
    expect(exits).toEqual([0]);
  });

  it('cancels what is still running after the timeout and exits 1', async () => {
    const { backend, server, url, exits } = await setup(5);
    const { rest } = await openStream(url, 1900);
    const shutdown = installGracefulShutdown(server, backend, { signals: [], timeoutMs: 100, exit: (c) => exits.push(c) });
    await shutdown.shutdown();
    await rest;
    expect(backend.aborted).toHaveLength(1);
    expect(exits).toEqual([1]);
  });

  it('runs on a signal; a second signal cancels running requests', async () => {
    const { backend, server, url, exits } = await setup(5);
    const { rest } = await openStream(url, 1900);
    installGracefulShutdown(server, backend, { signals: ['SIGUSR2'], timeoutMs: 10_000, exit: (c) => exits.push(c) });
    process.emit('SIGUSR2', 'SIGUSR2');
    await new Promise((r) => setTimeout(r, 50));
    expect(server.tinyserve.draining).toBe(true);
    expect(backend.aborted).toHaveLength(0);
    process.emit('SIGUSR2', 'SIGUSR2');
    await rest;
    for (let i = 0; i < 100 && exits.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(backend.aborted).toHaveLength(1);
    expect(exits).toEqual([0]);
    expect(process.listenerCount('SIGUSR2')).toBe(0);
  });
});
