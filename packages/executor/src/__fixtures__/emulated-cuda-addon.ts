/**
 * The CUDA addon's surface (`CudaAddon`) emulated in TypeScript over ArrayBuffers, each call
 * implemented by the reference the GPU kernel is checked against (the executor's paged
 * attention, the kv-retriever's scoring and Quest selection). Lets the cuda backend, its kernels
 * and the cuda executor run where there is no GPU: a test of their TypeScript wiring (which
 * buffers, offsets, page lists, selection logs and plans they pass), not of the CUDA kernels,
 * which the GPU checks compare with the same references.
 */
import { float32ToFloat16Bits } from '@tinyserve/core';
import type { KvLayout } from '@tinyserve/core';
import { CHOSEN, EXCLUDED, chooseTopK, decodeFp16, rebuildPageMetadata, scorePages, selectionFromMask } from '@tinyserve/kv-retriever';
import { geluNew, layerNormRows, rmsNormRows, swiGluRows } from '../kernels/elementwise-cpu.js';
import { appendKvToPages, attendOverPages, attentionStatsOverPages, rotateQueries } from '../kernels/paged-attention-cpu.js';
import type { KvBuffer, PageSelection, PagedAttentionParams } from '../kernels/paged-attention-cpu.js';
import { computeRopeTables } from '../kernels/rope.js';
import { CUDA_ADDON_ABI_VERSION } from '../cuda/addon-types.js';
import type { CudaAddon, CudaDeviceInfo, DeviceBuffer, PlanInfo, PlanUpdateParams, StepPlanHandle } from '../cuda/addon-types.js';

interface Block {
  mem: ArrayBuffer;
  freed: boolean;
}

interface Plan {
  p: PlanUpdateParams;
  info: PlanInfo;
  queryIndptr: Int32Array;
  tokenSeq: Int32Array;
  tokenPos: Int32Array;
  /** The last fused launch's choice: counts per (sequence, KV head), rows of `maxPages` logical pages. */
  counts: Int32Array | null;
  rows: Int32Array | null;
}

function block(b: DeviceBuffer): Block {
  const x = b as unknown as Block;
  if (x.freed) throw new Error('emulated addon: the device buffer was freed');
  return x;
}

function plan(h: StepPlanHandle): Plan {
  const p = (h as unknown as { plan: Plan | null }).plan;
  if (p === null) throw new Error('emulated addon: the plan describes no step');
  return p;
}

function f32(b: DeviceBuffer, offset: number, count: number): Float32Array {
  return new Float32Array(block(b).mem, offset * 4, count);
}

function i32(b: DeviceBuffer, offset: number, count: number): Int32Array {
  return new Int32Array(block(b).mem, offset * 4, count);
}

function bytes(b: DeviceBuffer, offset: number, count: number): Uint8Array {
  return new Uint8Array(block(b).mem, offset, count);
}

/** Everything the reference attention needs of a step, over the plan and this layer's buffers. */
function layerParams(pl: Plan, k: DeviceBuffer, v: DeviceBuffer, rope: boolean, ropeTheta: number): PagedAttentionParams {
  const { p } = pl;
  const pool = p.numPagesTotal * p.pageSize * p.numKvHeads * p.headDim;
  const kv = (b: DeviceBuffer): KvBuffer => (p.kvDtype === 1 ? new Uint16Array(block(b).mem, 0, pool) : f32(b, 0, pool));
  return {
    numTokens: pl.info.numTokens,
    numHeads: p.numQHeads,
    numKvHeads: p.numKvHeads,
    headDim: p.headDim,
    pageSize: p.pageSize,
    qkv: new Float32Array(0),
    out: new Float32Array(0),
    keyCache: kv(k),
    valueCache: kv(v),
    kvDtype: p.kvDtype === 1 ? 'fp16' : 'fp32',
    tokenSeq: pl.tokenSeq,
    tokenPos: pl.tokenPos,
    pageIndptr: p.pageIndptr,
    pageIndices: p.pageIndices,
    rope: rope ? computeRopeTables(pl.tokenPos, p.headDim, ropeTheta) : null,
    scale: 1 / Math.sqrt(p.headDim),
    chunkSize: 64,
  };
}

function layoutOf(p: PlanUpdateParams): KvLayout {
  return { numLayers: 1, numPages: p.numPagesTotal, pageSize: p.pageSize, numKvHeads: p.numKvHeads, headDim: p.headDim };
}

