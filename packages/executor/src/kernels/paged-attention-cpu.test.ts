import { describe, expect, it } from 'vitest';
import { kvElementIndex } from '@tinyserve/core';
import { makeNormal, makeRng } from '../__fixtures__/random-model.js';
import { pagedAttention } from './paged-attention-cpu.js';
import type { PagedAttentionParams } from './paged-attention-cpu.js';
import { computeRopeTables } from './rope.js';

interface Case {
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  /** Per sequence: [cached positions, new tokens]. */
  seqs: [number, number][];
  rope: boolean;
}

/** Builds a step where the cached positions' K/V sit in shuffled pages, plus naive dense K/V per sequence. */
function setup(c: Case, chunkSize: number, seed = 1) {
  const normal = makeNormal(seed);
  const { numHeads, numKvHeads, headDim, pageSize } = c;
  const kvRow = numKvHeads * headDim;
  const totalPages = c.seqs.reduce((a, [cached, n]) => a + Math.ceil((cached + n) / pageSize), 0) + 3;
  const rng = makeRng(seed + 1);
  const order = Array.from({ length: totalPages }, (_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const keyCache = new Float32Array(totalPages * pageSize * kvRow);
  const valueCache = new Float32Array(totalPages * pageSize * kvRow);
  const layout = { numLayers: 1, numPages: totalPages, pageSize, numKvHeads, headDim };
  const pageIndptr = [0];
  const pageIndices: number[] = [];
  const tokenSeq: number[] = [];
  const tokenPos: number[] = [];
  // Naive per-sequence dense K (already rotated, as the cache holds) and V: [position][kvRow].
  const denseK: Float64Array[][] = [];
  const denseV: Float64Array[][] = [];
  let next = 0;
  c.seqs.forEach(([cached, n], s) => {
    const pages = order.slice(next, next + Math.ceil((cached + n) / pageSize));
    next += pages.length;
    pageIndices.push(...pages);
    pageIndptr.push(pageIndices.length);
    denseK.push([]);
    denseV.push([]);
    for (let p = 0; p < cached; p++) {
      const k = Float64Array.from({ length: kvRow }, () => normal());
      const v = Float64Array.from({ length: kvRow }, () => normal());
      const off = kvElementIndex(layout, pages[Math.floor(p / pageSize)], p % pageSize, 0);
      keyCache.set(k, off);
      valueCache.set(v, off);
      denseK[s].push(Float64Array.from(keyCache.subarray(off, off + kvRow)));
      denseV[s].push(Float64Array.from(valueCache.subarray(off, off + kvRow)));
    }
    for (let i = 0; i < n; i++) {
      tokenSeq.push(s);
      tokenPos.push(cached + i);
    }
  });
  const numTokens = tokenSeq.length;
  const stride = (numHeads + 2 * numKvHeads) * headDim;
  const qkv = Float32Array.from({ length: numTokens * stride }, () => normal() * 1.5);
  const positions = Int32Array.from(tokenPos);
  const params: PagedAttentionParams = {
    numTokens,
    numHeads,
    numKvHeads,
    headDim,
    pageSize,
    qkv,
    out: new Float32Array(numTokens * numHeads * headDim),
    keyCache,
    valueCache,
    tokenSeq: Int32Array.from(tokenSeq),
    tokenPos: positions,
    pageIndptr: Int32Array.from(pageIndptr),
    pageIndices: Int32Array.from(pageIndices),
    rope: c.rope ? computeRopeTables(positions, headDim, 10000) : null,
    scale: 1 / Math.sqrt(headDim),
    chunkSize,
  };
  return { params, denseK, denseV, layout };
}

/** Rotates one head vector by HF's rotate_half convention, in float64. */
function rotate(x: Float64Array, pos: number, headDim: number): Float64Array {
  const half = headDim / 2;
  return x.map((v, d) => {
    const angle = pos / Math.pow(10000, (2 * (d % half)) / headDim);
    const rotated = d < half ? -x[d + half] : x[d - half];
    return v * Math.cos(angle) + rotated * Math.sin(angle);
  });
}

/** Naive causal attention over the dense K/V (new tokens appended in order); returns outputs and probabilities. */
function naive(c: Case, params: PagedAttentionParams, denseK: Float64Array[][], denseV: Float64Array[][]) {
  const { numHeads, numKvHeads, headDim } = c;
  const stride = (numHeads + 2 * numKvHeads) * headDim;
  const out = new Float64Array(params.out.length);
  const probs: number[][][] = []; // [token][head][position]
  for (let t = 0; t < params.numTokens; t++) {
    const s = params.tokenSeq[t];
    const pos = params.tokenPos[t];
    const k = new Float64Array(numKvHeads * headDim);
    for (let g = 0; g < numKvHeads; g++) {
      const raw = Float64Array.from(params.qkv.subarray(t * stride + (numHeads + g) * headDim, t * stride + (numHeads + g + 1) * headDim));
      k.set(c.rope ? rotate(raw, pos, headDim) : raw, g * headDim);
    }
    denseK[s][pos] = Float64Array.from(Float32Array.from(k));
    denseV[s][pos] = Float64Array.from(params.qkv.subarray(t * stride + (numHeads + numKvHeads) * headDim, (t + 1) * stride));
  }
  for (let t = 0; t < params.numTokens; t++) {
    const s = params.tokenSeq[t];
    const pos = params.tokenPos[t];
    probs.push([]);
    for (let h = 0; h < numHeads; h++) {
      const g = Math.floor(h / (numHeads / numKvHeads));
      const rawQ = Float64Array.from(params.qkv.subarray(t * stride + h * headDim, t * stride + (h + 1) * headDim));
      const q = c.rope ? rotate(rawQ, pos, headDim) : rawQ;
      const scores = denseK[s].slice(0, pos + 1).map((k) => {
        let dot = 0;
        for (let d = 0; d < headDim; d++) dot += q[d] * k[g * headDim + d];
        return dot / Math.sqrt(headDim);
      });
      const max = Math.max(...scores);
      const e = scores.map((x) => Math.exp(x - max));
      const z = e.reduce((a, b) => a + b, 0);
      const p = e.map((x) => x / z);
      probs[t].push(p);
      for (let j = 0; j <= pos; j++) {
        for (let d = 0; d < headDim; d++) out[t * numHeads * headDim + h * headDim + d] += p[j] * denseV[s][j][g * headDim + d];
      }
    }
  }
  return { out, probs };
}

const CASES: [string, Case][] = [
  ['MHA, GPT-2 style (no RoPE)', { numHeads: 3, numKvHeads: 3, headDim: 8, pageSize: 4, seqs: [[9, 1], [0, 6], [3, 5]], rope: false }],
  ['GQA 4:2 with RoPE', { numHeads: 4, numKvHeads: 2, headDim: 8, pageSize: 5, seqs: [[12, 1], [0, 11], [1, 2]], rope: true }],
  ['MQA 4:1 with RoPE, pageSize 1', { numHeads: 4, numKvHeads: 1, headDim: 4, pageSize: 1, seqs: [[6, 1], [2, 3]], rope: true }],
];

describe.each(CASES)('pagedAttention: %s', (_name, c) => {
  for (const chunkSize of [1, 7, 1024]) {
    it(`matches naive dense attention over shuffled pages (chunkSize ${chunkSize})`, () => {
      const { params, denseK, denseV } = setup(c, chunkSize);
      pagedAttention(params);
      const { out } = naive(c, params, denseK, denseV);
      for (let i = 0; i < out.length; i++) expect(Math.abs(params.out[i] - out[i])).toBeLessThan(1e-5);
    });
  }

  it('appends the new K (rotated) and V into the slots their positions name', () => {
    const { params, denseK, denseV, layout } = setup(c, 16);
    pagedAttention(params);
    naive(c, params, denseK, denseV);
    for (let t = 0; t < params.numTokens; t++) {
      const s = params.tokenSeq[t];
      const pos = params.tokenPos[t];
      const page = params.pageIndices[params.pageIndptr[s] + Math.floor(pos / c.pageSize)];
      const off = kvElementIndex(layout, page, pos % c.pageSize, 0);
      const kvRow = c.numKvHeads * c.headDim;
      for (let i = 0; i < kvRow; i++) {
        expect(Math.abs(params.keyCache[off + i] - denseK[s][pos][i])).toBeLessThan(1e-5);
        expect(params.valueCache[off + i]).toBe(denseV[s][pos][i]);
      }
    }
  });

  it('records the last query per sequence: mean-over-heads entropy and position mass', () => {
    const { params, denseK, denseV } = setup(c, 3);
    const last = Int32Array.from(c.seqs.map((_, s) => params.tokenSeq.lastIndexOf(s)));
    const sink = {
      tokens: last,
      entropy: new Float64Array(c.seqs.length),
      positionMass: c.seqs.map(([cached, n]) => new Float32Array(cached + n)),
    };
    pagedAttention({ ...params, stats: sink });
    const { probs } = naive(c, params, denseK, denseV);
    c.seqs.forEach((_, s) => {
      const headProbs = probs[last[s]];
      const entropy = headProbs.reduce((a, p) => a - p.reduce((e, x) => e + (x > 0 ? x * Math.log(x) : 0), 0), 0) / c.numHeads;
      expect(sink.entropy[s]).toBeCloseTo(entropy, 5);
      for (let j = 0; j < sink.positionMass[s].length; j++) {
        const mass = headProbs.reduce((a, p) => a + p[j], 0) / c.numHeads;
        expect(sink.positionMass[s][j]).toBeCloseTo(mass, 5);
      }
    });
  });
});
