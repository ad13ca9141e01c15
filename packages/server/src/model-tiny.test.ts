import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MODEL_TINY_DIR, MODEL_TINY_NAME } from '@tinyserve/model-tiny';
import { TinyServe } from './tinyserve.js';

/** transformers' greedy continuations of the bundled model (fp16 weights upcast to fp32). */
interface ModelTinyReference {
  prompts: { prompt: string; input_ids: number[]; output_ids: number[]; logprobs: number[] }[];
}

const reference = JSON.parse(readFileSync(join(MODEL_TINY_DIR, 'reference.json'), 'utf8')) as ModelTinyReference;

describe('the bundled default model through TinyServe', () => {
  let tinyserve: TinyServe;
  beforeAll(async () => {
    tinyserve = new TinyServe({ selectionPolicy: 'dense', targetMemoryGb: 1 });
    const info = await tinyserve.loadModel();
    expect(info.name).toBe(MODEL_TINY_NAME);
  });
  afterAll(() => tinyserve.close());

  it('is what loadModel() loads without arguments', () => {
    expect(tinyserve.modelInfo).toMatchObject({ architecture: 'llama', maxModelLen: 2048 });
    expect(tinyserve.modelInfo!.parameters).toBeGreaterThan(10e6);
  });

  it('tokenizes like transformers and stays with its greedy continuations', async () => {
    const responses = await Promise.all(
      reference.prompts.map((p) => tinyserve.serve({ prompt: p.prompt, maxTokens: p.output_ids.length, temperature: 0, logprobs: true, ignoreEos: true })),
    );
    responses.forEach((response, i) => {
      const p = reference.prompts[i];
      expect(tinyserve.loadedModel!.tokenizer.encode(p.prompt)).toEqual(p.input_ids);
      expect(response.tokens).toEqual(p.output_ids);
      response.logprobs!.forEach((lp, j) => expect(Math.abs(lp - p.logprobs[j])).toBeLessThan(1e-3));
    });
  });

  it('generates the same text for the same seed', async () => {
    const request = { prompt: 'The state of the Union is', maxTokens: 24, temperature: 0.8, topP: 0.95, seed: 42 };
    const a = await tinyserve.serve(request);
    const b = await tinyserve.serve(request);
    expect(a.generatedText).toBe(b.generatedText);
    expect(a.generatedText.length).toBeGreaterThan(0);
  });
});
