import { RequestValidationError, float32ToFloat16Bits } from '@tinyserve/core';
import type { KvCacheDtype } from '@tinyserve/core';
import { decodeFp16, dequantizeInt8, quantizeInt8, updatePageMetadata } from '@tinyserve/kv-retriever';
import type { PageMetadataLayer } from '@tinyserve/kv-retriever';
import { rotateHead } from './rope.js';
import type { RopeTables } from './rope.js';

/** A K or V buffer of one layer in one of the `kvCacheDtype` element formats. */
export type KvBuffer = Float32Array | Uint16Array | Int8Array;

/**
 * The reference paged attention of one layer for one batched step, in plain TypeScript over
 * typed arrays. The `wasm` and `cpu` tfjs kernels call it directly; other kernels (CUDA) are
 * checked against it.
 *
 * The KV cache follows `KvLayout` of @tinyserve/core: token-major per layer, element
 * (page, slot, kvHead, d) at ((page * pageSize + slot) * numKvHeads + kvHead) * headDim + d,
 * in the element format of the kv-retriever's `KvCacheStorage` for `kvDtype`.
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
  keyCache: KvBuffer;
  valueCache: KvBuffer;
  /** Element format of the caches (default 'fp32'): fp16 holds IEEE half bits, int8 needs the scales below. */
  kvDtype?: KvCacheDtype;
  /** int8 only: one scale per (page, slot, KV head), as `KvCacheStorage` keeps with per-token scales. */
  keyScales?: Float32Array;
  valueScales?: Float32Array;
  /**
   * This layer's page metadata. When given, every appended key, as stored (decoded), is folded
   * into its page's bounding box by the kv-retriever's `updatePageMetadata`.
   */
  metadata?: PageMetadataLayer;
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
   * Pages per online-softmax chunk, in keys: scratch memory is O(chunkSize), not O(context).
   * Rounded down to whole pages (at least one).
   */
  chunkSize: number;
  /** Asks for the attention distribution of one query per sequence. */
  stats?: AttentionStatsSink;
  /** Sparse decode: the pages some sequences attend to; the others attend densely. */
  selection?: PageSelection;
}

/**
 * Which pages each sequence's query attends to, per KV head (the arrays of the
 * kv-retriever's `packSelections`). A sequence marked in `sparse` must have exactly one new
 * token this step (decode); its KV head `j` reads the logical pages (positions in its page
 * list) `pages[indptr[s * numKvHeads + j] .. indptr[s * numKvHeads + j + 1])`, ascending, each
 * over its filled slots. Unmarked sequences attend densely and causally; their ranges are empty.
 */
export interface PageSelection {
  sparse: Uint8Array;
  indptr: Int32Array;
  pages: Int32Array;
}

/** Where {@link pagedAttention} records the attention of the last query of each sequence. */
export interface AttentionStatsSink {
  /** Per sequence, the token (row of `qkv`) whose attention is recorded, or -1 for none. */
  tokens: Int32Array;
  /** Written: per sequence, the mean over query heads of the attention entropy (nats). */
  entropy: Float64Array;
  /**
   * Written: per sequence, the attention mass on each position `0 .. tokenPos[token]`,
   * averaged over query heads (0 on positions a sparse selection skipped). Allocated by the
   * caller with that length.
   */
  positionMass: Float32Array[];
}

/** Appends the step's keys (rotated) and values to their pages (and metadata), then attends densely. */
export function pagedAttention(p: PagedAttentionParams): void {
  appendKvToPages(p);
  attendOverPages(p);
}

let fp16Table: Float32Array | undefined;

/** Every half decoded once by the kv-retriever's `decodeFp16`, so reads here match its decode exactly. */
function halfTable(): Float32Array {
  fp16Table ??= decodeFp16(Uint16Array.from({ length: 65536 }, (_, i) => i));
  return fp16Table;
}

