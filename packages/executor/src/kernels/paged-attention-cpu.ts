import { rotateHead } from './rope.js';
import type { RopeTables } from './rope.js';

/**
 * The reference paged attention of one layer for one batched step, in plain TypeScript over
 * typed arrays. The `wasm` and `cpu` tfjs kernels call it directly; other kernels (sparse
 * page selection, CUDA) are checked against it.
 *
 * The KV cache follows `KvLayout` of @tinyserve/core: token-major per layer, element
 * (page, slot, kvHead, d) at ((page * pageSize + slot) * numKvHeads + kvHead) * headDim + d.
 */
export interface PagedAttentionParams {
  numTokens: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  /**
   * Fused projections of the step, [numTokens, (numHeads + 2 * numKvHeads) * headDim]:
   * per token all query heads, then all key heads, then all value heads.
   */
  qkv: Float32Array;
  /** Attention output, [numTokens, numHeads * headDim]; fully overwritten. */
  out: Float32Array;
  /** This layer's key and value pages. Keys are stored after RoPE. */
  keyCache: Float32Array;
  valueCache: Float32Array;
  /** Per token: the index of its sequence in the page table. */
  tokenSeq: Int32Array;
  /** Per token: its absolute position in its sequence. */
  tokenPos: Int32Array;
  /** CSR page table: sequence s owns pages `pageIndices[pageIndptr[s] .. pageIndptr[s+1])`, in order. */
  pageIndptr: Int32Array;
  pageIndices: Int32Array;
  /** RoPE tables per token (LLaMA), or null for learned positions (GPT-2). */
  rope: RopeTables | null;
  /** Multiplies q·k (1/sqrt(headDim)). */
  scale: number;
  /**
   * Keys per online-softmax chunk: scratch memory is O(chunkSize), not O(context). Rounded
   * down to whole pages (at least one).
   */
  chunkSize: number;
  /** Asks for the attention distribution of one query per sequence. */
  stats?: AttentionStatsSink;
}

/** Where {@link pagedAttention} records the attention of the last query of each sequence. */
export interface AttentionStatsSink {
  /** Per sequence, the token (row of `qkv`) whose attention is recorded, or -1 for none. */
  tokens: Int32Array;
  /** Written: per sequence, the mean over query heads of the attention entropy (nats). */
  entropy: Float64Array;
  /**
   * Written: per sequence, the attention mass on each position `0 .. tokenPos[token]`,
   * averaged over query heads. Allocated by the caller with that length.
   */
  positionMass: Float32Array[];
}

/** Appends the step's keys (rotated) and values to their pages, then attends. */
export function pagedAttention(p: PagedAttentionParams): void {
  appendKvToPages(p);
  attendOverPages(p);
}

/** Writes each token's K (after RoPE) and V into slot `pos % pageSize` of page `pos / pageSize` of its sequence. */
export function appendKvToPages(p: PagedAttentionParams): void {
  const { numTokens, numHeads, numKvHeads, headDim, pageSize, qkv, keyCache, valueCache, rope } = p;
  const stride = (numHeads + 2 * numKvHeads) * headDim;
  const kvRow = numKvHeads * headDim;
  for (let t = 0; t < numTokens; t++) {
    const pos = p.tokenPos[t];
    const page = p.pageIndices[p.pageIndptr[p.tokenSeq[t]] + Math.floor(pos / pageSize)];
    const dst = (page * pageSize + (pos % pageSize)) * kvRow;
    const kSrc = t * stride + numHeads * headDim;
    const vSrc = kSrc + kvRow;
    if (rope) {
      for (let g = 0; g < numKvHeads; g++) {
        rotateHead(qkv, kSrc + g * headDim, rope, t, headDim, 1, keyCache, dst + g * headDim);
      }
    } else {
      keyCache.set(qkv.subarray(kSrc, kSrc + kvRow), dst);
    }
    valueCache.set(qkv.subarray(vSrc, vSrc + kvRow), dst);
  }
}

/**
 * Causal attention of every new query over all cached positions `0 .. pos` of its own
 * sequence, read page by page; online softmax over chunks of pages, accumulated in float64.
 * The query heads sharing a KV head are processed together so each K/V row is fetched once
 * per group, and dot products run four independent accumulators (JS does not vectorise).
 */
