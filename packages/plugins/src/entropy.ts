import type { AttentionStats, TokenHookContext } from '@tinyserve/core';

/**
 * Entropy (nats) of softmax(logits), computed stably: with m = max(x), Z = Σ exp(x_i - m),
 * H = log Z - Σ exp(x_i - m)(x_i - m) / Z. Entries at -Infinity (masked tokens) carry no mass
 * and are skipped. Returns NaN when the row holds a NaN or has no finite mass (all -Infinity
 * or empty); +Infinity entries share the whole mass (entropy log of their count).
 */
export function softmaxEntropy(logits: ArrayLike<number>): number {
  const n = logits.length;
  let max = -Infinity;
  for (let i = 0; i < n; i++) {
    const x = logits[i];
    if (Number.isNaN(x)) return Number.NaN;
    if (x > max) max = x;
  }
  if (max === -Infinity) return Number.NaN;
  if (max === Infinity) {
    let count = 0;
    for (let i = 0; i < n; i++) if (logits[i] === Infinity) count++;
    return Math.log(count);
  }
  let z = 0;
  let weighted = 0;
  for (let i = 0; i < n; i++) {
    const x = logits[i];
    if (x === -Infinity) continue;
    const d = x - max;
    const e = Math.exp(d);
    z += e;
    weighted += e * d;
  }
  // z >= 1 (the max contributes exp(0)); clamp tiny negative rounding to 0.
  return Math.max(0, Math.log(z) - weighted / z);
}

/**
 * Mean over layers of the attention entropy for sequence `seqId`, or undefined when the step
 * carries no statistics for it.
 */
export function meanAttentionEntropy(stats: readonly AttentionStats[] | undefined, seqId: number): number | undefined {
  if (stats === undefined) return undefined;
  let sum = 0;
  let count = 0;
  for (const s of stats) {
    if (s.seqId !== seqId) continue;
    sum += s.entropy;
    count++;
  }
  return count === 0 ? undefined : sum / count;
}

// The manager hands the same context object to every plugin of one step, so the entropy of
// a step's logits row is computed at most once however many plugins read it.
const entropyCache = new WeakMap<TokenHookContext, number>();

/** Entropy (nats) of the distribution the accepted token was sampled from, cached per step. */
export function nextTokenEntropy(ctx: TokenHookContext): number {
  let h = entropyCache.get(ctx);
  if (h === undefined) {
    h = softmaxEntropy(ctx.logits);
    entropyCache.set(ctx, h);
  }
  return h;
}
