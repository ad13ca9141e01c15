import { describe, expect, it } from 'vitest';
import { RequestValidationError, kvElementIndex } from '@tinyserve/core';
import type { KvCacheDtype } from '@tinyserve/core';
import {
  KvCacheStorage,
  buildPageTableCsr,
  createPageMetadataLayer,
  packSelections,
  pagedAttentionDecodeDense,
  rebuildPageMetadata,
  sparsePagedAttention,
} from '@tinyserve/kv-retriever';
import type { HeadSelection } from '@tinyserve/kv-retriever';
import { makeNormal, makeRng } from '../__fixtures__/random-model.js';
import { appendKvToPages, attendOverPages, attentionStatsOverPages, pagedAttention, rotateQueries } from './paged-attention-cpu.js';
import type { PageSelection, PagedAttentionParams } from './paged-attention-cpu.js';
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

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * A selection for every single-token sequence of the step (the others stay dense): per KV
 * head, the logical pages `choose` returns (sorted here).
 */
function selectionOf(p: PagedAttentionParams, choose: (seq: number, head: number, numPages: number) => number[]): PageSelection {
  const numSeqs = p.pageIndptr.length - 1;
  const tokens = new Int32Array(numSeqs);
  const lastPos = new Int32Array(numSeqs);
  for (let t = 0; t < p.numTokens; t++) {
    tokens[p.tokenSeq[t]]++;
    lastPos[p.tokenSeq[t]] = p.tokenPos[t];
  }
  const sparse = new Uint8Array(numSeqs);
  const heads: HeadSelection[] = [];
  for (let s = 0; s < numSeqs; s++) {
    const indptr = new Int32Array(p.numKvHeads + 1);
    const indices: number[] = [];
    if (tokens[s] === 1) {
      sparse[s] = 1;
      const np = Math.floor(lastPos[s] / p.pageSize) + 1;
      for (let j = 0; j < p.numKvHeads; j++) {
        indices.push(...[...new Set(choose(s, j, np))].sort((a, b) => a - b));
        indptr[j + 1] = indices.length;
      }
    }
    heads.push({ indptr, indices: Int32Array.from(indices) });
  }
  const packed = packSelections(heads);
  return { sparse, indptr: packed.selectedIndptr, pages: packed.selectedPages };
}

