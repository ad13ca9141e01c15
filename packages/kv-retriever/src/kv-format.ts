import type { KvCacheDtype, KvLayout } from '@tinyserve/core';
import { ConfigError, RequestValidationError, float16BitsToFloat32, float32ToFloat16Bits } from '@tinyserve/core';

/**
 * KV cache element formats (`kvCacheDtype`):
 * - `fp32`: Float32Array, exact.
 * - `fp16`: IEEE half bits in a Uint16Array, rounded to nearest even (as `__float2half_rn`).
 * - `int8`: symmetric absmax quantisation, `x ≈ q * scale`, `q` in [-127, 127]. Scales are
 *   either per token (one per (token, KV head), the default: every row uses its own range,
 *   error ≤ scale/2) or per page (one per (page, KV head), fewer bytes; see {@link KvCacheStorage}).
 */
export type Int8ScaleGranularity = 'token' | 'page';

export const KV_CACHE_DTYPES: readonly KvCacheDtype[] = ['fp32', 'fp16', 'int8'];

/** Bytes of one K or V element. */
export function kvElementBytes(dtype: KvCacheDtype): number {
  switch (dtype) {
    case 'fp32':
      return 4;
    case 'fp16':
      return 2;
    case 'int8':
      return 1;
    default:
      throw new ConfigError('kvCacheDtype', `must be one of 'fp32', 'fp16', 'int8', got '${String(dtype)}'`);
  }
}

let fp16Table: Float32Array | undefined;

/** Decoding all 65536 halves once makes bulk decode a table lookup. */
function halfTable(): Float32Array {
  if (fp16Table === undefined) {
    fp16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) fp16Table[h] = float16BitsToFloat32(h);
  }
  return fp16Table;
}

export function encodeFp16(src: ArrayLike<number>, dst: Uint16Array = new Uint16Array(src.length), dstOffset = 0): Uint16Array {
  for (let i = 0; i < src.length; i++) dst[dstOffset + i] = float32ToFloat16Bits(src[i]);
  return dst;
}

export function decodeFp16(src: Uint16Array, dst: Float32Array = new Float32Array(src.length), dstOffset = 0): Float32Array {
  const table = halfTable();
  for (let i = 0; i < src.length; i++) dst[dstOffset + i] = table[src[i]];
  return dst;
}

/** Rounds to the nearest integer, ties to even (as CUDA's `__float2int_rn`). */
export function roundHalfToEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && (r & 1) !== 0 ? r - 1 : r;
}

/**
 * Quantises `src[srcOffset .. srcOffset+length)` into `dst` with one absmax scale
 * (`fround(absmax / 127)`, 0 for an all-zero row) and returns that scale.
 */
export function quantizeInt8(src: ArrayLike<number>, srcOffset: number, length: number, dst: Int8Array, dstOffset: number): number {
  let absmax = 0;
  for (let i = 0; i < length; i++) {
    const a = Math.abs(src[srcOffset + i]);
    if (a > absmax) absmax = a;
  }
  const scale = Math.fround(absmax / 127);
  if (scale === 0) {
    dst.fill(0, dstOffset, dstOffset + length);
    return 0;
  }
  for (let i = 0; i < length; i++) dst[dstOffset + i] = clampInt8(roundHalfToEven(src[srcOffset + i] / scale));
  return scale;
}

function clampInt8(q: number): number {
  return q > 127 ? 127 : q < -127 ? -127 : q;
}

export function dequantizeInt8(src: Int8Array, srcOffset: number, length: number, scale: number, dst: Float32Array, dstOffset: number): void {
  for (let i = 0; i < length; i++) dst[dstOffset + i] = src[srcOffset + i] * scale;
}

/** The shape that memory accounting needs (a KvLayout without its page count). */
export interface KvMemoryParams {
  numLayers: number;
  pageSize: number;
  numKvHeads: number;
  headDim: number;
  dtype: KvCacheDtype;
  int8Scales?: Int8ScaleGranularity;
}

