import { mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CorruptModelFileError, ModelLoadError, TinyServeError, UnsupportedModelError } from '../errors.js';
import {
  bfloat16BitsToFloat32,
  float16BitsToFloat32,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
} from './half-float.js';
import { readSafetensors, readSafetensorsHeader, writeSafetensors } from './safetensors.js';
import { seededRandom } from './__fixtures__/tiny-checkpoints.js';

const dir = mkdtempSync(join(tmpdir(), 'tinyserve-safetensors-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCounter = 0;
const nextPath = () => join(dir, `t${fileCounter++}.safetensors`);

const f32 = (x: number) => Math.fround(x);

/** Independent reference: the nearest representable value by search, ties to the even bit pattern. */
function nearestByTable(x: number, values: Float64Array, bitsOf: (i: number) => number, maxFinite: number, overflow: number): number {
  if (Number.isNaN(x)) return NaN;
  const sign = x < 0 || Object.is(x, -0) ? -1 : 1;
  const a = Math.abs(x);
  if (a >= overflow) return sign * Infinity;
  if (a >= maxFinite) return sign * maxFinite;
  let lo = 0;
  let hi = values.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (values[mid] <= a) lo = mid;
    else hi = mid;
  }
  const dLo = a - values[lo];
  const dHi = values[hi] - a;
  const pick = dLo < dHi ? lo : dHi < dLo ? hi : (bitsOf(lo) & 1) === 0 ? lo : hi;
  return sign * values[pick];
}

// Non-negative finite binary16 values, indexed by their bit pattern (monotonic).
const F16_VALUES = Float64Array.from({ length: 0x7c00 }, (_, i) => float16BitsToFloat32(i));
// Halfway between the largest finite value and the next power step rounds (to even) to inf.
const F16_OVERFLOW = 65520;

describe('half-float conversions', () => {
  it('encodes known binary16 patterns', () => {
    expect(float32ToFloat16Bits(1)).toBe(0x3c00);
    expect(float32ToFloat16Bits(-2)).toBe(0xc000);
    expect(float32ToFloat16Bits(65504)).toBe(0x7bff);
    expect(float32ToFloat16Bits(2 ** -14)).toBe(0x0400); // smallest normal
    expect(float32ToFloat16Bits(2 ** -14 - 2 ** -24)).toBe(0x03ff); // largest subnormal
    expect(float32ToFloat16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(float32ToFloat16Bits(-0)).toBe(0x8000);
    expect(float32ToFloat16Bits(Infinity)).toBe(0x7c00);
    expect(float32ToFloat16Bits(-Infinity)).toBe(0xfc00);
    expect(Number.isNaN(float16BitsToFloat32(float32ToFloat16Bits(NaN)))).toBe(true);
  });

  it('rounds binary16 to nearest, ties to even (normals, subnormals, overflow)', () => {
    expect(float16BitsToFloat32(float32ToFloat16Bits(1 + 2 ** -11))).toBe(1); // tie -> even (down)
    expect(float16BitsToFloat32(float32ToFloat16Bits(1 + 3 * 2 ** -11))).toBe(1 + 2 ** -9); // tie -> even (up)
    expect(float16BitsToFloat32(float32ToFloat16Bits(1 + 2 ** -11 + 2 ** -20))).toBe(1 + 2 ** -10); // above tie
    expect(float32ToFloat16Bits(65519)).toBe(0x7bff);
    expect(float32ToFloat16Bits(65520)).toBe(0x7c00); // tie at the top rounds to inf
    expect(float32ToFloat16Bits(2 ** -25)).toBe(0x0000); // tie between 0 and the smallest subnormal -> 0
    expect(float32ToFloat16Bits(3 * 2 ** -26)).toBe(0x0001);
    expect(float32ToFloat16Bits(3 * 2 ** -25)).toBe(0x0002); // tie 1.5 ulp -> even (2)
    expect(float32ToFloat16Bits(1e-10)).toBe(0x0000);
    expect(float32ToFloat16Bits(-1e-10)).toBe(0x8000);
    // The subnormal boundary: rounding up out of the subnormals gives the smallest normal.
    expect(float32ToFloat16Bits(2 ** -14 - 2 ** -26)).toBe(0x0400);
  });

  it('matches a search-based reference on random float32 values across the range', () => {
    const rand = seededRandom(7);
    for (let n = 0; n < 4000; n++) {
      const exp = Math.floor(rand() * 44) - 28; // 2^-28 .. 2^16
      const x = f32((rand() < 0.5 ? -1 : 1) * (1 + rand()) * 2 ** exp);
      const expected = nearestByTable(x, F16_VALUES, (i) => i, 65504, F16_OVERFLOW);
      expect(float16BitsToFloat32(float32ToFloat16Bits(x))).toBe(expected);
    }
  });

  it('rounds bfloat16 to nearest, ties to even', () => {
    expect(float32ToBfloat16Bits(1)).toBe(0x3f80);
    expect(bfloat16BitsToFloat32(float32ToBfloat16Bits(1 + 2 ** -8))).toBe(1); // tie -> even (down)
    expect(bfloat16BitsToFloat32(float32ToBfloat16Bits(1 + 3 * 2 ** -8))).toBe(1 + 2 ** -6); // tie -> even (up)
    expect(bfloat16BitsToFloat32(float32ToBfloat16Bits(1 + 2 ** -8 + 2 ** -20))).toBe(1 + 2 ** -7);
    expect(float32ToBfloat16Bits(Infinity)).toBe(0x7f80);
    expect(float32ToBfloat16Bits(-0)).toBe(0x8000);
    expect(float32ToBfloat16Bits(3.4028234663852886e38)).toBe(0x7f80); // max float32 rounds up to inf
    expect(Number.isNaN(bfloat16BitsToFloat32(float32ToBfloat16Bits(NaN)))).toBe(true);
    // float32 subnormals keep their top bits.
    expect(bfloat16BitsToFloat32(float32ToBfloat16Bits(2 ** -130))).toBe(2 ** -130);
    const rand = seededRandom(8);
    for (let n = 0; n < 2000; n++) {
      const x = f32((rand() - 0.5) * 2 ** Math.floor(rand() * 60 - 30));
      const bits = float32ToBfloat16Bits(x);
      const got = bfloat16BitsToFloat32(bits);
      // Reference: the two bfloat16 neighbours by truncation, nearest wins, tie to even.
      const down = bfloat16BitsToFloat32(((new Uint32Array(new Float32Array([x]).buffer)[0] >>> 16) & 0xffff));
      const up = bfloat16BitsToFloat32((((new Uint32Array(new Float32Array([x]).buffer)[0] >>> 16) + 1) & 0xffff));
      const dDown = Math.abs(x - down);
      const dUp = Math.abs(up - x);
      const downBits = (new Uint32Array(new Float32Array([x]).buffer)[0] >>> 16) & 0xffff;
      const expected = dDown < dUp ? down : dUp < dDown ? up : (downBits & 1) === 0 ? down : up;
      expect(got).toBe(expected);
    }
  });
});

describe('writeSafetensors / readSafetensors round trip', () => {
  const special = [0, -0, 1, -1.5, Math.PI, 1e-3, 65504, 70000, Infinity, -Infinity, 1 + 2 ** -11, 2 ** -24, 2 ** -25, 3 * 2 ** -26, 1e-40];

  it('keeps F32 values exactly (including inf, -0, NaN and float32 subnormals)', () => {
    const path = nextPath();
    const data = Float32Array.from([...special, NaN]);
    writeSafetensors(path, { a: { dtype: 'F32', shape: [2, 8], data } });
    const back = readSafetensors(path).get('a')!;
    expect(back.dtype).toBe('F32');
    expect(back.shape).toEqual([2, 8]);
    expect(Array.from(back.data)).toEqual(Array.from(data));
    expect(Object.is(back.data[1], -0)).toBe(true);
  });

  it('rounds F16 and BF16 on write and widens exactly on read', () => {
    const path = nextPath();
    const data = Float32Array.from(special);
    writeSafetensors(path, {
      half: { dtype: 'F16', shape: [special.length], data },
      brain: { dtype: 'BF16', shape: [special.length], data },
    });
    const back = readSafetensors(path);
    const half = back.get('half')!;
    const brain = back.get('brain')!;
    expect(half.dtype).toBe('F16');
    expect(brain.dtype).toBe('BF16');
    expect(Array.from(half.data)).toEqual(special.map((x) => float16BitsToFloat32(float32ToFloat16Bits(x))));
    expect(Array.from(brain.data)).toEqual(special.map((x) => bfloat16BitsToFloat32(float32ToBfloat16Bits(x))));
    // Spot checks on what the rounding must give.
    expect(half.data[6]).toBe(65504);
    expect(half.data[7]).toBe(Infinity); // 70000 overflows binary16
    expect(half.data[10]).toBe(1); // tie to even
    expect(half.data[11]).toBe(2 ** -24); // smallest subnormal kept
    expect(half.data[12]).toBe(0); // tie to even: 0
    expect(half.data[13]).toBe(2 ** -24);
    expect(brain.data[7]).toBe(70144); // 70000 in bfloat16
  });

  it('aligns the header to 8 bytes with spaces and records metadata, dtypes, shapes and offsets', () => {
    const path = nextPath();
    writeSafetensors(
      path,
      {
        b: { dtype: 'F16', shape: [3], data: new Float32Array(3) },
        a: { dtype: 'F32', shape: [1, 2], data: new Float32Array([1, 2]) },
        scalar: { dtype: 'F32', shape: [], data: new Float32Array([5]) },
        empty: { dtype: 'BF16', shape: [0, 4], data: new Float32Array(0) },
      },
      { format: 'pt' },
    );
    const bytes = readFileSync(path);
    const n = Number(bytes.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const headerText = bytes.subarray(8, 8 + n).toString('utf8');
    const json = headerText.replace(/ +$/, '');
    expect(json.endsWith('}')).toBe(true);
    expect(headerText.length - json.length).toBe((8 - (json.length % 8)) % 8); // exactly the alignment padding
    expect(headerText.slice(json.length)).toMatch(/^ *$/);
    expect(JSON.parse(json).__metadata__).toEqual({ format: 'pt' });

    const header = readSafetensorsHeader(path);
    expect(header.metadata).toEqual({ format: 'pt' });
    expect(header.headerLength).toBe(n);
    expect(header.dataStart).toBe(8 + n);
    // Wider dtypes first, then by name: a, scalar (F32), b (F16), empty (BF16).
    expect(header.tensors.get('a')).toEqual({ dtype: 'F32', shape: [1, 2], dataOffsets: [0, 8] });
    expect(header.tensors.get('scalar')).toEqual({ dtype: 'F32', shape: [], dataOffsets: [8, 12] });
    expect(header.tensors.get('b')).toEqual({ dtype: 'F16', shape: [3], dataOffsets: [12, 18] });
    expect(header.tensors.get('empty')).toEqual({ dtype: 'BF16', shape: [0, 4], dataOffsets: [18, 18] });
    expect(header.fileSize).toBe(8 + n + 18);
    const all = readSafetensors(path);
    expect(all.get('scalar')!.data[0]).toBe(5);
    expect(all.get('empty')!.data.length).toBe(0);
  });

  it('reads only the tensors the filter accepts', () => {
    const path = nextPath();
    writeSafetensors(path, {
      keep: { dtype: 'F32', shape: [1], data: new Float32Array([1]) },
      drop: { dtype: 'F32', shape: [1], data: new Float32Array([2]) },
    });
    const seen: string[] = [];
    const out = readSafetensors(path, { filter: (name) => (seen.push(name), name === 'keep') });
    expect([...out.keys()]).toEqual(['keep']);
    expect(seen.sort()).toEqual(['drop', 'keep']);
  });

  it('rejects invalid writer input', () => {
    const path = nextPath();
    expect(() => writeSafetensors(path, { a: { dtype: 'F32', shape: [2, 2], data: new Float32Array(3) } })).toThrow(/tensors\['a'\]\.data/);
    expect(() => writeSafetensors(path, { a: { dtype: 'I8' as 'F32', shape: [1], data: new Float32Array(1) } })).toThrow(/dtype/);
    expect(() => writeSafetensors(path, { __metadata__: { dtype: 'F32', shape: [1], data: new Float32Array(1) } })).toThrow(/reserved/);
  });
});

/** Builds a file from a header (object or raw text) and a data section, padding the header like the writer. */
function craft(header: unknown, data: Uint8Array | number = 0, rawHeader?: Buffer): string {
  const path = nextPath();
  const json = rawHeader ?? Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(json.length));
  const body = typeof data === 'number' ? new Uint8Array(data) : data;
  writeFileSync(path, Buffer.concat([prefix, json, body]));
  return path;
}

function corruptError(path: string, pattern: RegExp): void {
  let caught: unknown;
  try {
    readSafetensors(path);
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected ${pattern} for ${path}`).toBeInstanceOf(CorruptModelFileError);
  expect((caught as CorruptModelFileError).file).toBe(path);
  expect((caught as Error).message).toMatch(pattern);
  // The header reader alone reports the same problem.
  expect(() => readSafetensorsHeader(path)).toThrow(CorruptModelFileError);
}

describe('corrupt safetensors files', () => {
  const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });

  it('rejects a file shorter than the 8-byte prefix', () => {
    const path = nextPath();
    writeFileSync(path, Buffer.from([1, 2, 3]));
    corruptError(path, /3 bytes long, shorter than the 8-byte/);
    writeFileSync(path, Buffer.alloc(0));
    corruptError(path, /0 bytes long/);
  });

  it('rejects a header length beyond the file or beyond 100 MB', () => {
    const path = nextPath();
    const buf = Buffer.alloc(40, 0x20);
    buf.writeBigUInt64LE(1000n);
    writeFileSync(path, buf);
    corruptError(path, /header length 1000 runs past the end of the file \(40 bytes\)/);
    buf.writeBigUInt64LE(100_000_001n);
    writeFileSync(path, buf);
    corruptError(path, /exceeds the 100000000-byte limit/);
    buf.writeBigUInt64LE(0xffffffffffffffffn);
    writeFileSync(path, buf);
    corruptError(path, /18446744073709551615 exceeds/);
  });

  it('rejects a header that is not JSON, not UTF-8 or not an object', () => {
    corruptError(craft('{"a": {"dtype": "F32",'), /not valid JSON/);
    corruptError(craft(''), /not valid JSON/);
    corruptError(craft('[1, 2]'), /not a JSON object/);
    corruptError(craft('null'), /not a JSON object/);
    corruptError(craft('42'), /not a JSON object/);
    corruptError(craft(null, 0, Buffer.from([0x7b, 0xff, 0xfe, 0x7d])), /not valid UTF-8/);
  });

  it('rejects entries without dtype, shape or data_offsets, or that are not objects', () => {
    corruptError(craft({ a: 5 }), /tensor 'a': header entry is not an object/);
    corruptError(craft({ a: { shape: [1], data_offsets: [0, 4] } }, 4), /tensor 'a': header entry has no dtype/);
    corruptError(craft({ a: { dtype: 'F32', data_offsets: [0, 4] } }, 4), /tensor 'a': header entry has no shape/);
    corruptError(craft({ a: { dtype: 'F32', shape: [1] } }, 4), /tensor 'a': header entry has no data_offsets/);
  });

  it('rejects unknown dtypes and bad shapes', () => {
    corruptError(craft({ a: entry('F17', [1], [0, 4]) }, 4), /unknown dtype "F17"/);
    corruptError(craft({ a: entry('f32', [1], [0, 4]) }, 4), /unknown dtype "f32"/);
    corruptError(craft({ a: entry('F32', [-1], [0, 4]) }, 4), /shape must be a list of non-negative integers/);
    corruptError(craft({ a: entry('F32', [1.5], [0, 4]) }, 4), /shape must be/);
    corruptError(craft({ a: entry('F32', '1', [0, 4]) }, 4), /shape must be/);
    corruptError(craft({ a: entry('F32', [2 ** 40, 2 ** 40], [0, 4]) }, 4), /too large/);
  });

  it('rejects offsets that are not integers, reversed or beyond the data section', () => {
    corruptError(craft({ a: entry('F32', [1], [0.5, 4]) }, 4), /data_offsets must be two non-negative integers/);
    corruptError(craft({ a: entry('F32', [1], ['0', '4']) }, 4), /data_offsets must be/);
    corruptError(craft({ a: entry('F32', [1], [0, 4, 8]) }, 8), /data_offsets must be/);
    corruptError(craft({ a: entry('F32', [1], [-4, 0]) }, 4), /data_offsets must be/);
    corruptError(craft({ a: entry('F32', [0], [4, 0]) }, 4), /begin 4 > end 0/);
    corruptError(craft({ a: entry('F32', [2], [0, 8]) }, 4), /end 8 is beyond the data section \(4 bytes\)/);
  });

  it('rejects a byte length that disagrees with shape and dtype', () => {
    corruptError(craft({ a: entry('F32', [3], [0, 8]) }, 8), /span 8 bytes but shape \[3\] of F32 needs 12/);
    corruptError(craft({ a: entry('BF16', [2, 2], [0, 16]) }, 16), /needs 8/);
    corruptError(craft({ a: entry('F4', [3], [0, 2]) }, 2), /do not fill whole bytes/);
  });

  it('rejects overlapping tensors, gaps and trailing bytes', () => {
    corruptError(craft({ a: entry('F32', [2], [0, 8]), b: entry('F32', [1], [4, 8]) }, 8), /tensor 'b' \(bytes 4..8\) overlaps tensor 'a'/);
    corruptError(craft({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [0, 4]) }, 4), /overlaps/);
    corruptError(craft({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [8, 12]) }, 12), /bytes 4..8 of the data section belong to no tensor/);
    corruptError(craft({ a: entry('F32', [1], [0, 4]) }, 12), /8 bytes after the last tensor/);
    corruptError(craft({ a: entry('F32', [1], [4, 8]) }, 8), /bytes 0..4 .* belong to no tensor/);
  });

  it('rejects __metadata__ that is not a string map', () => {
    corruptError(craft({ __metadata__: { format: 1 } }), /__metadata__ must map strings to strings/);
    corruptError(craft({ __metadata__: ['pt'] }), /__metadata__ must map/);
    corruptError(craft({ __metadata__: 'pt' }), /__metadata__ must map/);
    expect(readSafetensorsHeader(craft({ __metadata__: null })).metadata).toBeNull();
  });

  it('rejects a good file truncated at any length', () => {
    const path = nextPath();
    writeSafetensors(path, {
      w: { dtype: 'F32', shape: [4, 3], data: new Float32Array(12).fill(1) },
      h: { dtype: 'F16', shape: [5], data: new Float32Array(5).fill(2) },
    });
    const size = readFileSync(path).length;
    const original = readFileSync(path);
    for (let len = 0; len < size; len++) {
      writeFileSync(path, original);
      truncateSync(path, len);
      expect(() => readSafetensors(path), `truncated to ${len}`).toThrow(CorruptModelFileError);
    }
  });

  it('rejects patched headers: changed dtype, shape or length prefix', () => {
    const good = nextPath();
    writeSafetensors(good, { w: { dtype: 'F32', shape: [2, 3], data: new Float32Array(6) } });
    const bytes = readFileSync(good);
    const text = bytes.toString('latin1');
    const patch = (from: string, to: string) => {
      expect(from.length).toBe(to.length);
      const path = nextPath();
      writeFileSync(path, Buffer.from(text.replace(from, to), 'latin1'));
      return path;
    };
    corruptError(patch('"F32"', '"F64"'), /needs 48/);
    corruptError(patch('"F32"', '"X32"'), /unknown dtype/);
    corruptError(patch('[2,3]', '[3,3]'), /needs 36/);
    const shortPrefix = Buffer.from(bytes);
    shortPrefix.writeBigUInt64LE(bytes.readBigUInt64LE(0) - 8n);
    const path = nextPath();
    writeFileSync(path, shortPrefix);
    expect(() => readSafetensors(path)).toThrow(CorruptModelFileError);
  });

  it('never fails with anything but a TinyServe error on randomly damaged headers', () => {
    const good = nextPath();
    writeSafetensors(good, {
      a: { dtype: 'F32', shape: [3, 2], data: new Float32Array(6).fill(0.5) },
      b: { dtype: 'BF16', shape: [4], data: new Float32Array(4).fill(1) },
    });
    const original = readFileSync(good);
    const headerEnd = 8 + Number(original.readBigUInt64LE(0));
    const rand = seededRandom(11);
    const path = nextPath();
    let rejected = 0;
    for (let trial = 0; trial < 300; trial++) {
      const bytes = Buffer.from(original);
      const flips = 1 + Math.floor(rand() * 3);
      for (let f = 0; f < flips; f++) bytes[Math.floor(rand() * headerEnd)] = Math.floor(rand() * 256);
      writeFileSync(path, bytes);
      try {
        const out = readSafetensors(path);
        for (const t of out.values()) expect(t.data.length).toBe(t.shape.reduce((x, y) => x * y, 1));
      } catch (err) {
        expect(err).toBeInstanceOf(TinyServeError);
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(100);
  });
});

describe('I/O failures', () => {
  it('reports a missing file or a directory as ModelLoadError', () => {
    expect(() => readSafetensors(join(dir, 'missing.safetensors'))).toThrow(ModelLoadError);
    expect(() => readSafetensors(join(dir, 'missing.safetensors'))).toThrow(/cannot open '.*missing.safetensors'/);
    expect(() => readSafetensorsHeader(dir)).toThrow(ModelLoadError);
    expect(() => writeSafetensors(join(dir, 'no', 'such', 'dir.safetensors'), {})).toThrow(ModelLoadError);
  });
});

describe('dtypes TinyServe does not widen', () => {
  it('refuses I64 and F64 tensors clearly, unless filtered out', () => {
    const path = craft(
      {
        ids: { dtype: 'I64', shape: [2], data_offsets: [0, 16] },
        dbl: { dtype: 'F64', shape: [1], data_offsets: [16, 24] },
        w: { dtype: 'F32', shape: [1], data_offsets: [24, 28] },
      },
      28,
    );
    expect(readSafetensorsHeader(path).tensors.get('ids')?.dtype).toBe('I64');
    expect(() => readSafetensors(path)).toThrow(UnsupportedModelError);
    expect(() => readSafetensors(path)).toThrow(/tensor '(ids|dbl)' has dtype (I64|F64); TinyServe reads F32, F16 and BF16/);
    const out = readSafetensors(path, { filter: (name) => name === 'w' });
    expect([...out.keys()]).toEqual(['w']);
  });
});