describe.each(CASES)('sparse page lists: %s', (_name, c) => {
  for (const chunkSize of [1, 7, 1024]) {
    it(`listing every page equals dense attention bit for bit (chunkSize ${chunkSize})`, () => {
      const { params } = setup(c, chunkSize);
      appendKvToPages(params);
      const queries = rotateQueries(params);
      const dense = new Float32Array(params.out.length);
      attendOverPages({ ...params, out: dense }, queries);
      const selection = selectionOf(params, (_s, _j, n) => range(n));
      expect(selection.sparse.some((v) => v === 1)).toBe(true);
      const sparse = new Float32Array(params.out.length);
      attendOverPages({ ...params, out: sparse, selection }, queries);
      expect(Array.from(sparse)).toEqual(Array.from(dense));
    });
  }

  it("matches the kv-retriever's sparsePagedAttention on partial selections; prefill rows stay dense", () => {
    const { params, layout } = setup(c, 7, 3);
    appendKvToPages(params);
    const queries = rotateQueries(params);
    const rng = makeRng(5);
    // Per head a random subset, the current page always in (as policies keep it).
    const selection = selectionOf(params, (_s, _j, n) => range(n).filter((p) => p === n - 1 || rng() < 0.4));
    const out = new Float32Array(params.out.length);
    attendOverPages({ ...params, out, selection }, queries);
    const dense = new Float32Array(params.out.length);
    attendOverPages({ ...params, out: dense }, queries);
    const { numHeads: Hq, numKvHeads: H, headDim: D, pageSize } = c;
    let checked = 0;
    for (let t = 0; t < params.numTokens; t++) {
      const s = params.tokenSeq[t];
      const row = (a: Float32Array) => Array.from(a.subarray(t * Hq * D, (t + 1) * Hq * D));
      if (selection.sparse[s] !== 1) {
        expect(row(out)).toEqual(row(dense));
        continue;
      }
      const numTokens = params.tokenPos[t] + 1;
      const np = Math.ceil(numTokens / pageSize);
      const pageIds = params.pageIndices.slice(params.pageIndptr[s], params.pageIndptr[s] + np);
      const csr = buildPageTableCsr([{ pageSize, numTokens, pageIds }]);
      const base = selection.indptr[s * H];
      const ref = sparsePagedAttention({
        layout,
        kCache: params.keyCache as Float32Array,
        vCache: params.valueCache as Float32Array,
        query: queries.slice(t * Hq * D, (t + 1) * Hq * D),
        numQHeads: Hq,
        pageIndptr: csr.indptr,
        pageIndices: csr.indices,
        lastPageLen: csr.lastPageLen,
        selectedIndptr: Int32Array.from(selection.indptr.subarray(s * H, (s + 1) * H + 1), (v) => v - base),
        selectedPages: selection.pages.slice(base, selection.indptr[(s + 1) * H]),
      });
      row(out).forEach((v, i) => expect(Math.abs(v - ref[i])).toBeLessThan(1e-5));
      // And the dense rows agree with the reference's dense decode.
      const refDense = pagedAttentionDecodeDense({
        layout,
        kCache: params.keyCache as Float32Array,
        vCache: params.valueCache as Float32Array,
        query: queries.slice(t * Hq * D, (t + 1) * Hq * D),
        numQHeads: Hq,
        pageIndptr: csr.indptr,
        pageIndices: csr.indices,
        lastPageLen: csr.lastPageLen,
      });
      row(dense).forEach((v, i) => expect(Math.abs(v - refDense[i])).toBeLessThan(1e-5));
      checked++;
    }
    expect(checked).toBeGreaterThan(0);
  });

  it('records the distribution over the selected positions only', () => {
    const { params } = setup(c, 5, 6);
    appendKvToPages(params);
    const selection = selectionOf(params, (_s, _j, n) => [0, n - 1]);
    const s = selection.sparse.indexOf(1);
    const t = params.tokenSeq.indexOf(s);
    const len = params.tokenPos[t] + 1;
    const sink = { tokens: Int32Array.from(c.seqs, (_, i) => (i === s ? t : -1)), entropy: new Float64Array(c.seqs.length), positionMass: c.seqs.map(() => new Float32Array(len)) };
    attendOverPages({ ...params, selection, stats: sink });
    const mass = sink.positionMass[s];
    const lastPage = Math.floor((len - 1) / c.pageSize);
    mass.forEach((m, j) => {
      const page = Math.floor(j / c.pageSize);
      if (page !== 0 && page !== lastPage) expect(m).toBe(0);
    });
    expect(mass.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 5);
  });
});

