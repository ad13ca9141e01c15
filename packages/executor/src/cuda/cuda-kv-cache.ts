import { ConfigError, RequestValidationError, kvElementIndex } from '@tinyserve/core';
import type { CopyTokensParams, KvLayout } from '@tinyserve/core';
import { decodeFp16, dequantizeInt8, encodeFp16, kvBytesPerPage, quantizeInt8 } from '@tinyserve/kv-retriever';
import type { Int8ScaleGranularity, PageMetadataLayer } from '@tinyserve/kv-retriever';
import type { CompactKeys, SelectionKvSource } from '../decode-selection.js';
import { KV_DTYPE, META_DTYPE } from './addon-types.js';
import type { CudaAddon, DeviceBuffer, KvDtypeCode, MetaDtypeCode } from './addon-types.js';

export type CudaKvDtype = 'fp32' | 'fp16' | 'int8';
export type CudaMetaDtype = 'fp32' | 'fp16';

export interface CudaKvCacheOptions {
  layout: KvLayout;
  kvDtype: CudaKvDtype;
  /**
   * int8 scale granularity. Only 'token' (the default, and the format of every executor's KV
   * cache): one scale per (token, KV head). Per-page scales are not implemented on the GPU.
   */
  int8Scales?: Int8ScaleGranularity;
  /** Page metadata (key bounding boxes) for query-aware selection; 'none' to skip it. */
  metadata: CudaMetaDtype | 'none';
}

/**
 * Quantises `data` in rows of `rowLen` floats (a pool in the core layout has one row per
 * (page, slot, KV head)) exactly as the kv-retriever's `KvCacheStorage` does with per-token
 * scales: `q` in the same layout, one scale per row.
 */
export function quantizeKvRows(data: Float32Array, rowLen: number): { q: Int8Array; scales: Float32Array } {
  if (!(Number.isInteger(rowLen) && rowLen >= 1 && data.length % rowLen === 0)) {
    throw new RequestValidationError('rowLen', `must be a positive divisor of the data length ${data.length}, got ${rowLen}`);
  }
  const q = new Int8Array(data.length);
  const scales = new Float32Array(data.length / rowLen);
  for (let r = 0; r < scales.length; r++) {
    for (let i = r * rowLen; i < (r + 1) * rowLen; i++) {
      if (!Number.isFinite(data[i])) throw new RequestValidationError('data', `int8 KV cannot store the non-finite value ${data[i]} (element ${i})`);
    }
    scales[r] = quantizeInt8(data, r * rowLen, rowLen, q, r * rowLen);
  }
  return { q, scales };
}

/** The inverse of {@link quantizeKvRows}: `q * scale` per element, as `KvCacheStorage` decodes. */
export function dequantizeKvRows(q: Int8Array, scales: Float32Array, rowLen: number): Float32Array {
  if (scales.length * rowLen !== q.length) {
    throw new RequestValidationError('scales', `must hold one scale per row of ${rowLen} (${q.length / rowLen}), got ${scales.length}`);
  }
  const out = new Float32Array(q.length);
  for (let r = 0; r < scales.length; r++) dequantizeInt8(q, r * rowLen, rowLen, scales[r], out, r * rowLen);
  return out;
}

/** The device buffers an attention call of one layer reads (int8: with the scales). */
export interface CudaKvLayerBuffers {
  k: DeviceBuffer;
  v: DeviceBuffer;
  kScale?: DeviceBuffer;
  vScale?: DeviceBuffer;
}

/**
 * The paged KV cache in device memory: per layer one K and one V pool in core's `KvLayout`
 * (fp32, fp16 or int8 elements; int8 with one fp32 scale per (token, KV head) in a K and a V
 * scale buffer, the kv-retriever's `KvCacheStorage` format) and, when asked for, the page
 * metadata (`min` / `max` boxes of the keys as stored, empty pages marked +inf / -inf as the
 * kv-retriever does).
 */