/** Encodes one token row (`numKvHeads * headDim` floats from `src[so..]`) into `buf` at `dst`, as `KvCacheStorage.writeToken` does. */
function writeRow(
  buf: KvBuffer,
  dtype: KvCacheDtype,
  scales: Float32Array | undefined,
  scaleBase: number,
  src: Float32Array,
  so: number,
  dst: number,
  numKvHeads: number,
  D: number,
): void {
  const row = numKvHeads * D;
  if (dtype === 'fp32') {
    (buf as Float32Array).set(src.subarray(so, so + row), dst);
  } else if (dtype === 'fp16') {
    for (let i = 0; i < row; i++) buf[dst + i] = float32ToFloat16Bits(src[so + i]);
  } else {
    const s = scales as Float32Array;
    for (let h = 0; h < numKvHeads; h++) s[scaleBase + h] = quantizeInt8(src, so + h * D, D, buf as Int8Array, dst + h * D);
  }
}

/** Decodes one stored token row into `out[oo..]`. */
function readRow(
  buf: KvBuffer,
  dtype: KvCacheDtype,
  scales: Float32Array | undefined,
  scaleBase: number,
  off: number,
  out: Float32Array,
  oo: number,
  numKvHeads: number,
  D: number,
): void {
  const row = numKvHeads * D;
  if (dtype === 'fp32') {
    out.set((buf as Float32Array).subarray(off, off + row), oo);
  } else if (dtype === 'fp16') {
    const table = halfTable();
    for (let i = 0; i < row; i++) out[oo + i] = table[buf[off + i]];
  } else {
    const s = scales as Float32Array;
    for (let h = 0; h < numKvHeads; h++) dequantizeInt8(buf as Int8Array, off + h * D, D, s[scaleBase + h], out, oo + h * D);
  }
}

function checkDtype(p: PagedAttentionParams): KvCacheDtype {
  const dtype = p.kvDtype ?? 'fp32';
  const expected = dtype === 'fp32' ? Float32Array : dtype === 'fp16' ? Uint16Array : Int8Array;
  if (!(p.keyCache instanceof expected) || !(p.valueCache instanceof expected)) {
    throw new RequestValidationError('keyCache/valueCache', `must be ${expected.name}s for kvDtype '${dtype}'`);
  }
  if (dtype === 'int8' && (p.keyScales === undefined || p.valueScales === undefined)) {
    throw new RequestValidationError('keyScales/valueScales', "are required for kvDtype 'int8'");
  }
  return dtype;
}

/**
 * Writes each token's K (after RoPE) and V into slot `pos % pageSize` of page `pos / pageSize`
 * of its sequence, encoded in `kvDtype`, and folds the stored keys into the page metadata.
 */
export function appendKvToPages(p: PagedAttentionParams): void {
  const { numTokens, numHeads, numKvHeads, headDim: D, pageSize, qkv, keyCache, valueCache, rope } = p;
  const dtype = checkDtype(p);
  const stride = (numHeads + 2 * numKvHeads) * D;
  const kvRow = numKvHeads * D;
  const kRow = new Float32Array(kvRow);
  const stored = p.metadata ? new Float32Array(numTokens * kvRow) : null;
  const pages = new Int32Array(numTokens);
  const slots = new Int32Array(numTokens);
  for (let t = 0; t < numTokens; t++) {
    const pos = p.tokenPos[t];
    const page = p.pageIndices[p.pageIndptr[p.tokenSeq[t]] + Math.floor(pos / pageSize)];
    const slot = pos % pageSize;
    pages[t] = page;
    slots[t] = slot;
    const dst = (page * pageSize + slot) * kvRow;
    const scaleBase = (page * pageSize + slot) * numKvHeads;
    const kSrc = t * stride + numHeads * D;
    if (rope) {
      for (let g = 0; g < numKvHeads; g++) rotateHead(qkv, kSrc + g * D, rope, t, D, 1, kRow, g * D);
    } else {
      kRow.set(qkv.subarray(kSrc, kSrc + kvRow));
    }
    writeRow(keyCache, dtype, p.keyScales, scaleBase, kRow, 0, dst, numKvHeads, D);
    writeRow(valueCache, dtype, p.valueScales, scaleBase, qkv, kSrc + kvRow, dst, numKvHeads, D);
    if (stored) readRow(keyCache, dtype, p.keyScales, scaleBase, dst, stored, t * kvRow, numKvHeads, D);
  }
  if (p.metadata && stored) {
    const layout = { numLayers: 1, numPages: keyCache.length / (pageSize * kvRow), pageSize, numKvHeads, headDim: D };
    updatePageMetadata({ layout, min: p.metadata.min, max: p.metadata.max, keys: stored, pages, slots });
  }
}

