import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, RequestValidationError } from '@tinyserve/core';
import { TinyServe } from './tinyserve.js';

/** Hugging Face transformers' outputs for the tiny checkpoints (see __fixtures__/hf/README.md). */
interface Reference {
  eos_token_id: number | number[];
  prompts: {
    name: string;
    text: string;
    input_ids: number[];
    prompt_logprobs: (number | null)[];
    greedy_ids: number[];
    greedy_logprobs: number[];
  }[];
}

const HF = fileURLToPath(new URL('../../../__fixtures__/hf/', import.meta.url));
const TOL = 1e-3;

function reference(model: string): Reference {
  return JSON.parse(readFileSync(`${HF}${model}/reference.json`, 'utf8')) as Reference;
}

// The whole library path (tokenizer, engine, executor, sampler) against transformers.
describe.each(['gpt2-tiny', 'llama-tiny-gqa', 'llama-tiny-mqa'])('TinyServe on %s', (name) => {
  const ref = reference(name);
  let tinyserve: TinyServe;

  beforeAll(async () => {
    tinyserve = new TinyServe({ pageSize: 16, selectionPolicy: 'dense' });
    await tinyserve.loadModel(`${HF}${name}`);
  });
  afterAll(() => tinyserve.close());

  it('tokenizes prompts exactly as transformers does', () => {
    const tokenizer = tinyserve.loadedModel!.tokenizer;
    for (const p of ref.prompts) expect(tokenizer.encode(p.text)).toEqual(p.input_ids);
  });

  it('generates the reference greedy tokens with matching logprobs, all prompts batched', async () => {
    const responses = await Promise.all(
      ref.prompts.map((p) =>
        tinyserve.serve({ prompt: p.text, maxTokens: p.greedy_ids.length, temperature: 0, logprobs: true, ignoreEos: true }),
      ),
    );
    responses.forEach((response, i) => {
      const p = ref.prompts[i];
      expect(response.tokens).toEqual(p.greedy_ids);
      expect(response.finishReason).toBe('length');
      response.logprobs!.forEach((lp, j) => expect(Math.abs(lp - p.greedy_logprobs[j])).toBeLessThan(TOL));
      expect(response.usage).toMatchObject({ promptTokens: p.input_ids.length, completionTokens: p.greedy_ids.length });
    });
  });

  it('scores the prompt by teacher forcing with echo', async () => {
    const p = ref.prompts[3];
    const response = await tinyserve.serve({ prompt: p.text, maxTokens: 0, echo: true });
    expect(response.promptTokens).toEqual(p.input_ids);
    expect(response.promptLogprobs![0]).toBeNull();
    response.promptLogprobs!.slice(1).forEach((lp, j) => expect(Math.abs(lp! - p.prompt_logprobs[j + 1]!)).toBeLessThan(TOL));
  });
});

describe('TinyServe facade behaviour', () => {
  let tinyserve: TinyServe;
  beforeAll(async () => {
    tinyserve = new TinyServe({ pageSize: 8 });
    await tinyserve.loadModel(`${HF}llama-tiny-gqa`, 'llama');
  });
  afterAll(() => tinyserve.close());

  it('streams text deltas that join to the final text', async () => {
    let streamed = '';
    let done = null;
    for await (const event of tinyserve.serveStream({ prompt: 'The cat sat', maxTokens: 12, temperature: 0, ignoreEos: true })) {
      if (event.type === 'token') streamed += event.text;
      else done = event.response;
    }
    expect(done).not.toBeNull();
    expect(done!.generatedText).toBe(streamed);
    expect(done!.tokens).toHaveLength(12);
  });

  it('is reproducible for a fixed seed and varies with the seed', async () => {
    const run = (seed: number) => tinyserve.serve({ prompt: 'Once upon a time', maxTokens: 16, temperature: 1, seed, ignoreEos: true });
    const [a, b, c] = await Promise.all([run(7), run(7), run(8)]);
    expect(a.tokens).toEqual(b.tokens);
    expect(a.tokens).not.toEqual(c.tokens);
  });

  it('reuses a session\'s KV pages on the next turn', async () => {
    const first = await tinyserve.serve({ prompt: 'The cat sat on the mat and', maxTokens: 8, temperature: 0, sessionId: 's1', ignoreEos: true });
    const tokenizer = tinyserve.loadedModel!.tokenizer;
    const history = [...tokenizer.encode('The cat sat on the mat and'), ...first.tokens, ...tokenizer.encode(' then', { addSpecialTokens: false })];
    const second = await tinyserve.serve({ prompt: history, maxTokens: 4, temperature: 0, sessionId: 's1', ignoreEos: true });
    expect(second.usage.cachedTokens).toBeGreaterThanOrEqual(8);
    expect(tinyserve.scheduler.listSessions()).toContain('s1');
    expect(tinyserve.scheduler.getSessionInfo('s1')).toMatchObject({ requestCount: 2 });
    tinyserve.scheduler.closeSession('s1');
    expect(tinyserve.scheduler.listSessions()).not.toContain('s1');
  });

  it('rejects bad requests with the field named, and keeps serving', async () => {
    await expect(tinyserve.serve({ prompt: 'x', temperature: -1 })).rejects.toThrow(RequestValidationError);
    await expect(tinyserve.serve({ prompt: [1, 999999] })).rejects.toThrow(/vocab|token/i);
    const ok = await tinyserve.serve({ prompt: 'still fine', maxTokens: 2, temperature: 0 });
    expect(ok.tokens.length).toBeGreaterThan(0);
  });

  it('reports statistics in the seed\'s shape', () => {
    const stats = tinyserve.getStats();
    expect(stats.totalRequests).toBeGreaterThan(0);
    expect(stats.avgLatencyMs).toBeGreaterThan(0);
    expect(typeof stats.kvHitRate).toBe('number');
    expect(stats.model?.architecture).toBe('llama');
  });
});

describe('TinyServe configuration and loading errors', () => {
  it('rejects an out-of-range config field by name', () => {
    expect(() => new TinyServe({ selectionRatio: 2 })).toThrow(ConfigError);
    expect(() => new TinyServe({ selectionRatio: 2 })).toThrow(/selectionRatio/);
  });

  it('refuses to serve before a model is loaded', async () => {
    await expect(new TinyServe().serve({ prompt: 'x' })).rejects.toThrow(/no model is loaded/);
  });

  it('names the problem with a wrong model type', async () => {
    await expect(new TinyServe().loadModel(`${HF}gpt2-tiny`, 'llama')).rejects.toThrow(/gpt2|llama/);
  });

  it('falls back to wasm with a warning when the requested executor is unavailable', async () => {
    const warnings: string[] = [];
    const tinyserve = new TinyServe({ executor: 'cuda' }, { logger: { info: () => {}, warn: (m) => warnings.push(m) } });
    const info = await tinyserve.loadModel(`${HF}gpt2-tiny`);
    // Where a GPU and the addon are present the cuda backend loads; elsewhere the fallback says why.
    if (info.executor === 'wasm') expect(warnings.join('\n')).toMatch(/cuda/);
    await tinyserve.close();
  });
});
