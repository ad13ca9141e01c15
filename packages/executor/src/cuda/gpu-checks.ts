/**
 * Correctness of the CUDA kernels against the TypeScript reference implementations on the
 * same inputs (kv-retriever's decode attention, sparse attention, page scoring, Quest
 * selection and metadata update; the executor's K/V append and causal paged attention).
 * Needs a GPU: run by `device-run.ts` on the accelerator machine and by a vitest suite that
 * skips where the addon cannot load.
 */
import type { KvLayout, SelectionConfig } from '@tinyserve/core';
import { mulberry32 } from '@tinyserve/core';
import {
  KvCacheStorage,
  createQuestPolicy,
  decodeFp16,
  encodeFp16,
  packSelections,
  pagedAttentionDecodeDense,
  rebuildPageMetadata,
  createPageMetadataLayer,
  scorePages,
  sparsePagedAttention,
  updatePageMetadata,
} from '@tinyserve/kv-retriever';
import type { GqaAggregation, HeadSelection, PagedAttentionDecodeParams } from '@tinyserve/kv-retriever';
import { appendKvToPages, attendOverPages } from '../kernels/paged-attention-cpu.js';
import { computeRopeTables, rotateHead } from '../kernels/rope.js';
import type { CudaAddon, DeviceBuffer, PlanUpdateParams } from './addon-types.js';
import { CudaKvCache } from './cuda-kv-cache.js';
import type { CudaKvDtype, CudaMetaDtype } from './cuda-kv-cache.js';
import { CudaStepPlan, selectionTopK } from './step-plan.js';
import type { PlanInfo } from './addon-types.js';

export interface GpuCheckResult {
  name: string;
  ok: boolean;
  /** ‖gpu − ref‖ / ‖ref‖ of the compared output, when there is one. */
  relErr?: number;
  detail: string;
}

/** Relative L2 error, with NaN (an unwritten, poisoned output) counting as a failure. */
export function relativeError(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = got[i] - ref[i];
    if (Number.isNaN(d)) return Infinity;
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den === 0 ? Math.sqrt(num) : Math.sqrt(num / den);
}

const rng = mulberry32;

function normals(n: number, r: () => number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(Math.max(r(), 1e-12))) * Math.cos(2 * Math.PI * r()) * scale;
  return out;
}

function roundTo(dtype: CudaKvDtype, x: Float32Array): Float32Array {
  return dtype === 'fp16' ? decodeFp16(encodeFp16(x)) : x;
}

/** fp32 upload/download helpers for small device arrays. */
class Scratch {
  private readonly owned: DeviceBuffer[] = [];
  constructor(private readonly addon: CudaAddon) {}
  floats(data: Float32Array | number): DeviceBuffer {
    const n = typeof data === 'number' ? data : data.length;
    const b = this.addon.alloc(Math.max(1, n) * 4);
    this.owned.push(b);
    if (typeof data !== 'number') this.addon.upload(b, 0, data);
    else this.addon.fill({ dst: b, count: n, dtype: 0, value: NaN });
    return b;
  }
  read(b: DeviceBuffer, n: number): Float32Array {
    const out = new Float32Array(n);
    this.addon.download(b, 0, out);
    return out;
  }
  poison(b: DeviceBuffer, n: number): void {
    this.addon.fill({ dst: b, count: n, dtype: 0, value: NaN });
  }
  dispose(): void {
    for (const b of this.owned) this.addon.free(b);
  }
}

export interface AttentionScenario {
  name: string;
  numQHeads: number;
  numKvHeads: number;
  headDim: number;
  pageSize: number;
  kvDtype: CudaKvDtype;
  metaDtype: CudaMetaDtype;
  /** Cached tokens before the step, per sequence. */
  history: number[];
  /** New tokens per sequence (1 each: a decode step). */
  newTokens: number[];
  rope: boolean;
  selection?: Pick<SelectionConfig, 'selectionRatio' | 'tokenBudget' | 'sinkPages'>;
  denseSplits?: number;
  sparseSplits?: number;
  headsPerCta?: number;
  /** Warps per CTA of the fused sparse kernel (4 or 8; default: the plan's choice). */
  sparseWarps?: number;
  /** Keys drawn from a few values only, so many pages score exactly alike (tie breaking). */
  tiedKeys?: boolean;
  seed: number;
}

/**
 * Relative L2 tolerances. fp32 KV runs fp32 math on CUDA cores (~1e-7 seen). fp16 KV with GQA
 * groups of 4+ runs on tensor cores, where probabilities enter p.v as fp16 (relative rounding
 * 2^-11 per weight): FP16 tolerance. int8 on CUDA cores runs fp32 math over exactly the values
 * the reference dequantises (only the order of roundings differs: the k scale multiplies the
 * whole dot product, the v scale the probability), so it is held to the fp32 tolerance; int8
 * with GQA groups of 4+ runs on tensor cores (probabilities times v scales in fp16): FP16
 * tolerance.
 */
const TOL = { fp32: 2e-5, fp16: 1e-3, int8: 2e-5 } as const;
function decodeTolerance(kvDtype: keyof typeof TOL, headsPerCta: number): number {
  return headsPerCta === 16 ? TOL.fp16 : TOL[kvDtype];
}

/**
 * Runs one scenario: history K/V uploaded, metadata rebuilt on the GPU, the step's K/V
 * appended (RoPE, metadata fused), then decode (dense and sparse) or prefill attention, each
 * compared with the TypeScript reference on the same inputs.
 */