/** Bytes one page occupies across all layers, K and V, int8 scales included. */
export function kvBytesPerPage(params: KvMemoryParams): number {
  const { numLayers, pageSize, numKvHeads, headDim, dtype } = params;
  let perLayerHead = pageSize * headDim * kvElementBytes(dtype);
  if (dtype === 'int8') perLayerHead += (params.int8Scales ?? 'token') === 'token' ? pageSize * 4 : 4;
  return 2 * numLayers * numKvHeads * perLayerHead;
}

/** Bytes per cached token (a page's bytes over its tokens; per-page scales amortised). */
export function kvBytesPerToken(params: KvMemoryParams): number {
  return kvBytesPerPage(params) / params.pageSize;
}

/** Bytes of one page's metadata (fp32 min and max boxes) across all layers. */
export function pageMetadataBytesPerPage(params: Pick<KvMemoryParams, 'numLayers' | 'numKvHeads' | 'headDim'>): number {
  return 2 * 4 * params.numLayers * params.numKvHeads * params.headDim;
}

/**
 * How many pages fit in `bytes` (e.g. `targetMemoryGb * 2**30`), each counted with its KV
 * and, unless `includeMetadata` is false, its page metadata.
 */
export function kvPagesForMemory(params: KvMemoryParams & { bytes: number; includeMetadata?: boolean }): number {
  if (!(params.bytes >= 0 && Number.isFinite(params.bytes))) {
    throw new ConfigError('targetMemoryGb', `memory for the KV cache must be a non-negative number of bytes, got ${params.bytes}`);
  }
  const per = kvBytesPerPage(params) + (params.includeMetadata === false ? 0 : pageMetadataBytesPerPage(params));
  return Math.floor(params.bytes / per);
}

export interface KvCacheStorageOptions {
  layout: KvLayout;
  dtype: KvCacheDtype;
  /** Scale granularity of int8 (default 'token'). */
  int8Scales?: Int8ScaleGranularity;
}

type KvBuffer = Float32Array | Uint16Array | Int8Array;

/**
 * Per-layer K and V buffers in the core layout (element (page, slot, kvHead, d) at
 * `kvElementIndex + d`) for one element format, with int8 scales beside them:
 * per token `[numPages * pageSize * numKvHeads]`, per page `[numPages * numKvHeads]`.
 *
 * Per-page int8 scales grow as a page fills: a write at slot 0 starts the page's scale
 * afresh; a later row whose absmax exceeds `127 * scale` multiplies the scale by the
 * smallest power of two that covers it and requantises the page's earlier rows (a
 * power-of-two ratio makes that an exact halving plus one rounding). Because each growth at
 * least doubles the scale, the accumulated error of any element stays within one step of
 * the page's final scale, which itself is below `2 * absmax / 127`.
 */
export class KvCacheStorage {
  readonly layout: KvLayout;
  readonly dtype: KvCacheDtype;
  readonly int8Scales: Int8ScaleGranularity;
  readonly keys: KvBuffer[];
  readonly values: KvBuffer[];
  /** int8 only: scales of `keys` / `values`, per layer. */
  readonly keyScales: Float32Array[];
  readonly valueScales: Float32Array[];
  private readonly row: number;

