import { describe, expect, it } from 'vitest';
import { ConfigError, RequestValidationError, mulberry32 } from '@tinyserve/core';
import type { KvLayout } from '@tinyserve/core';
import { KvCacheStorage, kvBytesPerPage } from '@tinyserve/kv-retriever';
import type { CopyTokensArgs, CudaAddon, DeviceBuffer } from './addon-types.js';
import { CudaKvCache, dequantizeKvRows, quantizeKvRows } from './cuda-kv-cache.js';

const layout: KvLayout = { numLayers: 2, numPages: 5, pageSize: 4, numKvHeads: 3, headDim: 8 };

/** Host-side stand-in for the addon: allocations are byte arrays, uploads and downloads copy, the rest is recorded. */
function fakeAddon(): { addon: CudaAddon; copies: CopyTokensArgs[] } {
  const copies: CopyTokensArgs[] = [];
  const mem = new Map<DeviceBuffer, Uint8Array>();
  const bytes = (v: ArrayBufferView) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  const addon = {
    alloc: (n: number) => {
      const b = {} as DeviceBuffer;
      mem.set(b, new Uint8Array(n));
      return b;
    },
    free: (b: DeviceBuffer) => mem.delete(b),
    fill: () => {},
    upload: (dst: DeviceBuffer, off: number, src: ArrayBufferView) => mem.get(dst)!.set(bytes(src), off),
    download: (src: DeviceBuffer, off: number, dst: ArrayBufferView) => bytes(dst).set(mem.get(src)!.subarray(off, off + dst.byteLength)),
    copyTokens: (args: CopyTokensArgs) => copies.push(args),
    gather: (a: { x: DeviceBuffer; elemBytes: number; indices: DeviceBuffer; numIndices: number; outer: number; axisDim: number; inner: number; out: DeviceBuffer }) => {
      const m = mem.get(a.indices)!;
      const idx = new Int32Array(m.buffer, m.byteOffset, a.numIndices);
      const row = a.inner * a.elemBytes;
      for (let o = 0; o < a.outer; o++) {
        for (let j = 0; j < a.numIndices; j++) {
          const from = (o * a.axisDim + idx[j]) * row;
          mem.get(a.out)!.set(mem.get(a.x)!.subarray(from, from + row), (o * a.numIndices + j) * row);
        }
      }
    },
  };
  return { addon: addon as unknown as CudaAddon, copies };
}

function randomRows(n: number, seed: number): Float32Array {
  const r = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (r() - 0.5) * 6;
  return out;
}

describe('quantizeKvRows', () => {
  it('stores exactly what KvCacheStorage stores with per-token int8 scales, and decodes as it does', () => {
    const row = layout.numKvHeads * layout.headDim;
    const data = randomRows(layout.numPages * layout.pageSize * row, 7);
    // An all-zero (token, KV head) row: scale 0, every q 0.
    data.fill(0, 5 * layout.headDim, 6 * layout.headDim);
    const storage = new KvCacheStorage({ layout, dtype: 'int8' });
    for (let p = 0; p < layout.numPages; p++) {
      for (let s = 0; s < layout.pageSize; s++) {
        const off = (p * layout.pageSize + s) * row;
        storage.writeToken(1, p, s, data.subarray(off, off + row), data.subarray(off, off + row));
      }
    }
    const { q, scales } = quantizeKvRows(data, layout.headDim);
    expect(q).toEqual(storage.keys[1]);
    expect(scales).toEqual(storage.keyScales[1]);
    expect(scales[5]).toBe(0);
    expect(dequantizeKvRows(q, scales, layout.headDim)).toEqual(storage.decodeLayer(1, 'key'));
  });

  it('rejects non-finite values and rows that do not divide the data', () => {
    expect(() => quantizeKvRows(Float32Array.of(1, Infinity), 2)).toThrow(RequestValidationError);
    expect(() => quantizeKvRows(new Float32Array(10), 4)).toThrow(/rowLen/);
    expect(() => dequantizeKvRows(new Int8Array(8), new Float32Array(3), 4)).toThrow(/scales/);
  });
});