export function runAttentionScenario(addon: CudaAddon, sc: AttentionScenario): GpuCheckResult[] {
  const results: GpuCheckResult[] = [];
  const r = rng(sc.seed);
  const S = sc.history.length;
  const { numQHeads: Hq, numKvHeads: Hk, headDim: D, pageSize: ps } = sc;
  const seqLens = Int32Array.from(sc.history, (h, s) => h + sc.newTokens[s]);
  const pagesPerSeq = Array.from(seqLens, (n) => Math.ceil(n / ps));
  const numPages = pagesPerSeq.reduce((a, b) => a + b, 0) + 3;
  const layout: KvLayout = { numLayers: 1, numPages, pageSize: ps, numKvHeads: Hk, headDim: D };
  const perm = Array.from({ length: numPages }, (_, i) => i);
  for (let i = numPages - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const pageIndptr = new Int32Array(S + 1);
  for (let s = 0; s < S; s++) pageIndptr[s + 1] = pageIndptr[s] + pagesPerSeq[s];
  const pageIndices = Int32Array.from(perm.slice(0, pageIndptr[S]));
  const queryIndptr = new Int32Array(S + 1);
  for (let s = 0; s < S; s++) queryIndptr[s + 1] = queryIndptr[s] + sc.newTokens[s];
  const T = queryIndptr[S];
  const decode = sc.newTokens.every((c) => c === 1);
  const row = Hk * D;
  const width = (Hq + 2 * Hk) * D;

  // History: random K/V at every cached position, as the device will hold them.
  const poolElems = numPages * ps * row;
  const hostK = new Float32Array(poolElems);
  const hostV = new Float32Array(poolElems);
  const keyValues = sc.tiedKeys ? [-1, -0.5, 0.5, 1] : null;
  for (let s = 0; s < S; s++) {
    for (let pos = 0; pos < sc.history[s]; pos++) {
      const off = (pageIndices[pageIndptr[s] + Math.floor(pos / ps)] * ps + (pos % ps)) * row;
      const k = normals(row, r);
      if (keyValues) for (let i = 0; i < row; i++) k[i] = keyValues[Math.floor(r() * keyValues.length)] * (pos % 3 === 0 ? 1 : 0.5);
      hostK.set(k, off);
      hostV.set(normals(row, r), off);
    }
  }
  // int8: the TypeScript storage is the reference (its bytes are uploaded as they are); the
  // attention and metadata references read its dequantised values.
  const storage = sc.kvDtype === 'int8' ? new KvCacheStorage({ layout, dtype: 'int8' }) : null;
  if (storage) {
    for (let s = 0; s < S; s++) {
      for (let pos = 0; pos < sc.history[s]; pos++) {
        const page = pageIndices[pageIndptr[s] + Math.floor(pos / ps)];
        const off = (page * ps + (pos % ps)) * row;
        storage.writeToken(0, page, pos % ps, hostK.subarray(off, off + row), hostV.subarray(off, off + row));
      }
    }
    hostK.set(storage.decodeLayer(0, 'key'));
    hostV.set(storage.decodeLayer(0, 'value'));
  } else {
    hostK.set(roundTo(sc.kvDtype, hostK));
    hostV.set(roundTo(sc.kvDtype, hostV));
  }

  const scratch = new Scratch(addon);
  const cache = new CudaKvCache(addon, { layout, kvDtype: sc.kvDtype, metadata: sc.metaDtype });
  const plan = new CudaStepPlan(addon);
  try {
    if (storage) {
      cache.uploadInt8(0, 'key', storage.keys[0] as Int8Array, storage.keyScales[0]);
      cache.uploadInt8(0, 'value', storage.values[0] as Int8Array, storage.valueScales[0]);
    } else {
      cache.upload(0, 'key', hostK);
      cache.upload(0, 'value', hostV);
    }
    const fills = new Int32Array(numPages);
    for (let s = 0; s < S; s++) {
      for (let i = 0; i < pagesPerSeq[s]; i++) fills[pageIndices[pageIndptr[s] + i]] = Math.max(0, Math.min(ps, sc.history[s] - i * ps));
    }
    const allPages = Int32Array.from({ length: numPages }, (_, i) => i);
    cache.rebuildMetadata(allPages, fills);
    const refMeta = createPageMetadataLayer(layout);
    rebuildPageMetadata({ layout, ...refMeta, kCache: hostK, pages: allPages, fills });
    results.push(compareMetadata(`${sc.name}: metadata rebuild`, cache.downloadMetadata(0), refMeta, sc.metaDtype));

    const topK = sc.selection ? selectionTopK(seqLens, ps, { selectionRatio: sc.selection.selectionRatio, tokenBudget: sc.selection.tokenBudget }) : undefined;
    const planParams: PlanUpdateParams = {
      numQHeads: Hq,
      numKvHeads: Hk,
      headDim: D,
      pageSize: ps,
      kvDtype: cache.kvCode,
      numPagesTotal: numPages,
      pageIndptr,
      pageIndices,
      seqLens,
      queryIndptr,
      topK,
      sinkPages: sc.selection?.sinkPages ?? 0,
      denseSplits: sc.denseSplits,
      sparseSplits: sc.sparseSplits,
      headsPerCta: sc.headsPerCta,
      sparseWarps: sc.sparseWarps,
    };
    const info = plan.update(planParams);
    const planNote = `splits dense ${info.denseSplits} sparse ${info.sparseSplits}, ${info.headsPerCta} heads/CTA, ${info.sparseWarps}-warp sparse CTAs, ${info.numRuns} runs`;

    // The step: append with RoPE and the metadata update, then attention.
    const qkv = normals(T * width, r);
    const qkvBuf = scratch.floats(qkv);
    const qOut = scratch.floats(T * Hq * D);
    const theta = 10000;
    addon.appendKv(plan.handle, {
      qkv: qkvBuf,
      qOut,
      ...cache.layerBuffers(0),
      metaMin: cache.metaMin[0],
      metaMax: cache.metaMax[0],
      metaDtype: cache.metaCode,
      rope: sc.rope,
      ropeTheta: theta,
    });
    const tokenSeq = new Int32Array(T);
    const tokenPos = new Int32Array(T);
    for (let s = 0; s < S; s++) {
      for (let i = 0; i < sc.newTokens[s]; i++) {
        tokenSeq[queryIndptr[s] + i] = s;
        tokenPos[queryIndptr[s] + i] = sc.history[s] + i;
      }
    }
    const rope = sc.rope ? computeRopeTables(tokenPos, D, theta) : null;
    const scale = 1 / Math.sqrt(D);
    const refParams = {
      numTokens: T,
      numHeads: Hq,
      numKvHeads: Hk,
      headDim: D,
      pageSize: ps,
      qkv,
      out: new Float32Array(T * Hq * D),
      keyCache: hostK,
      valueCache: hostV,
      tokenSeq,
      tokenPos,
      pageIndptr,
      pageIndices,
      rope,
      scale,
      chunkSize: 64,
    };
    appendKvToPages(refParams);
    const tokenPage = new Int32Array(T);
    const tokenSlot = new Int32Array(T);
    for (let t = 0; t < T; t++) {
      tokenPage[t] = pageIndices[pageIndptr[tokenSeq[t]] + Math.floor(tokenPos[t] / ps)];
      tokenSlot[t] = tokenPos[t] % ps;
    }
    if (storage) {
      // hostK holds the TypeScript-rotated fp32 keys of the step here.
      results.push(...checkInt8Append(addon, sc, planParams, cache, storage, qkv, qkvBuf, hostK, tokenPage, tokenSlot, theta));
      hostK.set(storage.decodeLayer(0, 'key'));
      hostV.set(storage.decodeLayer(0, 'value'));
    } else {
      hostK.set(roundTo(sc.kvDtype, hostK));
      hostV.set(roundTo(sc.kvDtype, hostV));
      results.push(compareCache(`${sc.name}: K/V append (${sc.kvDtype}${sc.rope ? ', RoPE' : ''})`, cache, hostK, hostV));
    }
    const newKeys = new Float32Array(T * row);
    for (let t = 0; t < T; t++) {
      newKeys.set(hostK.subarray((tokenPage[t] * ps + tokenSlot[t]) * row, (tokenPage[t] * ps + tokenSlot[t] + 1) * row), t * row);
    }
    updatePageMetadata({ layout, ...refMeta, keys: newKeys, pages: tokenPage, slots: tokenSlot });
    const gpuMeta = cache.downloadMetadata(0);
    results.push(compareMetadata(`${sc.name}: metadata update fused in append`, gpuMeta, refMeta, sc.metaDtype));

    // Rotated queries, unscaled: the reference rotates them inside attention.
    const qRef = new Float32Array(T * Hq * D);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < Hq; h++) {
        const src = t * width + h * D;
        if (rope) rotateHead(qkv, src, rope, t, D, 1, qRef, (t * Hq + h) * D);
        else qRef.set(qkv.subarray(src, src + D), (t * Hq + h) * D);
      }
    }
    const qGot = scratch.read(qOut, T * Hq * D);
    const qErr = relativeError(qGot, qRef);
    results.push({ name: `${sc.name}: rotated queries`, ok: qErr < 1e-6, relErr: qErr, detail: '' });

    const out = scratch.floats(T * Hq * D);
    if (!decode) {
      addon.prefill(plan.handle, { q: qOut, ...cache.layerBuffers(0), out, scale });
      const got = scratch.read(out, T * Hq * D);
      attendOverPages(refParams);
      const err = relativeError(got, refParams.out);
      results.push({ name: `${sc.name}: causal prefill attention`, ok: err < TOL[sc.kvDtype] * 10, relErr: err, detail: `${T} tokens, ${info.numBlocks} blocks` });
      return results;
    }

    const lastPageLen = Int32Array.from(seqLens, (n, s) => n - (pagesPerSeq[s] - 1) * ps);
    const decodeRef = { layout, kCache: hostK, vCache: hostV, query: qRef, numQHeads: Hq, pageIndptr, pageIndices, lastPageLen, scale };
    const denseRef = pagedAttentionDecodeDense(decodeRef);
    addon.decodeDense(plan.handle, { q: qOut, ...cache.layerBuffers(0), out, scale });
    const dense = scratch.read(out, T * Hq * D);
    const denseErr = relativeError(dense, denseRef);
    results.push({ name: `${sc.name}: dense decode`, ok: denseErr < decodeTolerance(sc.kvDtype, info.headsPerCta), relErr: denseErr, detail: planNote });

    if (sc.selection) {
      const route = { plan, cache, scratch, layout, meta: gpuMeta, q: qGot, qBuf: qOut, pageIndptr, pageIndices, seqLens, decodeRef, denseRef, info };
      results.push(...checkPolicyRoute(addon, sc, route));
    }

    if (sc.selection && topK) {
      scratch.poison(out, T * Hq * D);
      addon.decodeSparse(plan.handle, {
        q: qOut,
        ...cache.layerBuffers(0),
        out,
        scale,
        metaMin: cache.metaMin[0],
        metaMax: cache.metaMax[0],
        metaDtype: cache.metaCode,
      });
      const sparse = scratch.read(out, T * Hq * D);
      const sel = addon.readSelection(plan.handle);
      results.push(compareSelection(`${sc.name}: fused selection vs quest policy`, sc, layout, sel, gpuMeta, qRef, pageIndptr, pageIndices, seqLens));
      const sparseRef = sparsePagedAttention({ ...decodeRef, selectedIndptr: sel.indptr, selectedPages: sel.pages });
      const sparseErr = relativeError(sparse, sparseRef);
      let selected = 0;
      let total = 0;
      for (let s = 0; s < S; s++) total += pagesPerSeq[s] * Hk;
      selected = sel.pages.length;
      results.push({
        name: `${sc.name}: fused sparse decode`,
        ok: sparseErr < decodeTolerance(sc.kvDtype, info.headsPerCta),
        relErr: sparseErr,
        detail: `${selected}/${total} (page, KV head) pairs attended; ${planNote}`,
      });
      if (selected === total) {
        const err = relativeError(sparse, denseRef);
        results.push({ name: `${sc.name}: sparse with every page equals dense`, ok: err < decodeTolerance(sc.kvDtype, info.headsPerCta), relErr: err, detail: '' });
      }
    }
    return results;
  } finally {
    cache.dispose();
    plan.release();
    scratch.dispose();
  }
}

