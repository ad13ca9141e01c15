import type { AttentionStats, RequestHookInfo, TokenHookContext } from '@tinyserve/core';

/** A logits row whose softmax is uniform over its first `k` entries: entropy exactly ln k. */
export function uniformLogits(vocab: number, k: number): Float32Array {
  const row = new Float32Array(vocab).fill(-Infinity);
  for (let i = 0; i < k; i++) row[i] = 3.25;
  return row;
}

export function requestInfo(requestId: string, seqId = 0, promptLength = 4): RequestHookInfo {
  return { requestId, seqId, promptLength };
}

/** Per-layer statistics for one sequence: the same entropy and mass on every layer. */
export function attentionStats(seqId: number, layers: number, entropy: number, positionMass?: ArrayLike<number>): AttentionStats[] {
  const out: AttentionStats[] = [];
  for (let layer = 0; layer < layers; layer++) {
    out.push({ seqId, layer, entropy, positionMass: positionMass === undefined ? undefined : Float32Array.from(positionMass) });
  }
  return out;
}

/**
 * The context of the n-th accepted token (1-based) of a request: generated ids 100..,
 * a context of prompt + n tokens unless given.
 */
export function tokenStep(info: RequestHookInfo, n: number, extra: Partial<TokenHookContext> = {}): TokenHookContext {
  const generatedTokens = Array.from({ length: n }, (_, i) => 100 + i);
  return {
    ...info,
    tokenId: generatedTokens[n - 1],
    logprob: -0.25,
    logits: uniformLogits(16, 16),
    generatedTokens,
    contextLength: info.promptLength + n,
    ...extra,
  };
}