export class CudaKvCache implements SelectionKvSource {
  readonly layout: KvLayout;
  readonly kvDtype: CudaKvDtype;
  readonly metaDtype: CudaMetaDtype | 'none';
  readonly keys: DeviceBuffer[] = [];
  readonly values: DeviceBuffer[] = [];
  /** int8 only: per layer, one fp32 scale per (page, slot, KV head) of `keys` / `values`. */
  readonly keyScales: DeviceBuffer[] = [];
  readonly valueScales: DeviceBuffer[] = [];
  readonly metaMin: DeviceBuffer[] = [];
  readonly metaMax: DeviceBuffer[] = [];
  private disposed = false;

  constructor(
    private readonly addon: CudaAddon,
    options: CudaKvCacheOptions,
  ) {
    const { layout } = options;
    for (const f of ['numLayers', 'numPages', 'pageSize', 'numKvHeads', 'headDim'] as const) {
      if (!(Number.isInteger(layout[f]) && layout[f] >= 1)) throw new ConfigError(f, `must be a positive integer, got ${String(layout[f])}`);
    }
    if (options.kvDtype !== 'fp32' && options.kvDtype !== 'fp16' && options.kvDtype !== 'int8') {
      throw new ConfigError('kvCacheDtype', `'${String(options.kvDtype)}' is not supported by the cuda executor (supported: fp32, fp16, int8)`);
    }
    if (options.int8Scales !== undefined && options.int8Scales !== 'token') {
      throw new ConfigError('int8Scales', `'${String(options.int8Scales)}' is not supported by the cuda executor (supported: 'token', one scale per token and KV head)`);
    }
    this.layout = { ...layout };
    this.kvDtype = options.kvDtype;
    this.metaDtype = options.metadata;
    const elems = this.poolElements;
    const kvBytes = elems * this.elemBytes;
    try {
      for (let l = 0; l < layout.numLayers; l++) {
        this.keys.push(addon.alloc(kvBytes));
        this.values.push(addon.alloc(kvBytes));
        addon.fill({ dst: this.keys[l], count: elems, dtype: this.kvCode, value: 0 });
        addon.fill({ dst: this.values[l], count: elems, dtype: this.kvCode, value: 0 });
        if (this.kvDtype === 'int8') {
          // Scale 0 with q 0: an unwritten row decodes to zeros, as in KvCacheStorage.
          const rows = this.scaleElements;
          this.keyScales.push(addon.alloc(rows * 4));
          this.valueScales.push(addon.alloc(rows * 4));
          addon.fill({ dst: this.keyScales[l], count: rows, dtype: 0, value: 0 });
          addon.fill({ dst: this.valueScales[l], count: rows, dtype: 0, value: 0 });
        }
        if (options.metadata !== 'none') {
          const metaElems = this.metadataElements;
          const code = options.metadata === 'fp16' ? 1 : 0;
          this.metaMin.push(addon.alloc(metaElems * (code ? 2 : 4)));
          this.metaMax.push(addon.alloc(metaElems * (code ? 2 : 4)));
          addon.fill({ dst: this.metaMin[l], count: metaElems, dtype: code, value: Infinity });
          addon.fill({ dst: this.metaMax[l], count: metaElems, dtype: code, value: -Infinity });
        }
      }
    } catch (cause) {
      this.dispose();
      const mb = Math.round((layout.numPages * this.bytesPerPage) / 2 ** 20);
      throw new ConfigError('numKvPages', `cannot allocate ${layout.numPages} KV pages on the GPU (${mb} MiB): ${String(cause)}; lower numKvPages`);
    }
  }

  /** Bytes of one K or V element (int8 scales not counted). */
  get elemBytes(): number {
    return this.kvDtype === 'int8' ? 1 : this.kvDtype === 'fp16' ? 2 : 4;
  }

  get kvCode(): KvDtypeCode {
    return KV_DTYPE[this.kvDtype];
  }

  get metaCode(): MetaDtypeCode {
    return this.metaDtype === 'fp16' ? META_DTYPE.fp16 : META_DTYPE.fp32;
  }