/**
 * The int8 append against the kv-retriever's `KvCacheStorage` (per-token scales) fed the same
 * rotated keys and values: the GPU's rotated keys come from an fp32 append of the same step
 * (same kernel code path for RoPE), checked against the TypeScript rotation (`cpuKeys`, the
 * pool with the step's rows written) within the last-bit tolerance of cos/sin; the stored
 * bytes and scales must then equal the storage's exactly. Writes the step's tokens into `storage`.
 */
function checkInt8Append(
  addon: CudaAddon,
  sc: AttentionScenario,
  planParams: PlanUpdateParams,
  cache: CudaKvCache,
  storage: KvCacheStorage,
  qkv: Float32Array,
  qkvBuf: DeviceBuffer,
  cpuKeys: Float32Array,
  tokenPage: Int32Array,
  tokenSlot: Int32Array,
  ropeTheta: number,
): GpuCheckResult[] {
  const { layout } = cache;
  const row = layout.numKvHeads * layout.headDim;
  const width = (sc.numQHeads + 2 * layout.numKvHeads) * layout.headDim;
  const kOff = sc.numQHeads * layout.headDim;
  const shadow = new CudaKvCache(addon, { layout, kvDtype: 'fp32', metadata: 'none' });
  const shadowPlan = new CudaStepPlan(addon);
  try {
    const { numQHeads, numKvHeads, headDim, pageSize, numPagesTotal, pageIndptr, pageIndices, seqLens, queryIndptr } = planParams;
    shadowPlan.update({ numQHeads, numKvHeads, headDim, pageSize, kvDtype: shadow.kvCode, numPagesTotal, pageIndptr, pageIndices, seqLens, queryIndptr });
    addon.appendKv(shadowPlan.handle, { qkv: qkvBuf, ...shadow.layerBuffers(0), rope: sc.rope, ropeTheta });
    const gpuKeys = shadow.download(0, 'key');
    let rotBad = 0;
    let rotWorst = 0;
    for (let t = 0; t < tokenPage.length; t++) {
      const off = (tokenPage[t] * layout.pageSize + tokenSlot[t]) * row;
      const k = gpuKeys.subarray(off, off + row);
      for (let i = 0; i < row; i++) {
        const d = Math.abs(k[i] - cpuKeys[off + i]);
        if (!(d <= 1e-6 * Math.max(1, Math.abs(cpuKeys[off + i])))) rotBad++;
        rotWorst = Math.max(rotWorst, Number.isNaN(d) ? Infinity : d);
      }
      storage.writeToken(0, tokenPage[t], tokenSlot[t], k, qkv.subarray(t * width + kOff + row, t * width + kOff + 2 * row));
    }
    const results: GpuCheckResult[] = [
      { name: `${sc.name}: rotated keys of the int8 append (GPU RoPE vs TypeScript)`, ok: rotBad === 0, detail: `${rotBad} elements differ, max |diff| ${rotWorst.toExponential(2)}` },
    ];
    let qBad = 0;
    let scaleBad = 0;
    let worstQ = 0;
    for (const which of ['key', 'value'] as const) {
      const got = cache.downloadInt8(0, which);
      const refQ = (which === 'key' ? storage.keys[0] : storage.values[0]) as Int8Array;
      const refS = which === 'key' ? storage.keyScales[0] : storage.valueScales[0];
      for (let i = 0; i < refQ.length; i++) {
        if (got.q[i] !== refQ[i]) {
          qBad++;
          worstQ = Math.max(worstQ, Math.abs(got.q[i] - refQ[i]));
        }
      }
      for (let i = 0; i < refS.length; i++) if (got.scales[i] !== refS[i]) scaleBad++;
    }
    results.push({
      name: `${sc.name}: K/V append (int8${sc.rope ? ', RoPE' : ''}) vs KvCacheStorage`,
      ok: qBad === 0 && scaleBad === 0,
      detail: `${qBad} bytes differ (max |diff| ${worstQ}), ${scaleBad} scales differ (${2 * storage.keyScales[0].length} rows)`,
    });
    return results;
  } finally {
    shadow.dispose();
    shadowPlan.release();
  }
}

