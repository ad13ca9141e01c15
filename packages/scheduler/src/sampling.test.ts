import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { SamplerRng, StopStringDetokenizer, argmax, checkSamplingParams, logSumExp, sampleToken } from './sampling.js';
import type { SamplingParams, SamplingSettings } from './sampling.js';
import { MockTokenizer } from './__fixtures__/mock-tokenizer.js';

/**
 * Brute force: full sort, top-k, top-p, one draw, walked in the same order as sampleToken
 * (token-id order when nothing is filtered, best-first otherwise).
 */
function referenceSample(logits: Float32Array, s: SamplingSettings, u: number): number {
  const vocab = logits.length;
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  const w = (i: number): number => Math.exp((logits[i] - max) / s.temperature);
  const filtered = (s.topK > 0 && s.topK < vocab) || s.topP < 1;
  const order = Array.from({ length: vocab }, (_, i) => i);
  if (filtered) order.sort((a, b) => logits[b] - logits[a] || a - b);
  const k = s.topK > 0 && s.topK < vocab ? s.topK : vocab;
  let cand = order.slice(0, k);
  let norm = 0;
  if (k < vocab) for (const i of cand) norm += w(i);
  else for (let i = 0; i < vocab; i++) norm += w(i);
  if (s.topP < 1) {
    let cum = 0;
    for (let j = 0; j < cand.length; j++) {
      cum += w(cand[j]);
      if (cum >= s.topP * norm) {
        cand = cand.slice(0, j + 1);
        break;
      }
    }
  }
  let total = 0;
  for (const i of cand) total += w(i);
  let target = u * total;
  for (const i of cand) {
    target -= w(i);
    if (target < 0) return i;
  }
  return cand[cand.length - 1];
}

function rowOf(probs: number[]): Float32Array {
  return Float32Array.from(probs.map((p) => Math.log(p)));
}

function frequencies(logits: Float32Array, s: SamplingSettings, draws: number): number[] {
  const rng = new SamplerRng(7);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < draws; i++) counts[sampleToken(logits, s, rng)]++;
  return counts.map((c) => c / draws);
}

describe('SamplerRng', () => {
  it('is reproducible per seed and differs across seeds', () => {
    const a = new SamplerRng(42);
    const b = new SamplerRng(42);
    const c = new SamplerRng(43);
    const xs = Array.from({ length: 8 }, () => a.nextFloat());
    expect(Array.from({ length: 8 }, () => b.nextFloat())).toEqual(xs);
    expect(Array.from({ length: 8 }, () => c.nextFloat())).not.toEqual(xs);
    for (const x of xs) expect(x >= 0 && x < 1).toBe(true);
    // Seeds above 2^32 use their high bits too.
    expect(new SamplerRng(2 ** 40 + 42).nextFloat()).not.toBe(new SamplerRng(42).nextFloat());
  });

  it('is roughly uniform', () => {
    const rng = new SamplerRng(1);
    const bins = new Array<number>(10).fill(0);
    for (let i = 0; i < 20000; i++) bins[Math.floor(rng.nextFloat() * 10)]++;
    for (const b of bins) expect(Math.abs(b - 2000)).toBeLessThan(200);
  });

  it('rejects a seed that is not a 53-bit integer', () => {
    expect(() => new SamplerRng(-1)).toThrow(/sampling.seed/);
    expect(() => new SamplerRng(1.5)).toThrow(/sampling.seed/);
  });
});