describe('CudaKvCache with int8 KV', () => {
  it('keeps one K and one V scale buffer per layer and counts their bytes', () => {
    const { addon } = fakeAddon();
    const cache = new CudaKvCache(addon, { layout, kvDtype: 'int8', metadata: 'fp32' });
    expect(cache.keyScales).toHaveLength(2);
    expect(cache.valueScales).toHaveLength(2);
    expect(cache.scaleElements).toBe(layout.numPages * layout.pageSize * layout.numKvHeads);
    expect(cache.bytesPerPage).toBe(kvBytesPerPage({ ...layout, dtype: 'int8' }));
    expect(cache.bytesPerTokenLayer).toBe(2 * layout.numKvHeads * (layout.headDim + 4));
    expect(cache.layerBuffers(1)).toEqual({ k: cache.keys[1], v: cache.values[1], kScale: cache.keyScales[1], vScale: cache.valueScales[1] });
    expect(new CudaKvCache(addon, { layout, kvDtype: 'fp16', metadata: 'none' }).layerBuffers(0)).not.toHaveProperty('kScale');
  });

  it('hands a sequence\'s keys to the oracle policy decoded, page by page, with their scales', () => {
    const { addon } = fakeAddon();
    const cache = new CudaKvCache(addon, { layout, kvDtype: 'int8', metadata: 'none' });
    const data = randomRows(cache.poolElements, 12);
    cache.upload(1, 'key', data);
    const decoded = cache.download(1, 'key');
    const pages = Int32Array.from([3, 0, 4]);
    const got = cache.compactKeys(1, pages);
    const pageElems = layout.pageSize * layout.numKvHeads * layout.headDim;
    expect(got.layout.numPages).toBe(3);
    expect(Array.from(got.pages)).toEqual([0, 1, 2]);
    pages.forEach((p, i) => expect(got.kCache.subarray(i * pageElems, (i + 1) * pageElems)).toEqual(decoded.subarray(p * pageElems, (p + 1) * pageElems)));
    expect(() => cache.compactKeys(1, Int32Array.from([5]))).toThrow(/pages\[0\]/);
  });

  it('uploads quantised rows and downloads them decoded, as KvCacheStorage stores and decodes them', () => {
    const { addon } = fakeAddon();
    const cache = new CudaKvCache(addon, { layout, kvDtype: 'int8', metadata: 'none' });
    const data = randomRows(cache.poolElements, 11);
    cache.upload(0, 'value', data);
    const raw = cache.downloadInt8(0, 'value');
    const ref = quantizeKvRows(data, layout.headDim);
    expect(raw.q).toEqual(ref.q);
    expect(raw.scales).toEqual(ref.scales);
    expect(cache.download(0, 'value')).toEqual(dequantizeKvRows(ref.q, ref.scales, layout.headDim));
    expect(() => cache.uploadInt8(0, 'key', new Int8Array(3), ref.scales)).toThrow(/q: must hold/);
    expect(() => new CudaKvCache(addon, { layout, kvDtype: 'fp32', metadata: 'none' }).downloadInt8(0, 'key')).toThrow(/not int8/);
  });

  it('copies the scales of copied tokens, in the same order', () => {
    const { addon, copies } = fakeAddon();
    const cache = new CudaKvCache(addon, { layout, kvDtype: 'int8', metadata: 'none' });
    cache.copyTokens({ srcPages: Int32Array.of(2, 2), srcSlots: Int32Array.of(3, 1), dstPages: Int32Array.of(0, 4), dstSlots: Int32Array.of(0, 2) });
    expect(copies).toHaveLength(2);
    const [kv, scales] = copies;
    expect(kv.elemBytes).toBe(1);
    expect(kv.caches).toEqual([...cache.keys, ...cache.values]);
    expect(scales.caches).toEqual([...cache.keyScales, ...cache.valueScales]);
    expect(scales.elemBytes).toBe(4);
    expect(scales.rowElems).toBe(layout.numKvHeads);
    expect(scales.numRows).toBe(kv.numRows);
    expect(Array.from(scales.src)).toEqual([11, 9]);
    expect(Array.from(scales.dst)).toEqual([0, 18]);
    expect(scales.src).toEqual(kv.src);
    expect(scales.dst).toEqual(kv.dst);
  });

  it('rejects per-page int8 scales with a ConfigError naming int8Scales', () => {
    const { addon } = fakeAddon();
    const make = () => new CudaKvCache(addon, { layout, kvDtype: 'int8', int8Scales: 'page', metadata: 'none' });
    expect(make).toThrow(ConfigError);
    expect(make).toThrow(/^int8Scales: 'page' is not supported by the cuda executor/);
  });
});
