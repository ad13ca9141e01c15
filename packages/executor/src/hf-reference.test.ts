import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadModel } from '@tinyserve/core';
import type { ExecutorOptions, LoadedModel } from '@tinyserve/core';
import { createExecutor } from './executor-registry.js';
import { TestPager } from './__fixtures__/paging.js';

/** Hugging Face transformers' outputs for the tiny checkpoints (see __fixtures__/hf/README.md). */
interface Reference {
  prompts: {
    name: string;
    input_ids: number[];
    prompt_logprobs: (number | null)[];
    last_logits_top5: { ids: number[]; values: number[] };
    greedy_ids: number[];
    greedy_logprobs: number[];
  }[];
}

const HF = fileURLToPath(new URL('../../../__fixtures__/hf/', import.meta.url));
const MODELS = ['gpt2-tiny', 'gpt2-tiny-fp16', 'llama-tiny-gqa', 'llama-tiny-gqa-bf16', 'llama-tiny-gqa-sharded', 'llama-tiny-mqa'];
const TOL = 1e-3;

function logSoftmax(row: Float32Array): Float64Array {
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return Float64Array.from(row, (v) => v - lse);
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

function options(model: LoadedModel): ExecutorOptions {
  return {
    model,
    pageSize: 4,
    numKvPages: 256,
    kvCacheDtype: 'fp32',
    attentionChunkSize: 32,
    selection: { policy: 'dense', selectionRatio: 1, tokenBudget: null, sinkPages: 0, denseLayers: 0, useFusedKernel: true },
  };
}

describe.each(MODELS)('%s against Hugging Face transformers', (name) => {
  it.each(['wasm', 'cpu'])('teacher-forced logprobs and greedy continuations match on %s (all prompts batched)', async (backend) => {
    const ref = JSON.parse(readFileSync(`${HF}${name}/reference.json`, 'utf8')) as Reference;
    const model = await loadModel(`${HF}${name}`);
    const ex = await createExecutor(backend, options(model));
    const V = model.config.vocabSize;
    const pager = new TestPager(256, 4, 17);
    const prompts = ref.prompts;

    // One step prefills every prompt, with logits for every position (echo-style scoring).
    const prefill = await ex.forward(pager.step(prompts.map((p, s) => ({ seqId: s, tokens: p.input_ids, logitsMode: 2 as const }))));
    const rows: Float32Array[] = [];
    prompts.forEach((p, s) => {
      const row = (i: number) => prefill.logits.subarray((prefill.logitsIndptr[s] + i) * V, (prefill.logitsIndptr[s] + i + 1) * V);
      for (let i = 1; i < p.input_ids.length; i++) {
        expect(Math.abs(logSoftmax(row(i - 1))[p.input_ids[i]] - (p.prompt_logprobs[i] as number))).toBeLessThan(TOL);
      }
      const final = row(p.input_ids.length - 1);
      p.last_logits_top5.ids.forEach((id, k) => expect(Math.abs(final[id] - p.last_logits_top5.values[k])).toBeLessThan(TOL));
      rows.push(final);
    });

    // Greedy decoding through the paged cache, one token per sequence per step, all batched.
    const steps = prompts[0].greedy_ids.length;
    const generated: number[][] = prompts.map(() => []);
    const logprobs: number[][] = prompts.map(() => []);
    for (let step = 0; step < steps; step++) {
      const chosen = rows.map(argmax);
      prompts.forEach((_, s) => {
        generated[s].push(chosen[s]);
        logprobs[s].push(logSoftmax(rows[s])[chosen[s]]);
      });
      if (step + 1 === steps) break;
      const result = await ex.forward(pager.step(prompts.map((_, s) => ({ seqId: s, tokens: [chosen[s]], logitsMode: 1 as const }))));
      prompts.forEach((_, s) => (rows[s] = result.logits.subarray(s * V, (s + 1) * V)));
    }
    prompts.forEach((p, s) => {
      expect(generated[s]).toEqual(p.greedy_ids);
      logprobs[s].forEach((lp, i) => expect(Math.abs(lp - p.greedy_logprobs[i])).toBeLessThan(TOL));
    });
    ex.dispose();
  });
});