describe('sampleToken', () => {
  const probs = [0.5, 0.3, 0.15, 0.05];
  const logits = rowOf(probs);

  it('is greedy at temperature 0, first index on ties', () => {
    const rng = new SamplerRng(0);
    expect(sampleToken(Float32Array.of(1, 3, 3, -2), { temperature: 0, topP: 1, topK: 0 }, rng)).toBe(1);
    expect(argmax(Float32Array.of(-Infinity, Number.NaN))).toBe(-1);
    expect(() => sampleToken(Float32Array.of(-Infinity, -Infinity), { temperature: 0, topP: 1, topK: 0 }, rng)).toThrow(/nothing to sample/);
  });

  it('follows the softmax at temperature 1', () => {
    const f = frequencies(logits, { temperature: 1, topP: 1, topK: 0 }, 20000);
    f.forEach((x, i) => expect(Math.abs(x - probs[i])).toBeLessThan(0.02));
  });

  it('sharpens with a low temperature', () => {
    const f = frequencies(logits, { temperature: 0.25, topP: 1, topK: 0 }, 5000);
    // p^4 normalised: 0.5^4 / (0.5^4 + 0.3^4 + ...) ≈ 0.88
    expect(f[0]).toBeGreaterThan(0.83);
  });

  it('keeps only the top-k tokens, renormalised', () => {
    const f = frequencies(logits, { temperature: 1, topP: 1, topK: 2 }, 10000);
    expect(f[2] + f[3]).toBe(0);
    expect(Math.abs(f[0] - 0.5 / 0.8)).toBeLessThan(0.03);
  });

  it('keeps the smallest set whose mass reaches top-p', () => {
    let f = frequencies(logits, { temperature: 1, topP: 0.7, topK: 0 }, 10000);
    expect(f[2] + f[3]).toBe(0);
    expect(Math.abs(f[0] - 0.5 / 0.8)).toBeLessThan(0.03);
    f = frequencies(logits, { temperature: 1, topP: 0.5, topK: 0 }, 200);
    expect(f[0]).toBe(1);
    // top-p applies to the top-k set renormalised: of {0.5, 0.3, 0.15}/0.95, 0.85 needs all three.
    f = frequencies(logits, { temperature: 1, topP: 0.85, topK: 3 }, 10000);
    expect(f[3]).toBe(0);
    expect(f[2]).toBeGreaterThan(0.1);
  });

  it('equals a brute-force full-sort sampler on random logits', () => {
    fc.assert(
      fc.property(
        fc.array(fc.float({ min: -20, max: 20, noNaN: true }), { minLength: 1, maxLength: 300 }),
        fc.double({ min: 0.05, max: 3, noNaN: true }),
        fc.double({ min: 0.01, max: 1, noNaN: true }),
        fc.integer({ min: 0, max: 20 }),
        fc.integer({ min: 0, max: 2 ** 31 }),
        (values, temperature, topP, topK, seed) => {
          const row = Float32Array.from(values);
          const s = { temperature, topP, topK };
          const u = new SamplerRng(seed).nextFloat();
          expect(sampleToken(row, s, new SamplerRng(seed))).toBe(referenceSample(row, s, u));
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('is exact on a large vocabulary with many ties', () => {
    const row = new Float32Array(5000);
    for (let i = 0; i < row.length; i++) row[i] = (i * 7919) % 13;
    for (const s of [
      { temperature: 0.7, topP: 0.9, topK: 0 },
      { temperature: 1.3, topP: 1, topK: 40 },
      { temperature: 1, topP: 0.3, topK: 500 },
    ]) {
      for (let seed = 0; seed < 20; seed++) {
        expect(sampleToken(row, s, new SamplerRng(seed))).toBe(referenceSample(row, s, new SamplerRng(seed).nextFloat()));
      }
    }
  });
});

describe('logSumExp', () => {
  it('is stable and ignores NaN', () => {
    expect(logSumExp(Float32Array.of(1000, 1000))).toBeCloseTo(1000 + Math.log(2), 6);
    expect(logSumExp(Float32Array.of(0, Math.log(3)))).toBeCloseTo(Math.log(4), 6);
    expect(logSumExp(Float32Array.of(0, Number.NaN))).toBeCloseTo(0, 9);
  });
});

describe('StopStringDetokenizer', () => {
  const tok = new MockTokenizer();

  function run(text: string, stop: string[]): { deltas: string[]; text: string; stopped: boolean } {
    const d = new StopStringDetokenizer(tok, stop);
    const deltas: string[] = [];
    let stopped = false;
    for (const id of tok.encode(text)) {
      const r = d.push(id);
      deltas.push(r.delta);
      if (r.stopped) {
        stopped = true;
        break;
      }
    }
    if (!stopped) {
      const r = d.finish();
      deltas.push(r.delta);
      stopped = r.stopped;
    }
    return { deltas, text: d.text, stopped };
  }

  it('cuts before a stop string that straddles tokens and never streams a piece of it', () => {
    const r = run('hello world. more', ['o w']);
    expect(r.text).toBe('hell');
    expect(r.stopped).toBe(true);
    expect(r.deltas.join('')).toBe('hell');
    for (const delta of r.deltas) expect(delta.includes('o')).toBe(false);
  });

  it('holds back a possible start and releases it when it turns out not to be one', () => {
    const d = new StopStringDetokenizer(tok, ['abc']);
    expect(d.push(tok.encode('x')[0]).delta).toBe('x');
    expect(d.push(tok.encode('a')[0]).delta).toBe('');
    expect(d.push(tok.encode('b')[0]).delta).toBe('');
    expect(d.push(tok.encode('d')[0]).delta).toBe('abd');
    expect(d.push(tok.encode('a')[0]).delta).toBe('');
    expect(d.finish()).toEqual({ delta: 'a', stopped: false });
    expect(d.text).toBe('xabda');
  });

  it('takes the earliest of several stop strings', () => {
    expect(run('the cat sat on it', ['on', 'cat']).text).toBe('the ');
    expect(run('nothing here', ['zz']).text).toBe('nothing here');
  });

  it('streams every token at once without stop strings', () => {
    const r = run('ab cd', []);
    expect(r.deltas.slice(0, -1)).toEqual(['a', 'b', ' ', 'c', 'd']);
  });
});

describe('checkSamplingParams', () => {
  const ok: SamplingParams = {
    temperature: 0.7,
    topP: 1,
    topK: 0,
    maxTokens: 16,
    stop: [],
    stopTokenIds: [],
    ignoreEos: false,
    logprobs: false,
    promptLogprobs: false,
  };

  it('accepts sane values and names the bad field', () => {
    expect(() => checkSamplingParams(ok, 64)).not.toThrow();
    expect(() => checkSamplingParams({ ...ok, topP: 0 }, 64)).toThrow(/sampling.topP: must be in \(0, 1\], got 0/);
    expect(() => checkSamplingParams({ ...ok, temperature: -1 }, 64)).toThrow(/sampling.temperature/);
    expect(() => checkSamplingParams({ ...ok, maxTokens: 1.5 }, 64)).toThrow(/sampling.maxTokens: must be an integer/);
    expect(() => checkSamplingParams({ ...ok, seed: -3 }, 64)).toThrow(/sampling.seed/);
    expect(() => checkSamplingParams({ ...ok, stop: [''] }, 64)).toThrow(/sampling.stop\[0\]/);
    expect(() => checkSamplingParams({ ...ok, stopTokenIds: [64] }, 64)).toThrow(/sampling.stopTokenIds\[0\]: must be a token id in \[0, 64\)/);
    expect(() => checkSamplingParams({ ...ok, logprobs: 'yes' as never }, 64)).toThrow(/sampling.logprobs/);
  });
});