/**
 * The step's queries with RoPE applied (LLaMA) or copied (GPT-2), unscaled:
 * `[numTokens, numHeads * headDim]`. Attention and page scoring both read these.
 */
export function rotateQueries(p: PagedAttentionParams, out: Float32Array = new Float32Array(p.numTokens * p.numHeads * p.headDim)): Float32Array {
  const { numTokens, numHeads, numKvHeads, headDim: D, qkv, rope } = p;
  const stride = (numHeads + 2 * numKvHeads) * D;
  const qRow = numHeads * D;
  for (let t = 0; t < numTokens; t++) {
    if (rope) {
      for (let h = 0; h < numHeads; h++) rotateHead(qkv, t * stride + h * D, rope, t, D, 1, out, t * qRow + h * D);
    } else {
      out.set(qkv.subarray(t * stride, t * stride + qRow), t * qRow);
    }
  }
  return out;
}

/**
 * One page's rows of one KV head as fp32 for the attention loops: the cache itself for fp32
 * (stride = the token row), otherwise decoded into scratch (stride = headDim). The loops
 * always read a Float32Array, so they stay monomorphic whatever the format.
 */
class PageRows {
  buf: Float32Array;
  off = 0;
  stride: number;
  private readonly scratch: Float32Array;
  private readonly kvRow: number;

  constructor(
    private readonly cache: KvBuffer,
    private readonly dtype: KvCacheDtype,
    private readonly scales: Float32Array | undefined,
    private readonly pageSize: number,
    private readonly numKvHeads: number,
    private readonly D: number,
  ) {
    this.kvRow = numKvHeads * D;
    this.scratch = new Float32Array(dtype === 'fp32' ? 0 : pageSize * D);
    this.buf = dtype === 'fp32' ? (cache as Float32Array) : this.scratch;
    this.stride = dtype === 'fp32' ? this.kvRow : D;
  }

  load(page: number, g: number, slots: number): void {
    const { D, kvRow } = this;
    const base = page * this.pageSize * kvRow + g * D;
    if (this.dtype === 'fp32') {
      this.off = base;
      return;
    }
    const out = this.scratch;
    if (this.dtype === 'fp16') {
      const table = halfTable();
      const cache = this.cache as Uint16Array;
      for (let s = 0; s < slots; s++) {
        const src = base + s * kvRow;
        for (let d = 0; d < D; d++) out[s * D + d] = table[cache[src + d]];
      }
    } else {
      const cache = this.cache as Int8Array;
      const scales = this.scales as Float32Array;
      const scaleBase = page * this.pageSize * this.numKvHeads + g;
      for (let s = 0; s < slots; s++) dequantizeInt8(cache, base + s * kvRow, D, scales[scaleBase + s * this.numKvHeads], out, s * D);
    }
  }
}

/**
 * Checks a selection's shape against the step, so the loops never read outside a sequence's
 * pages (the cuda kernel checks with it too, so both backends reject a bad selection alike).
 */