/** What {@link checkPolicyRoute} needs of a decode scenario's step (after the append). */
interface PolicyRouteContext {
  plan: CudaStepPlan;
  cache: CudaKvCache;
  scratch: Scratch;
  layout: KvLayout;
  /** The metadata after the append, as downloaded. */
  meta: { min: Float32Array; max: Float32Array };
  /** The GPU's rotated queries, on the host and on the device. */
  q: Float32Array;
  qBuf: DeviceBuffer;
  pageIndptr: Int32Array;
  pageIndices: Int32Array;
  seqLens: Int32Array;
  decodeRef: PagedAttentionDecodeParams;
  denseRef: Float32Array;
  info: PlanInfo;
}

/**
 * The kernels of the policy route (a selection policy in JavaScript between scoring and
 * attention) on the scenario's step, given the same inputs as the TypeScript references: page
 * scores with max and sum aggregation against `scorePages` (bit for bit: both sum the exact
 * products in float64 in the same order), and attention over given page lists against
 * `sparsePagedAttention`: the quest policy's pages; random lists, some empty, for some
 * sequences listed out of order with 3 splits (the rows of unlisted sequences must stay as
 * they were); and every page (equals dense decode).
 */
function checkPolicyRoute(addon: CudaAddon, sc: AttentionScenario, c: PolicyRouteContext): GpuCheckResult[] {
  const results: GpuCheckResult[] = [];
  const { layout, plan, cache, scratch, pageIndptr, pageIndices, seqLens } = c;
  const { numKvHeads: Hk, headDim: D } = layout;
  const Hq = sc.numQHeads;
  const S = seqLens.length;
  const qRow = Hq * D;
  const pagesOf = (s: number) => pageIndices.subarray(pageIndptr[s], pageIndptr[s + 1]);
  const queryOf = (s: number) => c.q.subarray(s * qRow, (s + 1) * qRow);
  const allSeqs = Int32Array.from({ length: S }, (_, s) => s);

  const offsets = new Int32Array(S);
  let total = 0;
  for (let s = 0; s < S; s++) {
    offsets[s] = total;
    total += Hk * pagesOf(s).length;
  }
  for (const aggregation of ['max', 'sum'] as GqaAggregation[]) {
    const out = scratch.floats(total);
    addon.pageScore(plan.handle, {
      q: c.qBuf,
      metaMin: cache.metaMin[0],
      metaMax: cache.metaMax[0],
      metaDtype: cache.metaCode,
      aggregateSum: aggregation === 'sum',
      out,
      seqs: allSeqs,
      outOffsets: offsets,
    });
    const got = scratch.read(out, total);
    const ref = new Float32Array(total);
    for (let s = 0; s < S; s++) {
      const n = Hk * pagesOf(s).length;
      scorePages({ layout, metadata: c.meta, query: queryOf(s), numQHeads: Hq, pages: pagesOf(s), aggregation, out: ref.subarray(offsets[s], offsets[s] + n) });
    }
    let differ = 0;
    let worst = 0;
    for (let i = 0; i < total; i++) {
      if (got[i] === ref[i]) continue;
      differ++;
      const rel = Math.abs(got[i] - ref[i]) / Math.max(1, Math.abs(ref[i]));
      worst = Number.isNaN(rel) ? Infinity : Math.max(worst, rel);
    }
    results.push({
      name: `${sc.name}: page scores (${aggregation}) vs scorePages`,
      ok: differ === 0,
      relErr: worst,
      detail: `${total} (page, KV head) scores, ${differ} not bit-identical`,
    });
  }

  const TOLS = decodeTolerance(sc.kvDtype, c.info.headsPerCta);
  const T = S;
  const out = scratch.floats(T * qRow);
  const base = { q: c.qBuf, ...cache.layerBuffers(0), out, scale: c.decodeRef.scale };
  const refOf = (selections: HeadSelection[]) => {
    const packed = packSelections(selections);
    return { packed, ref: sparsePagedAttention({ ...c.decodeRef, query: c.q, selectedIndptr: packed.selectedIndptr, selectedPages: packed.selectedPages }) };
  };

  // The quest policy's pages, from the same metadata and queries.
  const cfg = sc.selection!;
  const policy = createQuestPolicy(
    { policy: 'quest', selectionRatio: cfg.selectionRatio, tokenBudget: cfg.tokenBudget, sinkPages: cfg.sinkPages, denseLayers: 0, useFusedKernel: false },
    { pageSize: layout.pageSize },
  );
  const quest: HeadSelection[] = Array.from(allSeqs, (s) =>
    policy.select({ layout, layer: 0, pages: pagesOf(s), numTokens: seqLens[s], query: queryOf(s), numQHeads: Hq, metadata: c.meta }),
  );
  {
    const { packed, ref } = refOf(quest);
    scratch.poison(out, T * qRow);
    addon.decodeSelected(plan.handle, { ...base, seqs: allSeqs, indptr: packed.selectedIndptr, pages: packed.selectedPages });
    const err = relativeError(scratch.read(out, T * qRow), ref);
    results.push({
      name: `${sc.name}: attention over the quest policy's pages (policy route)`,
      ok: err < TOLS,
      relErr: err,
      detail: `${packed.selectedPages.length} (page, KV head) pairs; ${c.info.headsPerCta} heads/CTA`,
    });
  }

  // Random lists for the last and first sequences (in that order), the first list empty.
  {
    const r = rng(sc.seed + 1000);
    const listed = S > 1 ? [S - 1, 0] : [0];
    const selections: HeadSelection[] = Array.from(allSeqs, (s) => {
      const np = pagesOf(s).length;
      const indptr = new Int32Array(Hk + 1);
      const indices: number[] = [];
      for (let j = 0; j < Hk; j++) {
        if (listed.includes(s) && !(s === listed[0] && j === 0)) for (let p = 0; p < np; p++) if (r() < 0.3 || p === np - 1) indices.push(p);
        indptr[j + 1] = indices.length;
      }
      return { indptr, indices: Int32Array.from(indices) };
    });
    const { ref } = refOf(selections);
    const mine = packSelections(listed.map((s) => selections[s]));
    scratch.poison(out, T * qRow);
    addon.decodeSelected(plan.handle, { ...base, seqs: Int32Array.from(listed), indptr: mine.selectedIndptr, pages: mine.selectedPages, splits: 3 });
    const got = scratch.read(out, T * qRow);
    const rows = (src: Float32Array, seqs: number[]) => Float32Array.from(seqs.flatMap((s) => Array.from(src.subarray(s * qRow, (s + 1) * qRow))));
    const err = relativeError(rows(got, listed), rows(ref, listed));
    const others = allSeqs.filter((s) => !listed.includes(s));
    const touched = others.filter((s) => got.subarray(s * qRow, (s + 1) * qRow).some((x) => !Number.isNaN(x))).length;
    results.push({
      name: `${sc.name}: attention over random page lists (empty heads, 3 splits, a subset of sequences)`,
      ok: err < TOLS && touched === 0,
      relErr: err,
      detail: `sequences ${listed.join(', ')} listed; ${touched} of ${others.length} unlisted rows written`,
    });
  }

  // Every page listed: dense decode.
  {
    const every: HeadSelection[] = Array.from(allSeqs, (s) => {
      const np = pagesOf(s).length;
      const indices = new Int32Array(Hk * np);
      for (let j = 0; j < Hk; j++) for (let p = 0; p < np; p++) indices[j * np + p] = p;
      return { indptr: Int32Array.from({ length: Hk + 1 }, (_, j) => j * np), indices };
    });
    const packed = packSelections(every);
    scratch.poison(out, T * qRow);
    addon.decodeSelected(plan.handle, { ...base, seqs: allSeqs, indptr: packed.selectedIndptr, pages: packed.selectedPages });
    const err = relativeError(scratch.read(out, T * qRow), c.denseRef);
    results.push({ name: `${sc.name}: page lists of every page equal dense decode`, ok: err < TOLS, relErr: err, detail: '' });
  }
  return results;
}