  constructor(options: KvCacheStorageOptions) {
    const { layout, dtype } = options;
    kvElementBytes(dtype);
    const int8Scales = options.int8Scales ?? 'token';
    if (int8Scales !== 'token' && int8Scales !== 'page') {
      throw new ConfigError('int8Scales', `must be 'token' or 'page', got '${String(int8Scales)}'`);
    }
    for (const f of ['numLayers', 'numPages', 'pageSize', 'numKvHeads', 'headDim'] as const) {
      if (!(Number.isInteger(layout[f]) && layout[f] >= 1)) throw new ConfigError(f, `must be a positive integer, got ${String(layout[f])}`);
    }
    this.layout = { ...layout };
    this.dtype = dtype;
    this.int8Scales = int8Scales;
    this.row = layout.numKvHeads * layout.headDim;
    const n = layout.numPages * layout.pageSize * this.row;
    const make = (): KvBuffer => (dtype === 'fp32' ? new Float32Array(n) : dtype === 'fp16' ? new Uint16Array(n) : new Int8Array(n));
    const scaleLen = dtype !== 'int8' ? 0 : layout.numPages * layout.numKvHeads * (int8Scales === 'token' ? layout.pageSize : 1);
    this.keys = Array.from({ length: layout.numLayers }, make);
    this.values = Array.from({ length: layout.numLayers }, make);
    this.keyScales = Array.from({ length: layout.numLayers }, () => new Float32Array(scaleLen));
    this.valueScales = Array.from({ length: layout.numLayers }, () => new Float32Array(scaleLen));
  }

  private memoryParams(): KvMemoryParams {
    return { ...this.layout, dtype: this.dtype, int8Scales: this.int8Scales };
  }

  get bytesPerToken(): number {
    return kvBytesPerToken(this.memoryParams());
  }

  get bytesPerPage(): number {
    return kvBytesPerPage(this.memoryParams());
  }

  /** Bytes held by the K/V buffers and scales of every page. */
  get totalBytes(): number {
    return this.bytesPerPage * this.layout.numPages;
  }

  /** Pages of this format (KV plus metadata unless told otherwise) that fit in `bytes`. */
  pagesForMemory(bytes: number, includeMetadata = true): number {
    return kvPagesForMemory({ ...this.memoryParams(), bytes, includeMetadata });
  }

  private offset(layer: number, page: number, slot: number): number {
    const { numLayers, numPages, pageSize } = this.layout;
    if (!(Number.isInteger(layer) && layer >= 0 && layer < numLayers)) {
      throw new RequestValidationError('layer', `must be in [0, ${numLayers}), got ${layer}`);
    }
    if (!(Number.isInteger(page) && page >= 0 && page < numPages)) {
      throw new RequestValidationError('page', `must be in [0, ${numPages}), got ${page}`);
    }
    if (!(Number.isInteger(slot) && slot >= 0 && slot < pageSize)) {
      throw new RequestValidationError('slot', `must be in [0, ${pageSize}), got ${slot}`);
    }
    return (page * pageSize + slot) * this.row;
  }

  /** Stores one token's keys and values, `[numKvHeads, headDim]` each. */
  writeToken(layer: number, page: number, slot: number, k: ArrayLike<number>, v: ArrayLike<number>): void {
    const off = this.offset(layer, page, slot);
    if (k.length < this.row || v.length < this.row) {
      throw new RequestValidationError('k/v', `must hold numKvHeads*headDim = ${this.row} floats each, got ${k.length} and ${v.length}`);
    }
    this.writeRow(this.keys[layer], this.keyScales[layer], page, slot, off, k);
    this.writeRow(this.values[layer], this.valueScales[layer], page, slot, off, v);
  }