export function checkPageSelection(
  p: Pick<PagedAttentionParams, 'numTokens' | 'numKvHeads' | 'pageSize' | 'pageIndptr' | 'tokenSeq' | 'tokenPos'>,
  sel: PageSelection,
): void {
  const numSeqs = p.pageIndptr.length - 1;
  const H = p.numKvHeads;
  if (sel.sparse.length !== numSeqs || sel.indptr.length !== numSeqs * H + 1 || sel.indptr[numSeqs * H] !== sel.pages.length) {
    throw new RequestValidationError('selection', `must cover ${numSeqs} sequences x ${H} KV heads (indptr of ${numSeqs * H + 1} offsets ending at pages.length)`);
  }
  const tokens = new Int32Array(numSeqs);
  const lastPos = new Int32Array(numSeqs);
  for (let t = 0; t < p.numTokens; t++) {
    tokens[p.tokenSeq[t]]++;
    lastPos[p.tokenSeq[t]] = p.tokenPos[t];
  }
  for (let s = 0; s < numSeqs; s++) {
    const a = sel.indptr[s * H];
    const b = sel.indptr[(s + 1) * H];
    if (sel.sparse[s] !== 1) {
      if (b !== a) throw new RequestValidationError(`selection.indptr`, `sequence ${s} is not sparse but lists pages`);
      continue;
    }
    if (tokens[s] !== 1) throw new RequestValidationError('selection.sparse', `sequence ${s} has ${tokens[s]} new tokens; sparse attention is for single decode tokens`);
    const numCtxPages = Math.floor(lastPos[s] / p.pageSize) + 1;
    for (let j = 0; j < H; j++) {
      const lo = sel.indptr[s * H + j];
      const hi = sel.indptr[s * H + j + 1];
      if (hi < lo) throw new RequestValidationError('selection.indptr', `must be non-decreasing, at entry ${s * H + j + 1}`);
      for (let i = lo; i < hi; i++) {
        const li = sel.pages[i];
        if (!(li >= 0 && li < numCtxPages) || (i > lo && li <= sel.pages[i - 1])) {
          throw new RequestValidationError(`selection.pages[${i}]`, `must be ascending logical pages in [0, ${numCtxPages}) of sequence ${s}, got ${li}`);
        }
      }
    }
  }
}

/**
 * Attention of every new query: causal over all cached positions `0 .. pos` of its own
 * sequence, or, for a sequence marked sparse in `p.selection`, over its KV head's selected
 * pages only. Both walk a page list (the identity list when dense) in chunks of pages with
 * an online softmax accumulated in float64, so a selection listing every page computes
 * exactly what dense attention computes. The query heads sharing a KV head are processed
 * together so each K/V row is fetched once per group, and dot products run four independent
 * accumulators (JS does not vectorise). `queries` are {@link rotateQueries}' output.
 */
