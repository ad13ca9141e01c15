import type { KvLayout } from '@tinyserve/core';
import { ConfigError, float16BitsToFloat32, float32ToFloat16Bits } from '@tinyserve/core';
import { describe, expect, it } from 'vitest';
import { randomArray, rng } from './__fixtures__/kv.js';
import {
  KvCacheStorage,
  decodeFp16,
  dequantizeInt8,
  encodeFp16,
  kvBytesPerPage,
  kvBytesPerToken,
  kvPagesForMemory,
  pageMetadataBytesPerPage,
  quantizeInt8,
  roundHalfToEven,
} from './kv-format.js';

describe('fp16', () => {
  it('round-trips every half exactly (NaN stays NaN)', () => {
    for (let h = 0; h < 65536; h++) {
      const x = float16BitsToFloat32(h);
      if (Number.isNaN(x)) expect(Number.isNaN(float16BitsToFloat32(float32ToFloat16Bits(x)))).toBe(true);
      else expect(float32ToFloat16Bits(x)).toBe(h);
    }
  });

  it('decodes known values', () => {
    expect(float16BitsToFloat32(0x3c00)).toBe(1);
    expect(float16BitsToFloat32(0xc000)).toBe(-2);
    expect(float16BitsToFloat32(0x7bff)).toBe(65504);
    expect(float16BitsToFloat32(0x0001)).toBe(2 ** -24);
    expect(float16BitsToFloat32(0x0400)).toBe(2 ** -14);
    expect(float16BitsToFloat32(0x7c00)).toBe(Infinity);
    expect(Object.is(float16BitsToFloat32(0x8000), -0)).toBe(true);
  });

  it('rounds halfway cases to even and anything past halfway up, across subnormals and normals', () => {
    for (let h = 0; h < 0x7bff; h++) {
      const a = float16BitsToFloat32(h);
      const b = float16BitsToFloat32(h + 1);
      const mid = (a + b) / 2; // 12 significant bits: exact in float32
      expect(float32ToFloat16Bits(mid)).toBe(h % 2 === 0 ? h : h + 1);
      expect(float32ToFloat16Bits(-mid)).toBe((h % 2 === 0 ? h : h + 1) | 0x8000);
      const above = Math.fround(mid + (b - a) / 8);
      expect(float32ToFloat16Bits(above)).toBe(h + 1);
    }
  });

  it('overflows to infinity past the largest half and underflows to zero below half the smallest', () => {
    expect(float32ToFloat16Bits(65519)).toBe(0x7bff);
    expect(float32ToFloat16Bits(65520)).toBe(0x7c00);
    expect(float32ToFloat16Bits(1e6)).toBe(0x7c00);
    expect(float32ToFloat16Bits(-1e6)).toBe(0xfc00);
    expect(float32ToFloat16Bits(2 ** -25)).toBe(0);
    expect(float32ToFloat16Bits(Math.fround(2 ** -25 * 1.01))).toBe(1);
    expect(float32ToFloat16Bits(1e-10)).toBe(0);
  });

  it('keeps relative error within 2^-11 in the normal range (bulk helpers)', () => {
    const x = randomArray(5000, rng(1), 100);
    const y = decodeFp16(encodeFp16(x));
    for (let i = 0; i < x.length; i++) {
      if (Math.abs(x[i]) >= 2 ** -14) expect(Math.abs(y[i] - x[i])).toBeLessThanOrEqual(Math.abs(x[i]) * 2 ** -11);
    }
  });
});

describe('int8', () => {
  it('rounds half to even', () => {
    expect([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 2.4, -2.6].map(roundHalfToEven)).toEqual([-2, -2, -0, 0, 2, 2, 2, -3]);
  });

  it('quantizes a row with its absmax scale within half a step', () => {
    const rand = rng(4);
    for (let trial = 0; trial < 50; trial++) {
      const x = randomArray(64, rand, 3);
      const q = new Int8Array(64);
      const scale = quantizeInt8(x, 0, 64, q, 0);
      const absmax = Math.max(...x.map(Math.abs));
      expect(scale).toBe(Math.fround(absmax / 127));
      expect(Math.max(...q.map(Math.abs))).toBe(127);
      const y = new Float32Array(64);
      dequantizeInt8(q, 0, 64, scale, y, 0);
      for (let i = 0; i < 64; i++) expect(Math.abs(y[i] - x[i])).toBeLessThanOrEqual(scale * 0.5 * (1 + 1e-6));
    }
    const zeros = new Int8Array(4).fill(5);
    expect(quantizeInt8(new Float32Array(4), 0, 4, zeros, 0)).toBe(0);
    expect([...zeros]).toEqual([0, 0, 0, 0]);
  });
});