describe.each(CASES)('attention statistics over page lists (the cuda addon\'s reference): %s', (_name, c) => {
  /** Every sequence's lists: the selection's where it is sparse, all its pages elsewhere. */
  function listsOf(p: PagedAttentionParams, sel: PageSelection | null) {
    const H = p.numKvHeads;
    const numSeqs = p.pageIndptr.length - 1;
    const indptr = new Int32Array(numSeqs * H + 1);
    const pages: number[] = [];
    for (let s = 0; s < numSeqs; s++) {
      const last = p.tokenSeq.lastIndexOf(s);
      const np = Math.floor(p.tokenPos[last] / p.pageSize) + 1;
      for (let j = 0; j < H; j++) {
        if (sel !== null && sel.sparse[s] === 1) pages.push(...sel.pages.subarray(sel.indptr[s * H + j], sel.indptr[s * H + j + 1]));
        else pages.push(...range(np));
        indptr[s * H + j + 1] = pages.length;
      }
    }
    return { indptr, pages: Int32Array.from(pages) };
  }

  for (const sparse of [false, true]) {
    it(`equal what the attention pass records (${sparse ? 'partial selections' : 'dense'})`, () => {
      const { params } = setup(c, 5, 8);
      appendKvToPages(params);
      const queries = rotateQueries(params);
      const rng = makeRng(9);
      const selection = sparse ? selectionOf(params, (_s, _j, n) => range(n).filter((p) => p === n - 1 || rng() < 0.5)) : null;
      const last = Int32Array.from(c.seqs.map((_, s) => params.tokenSeq.lastIndexOf(s)));
      const sink = () => ({ tokens: last, entropy: new Float64Array(c.seqs.length), positionMass: c.seqs.map(([cached, n]) => new Float32Array(cached + n)) });
      const fromPass = sink();
      attendOverPages({ ...params, stats: fromPass, ...(selection ? { selection } : {}) }, queries);
      const fromLists = sink();
      attentionStatsOverPages(params, queries, listsOf(params, selection), fromLists);
      c.seqs.forEach((_, s) => {
        expect(fromLists.entropy[s]).toBeGreaterThan(0);
        expect(Math.abs(fromLists.entropy[s] - fromPass.entropy[s])).toBeLessThan(1e-9);
        fromLists.positionMass[s].forEach((m, j) => expect(Math.abs(m - fromPass.positionMass[s][j])).toBeLessThan(1e-7));
      });
    });
  }

  it('rejects lists that do not cover every sequence and KV head', () => {
    const { params } = setup(c, 5);
    const queries = rotateQueries(params);
    const sink = { tokens: new Int32Array(c.seqs.length), entropy: new Float64Array(c.seqs.length), positionMass: [] };
    expect(() => attentionStatsOverPages(params, queries, { indptr: new Int32Array(1), pages: new Int32Array(0) }, sink)).toThrow(RequestValidationError);
  });
});

describe('sparse page lists: validation', () => {
  const c = CASES[1][1];
  it('rejects selections that would read outside a sequence or select for a prefill chunk', () => {
    const { params } = setup(c, 8);
    appendKvToPages(params);
    const good = selectionOf(params, (_s, _j, n) => range(n));
    expect(() => attendOverPages({ ...params, selection: good })).not.toThrow();
    const prefill = { ...good, sparse: Uint8Array.from(good.sparse, (v, s) => (s === 1 ? 1 : v)) };
    expect(() => attendOverPages({ ...params, selection: prefill })).toThrow(/sequence 1 has 11 new tokens/);
    const outside = { ...good, pages: Int32Array.from(good.pages, (v, i) => (i === 0 ? 99 : v)) };
    expect(() => attendOverPages({ ...params, selection: outside })).toThrow(RequestValidationError);
    const shape = { ...good, indptr: good.indptr.slice(1) };
    expect(() => attendOverPages({ ...params, selection: shape })).toThrow(/must cover 3 sequences x 2 KV heads/);
  });
});

