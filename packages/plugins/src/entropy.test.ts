import { describe, expect, it } from 'vitest';
import { meanAttentionEntropy, nextTokenEntropy, softmaxEntropy } from './index.js';
import { attentionStats, requestInfo, tokenStep, uniformLogits } from './__fixtures__/steps.js';

/** Textbook definition in float64, for rows small enough not to overflow. */
function naiveEntropy(row: number[]): number {
  const exps = row.map((x) => Math.exp(x));
  const z = exps.reduce((a, b) => a + b, 0);
  return -exps.reduce((h, e) => (e === 0 ? h : h + (e / z) * Math.log(e / z)), 0);
}

describe('softmaxEntropy', () => {
  it('is ln k for a distribution uniform over k tokens, 0 for a single one', () => {
    for (const k of [1, 2, 3, 50, 1000]) {
      expect(softmaxEntropy(uniformLogits(1024, k))).toBeCloseTo(Math.log(k), 10);
    }
  });

  it('matches the textbook definition on arbitrary rows', () => {
    let seed = 7;
    const rand = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 8 - 4;
    for (let t = 0; t < 20; t++) {
      const row = Array.from({ length: 37 }, rand);
      expect(softmaxEntropy(Float32Array.from(row))).toBeCloseTo(naiveEntropy(Array.from(Float32Array.from(row))), 9);
    }
  });

  it('is stable for logits far beyond exp range and invariant to a shift', () => {
    const row = [1.5, -0.5, 0.25, 2];
    const shifted = row.map((x) => x + 5e4);
    expect(Number.isFinite(naiveEntropy(shifted))).toBe(false);
    expect(softmaxEntropy(shifted)).toBeCloseTo(naiveEntropy(row), 9);
    expect(softmaxEntropy(row.map((x) => x - 5e4))).toBeCloseTo(naiveEntropy(row), 9);
  });

  it('skips masked (-Infinity) entries and flags degenerate rows with NaN', () => {
    expect(softmaxEntropy([0, -Infinity, 0, -Infinity])).toBeCloseTo(Math.log(2), 12);
    expect(softmaxEntropy([Infinity, 3, Infinity])).toBeCloseTo(Math.log(2), 12);
    expect(softmaxEntropy([-Infinity, -Infinity])).toBeNaN();
    expect(softmaxEntropy([])).toBeNaN();
    expect(softmaxEntropy([0, Number.NaN, 1])).toBeNaN();
  });
});

describe('meanAttentionEntropy', () => {
  it('averages over the layers of the asked sequence only', () => {
    const stats = [...attentionStats(1, 2, 0.5), { seqId: 1, layer: 2, entropy: 2 }, ...attentionStats(2, 3, 9)];
    expect(meanAttentionEntropy(stats, 1)).toBeCloseTo(1, 12);
    expect(meanAttentionEntropy(stats, 2)).toBeCloseTo(9, 12);
    expect(meanAttentionEntropy(stats, 3)).toBeUndefined();
    expect(meanAttentionEntropy(undefined, 1)).toBeUndefined();
  });
});

describe('nextTokenEntropy', () => {
  it('computes the entropy of a step once, however many readers', () => {
    const ctx = tokenStep(requestInfo('r'), 1, { logits: uniformLogits(64, 8) });
    expect(nextTokenEntropy(ctx)).toBeCloseTo(Math.log(8), 10);
    // The cache is keyed by the step's context: a changed row is not re-read within the step.
    ctx.logits.fill(0);
    expect(nextTokenEntropy(ctx)).toBeCloseTo(Math.log(8), 10);
    expect(nextTokenEntropy({ ...ctx })).toBeCloseTo(Math.log(64), 10);
  });
});