  private writeRow(buf: KvBuffer, scales: Float32Array, page: number, slot: number, off: number, src: ArrayLike<number>): void {
    const { numKvHeads, headDim, pageSize } = this.layout;
    if (buf instanceof Float32Array) {
      for (let i = 0; i < this.row; i++) buf[off + i] = src[i];
      return;
    }
    if (buf instanceof Uint16Array) {
      for (let i = 0; i < this.row; i++) buf[off + i] = float32ToFloat16Bits(src[i]);
      return;
    }
    for (let h = 0; h < numKvHeads; h++) {
      const o = off + h * headDim;
      const srcOff = h * headDim;
      for (let d = 0; d < headDim; d++) {
        if (!Number.isFinite(src[srcOff + d])) {
          throw new RequestValidationError('k/v', `int8 KV cannot store the non-finite value ${src[srcOff + d]} (kvHead ${h}, channel ${d})`);
        }
      }
      if (this.int8Scales === 'token') {
        scales[(page * pageSize + slot) * numKvHeads + h] = quantizeInt8(src, srcOff, headDim, buf, o);
        continue;
      }
      let absmax = 0;
      for (let d = 0; d < headDim; d++) {
        const a = Math.abs(src[srcOff + d]);
        if (a > absmax) absmax = a;
      }
      const si = page * numKvHeads + h;
      let scale = slot === 0 ? 0 : scales[si];
      if (scale === 0) {
        // Earlier rows of the page (if any) are all zero, so any scale represents them.
        scale = Math.fround(absmax / 127);
      } else if (absmax > 127 * scale) {
        let factor = 1;
        while (absmax > 127 * scale * factor) factor *= 2;
        for (let s = 0; s < slot; s++) {
          const r = (page * pageSize + s) * this.row + h * headDim;
          for (let d = 0; d < headDim; d++) buf[r + d] = roundHalfToEven(buf[r + d] / factor);
        }
        scale *= factor;
      }
      scales[si] = scale;
      if (scale === 0) buf.fill(0, o, o + headDim);
      else for (let d = 0; d < headDim; d++) buf[o + d] = clampInt8(roundHalfToEven(src[srcOff + d] / scale));
    }
  }

  readKey(layer: number, page: number, slot: number, out: Float32Array = new Float32Array(this.row)): Float32Array {
    return this.readRow(this.keys[layer], this.keyScales[layer], page, slot, this.offset(layer, page, slot), out, 0);
  }

  readValue(layer: number, page: number, slot: number, out: Float32Array = new Float32Array(this.row)): Float32Array {
    return this.readRow(this.values[layer], this.valueScales[layer], page, slot, this.offset(layer, page, slot), out, 0);
  }

  private readRow(buf: KvBuffer, scales: Float32Array, page: number, slot: number, off: number, out: Float32Array, outOff: number): Float32Array {
    const { numKvHeads, headDim, pageSize } = this.layout;
    if (out.length < outOff + this.row) {
      throw new RequestValidationError('out', `must hold ${this.row} floats`);
    }
    if (buf instanceof Float32Array) {
      for (let i = 0; i < this.row; i++) out[outOff + i] = buf[off + i];
    } else if (buf instanceof Uint16Array) {
      const table = halfTable();
      for (let i = 0; i < this.row; i++) out[outOff + i] = table[buf[off + i]];
    } else {
      for (let h = 0; h < numKvHeads; h++) {
        const scale = this.int8Scales === 'token' ? scales[(page * pageSize + slot) * numKvHeads + h] : scales[page * numKvHeads + h];
        dequantizeInt8(buf, off + h * headDim, headDim, scale, out, outOff + h * headDim);
      }
    }
    return out;
  }

  /**
   * This layer's whole K or V buffer decoded to fp32 in the core layout, for the fp32
   * reference kernels (attention, metadata rebuild) over a quantised cache.
   */
  decodeLayer(layer: number, which: 'key' | 'value', out?: Float32Array): Float32Array {
    const { numPages, pageSize } = this.layout;
    const n = numPages * pageSize * this.row;
    const dst = out ?? new Float32Array(n);
    if (dst.length !== n) throw new RequestValidationError('out', `must hold ${n} floats, got ${dst.length}`);
    this.offset(layer, 0, 0);
    const buf = which === 'key' ? this.keys[layer] : this.values[layer];
    const scales = which === 'key' ? this.keyScales[layer] : this.valueScales[layer];
    for (let page = 0; page < numPages; page++) {
      for (let slot = 0; slot < pageSize; slot++) {
        const off = (page * pageSize + slot) * this.row;
        this.readRow(buf, scales, page, slot, off, dst, off);
      }
    }
    return dst;
  }
}
