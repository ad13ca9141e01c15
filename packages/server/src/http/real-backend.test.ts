import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TinyServe } from '../tinyserve.js';
import { renderChat } from './chat-template.js';
import { createHttpServer } from './server.js';
import type { TinyServeHttpServer } from './server.js';


const fixture = (name: string) => fileURLToPath(new URL(`../../../../__fixtures__/hf/${name}`, import.meta.url));

interface StatsView {
  engine: { requests: { cancelled: number } };
  server: { gauges: { num_requests_running: number; num_requests_waiting: number; num_used_kv_pages: number; prefix_cache_hits: number } };
}

// gpt2-tiny has no chat template (the fallback is used); llama-tiny-gqa has a Jinja one.
describe.each(['gpt2-tiny', 'llama-tiny-gqa'])('HTTP over the real TinyServe facade (%s fixture)', (name) => {
  let tinyserve: TinyServe;
  let server: TinyServeHttpServer;
  let client: OpenAI;
  let url: string;
  const stats = async () => (await (await fetch(`${url}/v1/stats`)).json()) as StatsView;

  beforeAll(async () => {
    tinyserve = new TinyServe({ executor: 'cpu', numKvPages: 64, pageSize: 4 });
    await tinyserve.loadModel(fixture(name));
    server = createHttpServer({ backend: tinyserve, processMetrics: false });
    url = await server.listen({ port: 0, host: '127.0.0.1' });
    client = new OpenAI({ apiKey: 'x', baseURL: `${url}/v1`, maxRetries: 0 });
  });

  afterAll(async () => {
    await server?.close();
    await tinyserve?.close();
  });

  it('completes greedily: streamed text equals the whole response, echo scores the prompt', async () => {
    const base = { model: name, prompt: 'Hello world', max_tokens: 8, temperature: 0, ignore_eos: true } as const;
    const whole = await client.completions.create({ ...base, logprobs: 0, echo: true } as OpenAI.CompletionCreateParamsNonStreaming);
    const choice = whole.choices[0];
    expect(choice.finish_reason).toBe('length');
    expect(choice.text.startsWith('Hello world')).toBe(true);
    expect(whole.usage?.completion_tokens).toBe(8);
    const lp = choice.logprobs!;
    expect(lp.token_logprobs).toHaveLength(whole.usage!.prompt_tokens + 8);
    expect(lp.token_logprobs![0]).toBeNull();
    expect(lp.token_logprobs!.slice(1).every((v) => v !== null && v <= 0)).toBe(true);

    const stream = await client.completions.create({ ...base, stream: true, stream_options: { include_usage: true } } as OpenAI.CompletionCreateParamsStreaming);
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      for (const c of chunk.choices) text += c.text;
      if (chunk.choices.length === 0) usage = chunk.usage;
    }
    expect('Hello world' + text).toBe(choice.text);
    expect(usage?.completion_tokens).toBe(8);
  });

  it('chats through the model template (or the fallback) without a second BOS; n=2 greedy choices agree', async () => {
    const messages = [{ role: 'user' as const, content: 'Hi there' }];
    const res = await client.chat.completions.create({ model: name, messages, max_tokens: 5, temperature: 0, n: 2, ...({ ignore_eos: true } as object) });
    expect(res.choices).toHaveLength(2);
    expect(res.choices[0].message.content).toBe(res.choices[1].message.content);
    const model = tinyserve.loadedModel!;
    const rendered = renderChat(model, messages);
    expect(rendered.usedFallback).toBe(name === 'gpt2-tiny');
    const expected = model.tokenizer.encode(rendered.prompt, { addSpecialTokens: rendered.usedFallback }).length;
    expect(res.usage).toMatchObject({ prompt_tokens: expected, completion_tokens: 10 });
  });

  it('a session turn reuses the previous turn; deleting the session empties the pool', async () => {
    const first = await client.completions.create({ model: name, prompt: 'one two three four five', max_tokens: 4, temperature: 0, ...({ session_id: 's1', ignore_eos: true } as object) });
    const next = `one two three four five${first.choices[0].text} six`;
    const second = await client.completions.create({ model: name, prompt: next, max_tokens: 2, temperature: 0, ...({ session_id: 's1' } as object) });
    expect((second.usage as OpenAI.CompletionUsage).prompt_tokens_details?.cached_tokens).toBeGreaterThan(0);
    const info = (await (await fetch(`${url}/v1/sessions/s1`)).json()) as Record<string, unknown>;
    expect(info).toMatchObject({ id: 's1', session_id: 's1', request_count: 2 });
    expect(info.pages_held).toBeGreaterThan(0);
    expect((await fetch(`${url}/v1/sessions/s1`, { method: 'DELETE' })).status).toBe(200);
    const g = (await stats()).server.gauges;
    expect(g).toMatchObject({ num_requests_running: 0, num_requests_waiting: 0, num_used_kv_pages: 0 });
  });

  it('a client that disconnects mid-stream cancels its request in the engine and frees its pages', async () => {
    const before = (await stats()).engine.requests.cancelled;
    const controller = new AbortController();
    const res = await fetch(`${url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ prompt: 'count', max_tokens: 200, temperature: 0, ignore_eos: true, stream: true }),
      signal: controller.signal,
    });
    await res.body!.getReader().read();
    controller.abort();
    let s = await stats();
    for (let i = 0; i < 200 && s.engine.requests.cancelled === before; i++) {
      await new Promise((r) => setTimeout(r, 10));
      s = await stats();
    }
    expect(s.engine.requests.cancelled).toBe(before + 1);
    expect(s.server.gauges).toMatchObject({ num_requests_running: 0, num_used_kv_pages: 0 });
  });
});
