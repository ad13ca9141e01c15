import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeBackend, FakeTokenizer } from './fake-backend.js';
import { createHttpServer } from './server.js';
import type { TinyServeHttpServer } from './server.js';

let backend: FakeBackend;
let server: TinyServeHttpServer;
let baseURL: string;
let client: OpenAI;

beforeAll(async () => {
  backend = new FakeBackend({ tokenDelayMs: 0, defaultMaxTokens: 8 });
  server = createHttpServer({ backend, processMetrics: false });
  const address = await server.listen({ port: 0, host: '127.0.0.1' });
  baseURL = `${address}/v1`;
  client = new OpenAI({ apiKey: 'unused', baseURL, maxRetries: 0 });
});

afterAll(async () => {
  await server.close();
});

const lastReceived = () => backend.received[backend.received.length - 1];

describe('completions through the official openai client', () => {
  it('returns text, usage and finish reason, and maps every sampling field onto the library request', async () => {
    const res = await client.completions.create({
      model: 'fake-model',
      prompt: 'Hello',
      max_tokens: 5,
      temperature: 0,
      top_p: 0.9,
      seed: 7,
      user: 'u1',
      // Extensions travel as extra body fields.
      ...({ top_k: 3, session_id: 'sess-a', priority: 'high', ignore_eos: true } as object),
    });
    expect(res.object).toBe('text_completion');
    expect(res.model).toBe('fake-model');
    expect(res.id).toMatch(/^cmpl-/);
    expect(res.choices).toHaveLength(1);
    const choice = res.choices[0];
    expect(choice.finish_reason).toBe('length');
    expect(choice.text.trim().split(' ')).toHaveLength(5);
    expect(choice.logprobs).toBeNull();
    // The fake tokenizes characters and adds BOS: 'Hello' is 6 prompt tokens.
    expect(res.usage).toMatchObject({ prompt_tokens: 6, completion_tokens: 5, total_tokens: 11 });
    const r = lastReceived();
    expect(r).toMatchObject({ prompt: 'Hello', maxTokens: 5, temperature: 0, topP: 0.9, topK: 3, seed: 7, sessionId: 'sess-a', priority: 'high', ignoreEos: true });
    expect(r.signal).toBeInstanceOf(AbortSignal);
  });

  it('is reproducible with a seed and honours stop strings without returning them', async () => {
    const a = await client.completions.create({ model: 'fake-model', prompt: 'x', max_tokens: 12, seed: 3 });
    const b = await client.completions.create({ model: 'fake-model', prompt: 'x', max_tokens: 12, seed: 3 });
    expect(a.choices[0].text).toBe(b.choices[0].text);
    const words = a.choices[0].text.trim().split(' ');
    const stop = ` ${words[3]}`;
    const c = await client.completions.create({ model: 'fake-model', prompt: 'x', max_tokens: 12, seed: 3, stop: [stop] });
    expect(c.choices[0].finish_reason).toBe('stop');
    expect(a.choices[0].text.startsWith(c.choices[0].text)).toBe(true);
    expect(c.choices[0].text).not.toContain(stop);
    expect(c.choices[0].text.length).toBeLessThan(a.choices[0].text.length);
  });

  it('accepts token-id prompts, returns chosen-token logprobs and echoes the prompt', async () => {
    const ids = new FakeTokenizer().encode('abc', { addSpecialTokens: false });
    const res = await client.completions.create({ model: 'fake-model', prompt: ids, max_tokens: 3, logprobs: 0, echo: true, seed: 1 });
    const choice = res.choices[0];
    expect(choice.text.startsWith('abc')).toBe(true);
    const lp = choice.logprobs!;
    const tokens = lp.tokens!;
    expect(tokens).toHaveLength(3 + 3);
    expect(tokens.join('')).toBe(choice.text);
    expect(lp.token_logprobs![0]).toBeNull();
    for (const v of lp.token_logprobs!.slice(1)) expect(v).toBeLessThanOrEqual(0);
    expect(lp.text_offset).toEqual([0, 1, 2, 3, 3 + tokens[3].length, 3 + tokens[3].length + tokens[4].length]);
    expect(lp.top_logprobs).toBeNull();
    expect(lastReceived()).toMatchObject({ prompt: ids, logprobs: true, echo: true });
  });

  it('serves n > 1 as n generations with seeds seed+i, and batched prompts', async () => {
    const res = await client.completions.create({ model: 'fake-model', prompt: 'q', max_tokens: 6, n: 3, seed: 10 });
    expect(res.choices.map((c) => c.index)).toEqual([0, 1, 2]);
    const seeds = backend.received.slice(-3).map((r) => r.seed);
    expect(seeds).toEqual([10, 11, 12]);
    const single = await client.completions.create({ model: 'fake-model', prompt: 'q', max_tokens: 6, seed: 11 });
    expect(res.choices[1].text).toBe(single.choices[0].text);
    // The prompt is billed once, the completions of all three.
    expect(res.usage).toMatchObject({ prompt_tokens: 2, completion_tokens: 18 });

    const batch = await client.completions.create({ model: 'fake-model', prompt: ['a', 'bb'], max_tokens: 2, n: 2 });
    expect(batch.choices).toHaveLength(4);
    expect(batch.usage).toMatchObject({ prompt_tokens: 2 + 3, completion_tokens: 8 });
  });

  it('streams OpenAI chunks, ends with the finish reason and a usage chunk', async () => {
    const stream = await client.completions.create({
      model: 'fake-model',
      prompt: 'Hi',
      max_tokens: 6,
      seed: 5,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    const finishes: (string | null)[] = [];
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('text_completion');
      if (chunk.choices.length === 0) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.text;
        finishes.push(c.finish_reason);
      }
    }
    const whole = await client.completions.create({ model: 'fake-model', prompt: 'Hi', max_tokens: 6, seed: 5 });
    expect(text).toBe(whole.choices[0].text);
    expect(finishes[finishes.length - 1]).toBe('length');
    expect(finishes.slice(0, -1).every((f) => f === null)).toBe(true);
    expect(usage).toMatchObject({ prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 });
  });

  it('streams the held-back tail of a stop-string check before finishing', async () => {
    // Stop strings make the fake hold text back, as a real detokenizer does; nothing may be lost.
    const whole = await client.completions.create({ model: 'fake-model', prompt: 'z', max_tokens: 10, seed: 9, stop: ['never-matches-anything'] });
    const stream = await client.completions.create({ model: 'fake-model', prompt: 'z', max_tokens: 10, seed: 9, stop: ['never-matches-anything'], stream: true });
    let text = '';
    for await (const chunk of stream) for (const c of chunk.choices) text += c.text;
    expect(text).toBe(whole.choices[0].text);
  });
});