function metadata(p: PlanUpdateParams, min: DeviceBuffer, max: DeviceBuffer, dtype: number | undefined): { min: Float32Array; max: Float32Array } {
  if ((dtype ?? 0) !== 0) throw new Error('emulated addon: fp32 page metadata only');
  const n = p.numPagesTotal * p.numKvHeads * p.headDim;
  return { min: f32(min, 0, n), max: f32(max, 0, n) };
}

function defaultStride(p: PlanUpdateParams, stride: number | undefined, name: string): void {
  if (stride !== undefined && stride !== p.numQHeads * p.headDim) throw new Error(`emulated addon: ${name} must be the default row stride`);
}

/** A new emulated addon (its own memory and plans). */
export function emulatedCudaAddon(): CudaAddon {
  const device: CudaDeviceInfo = {
    name: 'emulated',
    major: 9,
    minor: 0,
    multiProcessors: 1,
    totalMemory: 2 ** 30,
    l2CacheBytes: 0,
    sharedMemPerBlockOptin: 232448,
    driverVersion: 0,
    runtimeVersion: 0,
    abiVersion: CUDA_ADDON_ABI_VERSION,
  };
  const unsupported = (what: string) => (): never => {
    throw new Error(`emulated addon: ${what} is not emulated`);
  };

  const addon: CudaAddon = {
    abiVersion: CUDA_ADDON_ABI_VERSION,
    deviceInfo: () => device,
    alloc: (n) => ({ mem: new ArrayBuffer(Math.max(n, 1)), freed: false }) as unknown as DeviceBuffer,
    free: (b) => {
      (b as unknown as Block).freed = true;
    },
    upload: (dst, off, src) => bytes(dst, off, src.byteLength).set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength)),
    download: (src, off, dst) => new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength).set(bytes(src, off, dst.byteLength)),
    copy: (dst, dOff, src, sOff, n) => bytes(dst, dOff, n).set(bytes(src, sOff, n)),
    fill: ({ dst, dstOffset = 0, count, dtype, value }) => {
      if (dtype === 1) new Uint16Array(block(dst).mem, dstOffset * 2, count).fill(float32ToFloat16Bits(value));
      else f32(dst, dstOffset, count).fill(value);
    },
    randomFill: unsupported('randomFill'),
    synchronize: () => {},
    memoryInfo: () => ({ free: device.totalMemory, total: device.totalMemory }),
    copyBandwidth: unsupported('copyBandwidth'),
    timeCalls: unsupported('timeCalls'),

    createPlan: () => ({ plan: null }) as unknown as StepPlanHandle,
    releasePlan: (h) => {
      (h as unknown as { plan: Plan | null }).plan = null;
    },
    planUpdate: (h, p) => {
      const S = p.seqLens.length;
      const queryIndptr = p.queryIndptr ?? Int32Array.from({ length: S + 1 }, (_, s) => s);
      const T = queryIndptr[S];
      const tokenSeq = new Int32Array(T);
      const tokenPos = new Int32Array(T);
      let maxPages = 1;
      let decodeOnly = true;
      for (let s = 0; s < S; s++) {
        const count = queryIndptr[s + 1] - queryIndptr[s];
        decodeOnly &&= count === 1;
        maxPages = Math.max(maxPages, p.pageIndptr[s + 1] - p.pageIndptr[s]);
        for (let i = 0; i < count; i++) {
          tokenSeq[queryIndptr[s] + i] = s;
          tokenPos[queryIndptr[s] + i] = p.seqLens[s] - count + i;
        }
      }
      const info: PlanInfo = {
        numSeqs: S,
        numTokens: T,
        maxPages,
        decodeOnly,
        denseSplits: 1,
        sparseSplits: 1,
        sparseGrid: 1,
        sparseWarps: 8,
        numRuns: T,
        numBlocks: T,
        headsPerCta: 1,
      };
      (h as unknown as { plan: Plan }).plan = { p: { ...p }, info, queryIndptr, tokenSeq, tokenPos, counts: null, rows: null };
      return info;
    },

    appendKv: (h, a) => {
      const pl = plan(h);
      const { p } = pl;
      defaultStride(p, a.qOutStride, 'qOutStride');
      const params = layerParams(pl, a.k, a.v, a.rope ?? false, a.ropeTheta ?? 10000);
      params.qkv = f32(a.qkv, a.qkvOffset ?? 0, pl.info.numTokens * (p.numQHeads + 2 * p.numKvHeads) * p.headDim);
      if (a.metaMin !== undefined && a.metaMax !== undefined) params.metadata = metadata(p, a.metaMin, a.metaMax, a.metaDtype);
      appendKvToPages(params);
      if (a.qOut !== undefined) rotateQueries(params, f32(a.qOut, a.qOutOffset ?? 0, pl.info.numTokens * p.numQHeads * p.headDim));
    },

    prefill: (h, a) => attend(plan(h), a),
    decodeDense: (h, a) => attend(plan(h), a),

    decodeSparse: (h, a) => {
      const pl = plan(h);
      const { p } = pl;
      if (!pl.info.decodeOnly || p.topK === undefined) throw new Error('emulated addon: decodeSparse needs a decode plan with topK');
      const S = pl.info.numSeqs;
      const H = p.numKvHeads;
      const meta = metadata(p, a.metaMin, a.metaMax, a.metaDtype);
      const q = f32(a.q, a.qOffset ?? 0, S * p.numQHeads * p.headDim);
      const qRow = p.numQHeads * p.headDim;
      const counts = new Int32Array(S * H);
      const rows = new Int32Array(S * H * pl.info.maxPages);
      for (let s = 0; s < S; s++) {
        const pages = p.pageIndices.subarray(p.pageIndptr[s], p.pageIndptr[s + 1]);
        const n = pages.length;
        const K = p.topK[s];
        const mask = new Uint8Array(H * n);
        if (K >= n) {
          mask.fill(CHOSEN);
        } else {
          // Quest's choice as the fused kernel makes it: sinks and the last page forced when non-empty, then the top scores.
          const scores = scorePages({ layout: layoutOf(p), metadata: meta, query: q.subarray(s * qRow, (s + 1) * qRow), numQHeads: p.numQHeads, pages, aggregation: a.aggregateSum ? 'sum' : 'max' });
          const scratch = new Float64Array(n);
          for (let j = 0; j < H; j++) {
            let kept = 0;
            for (const f of new Set([...Array.from({ length: Math.min(p.sinkPages ?? 0, n) }, (_, i) => i), n - 1])) {
              mask[j * n + f] = scores[j * n + f] > -Infinity ? CHOSEN : EXCLUDED;
              if (mask[j * n + f] === CHOSEN) kept++;
            }
            chooseTopK(scores, j * n, n, K - kept, mask, scratch);
          }
        }
        const sel = selectionFromMask(H, n, mask);
        for (let j = 0; j < H; j++) {
          counts[s * H + j] = sel.indptr[j + 1] - sel.indptr[j];
          rows.set(sel.indices.subarray(sel.indptr[j], sel.indptr[j + 1]), (s * H + j) * pl.info.maxPages);
        }
      }
      pl.counts = counts;
      pl.rows = rows;
      attend(pl, a, selectionOf(pl, Int32Array.from({ length: S }, (_, s) => s), counts, rows));
    },

    readSelection: (h) => {
      const pl = plan(h);
      if (pl.counts === null || pl.rows === null) throw new Error('emulated addon: no sparse launch yet');
      const sel = selectionOf(pl, Int32Array.from({ length: pl.info.numSeqs }, (_, s) => s), pl.counts, pl.rows);
      return { indptr: sel.indptr, pages: sel.pages };
    },

    copySelection: (h, { dst, dstOffset = 0, rowPages }) => {
      const pl = plan(h);
      if (pl.counts === null || pl.rows === null) throw new Error('emulated addon: no sparse launch yet');
      const width = rowPages ?? pl.info.maxPages;
      const pairs = pl.counts.length;
      i32(dst, dstOffset, pairs).set(pl.counts);
      for (let r = 0; r < pairs; r++) i32(dst, dstOffset + pairs + r * width, width).set(pl.rows.subarray(r * pl.info.maxPages, r * pl.info.maxPages + width));
    },

    pageScore: (h, a) => {
      const pl = plan(h);
      const { p } = pl;
      defaultStride(p, a.qStride, 'qStride');
      const meta = metadata(p, a.metaMin, a.metaMax, a.metaDtype);
      const qRow = p.numQHeads * p.headDim;
      const q = f32(a.q, a.qOffset ?? 0, pl.info.numTokens * qRow);
      for (let i = 0; i < a.seqs.length; i++) {
        const s = a.seqs[i];
        const t = singleRow(pl, s);
        const pages = p.pageIndices.subarray(p.pageIndptr[s], p.pageIndptr[s + 1]);
        const out = f32(a.out, (a.outOffset ?? 0) + a.outOffsets[i], p.numKvHeads * pages.length);
        scorePages({ layout: layoutOf(p), metadata: meta, query: q.subarray(t * qRow, (t + 1) * qRow), numQHeads: p.numQHeads, pages, aggregation: a.aggregateSum ? 'sum' : 'max', out });
      }
    },

    decodeSelected: (h, a) => {
      const pl = plan(h);
      const { p } = pl;
      const H = p.numKvHeads;
      if (a.indptr.length !== a.seqs.length * H + 1) throw new Error('emulated addon: indptr must have seqs.length * numKvHeads + 1 entries');
      const counts = new Int32Array(a.seqs.length * H);
      for (let l = 0; l < counts.length; l++) counts[l] = a.indptr[l + 1] - a.indptr[l];
      const sel = selectionOf(pl, a.seqs, counts, a.pages, a.indptr);
      // Rows of unlisted sequences are left as they are: attend into scratch, copy the listed rows.
      const qRow = p.numQHeads * p.headDim;
      const scratch = new Float32Array(pl.info.numTokens * qRow);
      attend(pl, { ...a, out: a.out }, sel, scratch);
      const out = f32(a.out, a.outOffset ?? 0, pl.info.numTokens * qRow);
      for (const s of a.seqs) {
        const t = singleRow(pl, s);
        out.set(scratch.subarray(t * qRow, (t + 1) * qRow), t * qRow);
      }
    },

    attentionStats: (h, a) => {
      const pl = plan(h);
      const { p } = pl;
      defaultStride(p, a.qStride, 'qStride');
      const S = pl.info.numSeqs;
      const params = layerParams(pl, a.k, a.k, false, 0);
      params.scale = a.scale ?? params.scale;
      const tokens = Int32Array.from({ length: S }, (_, s) => (pl.queryIndptr[s + 1] > pl.queryIndptr[s] ? pl.queryIndptr[s + 1] - 1 : -1));
      const entropy = new Float64Array(S);
      const positionMass = Array.from(p.seqLens, (len) => new Float32Array(len));
      const q = f32(a.q, 0, pl.info.numTokens * p.numQHeads * p.headDim);
      attentionStatsOverPages(params, q, { indptr: a.indptr, pages: a.pages }, { tokens, entropy, positionMass });
      f32(a.entropy, a.entropyOffset ?? 0, S).set(entropy);
      let at = a.massOffset ?? 0;
      for (const m of positionMass) {
        f32(a.mass, at, m.length).set(m);
        at += m.length;
      }
    },

    gemm: (a) => {
      const batch = a.batch ?? 1;
      const { m, n, k } = a;
      const sa = a.strideA ?? m * k;
      const sb = a.strideB ?? k * n;
      const A = f32(a.a, a.aOffset ?? 0, batch > 0 ? (batch - 1) * sa + m * k : 0);
      const B = f32(a.b, a.bOffset ?? 0, batch > 0 ? (batch - 1) * sb + k * n : 0);
      const C = f32(a.c, a.cOffset ?? 0, batch * m * n);
      const bias = a.bias === undefined ? null : f32(a.bias, 0, n);
      for (let b = 0; b < batch; b++) {
        for (let i = 0; i < m; i++) {
          for (let j = 0; j < n; j++) {
            let acc = bias === null ? 0 : bias[j];
            for (let x = 0; x < k; x++) {
              const av = a.transA ? A[b * sa + x * m + i] : A[b * sa + i * k + x];
              const bv = a.transB ? B[b * sb + j * k + x] : B[b * sb + x * n + j];
              acc += av * bv;
            }
            C[(b * m + i) * n + j] = acc;
          }
        }
      }
    },
    binary: (a) => {
      const total = a.shape.reduce((x, y) => x * y, 1);
      const extent = (strides: number[]) => a.shape.reduce((e, d, i) => e + (d - 1) * strides[i], 0) + 1;
      const A = f32(a.a, 0, extent(a.aStrides));
      const B = f32(a.b, 0, extent(a.bStrides));
      const out = f32(a.out, 0, total);
      const ops = [(x: number, y: number) => x + y, (x: number, y: number) => x - y, (x: number, y: number) => x * y, (x: number, y: number) => x / y, Math.max, Math.min];
      const op = ops[a.op];
      for (let i = 0; i < total; i++) {
        let rest = i;
        let ia = 0;
        let ib = 0;
        for (let d = a.shape.length - 1; d >= 0; d--) {
          const c = rest % a.shape[d];
          rest = (rest - c) / a.shape[d];
          ia += c * a.aStrides[d];
          ib += c * a.bStrides[d];
        }
        out[i] = op(A[ia], B[ib]);
      }
    },
    gather: (a) => {
      const idx = i32(a.indices, 0, a.numIndices);
      const row = a.inner * a.elemBytes;
      for (let o = 0; o < a.outer; o++) {
        for (let j = 0; j < a.numIndices; j++) {
          bytes(a.out, (o * a.numIndices + j) * row, row).set(bytes(a.x, (o * a.axisDim + idx[j]) * row, row));
        }
      }
    },
    norm: (a) => {
      const x = f32(a.x, 0, a.rows * a.cols);
      const out = f32(a.out, 0, a.rows * a.cols);
      if (a.bias === undefined) rmsNormRows(x, f32(a.weight, 0, a.cols), a.eps, a.cols, out);
      else layerNormRows(x, f32(a.weight, 0, a.cols), f32(a.bias, 0, a.cols), a.eps, a.cols, out);
    },
    activation: (a) => {
      const x = f32(a.x, 0, a.rows * a.cols);
      if (a.kind === 0) swiGluRows(x, a.cols / 2, f32(a.out, 0, (a.rows * a.cols) / 2));
      else geluNew(x, f32(a.out, 0, a.rows * a.cols));
    },
    cast: (a) => {
      const out = a.to === 0 ? f32(a.out, 0, a.count) : i32(a.out, 0, a.count);
      const x = a.from === 0 ? f32(a.x, 0, a.count) : i32(a.x, 0, a.count);
      for (let i = 0; i < a.count; i++) out[i] = a.to === 2 ? Math.trunc(x[i]) : x[i];
    },
    rebuildMetadata: (a) => {
      const layout: KvLayout = { numLayers: 1, numPages: a.numPagesTotal, pageSize: a.pageSize, numKvHeads: a.numKvHeads, headDim: a.headDim };
      const pool = a.numPagesTotal * a.pageSize * a.numKvHeads * a.headDim;
      const kCache = a.kvDtype === 1 ? decodeFp16(new Uint16Array(block(a.k).mem, 0, pool)) : f32(a.k, 0, pool);
      const n = a.numPagesTotal * a.numKvHeads * a.headDim;
      if (a.metaDtype !== 0) throw new Error('emulated addon: fp32 page metadata only');
      rebuildPageMetadata({ layout, min: f32(a.metaMin, 0, n), max: f32(a.metaMax, 0, n), kCache, pages: a.pages, fills: a.fills });
    },
    copyTokens: (a) => {
      const row = a.rowElems * a.elemBytes;
      for (const c of a.caches) for (let i = 0; i < a.src.length; i++) bytes(c, a.dst[i] * row, row).set(bytes(c, a.src[i] * row, row).slice());
    },
  };
  return addon;
}