  /** Elements of one layer's K (or V) pool. */
  get poolElements(): number {
    const { numPages, pageSize, numKvHeads, headDim } = this.layout;
    return numPages * pageSize * numKvHeads * headDim;
  }

  /** int8: scales of one layer's K (or V) pool, one per (page, slot, KV head). */
  get scaleElements(): number {
    const { numPages, pageSize, numKvHeads } = this.layout;
    return numPages * pageSize * numKvHeads;
  }

  get metadataElements(): number {
    const { numPages, numKvHeads, headDim } = this.layout;
    return numPages * numKvHeads * headDim;
  }

  /** Bytes of one page across all layers, K and V (int8 scales included), as the kv-retriever counts them. */
  get bytesPerPage(): number {
    return kvBytesPerPage({ ...this.layout, dtype: this.kvDtype, int8Scales: 'token' });
  }

  /** Bytes of one token's K and V in one layer (int8 scales included): what attention reads per token. */
  get bytesPerTokenLayer(): number {
    return 2 * this.layout.numKvHeads * (this.layout.headDim * this.elemBytes + (this.kvDtype === 'int8' ? 4 : 0));
  }

  /** One layer's K / V buffers (and int8 scales) for the attention calls. */
  layerBuffers(layer: number): CudaKvLayerBuffers {
    const l = this.checkLayer(layer);
    if (this.kvDtype !== 'int8') return { k: this.keys[l], v: this.values[l] };
    return { k: this.keys[l], v: this.values[l], kScale: this.keyScales[l], vScale: this.valueScales[l] };
  }

  /** One layer's K or V pool decoded to fp32, in the core layout (tests, inspection). */
  download(layer: number, which: 'key' | 'value'): Float32Array {
    const buf = (which === 'key' ? this.keys : this.values)[this.checkLayer(layer)];
    if (this.kvDtype === 'int8') {
      const { q, scales } = this.downloadInt8(layer, which);
      return dequantizeKvRows(q, scales, this.layout.headDim);
    }
    if (this.kvDtype === 'fp32') {
      const out = new Float32Array(this.poolElements);
      this.addon.download(buf, 0, out);
      return out;
    }
    const raw = new Uint16Array(this.poolElements);
    this.addon.download(buf, 0, raw);
    return decodeFp16(raw);
  }

  /**
   * Overwrites one layer's K or V pool from fp32 values (rounded to fp16 for an fp16 cache,
   * quantised per (token, KV head) row as `KvCacheStorage` does for an int8 cache).
   */
  upload(layer: number, which: 'key' | 'value', data: Float32Array): void {
    if (data.length !== this.poolElements) {
      throw new RequestValidationError('data', `must hold numPages*pageSize*numKvHeads*headDim = ${this.poolElements} floats, got ${data.length}`);
    }
    const buf = (which === 'key' ? this.keys : this.values)[this.checkLayer(layer)];
    if (this.kvDtype === 'int8') {
      const { q, scales } = quantizeKvRows(data, this.layout.headDim);
      this.uploadInt8(layer, which, q, scales);
      return;
    }
    this.addon.upload(buf, 0, this.kvDtype === 'fp32' ? data : encodeFp16(data));
  }

  /** int8: one layer's K or V pool as stored, `q` in the core layout and one scale per (page, slot, KV head). */
  downloadInt8(layer: number, which: 'key' | 'value'): { q: Int8Array; scales: Float32Array } {
    const l = this.checkLayer(layer);
    this.requireInt8();
    const q = new Int8Array(this.poolElements);
    const scales = new Float32Array(this.scaleElements);
    this.addon.download((which === 'key' ? this.keys : this.values)[l], 0, q);
    this.addon.download((which === 'key' ? this.keyScales : this.valueScales)[l], 0, scales);
    return { q, scales };
  }