const layout: KvLayout = { numLayers: 2, numPages: 3, pageSize: 4, numKvHeads: 2, headDim: 8 };

function fill(storage: KvCacheStorage, seed: number, growth = false): { k: Float32Array[]; v: Float32Array[] } {
  const rand = rng(seed);
  const k: Float32Array[] = [];
  const v: Float32Array[] = [];
  for (let l = 0; l < 2; l++) {
    for (let page = 0; page < 3; page++) {
      for (let slot = 0; slot < 4; slot++) {
        // With growth, later slots get larger magnitudes, forcing per-page scales to grow.
        const scale = growth ? 0.1 * 3 ** slot : 1;
        const kr = randomArray(16, rand, scale);
        const vr = randomArray(16, rand, scale);
        storage.writeToken(l, page, slot, kr, vr);
        k.push(kr);
        v.push(vr);
      }
    }
  }
  return { k, v };
}

describe('KvCacheStorage', () => {
  it('stores fp32 exactly and fp16 as the rounded halves', () => {
    const fp32 = new KvCacheStorage({ layout, dtype: 'fp32' });
    const fp16 = new KvCacheStorage({ layout, dtype: 'fp16' });
    const a = fill(fp32, 3);
    fill(fp16, 3);
    let i = 0;
    for (let l = 0; l < 2; l++) {
      for (let page = 0; page < 3; page++) {
        for (let slot = 0; slot < 4; slot++, i++) {
          expect(fp32.readKey(l, page, slot)).toEqual(a.k[i]);
          expect(fp32.readValue(l, page, slot)).toEqual(a.v[i]);
          expect(fp16.readKey(l, page, slot)).toEqual(decodeFp16(encodeFp16(a.k[i])));
          expect(fp16.readValue(l, page, slot)).toEqual(decodeFp16(encodeFp16(a.v[i])));
        }
      }
    }
  });

  it('int8 per-token scales: each (token, head) within half a step of its own absmax scale', () => {
    const s = new KvCacheStorage({ layout, dtype: 'int8' });
    const a = fill(s, 5, true);
    let i = 0;
    for (let l = 0; l < 2; l++) {
      for (let page = 0; page < 3; page++) {
        for (let slot = 0; slot < 4; slot++, i++) {
          const y = s.readKey(l, page, slot);
          for (let h = 0; h < 2; h++) {
            const row = a.k[i].subarray(h * 8, (h + 1) * 8);
            const step = Math.max(...row.map(Math.abs)) / 127;
            for (let d = 0; d < 8; d++) expect(Math.abs(y[h * 8 + d] - row[d])).toBeLessThanOrEqual(step * 0.5 * (1 + 1e-6));
          }
        }
      }
    }
  });

  it('int8 per-page scales: every element within one final page step, which stays below 2 absmax / 127', () => {
    const s = new KvCacheStorage({ layout, dtype: 'int8', int8Scales: 'page' });
    const a = fill(s, 6, true);
    let grew = 0;
    for (let l = 0; l < 2; l++) {
      for (let page = 0; page < 3; page++) {
        for (let h = 0; h < 2; h++) {
          const scale = s.valueScales[l][page * 2 + h];
          const rows = [0, 1, 2, 3].map((slot) => a.v[(l * 3 + page) * 4 + slot].subarray(h * 8, (h + 1) * 8));
          const absmax = Math.max(...rows.flatMap((r) => [...r].map(Math.abs)));
          const first = Math.max(...rows[0].map(Math.abs));
          if (scale > Math.fround(first / 127) * 1.5) grew++;
          expect(scale).toBeLessThan((2 * absmax) / 127);
          expect(scale).toBeGreaterThanOrEqual(Math.fround(absmax / 127) * (1 - 1e-6));
          rows.forEach((r, slot) => {
            const y = s.readValue(l, page, slot).subarray(h * 8, (h + 1) * 8);
            for (let d = 0; d < 8; d++) expect(Math.abs(y[d] - r[d])).toBeLessThanOrEqual(scale * (1 + 1e-6));
          });
        }
      }
    }
    expect(grew).toBeGreaterThan(0);
  });

  it('decodes a whole layer into the core fp32 layout', () => {
    const s = new KvCacheStorage({ layout, dtype: 'int8' });
    fill(s, 8);
    const k = s.decodeLayer(1, 'key');
    expect(k.length).toBe(3 * 4 * 16);
    for (let page = 0; page < 3; page++) {
      for (let slot = 0; slot < 4; slot++) {
        expect(k.subarray((page * 4 + slot) * 16, (page * 4 + slot + 1) * 16)).toEqual(s.readKey(1, page, slot));
      }
    }
  });

  it('accounts memory: per token, per page, total (equal to the bytes allocated) and pages for a budget', () => {
    for (const [dtype, int8Scales] of [['fp32', undefined], ['fp16', undefined], ['int8', 'token'], ['int8', 'page']] as const) {
      const s = new KvCacheStorage({ layout, dtype, int8Scales });
      const allocated = [...s.keys, ...s.values, ...s.keyScales, ...s.valueScales].reduce((a, b) => a + b.byteLength, 0);
      expect(s.totalBytes).toBe(allocated);
      expect(s.bytesPerPage * 3).toBe(allocated);
      expect(s.bytesPerToken * 4).toBe(s.bytesPerPage);
      const meta = pageMetadataBytesPerPage(layout);
      expect(s.pagesForMemory(10 * (s.bytesPerPage + meta))).toBe(10);
      expect(s.pagesForMemory(10 * (s.bytesPerPage + meta) - 1)).toBe(9);
      expect(s.pagesForMemory(10 * s.bytesPerPage, false)).toBe(10);
    }
    // TinyLlama (22 layers, 4 KV heads of 64) at 16 tokens a page.
    const tiny = { numLayers: 22, pageSize: 16, numKvHeads: 4, headDim: 64 };
    expect(kvBytesPerToken({ ...tiny, dtype: 'fp16' })).toBe(22 * 2 * 4 * 64 * 2);
    expect(kvBytesPerPage({ ...tiny, dtype: 'fp32' })).toBe(16 * 22 * 2 * 4 * 64 * 4);
    expect(kvBytesPerToken({ ...tiny, dtype: 'int8' })).toBe(22 * 2 * 4 * (64 + 4));
    expect(kvBytesPerPage({ ...tiny, dtype: 'int8', int8Scales: 'page' })).toBe(22 * 2 * 4 * (16 * 64 + 4));
    const fourGb = 4 * 2 ** 30;
    const pages = kvPagesForMemory({ ...tiny, dtype: 'fp16', bytes: fourGb });
    const per = kvBytesPerPage({ ...tiny, dtype: 'fp16' }) + pageMetadataBytesPerPage(tiny);
    expect(pages * per).toBeLessThanOrEqual(fourGb);
    expect((pages + 1) * per).toBeGreaterThan(fourGb);
  });

  it('rejects unknown dtypes, bad positions and non-finite int8 values', () => {
    expect(() => new KvCacheStorage({ layout, dtype: 'bf16' as never })).toThrow(ConfigError);
    expect(() => new KvCacheStorage({ layout, dtype: 'int8', int8Scales: 'row' as never })).toThrow(/int8Scales/);
    const s = new KvCacheStorage({ layout, dtype: 'int8' });
    const row = new Float32Array(16);
    expect(() => s.writeToken(0, 3, 0, row, row)).toThrow(/page: must be in \[0, 3\)/);
    expect(() => s.writeToken(0, 0, 4, row, row)).toThrow(/slot/);
    expect(() => s.writeToken(2, 0, 0, row, row)).toThrow(/layer/);
    expect(() => s.writeToken(0, 0, 0, new Float32Array(8), row)).toThrow(/k\/v/);
    row[3] = Infinity;
    expect(() => s.writeToken(0, 0, 0, row, row)).toThrow(/non-finite/);
    expect(() => kvPagesForMemory({ ...layout, dtype: 'fp32', bytes: -1 })).toThrow(/targetMemoryGb/);
  });
});