/** The row of sequence `s`'s single new token (page lists are for decode queries). */
function singleRow(pl: Plan, s: number): number {
  if (pl.queryIndptr[s + 1] - pl.queryIndptr[s] !== 1) throw new Error(`emulated addon: sequence ${s} has no single new token`);
  return pl.queryIndptr[s];
}

/** A PageSelection over all the plan's sequences: the listed ones sparse with their lists (rows of `maxPages`, or CSR when `indptr` is given). */
function selectionOf(pl: Plan, seqs: Int32Array, counts: Int32Array, pages: Int32Array, indptr?: Int32Array): PageSelection {
  const S = pl.info.numSeqs;
  const H = pl.p.numKvHeads;
  const sparse = new Uint8Array(S);
  const lists: number[][] = Array.from({ length: S * H }, () => []);
  seqs.forEach((s, i) => {
    sparse[s] = 1;
    for (let j = 0; j < H; j++) {
      const l = i * H + j;
      const from = indptr ? indptr[l] : l * pl.info.maxPages;
      lists[s * H + j] = Array.from(pages.subarray(from, from + counts[l]));
    }
  });
  const outIndptr = new Int32Array(S * H + 1);
  lists.forEach((l, i) => (outIndptr[i + 1] = outIndptr[i] + l.length));
  return { sparse, indptr: outIndptr, pages: Int32Array.from(lists.flat()) };
}

/** Causal attention of every row (or over `selection`) from the args' queries into `into` (default: the args' output). */
function attend(
  pl: Plan,
  a: { q: DeviceBuffer; qOffset?: number; qStride?: number; k: DeviceBuffer; v: DeviceBuffer; out: DeviceBuffer; outOffset?: number; outStride?: number; scale?: number },
  selection?: PageSelection,
  into?: Float32Array,
): void {
  const { p } = pl;
  defaultStride(p, a.qStride, 'qStride');
  defaultStride(p, a.outStride, 'outStride');
  const qRow = p.numQHeads * p.headDim;
  const params = layerParams(pl, a.k, a.v, false, 0);
  params.out = into ?? f32(a.out, a.outOffset ?? 0, pl.info.numTokens * qRow);
  params.scale = a.scale ?? params.scale;
  if (selection) params.selection = selection;
  attendOverPages(params, f32(a.q, a.qOffset ?? 0, pl.info.numTokens * qRow));
}