  /** int8: overwrites one layer's K or V pool with stored bytes and scales (e.g. a `KvCacheStorage` layer's). */
  uploadInt8(layer: number, which: 'key' | 'value', q: Int8Array, scales: Float32Array): void {
    const l = this.checkLayer(layer);
    this.requireInt8();
    if (q.length !== this.poolElements) throw new RequestValidationError('q', `must hold ${this.poolElements} values, got ${q.length}`);
    if (scales.length !== this.scaleElements) throw new RequestValidationError('scales', `must hold ${this.scaleElements} scales, got ${scales.length}`);
    this.addon.upload((which === 'key' ? this.keys : this.values)[l], 0, q);
    this.addon.upload((which === 'key' ? this.keyScales : this.valueScales)[l], 0, scales);
  }

  /** One layer's metadata boxes decoded to fp32 (`min`, `max`, core's metadata layout). */
  downloadMetadata(layer: number): { min: Float32Array; max: Float32Array } {
    this.requireMetadata();
    const l = this.checkLayer(layer);
    const read = (buf: DeviceBuffer): Float32Array => {
      if (this.metaDtype === 'fp32') {
        const out = new Float32Array(this.metadataElements);
        this.addon.download(buf, 0, out);
        return out;
      }
      const raw = new Uint16Array(this.metadataElements);
      this.addon.download(buf, 0, raw);
      return decodeFp16(raw);
    };
    return { min: read(this.metaMin[l]), max: read(this.metaMax[l]) };
  }

  /** Selection source: the layer's boxes, downloaded (only policies that rank by them themselves ask). */
  metadataLayer(layer: number): PageMetadataLayer {
    return this.downloadMetadata(layer);
  }

  /** Selection source: the keys live on the device, never as a host fp32 buffer. */
  hostKeys(): null {
    return null;
  }

  /**
   * Selection source: one sequence's keys at `layer` (the oracle policy, recall measurement),
   * gathered page by page on the device and downloaded once, decoded to fp32.
   */
  compactKeys(layer: number, pages: Int32Array): CompactKeys {
    const { numPages, pageSize, numKvHeads, headDim } = this.layout;
    const l = this.checkLayer(layer);
    for (let i = 0; i < pages.length; i++) {
      if (!(pages[i] >= 0 && pages[i] < numPages)) throw new RequestValidationError(`pages[${i}]`, `${pages[i]} is outside [0, ${numPages})`);
    }
    const pageElems = pageSize * numKvHeads * headDim;
    const n = pages.length;
    const idx = this.addon.alloc(Math.max(1, n) * 4);
    const out = this.addon.alloc(Math.max(1, n * pageElems) * this.elemBytes);
    const pageRows = pageSize * numKvHeads;
    const scaleOut = this.kvDtype === 'int8' ? this.addon.alloc(Math.max(1, n * pageRows) * 4) : null;
    try {
      this.addon.upload(idx, 0, pages);
      this.addon.gather({ x: this.keys[l], elemBytes: this.elemBytes, indices: idx, numIndices: n, outer: 1, axisDim: numPages, inner: pageElems, out });
      let kCache: Float32Array;
      if (scaleOut !== null) {
        // int8: the pages' bytes and their per-row scales, gathered alike, dequantised here.
        this.addon.gather({ x: this.keyScales[l], elemBytes: 4, indices: idx, numIndices: n, outer: 1, axisDim: numPages, inner: pageRows, out: scaleOut });
        const q = new Int8Array(n * pageElems);
        const scales = new Float32Array(n * pageRows);
        this.addon.download(out, 0, q);
        this.addon.download(scaleOut, 0, scales);
        kCache = dequantizeKvRows(q, scales, headDim);
      } else if (this.kvDtype === 'fp32') {
        kCache = new Float32Array(n * pageElems);
        this.addon.download(out, 0, kCache);
      } else {
        const raw = new Uint16Array(n * pageElems);
        this.addon.download(out, 0, raw);
        kCache = decodeFp16(raw);
      }
      return { layout: { ...this.layout, numPages: n }, kCache, pages: Int32Array.from({ length: n }, (_, i) => i) };
    } finally {
      this.addon.free(idx);
      this.addon.free(out);
      if (scaleOut !== null) this.addon.free(scaleOut);
    }
  }