describe.each(['fp32', 'fp16', 'int8'] as const)('%s KV pages', (dtype: KvCacheDtype) => {
  const c = CASES[1][1];

  /** The step's cached rows written through KvCacheStorage, then the step appended by the kernel into it. */
  function run(seed: number) {
    const { params, layout } = setup(c, 7, seed);
    const kvRow = c.numKvHeads * c.headDim;
    const slots: { page: number; slot: number; cached: boolean }[] = [];
    c.seqs.forEach(([cached, n], s) => {
      for (let pos = 0; pos < cached + n; pos++) {
        slots.push({ page: params.pageIndices[params.pageIndptr[s] + Math.floor(pos / c.pageSize)], slot: pos % c.pageSize, cached: pos < cached });
      }
    });
    const rowOf = (buf: Float32Array, page: number, slot: number) => {
      const off = kvElementIndex(layout, page, slot, 0);
      return buf.subarray(off, off + kvRow);
    };
    const stored = new KvCacheStorage({ layout, dtype });
    for (const { page, slot } of slots.filter((x) => x.cached)) {
      stored.writeToken(0, page, slot, rowOf(params.keyCache as Float32Array, page, slot), rowOf(params.valueCache as Float32Array, page, slot));
    }
    // Metadata of the cached part, from the keys as stored; then the kernel folds in the step.
    const metadata = createPageMetadataLayer(layout);
    const fills = new Map<number, number>();
    for (const { page, slot, cached } of slots) if (cached) fills.set(page, Math.max(fills.get(page) ?? 0, slot + 1));
    const decodedKeys = () => stored.decodeLayer(0, 'key');
    rebuildPageMetadata({ layout, ...metadata, kCache: decodedKeys(), pages: [...fills.keys()], fills: [...fills.values()] });

    pagedAttention(params); // the fp32 step: rotated keys land in params.keyCache
    const quantised: PagedAttentionParams = {
      ...params,
      out: new Float32Array(params.out.length),
      keyCache: stored.keys[0],
      valueCache: stored.values[0],
      kvDtype: dtype,
      keyScales: stored.keyScales[0],
      valueScales: stored.valueScales[0],
      metadata,
    };
    pagedAttention(quantised);
    return { params, layout, slots, stored, quantised, metadata, rowOf, decodedKeys };
  }

  it('appends exactly what KvCacheStorage.writeToken stores', () => {
    const { params, layout, slots, stored, rowOf } = run(4);
    const expected = new KvCacheStorage({ layout, dtype });
    for (const { page, slot } of slots) {
      expected.writeToken(0, page, slot, rowOf(params.keyCache as Float32Array, page, slot), rowOf(params.valueCache as Float32Array, page, slot));
    }
    expect(Array.from(stored.keys[0])).toEqual(Array.from(expected.keys[0]));
    expect(Array.from(stored.values[0])).toEqual(Array.from(expected.values[0]));
    expect(Array.from(stored.keyScales[0])).toEqual(Array.from(expected.keyScales[0]));
    expect(Array.from(stored.valueScales[0])).toEqual(Array.from(expected.valueScales[0]));
  });

  it('attends over the decoded values exactly, close to fp32', () => {
    const { params, stored, quantised } = run(5);
    const decoded = { ...params, out: new Float32Array(params.out.length), keyCache: stored.decodeLayer(0, 'key'), valueCache: stored.decodeLayer(0, 'value') };
    attendOverPages(decoded, rotateQueries(params));
    expect(Array.from(quantised.out)).toEqual(Array.from(decoded.out));
    const bound = dtype === 'fp32' ? 0 : dtype === 'fp16' ? 5e-3 : 5e-2;
    let worst = 0;
    quantised.out.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - params.out[i]))));
    expect(worst).toBeLessThanOrEqual(bound);
  });

  it('keeps page metadata equal to a fresh rebuild from the stored keys', () => {
    const { layout, slots, metadata, decodedKeys } = run(6);
    const fills = new Map<number, number>();
    for (const { page, slot } of slots) fills.set(page, Math.max(fills.get(page) ?? 0, slot + 1));
    const fresh = createPageMetadataLayer(layout);
    rebuildPageMetadata({ layout, ...fresh, kCache: decodedKeys(), pages: [...fills.keys()], fills: [...fills.values()] });
    expect(Array.from(metadata.min)).toEqual(Array.from(fresh.min));
    expect(Array.from(metadata.max)).toEqual(Array.from(fresh.max));
    // Each box bounds the keys attention reads.
    const keys = decodedKeys();
    const row = c.numKvHeads * c.headDim;
    for (const { page, slot } of slots) {
      const off = kvElementIndex(layout, page, slot, 0);
      for (let i = 0; i < row; i++) {
        expect(keys[off + i]).toBeGreaterThanOrEqual(metadata.min[page * row + i]);
        expect(keys[off + i]).toBeLessThanOrEqual(metadata.max[page * row + i]);
      }
    }
  });
});