describe('chat completions through the official openai client', () => {
  it('renders the fallback template, stops at the next user turn and answers as the assistant', async () => {
    const res = await client.chat.completions.create({
      model: 'fake-model',
      messages: [
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: [{ type: 'text', text: 'Hi ' }, { type: 'text', text: 'there' }] },
      ],
      max_tokens: 4,
      seed: 2,
    });
    expect(res.object).toBe('chat.completion');
    expect(res.id).toMatch(/^chatcmpl-/);
    expect(res.choices[0].message.role).toBe('assistant');
    expect(res.choices[0].message.content!.trim().split(' ')).toHaveLength(4);
    const r = lastReceived();
    expect(r.prompt).toBe('System: Be brief.\n\nUser: Hi there\n\nAssistant:');
    expect(r.stop).toEqual(['\nUser:']);
    expect(r.addSpecialTokens).toBeUndefined();
  });

  it('streams deltas (role first, then content, then finish) with a usage chunk, and returns logprobs', async () => {
    const stream = await client.chat.completions.create({
      model: 'fake-model',
      messages: [{ role: 'user', content: 'Hello' }],
      max_completion_tokens: 5,
      seed: 4,
      stream: true,
      stream_options: { include_usage: true },
      logprobs: true,
    });
    const chunks: OpenAI.ChatCompletionChunk[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    const content = chunks.flatMap((c) => c.choices.map((x) => x.delta.content ?? '')).join('');
    const finish = chunks.flatMap((c) => c.choices.map((x) => x.finish_reason)).filter((f) => f !== null);
    expect(finish).toEqual(['length']);
    const usage = chunks[chunks.length - 1].usage;
    expect(usage?.completion_tokens).toBe(5);
    const lps = chunks.flatMap((c) => c.choices.flatMap((x) => x.logprobs?.content ?? []));
    expect(lps).toHaveLength(5);
    expect(lps.map((l) => l.token).join('')).toBe(content);
    for (const l of lps) {
      expect(l.logprob).toBeLessThanOrEqual(0);
      expect(l.bytes).toEqual([...Buffer.from(l.token)]);
    }

    const whole = await client.chat.completions.create({ model: 'fake-model', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 5, seed: 4, logprobs: true });
    expect(whole.choices[0].message.content).toBe(content);
    expect(whole.choices[0].logprobs!.content!.map((l) => l.logprob)).toEqual(lps.map((l) => l.logprob));
  });

  it("uses the model's own Jinja template with special tokens and without adding BOS again", async () => {
    const b = new FakeBackend({
      tokenDelayMs: 0,
      chatTemplate: "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
      tokenizerConfig: { bos_token: { content: '<s>' }, eos_token: '</s>' },
    });
    const s = createHttpServer({ backend: b, processMetrics: false });
    const url = await s.listen({ port: 0, host: '127.0.0.1' });
    try {
      const c = new OpenAI({ apiKey: 'x', baseURL: `${url}/v1`, maxRetries: 0 });
      await c.chat.completions.create({ model: 'fake-model', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1 });
      expect(b.received[0]).toMatchObject({ prompt: '<s><|user|>Hi</s><|assistant|>', addSpecialTokens: false });
      expect(b.received[0].stop).toBeUndefined();
    } finally {
      await s.close();
    }
  });

  it('rejects an unknown model with 404 through the client', async () => {
    await expect(client.chat.completions.create({ model: 'gpt-4', messages: [{ role: 'user', content: 'x' }] })).rejects.toMatchObject({
      status: 404,
    });
  });
});