  /** Recomputes boxes of pages written out of order, over each page's first `fills[i]` slots (whole page by default). */
  rebuildMetadata(pages: Int32Array, fills?: Int32Array, layers?: number[]): void {
    this.requireMetadata();
    const f = fills ?? new Int32Array(pages.length).fill(this.layout.pageSize);
    for (const l of layers ?? Array.from({ length: this.layout.numLayers }, (_, i) => i)) {
      this.addon.rebuildMetadata({
        k: this.keys[this.checkLayer(l)],
        kScale: this.kvDtype === 'int8' ? this.keyScales[l] : undefined,
        kvDtype: this.kvCode,
        metaMin: this.metaMin[l],
        metaMax: this.metaMax[l],
        metaDtype: this.metaCode,
        pages,
        fills: f,
        pageSize: this.layout.pageSize,
        numKvHeads: this.layout.numKvHeads,
        headDim: this.layout.headDim,
        numPagesTotal: this.layout.numPages,
      });
    }
  }

  /** Copies token slots, all layers, K and V (and int8 scales), entries in order (see `Executor.copyTokens`). */
  copyTokens(params: CopyTokensParams): void {
    const { srcPages, srcSlots, dstPages, dstSlots } = params;
    const n = srcPages.length;
    for (const [name, arr] of [['srcSlots', srcSlots], ['dstPages', dstPages], ['dstSlots', dstSlots]] as const) {
      if (arr.length !== n) throw new RequestValidationError(name, `has length ${arr.length}, expected ${n} (the length of srcPages)`);
    }
    const src = new Int32Array(n);
    const dst = new Int32Array(n);
    const row = this.layout.numKvHeads * this.layout.headDim;
    for (let i = 0; i < n; i++) {
      for (const [name, page, slot] of [['src', srcPages[i], srcSlots[i]], ['dst', dstPages[i], dstSlots[i]]] as const) {
        if (!(page >= 0 && page < this.layout.numPages)) throw new RequestValidationError(`${name}Pages[${i}]`, `${page} is outside [0, ${this.layout.numPages})`);
        if (!(slot >= 0 && slot < this.layout.pageSize)) throw new RequestValidationError(`${name}Slots[${i}]`, `${slot} is outside [0, ${this.layout.pageSize})`);
      }
      src[i] = kvElementIndex(this.layout, srcPages[i], srcSlots[i], 0) / row;
      dst[i] = kvElementIndex(this.layout, dstPages[i], dstSlots[i], 0) / row;
    }
    this.addon.copyTokens({
      caches: [...this.keys, ...this.values],
      elemBytes: this.elemBytes,
      rowElems: row,
      numRows: this.layout.numPages * this.layout.pageSize,
      src,
      dst,
    });
    // The scales are separate buffers, so copying them in a second ordered pass gives the same result.
    if (this.kvDtype === 'int8') {
      this.addon.copyTokens({
        caches: [...this.keyScales, ...this.valueScales],
        elemBytes: 4,
        rowElems: this.layout.numKvHeads,
        numRows: this.layout.numPages * this.layout.pageSize,
        src,
        dst,
      });
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of [...this.keys, ...this.values, ...this.keyScales, ...this.valueScales, ...this.metaMin, ...this.metaMax]) this.addon.free(b);
  }

  private checkLayer(layer: number): number {
    if (!(Number.isInteger(layer) && layer >= 0 && layer < this.layout.numLayers)) {
      throw new RequestValidationError('layer', `must be in [0, ${this.layout.numLayers}), got ${layer}`);
    }
    return layer;
  }

  private requireInt8(): void {
    if (this.kvDtype !== 'int8') throw new RequestValidationError('kvDtype', `this KV cache is ${this.kvDtype}, not int8`);
  }

  private requireMetadata(): void {
    if (this.metaDtype === 'none') throw new RequestValidationError('metadata', 'this KV cache was created without page metadata');
  }
}