function compareCache(name: string, cache: CudaKvCache, hostK: Float32Array, hostV: Float32Array): GpuCheckResult {
  const k = cache.download(0, 'key');
  const v = cache.download(0, 'value');
  let bad = 0;
  let worst = 0;
  for (const [got, ref] of [[k, hostK], [v, hostV]] as const) {
    for (let i = 0; i < ref.length; i++) {
      const d = Math.abs(got[i] - ref[i]);
      // RoPE in double on both sides, rounded once: equal up to a last-bit difference of cos/sin.
      if (!(d <= 1e-6 * Math.max(1, Math.abs(ref[i])) + (cache.kvDtype === 'fp16' ? Math.abs(ref[i]) * 2 ** -10 : 0))) bad++;
      if (d > worst || Number.isNaN(d)) worst = Number.isNaN(d) ? Infinity : d;
    }
  }
  return { name, ok: bad === 0, detail: `${bad} elements differ, max |diff| ${worst.toExponential(2)}` };
}

function compareMetadata(
  name: string,
  got: { min: Float32Array; max: Float32Array },
  ref: { min: Float32Array; max: Float32Array },
  dtype: CudaMetaDtype,
): GpuCheckResult {
  let bad = 0;
  let loose = 0;
  for (let i = 0; i < ref.min.length; i++) {
    const empty = ref.min[i] > ref.max[i];
    if (empty) {
      if (!(got.min[i] > got.max[i])) bad++;
      continue;
    }
    if (dtype === 'fp32') {
      if (got.min[i] !== ref.min[i] || got.max[i] !== ref.max[i]) bad++;
    } else {
      // fp16 boxes are rounded outward: they must contain the exact box, within one half-ulp.
      const ulpMin = Math.max(Math.abs(ref.min[i]) * 2 ** -10, 2 ** -24);
      const ulpMax = Math.max(Math.abs(ref.max[i]) * 2 ** -10, 2 ** -24);
      if (!(got.min[i] <= ref.min[i] && got.max[i] >= ref.max[i])) bad++;
      else if (ref.min[i] - got.min[i] > ulpMin || got.max[i] - ref.max[i] > ulpMax) loose++;
    }
  }
  return { name, ok: bad === 0 && loose === 0, detail: `${bad} boxes wrong, ${loose} looser than one fp16 step (${ref.min.length} channels)` };
}

