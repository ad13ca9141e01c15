import { describe, expect, it } from 'vitest';
import { QualityAccumulator, argmax, klDivergence, logSoftmax } from './metrics.js';

describe('eval metrics', () => {
  it('logSoftmax normalises and is shift invariant', () => {
    const a = logSoftmax([1, 2, 3]);
    const b = logSoftmax([101, 102, 103]);
    expect(Math.exp(a[0]) + Math.exp(a[1]) + Math.exp(a[2])).toBeCloseTo(1, 12);
    a.forEach((v, i) => expect(v).toBeCloseTo(b[i], 12));
  });

  it('KL is 0 for the same distribution, matches a hand computation, and is asymmetric', () => {
    expect(klDivergence([0.5, -1, 3], [0.5, -1, 3])).toBe(0);
    expect(klDivergence([0, 0, 0], [10, 10, 10])).toBe(0);
    // P = (0.5, 0.5), Q = softmax(log 0.9, log 0.1) = (0.9, 0.1).
    const kl = klDivergence([0, 0], [Math.log(0.9), Math.log(0.1)]);
    expect(kl).toBeCloseTo(0.5 * Math.log(0.5 / 0.9) + 0.5 * Math.log(0.5 / 0.1), 12);
    expect(klDivergence([Math.log(0.9), Math.log(0.1)], [0, 0])).not.toBeCloseTo(kl, 3);
  });

  it('argmax takes the first of equal maxima (greedy)', () => {
    expect(argmax([1, 3, 3, 2])).toBe(1);
  });

  it('accumulates perplexity, KL and top-1 agreement', () => {
    const acc = new QualityAccumulator();
    expect(acc.perplexity()).toBeNull();
    acc.add([0, 0], 0, [0, 0]);
    acc.add([Math.log(0.9), Math.log(0.1)], 1, [0, 1]);
    expect(acc.count).toBe(2);
    expect(acc.perplexity()).toBeCloseTo(Math.exp((Math.log(2) - Math.log(0.1)) / 2), 10);
    expect(acc.top1Agreement()).toBe(0.5);
    expect(acc.meanKl()).toBeCloseTo(klDivergence([0, 1], [Math.log(0.9), Math.log(0.1)]) / 2, 12);
  });
});