export function attendOverPages(p: PagedAttentionParams): void {
  const { numTokens, numHeads, numKvHeads, headDim: D, pageSize, qkv, out, keyCache, valueCache, rope, scale } = p;
  const stride = (numHeads + 2 * numKvHeads) * D;
  const kvRow = numKvHeads * D;
  const group = numHeads / numKvHeads;
  const pagesPerChunk = Math.max(1, Math.floor(p.chunkSize / pageSize));
  const chunkKeys = pagesPerChunk * pageSize;
  const q = new Float64Array(group * D);
  const acc = new Float64Array(group * D);
  const scores = new Float64Array(group * chunkKeys);
  const m = new Float64Array(group);
  const l = new Float64Array(group);
  const chunkMax = new Float64Array(group);
  const stats = p.stats;

  for (let t = 0; t < numTokens; t++) {
    const seq = p.tokenSeq[t];
    const pos = p.tokenPos[t];
    const pageBase = p.pageIndptr[seq];
    const numCtxPages = Math.floor(pos / pageSize) + 1;
    const lastPageSlots = pos - (numCtxPages - 1) * pageSize + 1;
    const recordStats = stats !== undefined && stats.tokens[seq] === t;
    let entropySum = 0;

    for (let g = 0; g < numKvHeads; g++) {
      const h0 = g * group;
      for (let gi = 0; gi < group; gi++) {
        const qSrc = t * stride + (h0 + gi) * D;
        if (rope) rotateHead(qkv, qSrc, rope, t, D, scale, q, gi * D);
        else for (let d = 0; d < D; d++) q[gi * D + d] = qkv[qSrc + d] * scale;
      }
      acc.fill(0);
      m.fill(-Infinity);
      l.fill(0);

      for (let c0 = 0; c0 < numCtxPages; c0 += pagesPerChunk) {
        const c1 = Math.min(numCtxPages, c0 + pagesPerChunk);
        chunkMax.fill(-Infinity);
        let n = 0;
        for (let pi = c0; pi < c1; pi++) {
          const slots = pi === numCtxPages - 1 ? lastPageSlots : pageSize;
          let off = p.pageIndices[pageBase + pi] * pageSize * kvRow + g * D;
          for (let s = 0; s < slots; s++, off += kvRow, n++) {
            for (let gi = 0; gi < group; gi++) {
              const dot = dot4(q, gi * D, keyCache, off, D);
              scores[gi * chunkKeys + n] = dot;
              if (dot > chunkMax[gi]) chunkMax[gi] = dot;
            }
          }
        }
        for (let gi = 0; gi < group; gi++) {
          const newMax = chunkMax[gi] > m[gi] ? chunkMax[gi] : m[gi];
          if (m[gi] !== -Infinity && newMax !== m[gi]) {
            const alpha = Math.exp(m[gi] - newMax);
            l[gi] *= alpha;
            for (let d = gi * D; d < (gi + 1) * D; d++) acc[d] *= alpha;
          }
          m[gi] = newMax;
        }
        n = 0;
        for (let pi = c0; pi < c1; pi++) {
          const slots = pi === numCtxPages - 1 ? lastPageSlots : pageSize;
          let off = p.pageIndices[pageBase + pi] * pageSize * kvRow + g * D;
          for (let s = 0; s < slots; s++, off += kvRow, n++) {
            for (let gi = 0; gi < group; gi++) {
              const w = Math.exp(scores[gi * chunkKeys + n] - m[gi]);
              l[gi] += w;
              axpy(w, valueCache, off, acc, gi * D, D);
            }
          }
        }
      }

      for (let gi = 0; gi < group; gi++) {
        const o = t * numHeads * D + (h0 + gi) * D;
        const inv = 1 / l[gi];
        for (let d = 0; d < D; d++) out[o + d] = acc[gi * D + d] * inv;
        if (recordStats) {
          entropySum += recordDistribution(p, q, gi * D, g, pageBase, numCtxPages, lastPageSlots, m[gi], inv, stats.positionMass[seq]);
        }
      }
    }
    if (recordStats) stats.entropy[seq] = entropySum / numHeads;
  }
}

/** `a[ao .. ao+n) · b[bo .. bo+n)` with four independent accumulators. */
function dot4(a: Float64Array, ao: number, b: Float32Array, bo: number, n: number): number {
  let s0 = 0;
  let s1 = 0;
  let s2 = 0;
  let s3 = 0;
  let i = 0;
  for (; i + 3 < n; i += 4) {
    s0 += a[ao + i] * b[bo + i];
    s1 += a[ao + i + 1] * b[bo + i + 1];
    s2 += a[ao + i + 2] * b[bo + i + 2];
    s3 += a[ao + i + 3] * b[bo + i + 3];
  }
  for (; i < n; i++) s0 += a[ao + i] * b[bo + i];
  return s0 + s1 + (s2 + s3);
}

/** `y[yo .. yo+n) += w * x[xo .. xo+n)`. */
function axpy(w: number, x: Float32Array, xo: number, y: Float64Array, yo: number, n: number): void {
  let i = 0;
  for (; i + 3 < n; i += 4) {
    y[yo + i] += w * x[xo + i];
    y[yo + i + 1] += w * x[xo + i + 1];
    y[yo + i + 2] += w * x[xo + i + 2];
    y[yo + i + 3] += w * x[xo + i + 3];
  }
  for (; i < n; i++) y[yo + i] += w * x[xo + i];
}

/**
 * Second pass for one recorded query head: adds its probabilities / numHeads to `mass` and
 * returns its entropy. Scores are recomputed so that the main pass keeps O(chunk) scratch.
 */
function recordDistribution(
  p: PagedAttentionParams,
  q: Float64Array,
  qOffset: number,
  g: number,
  pageBase: number,
  numCtxPages: number,
  lastPageSlots: number,
  m: number,
  invSum: number,
  mass: Float32Array,
): number {
  const { headDim, pageSize, keyCache } = p;
  const kvRow = p.numKvHeads * headDim;
  const share = 1 / p.numHeads;
  let entropy = 0;
  let j = 0;
  for (let pi = 0; pi < numCtxPages; pi++) {
    const slots = pi === numCtxPages - 1 ? lastPageSlots : pageSize;
    let off = p.pageIndices[pageBase + pi] * pageSize * kvRow + g * headDim;
    for (let s = 0; s < slots; s++, off += kvRow, j++) {
      const prob = Math.exp(dot4(q, qOffset, keyCache, off, headDim) - m) * invSum;
      mass[j] += prob * share;
      if (prob > 0) entropy -= prob * Math.log(prob);
    }
  }
  return entropy;
}
