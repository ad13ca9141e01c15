/** Log-softmax of a logits row, in float64. */
export function logSoftmax(logits: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > max) max = logits[i];
  let sum = 0;
  for (let i = 0; i < logits.length; i++) sum += Math.exp(logits[i] - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(logits.length);
  for (let i = 0; i < logits.length; i++) out[i] = logits[i] - lse;
  return out;
}

/** Index of the largest value; ties go to the lower index (as greedy sampling does). */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

/**
 * KL(P || Q) in nats between the next-token distributions of two logit rows (P the
 * reference, e.g. dense). Terms where P has no mass contribute nothing; a token P can emit
 * and Q cannot makes it infinite.
 */
export function klDivergence(pLogits: ArrayLike<number>, qLogits: ArrayLike<number>): number {
  const lp = logSoftmax(pLogits);
  const lq = logSoftmax(qLogits);
  let kl = 0;
  for (let i = 0; i < lp.length; i++) {
    const p = Math.exp(lp[i]);
    if (p === 0) continue;
    kl += p * (lp[i] - lq[i]);
  }
  // Rounding can leave a tiny negative value for identical rows.
  return Math.max(kl, 0);
}

/** Running sums of the token-level quality figures of one policy against dense. */
export class QualityAccumulator {
  private nll = 0;
  private kl = 0;
  private agree = 0;
  private tokens = 0;
  private compared = 0;

  /** One predicted token: the policy's logits, the true next token, and dense's logits (when compared). */
  add(logits: ArrayLike<number>, target: number, denseLogits?: ArrayLike<number>): void {
    const lp = logSoftmax(logits);
    this.nll -= lp[target];
    this.tokens++;
    if (denseLogits !== undefined) {
      this.kl += klDivergence(denseLogits, logits);
      if (argmax(denseLogits) === argmax(logits)) this.agree++;
      this.compared++;
    }
  }

  get count(): number {
    return this.tokens;
  }

  /** exp(mean negative log-likelihood); null before any token. */
  perplexity(): number | null {
    return this.tokens > 0 ? Math.exp(this.nll / this.tokens) : null;
  }

  meanNll(): number | null {
    return this.tokens > 0 ? this.nll / this.tokens : null;
  }

  meanKl(): number | null {
    return this.compared > 0 ? this.kl / this.compared : null;
  }

  /** Fraction of tokens where the policy's top-1 token equals dense's. */
  top1Agreement(): number | null {
    return this.compared > 0 ? this.agree / this.compared : null;
  }
}
