import { setTimeout as sleep } from 'node:timers/promises';
import { CancelledError, normalizeRequest } from '@tinyserve/core';
import type { StreamEvent, TinyServeRequest, Tokenizer } from '@tinyserve/core';
import type { ServingBackend } from '@tinyserve/server';
import { describe, expect, it } from 'vitest';
import { runCli } from './cli.js';
import type { CommandIo } from './io.js';
import { serveCommand } from './serve-command.js';

/** Characters as token ids; generates 'a', 'b', 'c', ... one per `delayMs`. */
const tokenizer: Tokenizer = {
  vocabSize: 256,
  bosTokenId: null,
  eosTokenIds: [],
  encode: (text) => [...text].map((c) => c.charCodeAt(0) & 255),
  decode: (ids) => String.fromCharCode(...Array.from(ids)),
  createStreamDecoder: () => ({ push: (id) => String.fromCharCode(id), flush: () => '' }),
  idToToken: (id) => String.fromCharCode(id),
};

class AlphabetBackend implements ServingBackend {
  drained = false;
  closed = false;
  running = 0;
  constructor(private readonly delayMs = 0) {}
  readonly modelInfo = { name: 'alphabet', executor: 'test' };
  readonly loadedModel = { tokenizer, chatTemplate: null, tokenizerConfig: {} };
  readonly scheduler = { listSessions: () => [], getSessionInfo: () => undefined, closeSession: () => false };
  getStats() {
    return { totalRequests: 0, engine: { numRunning: this.running, numWaiting: 0 } };
  }
  async drain() {
    this.drained = true;
    while (this.running > 0) await sleep(5);
  }
  async close() {
    this.closed = true;
  }
  async *serveStream(request: TinyServeRequest): AsyncGenerator<StreamEvent> {
    const n = normalizeRequest(request);
    const prompt = typeof n.prompt === 'string' ? tokenizer.encode(n.prompt) : n.prompt;
    this.running++;
    try {
      const tokens: number[] = [];
      for (let i = 0; i < n.maxTokens; i++) {
        await sleep(this.delayMs, undefined, { signal: n.signal }).catch(() => {
          throw new CancelledError();
        });
        tokens.push(97 + (i % 26));
        yield { type: 'token', text: tokenizer.decode([tokens[i]]), tokenId: tokens[i] };
      }
      yield {
        type: 'done',
        response: {
          requestId: n.requestId ?? 'r',
          generatedText: tokenizer.decode(tokens),
          tokens,
          finishReason: 'length',
          latencyMs: 1,
          timeToFirstTokenMs: 1,
          usage: { promptTokens: prompt.length, completionTokens: tokens.length, totalTokens: prompt.length + tokens.length, cachedTokens: 0 },
        },
      };
    } finally {
      this.running--;
    }
  }
}

function captureIo(env: NodeJS.ProcessEnv = {}): CommandIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return { out, err, env, stdout: (t) => void out.push(t), stderr: (t) => void err.push(t) };
}

async function waitForUrl(io: { out: string[] }): Promise<string> {
  for (let i = 0; i < 500; i++) {
    const m = /at (http:\/\/\S+)\n/.exec(io.out.join(''));
    if (m) return m[1];
    await sleep(10);
  }
  throw new Error(`server did not report its address; stdout: ${io.out.join('')}`);
}

describe('tinyserve serve', () => {
  it('prints its help through the CLI', async () => {
    const io = captureIo();
    expect(await runCli(['serve', '--help'], io)).toBe(0);
    expect(io.out.join('')).toMatch(/--port <n>[\s\S]*--api-key <key>[\s\S]*--page-size 32/);
  });

  it('rejects a bad port and unknown flags', async () => {
    const io = captureIo();
    expect(await runCli(['serve', '--port', 'eighty'], io)).toBe(1);
    expect(io.err.join('')).toMatch(/--port must be an integer in \[0, 65535\], got 'eighty'/);
    const io2 = captureIo();
    expect(await runCli(['serve', '--prot', '1'], io2)).toBe(2);
    expect(io2.err.join('')).toMatch(/--prot/);
  });

  it('passes config flags and env to the backend factory, serves with API keys, and drains on a signal', async () => {
    const io = captureIo({ TINYSERVE_API_KEY: 'env-key', TINYSERVE_MAX_NUM_SEQS: '8' });
    const backend = new AlphabetBackend(5);
    let seen: { config: object; model: string | undefined; modelType: string } | undefined;
    const done = serveCommand(['--port', '0', '--model', '/models/x', '--executor', 'cpu', '--page-size', '32', '--api-key', 'flag-key'], io, {
      signals: ['SIGUSR2'],
      createBackend: async (p) => {
        seen = p;
        return backend;
      },
    });
    const url = await waitForUrl(io);
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(seen).toMatchObject({ model: '/models/x', modelType: 'auto', config: { executor: 'cpu', pageSize: 32, maxNumSeqs: 8 } });
    expect(io.out.join('')).toMatch(/serving alphabet on test at http:[\s\S]*\(API key required\)/);

    const post = (key: string) =>
      fetch(`${url}/v1/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
        body: JSON.stringify({ prompt: 'hi', max_tokens: 30 }),
      });
    expect((await post('nope')).status).toBe(401);
    const ok = (await (await post('env-key')).json()) as { choices: { text: string }[] };
    expect(ok.choices[0].text).toBe('abcdefghijklmnopqrstuvwxyzabcd');

    // A request in flight when the signal arrives still completes.
    const inFlight = post('flag-key');
    await sleep(30);
    process.emit('SIGUSR2', 'SIGUSR2');
    const late = await (await inFlight).json();
    expect((late as { choices: { text: string }[] }).choices[0].text).toHaveLength(30);
    expect(await done).toBe(0);
    expect(backend.drained).toBe(true);
    expect(backend.closed).toBe(true);
    expect(io.err.join('')).toMatch(/SIGUSR2 received: draining 1 running request/);
    await expect(fetch(`${url}/health`)).rejects.toThrow();
  });
});