export function attendOverPages(p: PagedAttentionParams, queries: Float32Array = rotateQueries(p)): void {
  const { numTokens, numHeads, numKvHeads, headDim: D, pageSize, out, scale } = p;
  const dtype = checkDtype(p);
  const group = numHeads / numKvHeads;
  const qRow = numHeads * D;
  if (queries.length < numTokens * qRow) {
    throw new RequestValidationError('queries', `must hold numTokens*numHeads*headDim = ${numTokens * qRow} floats, got ${queries.length}`);
  }
  const sel = p.selection;
  if (sel) checkPageSelection(p, sel);
  const pagesPerChunk = Math.max(1, Math.floor(p.chunkSize / pageSize));
  const chunkKeys = pagesPerChunk * pageSize;
  const q = new Float64Array(group * D);
  const acc = new Float64Array(group * D);
  const scores = new Float64Array(group * chunkKeys);
  const m = new Float64Array(group);
  const l = new Float64Array(group);
  const chunkMax = new Float64Array(group);
  const stats = p.stats;
  const keys = new PageRows(p.keyCache, dtype, p.keyScales, pageSize, numKvHeads, D);
  const values = new PageRows(p.valueCache, dtype, p.valueScales, pageSize, numKvHeads, D);
  let maxPages = 0;
  for (let t = 0; t < numTokens; t++) maxPages = Math.max(maxPages, Math.floor(p.tokenPos[t] / pageSize) + 1);
  const identity = Int32Array.from({ length: maxPages }, (_, i) => i);

  for (let t = 0; t < numTokens; t++) {
    const seq = p.tokenSeq[t];
    const pos = p.tokenPos[t];
    const pageBase = p.pageIndptr[seq];
    const numCtxPages = Math.floor(pos / pageSize) + 1;
    const lastPageSlots = pos - (numCtxPages - 1) * pageSize + 1;
    const sparse = sel !== undefined && sel.sparse[seq] === 1;
    const list = sparse ? sel.pages : identity;
    const recordStats = stats !== undefined && stats.tokens[seq] === t;
    let entropySum = 0;

    for (let g = 0; g < numKvHeads; g++) {
      const h0 = g * group;
      const l0 = sparse ? sel.indptr[seq * numKvHeads + g] : 0;
      const l1 = sparse ? sel.indptr[seq * numKvHeads + g + 1] : numCtxPages;
      for (let gi = 0; gi < group; gi++) {
        const qSrc = t * qRow + (h0 + gi) * D;
        for (let d = 0; d < D; d++) q[gi * D + d] = queries[qSrc + d] * scale;
      }
      acc.fill(0);
      m.fill(-Infinity);
      l.fill(0);

      for (let c0 = l0; c0 < l1; c0 += pagesPerChunk) {
        const c1 = Math.min(l1, c0 + pagesPerChunk);
        chunkMax.fill(-Infinity);
        let n = 0;
        for (let i = c0; i < c1; i++) {
          const pi = list[i];
          const slots = pi === numCtxPages - 1 ? lastPageSlots : pageSize;
          keys.load(p.pageIndices[pageBase + pi], g, slots);
          const kb = keys.buf;
          const ks = keys.stride;
          let off = keys.off;
          for (let s = 0; s < slots; s++, off += ks, n++) {
            for (let gi = 0; gi < group; gi++) {
              const dot = dot4(q, gi * D, kb, off, D);
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
        for (let i = c0; i < c1; i++) {
          const pi = list[i];
          const slots = pi === numCtxPages - 1 ? lastPageSlots : pageSize;
          values.load(p.pageIndices[pageBase + pi], g, slots);
          const vb = values.buf;
          const vs = values.stride;
          let off = values.off;
          for (let s = 0; s < slots; s++, off += vs, n++) {
            for (let gi = 0; gi < group; gi++) {
              const w = Math.exp(scores[gi * chunkKeys + n] - m[gi]);
              l[gi] += w;
              axpy(w, vb, off, acc, gi * D, D);
            }
          }
        }
      }

      for (let gi = 0; gi < group; gi++) {
        const o = t * numHeads * D + (h0 + gi) * D;
        // A head with nothing selected reads nothing and outputs zeros (as the reference does).
        const inv = l1 > l0 ? 1 / l[gi] : 0;
        for (let d = 0; d < D; d++) out[o + d] = acc[gi * D + d] * inv;
        if (recordStats && l1 > l0) {
          entropySum += recordDistribution(p, keys, q, gi * D, g, pageBase, list, l0, l1, numCtxPages, lastPageSlots, m[gi], inv, stats.positionMass[seq]);
        }
      }
    }
    if (recordStats) stats.entropy[seq] = entropySum / numHeads;
  }
}

/**
 * Attention statistics over given page lists, the reference of the cuda addon's
 * `attentionStats`: for each sequence s whose `tokens[s]` is a row (not -1), that row's query
 * per head over, for KV head j, the logical pages `pages[indptr[s * numKvHeads + j] ..
 * indptr[s * numKvHeads + j + 1])` (each over its filled slots up to the row's position, as
 * {@link attendOverPages} attends them). Writes `entropy[s]` (mean over query heads, nats) and
 * adds each head's probabilities / numHeads to `positionMass[s]`; sequences with no row get 0.
 */
export function attentionStatsOverPages(
  p: PagedAttentionParams,
  queries: Float32Array,
  lists: { indptr: Int32Array; pages: Int32Array },
  sink: AttentionStatsSink,
): void {
  const { numHeads, numKvHeads, headDim: D, pageSize, scale } = p;
  const dtype = checkDtype(p);
  const group = numHeads / numKvHeads;
  const numSeqs = p.pageIndptr.length - 1;
  if (lists.indptr.length !== numSeqs * numKvHeads + 1) {
    throw new RequestValidationError('indptr', `must have numSeqs * numKvHeads + 1 = ${numSeqs * numKvHeads + 1} entries, got ${lists.indptr.length}`);
  }
  const keys = new PageRows(p.keyCache, dtype, p.keyScales, pageSize, numKvHeads, D);
  const q = new Float64Array(D);
  for (let s = 0; s < numSeqs; s++) {
    const t = sink.tokens[s];
    sink.entropy[s] = 0;
    if (t < 0) continue;
    const pageBase = p.pageIndptr[s];
    const pos = p.tokenPos[t];
    const numCtxPages = Math.floor(pos / pageSize) + 1;
    const lastPageSlots = pos - (numCtxPages - 1) * pageSize + 1;
    let entropySum = 0;
    for (let g = 0; g < numKvHeads; g++) {
      const l0 = lists.indptr[s * numKvHeads + g];
      const l1 = lists.indptr[s * numKvHeads + g + 1];
      if (l1 <= l0) continue;
      for (let gi = 0; gi < group; gi++) {
        const src = t * numHeads * D + (g * group + gi) * D;
        for (let d = 0; d < D; d++) q[d] = queries[src + d] * scale;
        // The max and normaliser over the attended keys, then the distribution itself.
        let m = -Infinity;
        const logits: number[] = [];
        for (let i = l0; i < l1; i++) {
          const pi = lists.pages[i];
          const slots = pi === numCtxPages - 1 ? lastPageSlots : pageSize;
          keys.load(p.pageIndices[pageBase + pi], g, slots);
          for (let k = 0, off = keys.off; k < slots; k++, off += keys.stride) {
            const x = dot4(q, 0, keys.buf, off, D);
            logits.push(x);
            if (x > m) m = x;
          }
        }
        let l = 0;
        for (const x of logits) l += Math.exp(x - m);
        entropySum += recordDistribution(p, keys, q, 0, g, pageBase, lists.pages, l0, l1, numCtxPages, lastPageSlots, m, 1 / l, sink.positionMass[s]);
      }
    }
    sink.entropy[s] = entropySum / numHeads;
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
 * Second pass for one recorded query head over the pages it attended: adds its
 * probabilities / numHeads to `mass` and returns its entropy. Scores are recomputed so that
 * the main pass keeps O(chunk) scratch.
 */
function recordDistribution(
  p: PagedAttentionParams,
  keys: PageRows,
  q: Float64Array,
  qOffset: number,
  g: number,
  pageBase: number,
  list: Int32Array,
  l0: number,
  l1: number,
  numCtxPages: number,
  lastPageSlots: number,
  m: number,
  invSum: number,
  mass: Float32Array,
): number {
  const { headDim, pageSize } = p;
  const share = 1 / p.numHeads;
  let entropy = 0;
  for (let i = l0; i < l1; i++) {
    const pi = list[i];
    const slots = pi === numCtxPages - 1 ? lastPageSlots : pageSize;
    keys.load(p.pageIndices[pageBase + pi], g, slots);
    let off = keys.off;
    let j = pi * pageSize;
    for (let s = 0; s < slots; s++, off += keys.stride, j++) {
      const prob = Math.exp(dot4(q, qOffset, keys.buf, off, headDim) - m) * invSum;
      mass[j] += prob * share;
      if (prob > 0) entropy -= prob * Math.log(prob);
    }
  }
  return entropy;
}