/**
 * Same pages as the kv-retriever's quest policy, fed the same metadata and queries. Pages may
 * differ only where the reference's scores tie with the selection threshold (float32 on the
 * GPU against float64 in TypeScript).
 */
function compareSelection(
  name: string,
  sc: AttentionScenario,
  layout: KvLayout,
  sel: { indptr: Int32Array; pages: Int32Array },
  meta: { min: Float32Array; max: Float32Array },
  q: Float32Array,
  pageIndptr: Int32Array,
  pageIndices: Int32Array,
  seqLens: Int32Array,
): GpuCheckResult {
  const cfg = sc.selection!;
  const policy = createQuestPolicy(
    { policy: 'quest', selectionRatio: cfg.selectionRatio, tokenBudget: cfg.tokenBudget, sinkPages: cfg.sinkPages, denseLayers: 0, useFusedKernel: true },
    { pageSize: layout.pageSize },
  );
  const Hk = layout.numKvHeads;
  const Hq = sc.numQHeads;
  let ties = 0;
  let wrong = 0;
  let compared = 0;
  for (let s = 0; s < seqLens.length; s++) {
    const pages = pageIndices.subarray(pageIndptr[s], pageIndptr[s + 1]);
    const query = q.subarray(s * Hq * layout.headDim, (s + 1) * Hq * layout.headDim);
    const ref = policy.select({ layout, layer: 0, pages, numTokens: seqLens[s], query, numQHeads: Hq, metadata: meta });
    const scores = scorePages({ layout, metadata: meta, query, numQHeads: Hq, pages });
    const n = pages.length;
    for (let j = 0; j < Hk; j++) {
      const mine = new Set(sel.pages.subarray(sel.indptr[s * Hk + j], sel.indptr[s * Hk + j + 1]));
      const theirs = new Set(ref.indices.subarray(ref.indptr[j], ref.indptr[j + 1]));
      compared++;
      if (mine.size !== theirs.size) {
        wrong++;
        continue;
      }
      // The threshold: the lowest score the reference chose among non-forced pages.
      let thr = Infinity;
      for (const p of theirs) if (p >= cfg.sinkPages && p !== n - 1) thr = Math.min(thr, scores[j * n + p]);
      for (const p of new Set([...mine, ...theirs])) {
        if (mine.has(p) === theirs.has(p)) continue;
        const x = scores[j * n + p];
        if (Math.abs(x - thr) <= 1e-5 * Math.max(1, Math.abs(thr))) ties++;
        else wrong++;
      }
    }
  }
  return { name, ok: wrong === 0, detail: `${compared} (sequence, KV head) selections, ${wrong} wrong, ${ties} pages differ at exact ties` };
}