describe('models, health, stats and sessions', () => {
  it('lists the served model', async () => {
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual(['fake-model']);
    expect((await client.models.retrieve('fake-model')).id).toBe('fake-model');
    await expect(client.models.retrieve('other')).rejects.toMatchObject({ status: 404 });
  });

  it('reports health', async () => {
    const res = await fetch(`${baseURL.replace('/v1', '')}/health`);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ status: 'ok', model: 'fake-model' });
  });

  it('returns getStats() as snake_case JSON plus what the server measured', async () => {
    const res = await fetch(`${baseURL}/stats`);
    const body = (await res.json()) as {
      total_requests: number;
      engine: { kv: { total_pages: number }; selection: { pages_scanned: number } };
      plugins: { early_exit_count: number };
      server: {
        totals: { requests: number };
        gauges: { num_requests_running: number };
        latency_ms: { time_to_first_token: { count: number } };
        draining: boolean;
      };
    };
    expect(body.total_requests).toBe(backend.getStats().totalRequests);
    expect(body.engine.kv.total_pages).toBe(4096);
    expect(body.plugins.early_exit_count).toBe(0);
    expect(body.engine.selection.pages_scanned).toBeGreaterThan(0);
    expect(body.server.totals.requests).toBeGreaterThan(0);
    expect(body.server.gauges.num_requests_running).toBe(0);
    expect(body.server.latency_ms.time_to_first_token.count).toBeGreaterThan(0);
    expect(body.server.draining).toBe(false);
  });

  it('lists, shows and deletes sessions; unknown ones are 404', async () => {
    await client.completions.create({ model: 'fake-model', prompt: 'turn one', max_tokens: 2, ...({ session_id: 'chat-42' } as object) });
    await client.completions.create({ model: 'fake-model', prompt: 'turn two', max_tokens: 2, ...({ session_id: 'chat-42' } as object) });
    const list = (await (await fetch(`${baseURL}/sessions`)).json()) as { object: string; data: Record<string, unknown>[] };
    expect(list.object).toBe('list');
    const s = list.data.find((x) => x.id === 'chat-42');
    expect(s).toMatchObject({ object: 'session', request_count: 2 });
    const one = await fetch(`${baseURL}/sessions/chat-42`);
    expect(one.status).toBe(200);
    expect(await one.json()).toMatchObject({ id: 'chat-42', session_id: 'chat-42', request_count: 2, pages_held: 1 });
    // The second turn reused the first turn's context.
    const stats = (await (await fetch(`${baseURL}/stats`)).json()) as { server: { gauges: { prefix_cache_hits: number } } };
    expect(stats.server.gauges.prefix_cache_hits).toBeGreaterThan(0);
    const del = await fetch(`${baseURL}/sessions/chat-42`, { method: 'DELETE' });
    expect(await del.json()).toEqual({ id: 'chat-42', object: 'session', deleted: true });
    const gone = await fetch(`${baseURL}/sessions/chat-42`);
    expect(gone.status).toBe(404);
    expect(((await gone.json()) as { error: { code: string } }).error.code).toBe('not_found');
    expect((await fetch(`${baseURL}/sessions/chat-42`, { method: 'DELETE' })).status).toBe(404);
  });
});