/** The scenarios of the device run: shapes of the target models plus odd ones (group 3, head dim 8/16, page size 7), fp32, fp16 and int8 KV. */
export function defaultScenarios(): AttentionScenario[] {
  const llama = { numQHeads: 32, numKvHeads: 4, headDim: 64 };
  const gpt2 = { numQHeads: 16, numKvHeads: 16, headDim: 64 };
  return [
    { name: 'tinyllama fp16', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [0, 16, 699, 2099], newTokens: [1, 1, 1, 1], rope: true, selection: { selectionRatio: 0.3, tokenBudget: null, sinkPages: 1 }, seed: 1 },
    { name: 'tinyllama fp32 4 heads/CTA 3 splits', ...llama, pageSize: 16, kvDtype: 'fp32', metaDtype: 'fp32', history: [1500, 37, 800], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 1, tokenBudget: 256, sinkPages: 1 }, denseSplits: 3, sparseSplits: 3, headsPerCta: 4, seed: 2 },
    { name: 'gpt2-345m fp16 budget 2048', ...gpt2, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp32', history: [32, 999, 4096], newTokens: [1, 1, 1], rope: false, selection: { selectionRatio: 1, tokenBudget: 2048, sinkPages: 1 }, sparseSplits: 128, seed: 3 },
    { name: 'group 3, dim 16, page 7', numQHeads: 6, numKvHeads: 2, headDim: 16, pageSize: 7, kvDtype: 'fp32', metaDtype: 'fp32', history: [4, 49, 332], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 0.5, tokenBudget: null, sinkPages: 2 }, headsPerCta: 2, seed: 4 },
    { name: 'mqa dim 128 page 32', numQHeads: 8, numKvHeads: 1, headDim: 128, pageSize: 32, kvDtype: 'fp16', metaDtype: 'fp16', history: [2999, 63], newTokens: [1, 1], rope: true, selection: { selectionRatio: 0.125, tokenBudget: null, sinkPages: 1 }, seed: 5 },
    { name: 'dim 8 fixtures', numQHeads: 4, numKvHeads: 2, headDim: 8, pageSize: 16, kvDtype: 'fp32', metaDtype: 'fp32', history: [0, 1, 39], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 0.5, tokenBudget: null, sinkPages: 0 }, seed: 6 },
    { name: 'tinyllama fp16 on CUDA cores (8 heads/CTA)', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [900, 31], newTokens: [1, 1], rope: true, selection: { selectionRatio: 0.125, tokenBudget: null, sinkPages: 1 }, headsPerCta: 8, seed: 12 },
    { name: 'tensor cores, group 4, dim 16, page 7', numQHeads: 8, numKvHeads: 2, headDim: 16, pageSize: 7, kvDtype: 'fp16', metaDtype: 'fp16', history: [3, 60, 411], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 0.4, tokenBudget: null, sinkPages: 1 }, seed: 13 },
    { name: 'ratio 1 is dense', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [300, 1000], newTokens: [1, 1], rope: true, selection: { selectionRatio: 1, tokenBudget: null, sinkPages: 1 }, seed: 7 },
    { name: 'tied scores', numQHeads: 8, numKvHeads: 2, headDim: 32, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp32', history: [1200, 640], newTokens: [1, 1], rope: false, selection: { selectionRatio: 0.25, tokenBudget: null, sinkPages: 1 }, tiedKeys: true, seed: 8 },
    // Many splits merged at once, and splits with no pages at all (more splits than selected pages).
    { name: 'many splits', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [3000, 517, 0], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 0.5, tokenBudget: null, sinkPages: 1 }, denseSplits: 21, sparseSplits: 17, seed: 17 },
    // One long sequence among short ones, and shorter sequences beside a long one under many splits.
    { name: 'mixed lengths, one long sequence', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [40000, 0, 3, 17, 100, 5, 60, 1], newTokens: [1, 1, 1, 1, 1, 1, 1, 1], rope: true, selection: { selectionRatio: 0.3, tokenBudget: null, sinkPages: 1 }, seed: 28 },
    { name: 'gpt2 mixed lengths, one long sequence', ...gpt2, pageSize: 16, kvDtype: 'fp32', metaDtype: 'fp32', history: [40000, 2, 30, 200, 9, 1, 70, 0], newTokens: [1, 1, 1, 1, 1, 1, 1, 1], rope: false, selection: { selectionRatio: 0.25, tokenBudget: null, sinkPages: 1 }, seed: 29 },
    // Every context within the budget: the plan writes the selection (all pages), the dense kernel attends.
    { name: 'budget above every context', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [2000, 100, 700], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 1, tokenBudget: 2048, sinkPages: 1 }, seed: 31 },
    { name: 'mixed lengths, 9 splits', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [3000, 0, 150, 2500], newTokens: [1, 1, 1, 1], rope: true, selection: { selectionRatio: 0.3, tokenBudget: null, sinkPages: 1 }, denseSplits: 9, seed: 30 },
    { name: 'many splits, some empty', ...gpt2, pageSize: 16, kvDtype: 'fp32', metaDtype: 'fp32', history: [1000, 40], newTokens: [1, 1], rope: false, selection: { selectionRatio: 0.25, tokenBudget: null, sinkPages: 1 }, denseSplits: 35, sparseSplits: 100, seed: 18 },
    // Long contexts: many keys per selecting thread (2048 pages), exact ties among many pages,
    // and more pages than the selection stages in shared memory (4376).
    { name: 'tinyllama 32K budget 2048, four-warp sparse CTAs', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [32767, 4000], newTokens: [1, 1], rope: true, selection: { selectionRatio: 1, tokenBudget: 2048, sinkPages: 1 }, sparseWarps: 4, seed: 19 },
    { name: 'gpt2 fp32 four-warp sparse CTAs', ...gpt2, pageSize: 16, kvDtype: 'fp32', metaDtype: 'fp32', history: [700, 2100], newTokens: [1, 1], rope: false, selection: { selectionRatio: 0.2, tokenBudget: null, sinkPages: 1 }, sparseWarps: 4, seed: 20 },
    { name: 'tinyllama 32K budget 2048', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [32767, 4000], newTokens: [1, 1], rope: true, selection: { selectionRatio: 1, tokenBudget: 2048, sinkPages: 1 }, seed: 14 },
    { name: 'long tied scores', numQHeads: 8, numKvHeads: 2, headDim: 32, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp32', history: [20000, 9000], newTokens: [1, 1], rope: false, selection: { selectionRatio: 0.125, tokenBudget: null, sinkPages: 2 }, tiedKeys: true, seed: 15 },
    { name: 'selection past the staged size', numQHeads: 4, numKvHeads: 2, headDim: 8, pageSize: 16, kvDtype: 'fp32', metaDtype: 'fp32', history: [70000, 100], newTokens: [1, 1], rope: true, selection: { selectionRatio: 0.1, tokenBudget: null, sinkPages: 1 }, seed: 16 },
    // int8 KV (KvCacheStorage's per-token format) on CUDA cores: 8, 1, 2 and 4 heads per CTA,
    // head dims 8 to 128, page size 7, several splits, fp32 and fp16 boxes, prefill.
    { name: 'tinyllama int8', ...llama, pageSize: 16, kvDtype: 'int8', metaDtype: 'fp32', history: [0, 16, 699, 2099], newTokens: [1, 1, 1, 1], rope: true, selection: { selectionRatio: 0.3, tokenBudget: null, sinkPages: 1 }, seed: 17 },
    { name: 'gpt2-345m int8 budget 2048', ...gpt2, pageSize: 16, kvDtype: 'int8', metaDtype: 'fp16', history: [32, 999, 4096], newTokens: [1, 1, 1], rope: false, selection: { selectionRatio: 1, tokenBudget: 2048, sinkPages: 1 }, sparseSplits: 128, seed: 18 },
    { name: 'int8 group 3, dim 16, page 7, 3 splits', numQHeads: 6, numKvHeads: 2, headDim: 16, pageSize: 7, kvDtype: 'int8', metaDtype: 'fp32', history: [4, 49, 332], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 0.5, tokenBudget: null, sinkPages: 2 }, headsPerCta: 2, denseSplits: 3, sparseSplits: 3, seed: 19 },
    { name: 'int8 mqa dim 128 page 32', numQHeads: 8, numKvHeads: 1, headDim: 128, pageSize: 32, kvDtype: 'int8', metaDtype: 'fp32', history: [2999, 63], newTokens: [1, 1], rope: true, selection: { selectionRatio: 0.125, tokenBudget: null, sinkPages: 1 }, seed: 20 },
    { name: 'int8 group 4 dim 8', numQHeads: 8, numKvHeads: 2, headDim: 8, pageSize: 16, kvDtype: 'int8', metaDtype: 'fp32', history: [0, 1, 39], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 0.5, tokenBudget: null, sinkPages: 0 }, seed: 21 },
    { name: 'int8 ratio 1 is dense', ...llama, pageSize: 16, kvDtype: 'int8', metaDtype: 'fp32', history: [300, 1000], newTokens: [1, 1], rope: true, selection: { selectionRatio: 1, tokenBudget: null, sinkPages: 1 }, seed: 22 },
    { name: 'tinyllama int8 on CUDA cores', ...llama, pageSize: 16, kvDtype: 'int8', metaDtype: 'fp32', history: [0, 16, 699, 2099], newTokens: [1, 1, 1, 1], rope: true, selection: { selectionRatio: 0.3, tokenBudget: null, sinkPages: 1 }, headsPerCta: 8, seed: 26 },
    { name: 'int8 tensor cores, group 4, dim 16, page 7', numQHeads: 8, numKvHeads: 2, headDim: 16, pageSize: 7, kvDtype: 'int8', metaDtype: 'fp16', history: [3, 60, 411], newTokens: [1, 1, 1], rope: true, selection: { selectionRatio: 0.4, tokenBudget: null, sinkPages: 1 }, denseSplits: 3, seed: 27 },
    { name: 'int8 tied scores', numQHeads: 8, numKvHeads: 2, headDim: 32, pageSize: 16, kvDtype: 'int8', metaDtype: 'fp32', history: [1200, 640], newTokens: [1, 1], rope: false, selection: { selectionRatio: 0.25, tokenBudget: null, sinkPages: 1 }, tiedKeys: true, seed: 23 },
    { name: 'prefill tinyllama int8', ...llama, pageSize: 16, kvDtype: 'int8', metaDtype: 'fp32', history: [0, 100, 15], newTokens: [70, 33, 1], rope: true, seed: 24 },
    { name: 'prefill int8 group 3 page 7', numQHeads: 6, numKvHeads: 2, headDim: 16, pageSize: 7, kvDtype: 'int8', metaDtype: 'fp16', history: [5, 0], newTokens: [20, 9], rope: true, seed: 25 },
    { name: 'prefill tinyllama fp16', ...llama, pageSize: 16, kvDtype: 'fp16', metaDtype: 'fp16', history: [0, 100, 15], newTokens: [70, 33, 1], rope: true, seed: 9 },
    { name: 'prefill gpt2 fp32', ...gpt2, pageSize: 16, kvDtype: 'fp32', metaDtype: 'fp32', history: [0, 16], newTokens: [129, 16], rope: false, seed: 10 },
    { name: 'prefill group 3 page 7', numQHeads: 6, numKvHeads: 2, headDim: 16, pageSize: 7, kvDtype: 'fp32', metaDtype: 'fp16', history: [5, 0], newTokens: [20, 9], rope: true, seed: 11 },
  ];
}

/** Every scenario; a scenario that throws is reported as failed and the rest still run. */
export function runGpuChecks(addon: CudaAddon, scenarios = defaultScenarios(), log: (r: GpuCheckResult) => void = () => {}): GpuCheckResult[] {
  const all: GpuCheckResult[] = [];
  for (const sc of scenarios) {
    let res: GpuCheckResult[];
    try {
      res = runAttentionScenario(addon, sc);
    } catch (err) {
      res = [{ name: `${sc.name}: threw`, ok: false, detail: err instanceof Error ? (err.stack ?? err.message) : String(err) }];
    }
    for (const r of res) log(r);
    all.push(...res);
  }
  return all;
}
