import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { CorruptModelFileError, ModelLoadError, RequestValidationError, TinyServeError, UnsupportedModelError } from '../errors.js';
import type { SafetensorsDtype, TensorData } from '../model-types.js';
import {
  decodeBfloat16Array,
  decodeFloat16Array,
  float32ToBfloat16Bits,
  float32ToFloat16Bits,
} from './half-float.js';

/**
 * Every dtype the safetensors format defines (the reference's `Dtype` enum). A file using one
 * of these is well-formed even where TinyServe cannot widen it to float32.
 */
export type SafetensorsFileDtype =
  | SafetensorsDtype
  | 'U16'
  | 'U32'
  | 'U64'
  | 'F8_E4M3'
  | 'F8_E5M2'
  | 'F8_E8M0'
  | 'F4'
  | 'F6_E2M3'
  | 'F6_E3M2'
  | 'C64';

/** Bits per element; sub-byte types (F4, F6) pack several elements per byte. */
const DTYPE_BITS: Record<SafetensorsFileDtype, number> = {
  BOOL: 8,
  U8: 8,
  I8: 8,
  F8_E4M3: 8,
  F8_E5M2: 8,
  F8_E8M0: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  F64: 64,
  I64: 64,
  U64: 64,
  C64: 64,
};

/** The dtypes widened to float32 on read; the only ones `writeSafetensors` writes. */
export type FloatSafetensorsDtype = 'F32' | 'F16' | 'BF16';
const READABLE_DTYPES: ReadonlySet<string> = new Set<FloatSafetensorsDtype>(['F32', 'F16', 'BF16']);

/** The reference implementation's limit; anything larger is corrupt or hostile. */
export const SAFETENSORS_MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsTensorInfo {
  dtype: SafetensorsFileDtype;
  shape: number[];
  /** [begin, end) in bytes, relative to the start of the data section. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  path: string;
  fileSize: number;
  /** Length of the JSON header in bytes (the 8-byte prefix's value). */
  headerLength: number;
  /** Absolute file offset of the data section: 8 + headerLength. */
  dataStart: number;
  /** Tensors in header order. */
  tensors: Map<string, SafetensorsTensorInfo>;
  /** `__metadata__`, or null when the header has none. */
  metadata: Record<string, string> | null;
}

export interface ReadSafetensorsOptions {
  /** Read only the tensors this accepts (the header is validated in full either way). */
  filter?: (name: string, info: SafetensorsTensorInfo) => boolean;
}

export interface SafetensorsWriteTensor {
  dtype: FloatSafetensorsDtype;
  shape: number[];
  data: Float32Array;
}

const LITTLE_ENDIAN = endianness() === 'LE';
// Cap single reads well below readSync's 2 GiB limit.
const READ_CHUNK_BYTES = 1 << 30;

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isNonNegativeSafeInteger(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function readExactly(fd: number, target: Uint8Array, position: number, file: string): void {
  let done = 0;
  while (done < target.length) {
    const length = Math.min(target.length - done, READ_CHUNK_BYTES);
    const n = readSync(fd, target, done, length, position + done);
    // The size was checked against fstat; a short read means the file changed under us.
    if (n === 0) throw new CorruptModelFileError(file, `unexpected end of file at byte ${position + done}`);
    done += n;
  }
}

function formatJson(value: unknown): string {
  const text = JSON.stringify(value);
  return text === undefined ? String(value) : text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function parseTensorEntry(file: string, name: string, entry: unknown, dataSize: number): SafetensorsTensorInfo {
  const where = `tensor '${name}'`;
  if (!isPlainObject(entry)) throw new CorruptModelFileError(file, `${where}: header entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (dtype === undefined) throw new CorruptModelFileError(file, `${where}: header entry has no dtype`);
  if (shape === undefined) throw new CorruptModelFileError(file, `${where}: header entry has no shape`);
  if (offsets === undefined) throw new CorruptModelFileError(file, `${where}: header entry has no data_offsets`);
  if (typeof dtype !== 'string' || !Object.hasOwn(DTYPE_BITS, dtype)) {
    throw new CorruptModelFileError(file, `${where}: unknown dtype ${formatJson(dtype)}`);
  }
  if (!Array.isArray(shape) || !shape.every(isNonNegativeSafeInteger)) {
    throw new CorruptModelFileError(file, `${where}: shape must be a list of non-negative integers, got ${formatJson(shape)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isNonNegativeSafeInteger)) {
    throw new CorruptModelFileError(
      file,
      `${where}: data_offsets must be two non-negative integers [begin, end], got ${formatJson(offsets)}`,
    );
  }
  const [begin, end] = offsets as [number, number];
  if (begin > end) throw new CorruptModelFileError(file, `${where}: data_offsets begin ${begin} > end ${end}`);
  if (end > dataSize) {
    throw new CorruptModelFileError(file, `${where}: data_offsets end ${end} is beyond the data section (${dataSize} bytes)`);
  }
  let elements = 1;
  for (const dim of shape as number[]) {
    elements *= dim;
    if (!Number.isSafeInteger(elements)) throw new CorruptModelFileError(file, `${where}: shape ${formatJson(shape)} is too large`);
  }
  const bits = elements * DTYPE_BITS[dtype as SafetensorsFileDtype];
  if (!Number.isSafeInteger(bits) || bits % 8 !== 0) {
    throw new CorruptModelFileError(file, `${where}: ${elements} elements of ${dtype} do not fill whole bytes`);
  }
  if (bits / 8 !== end - begin) {
    throw new CorruptModelFileError(
      file,
      `${where}: data_offsets span ${end - begin} bytes but shape ${formatJson(shape)} of ${dtype} needs ${bits / 8}`,
    );
  }
  return { dtype: dtype as SafetensorsFileDtype, shape: [...(shape as number[])], dataOffsets: [begin, end] };
}

/** Reads and validates the header of an open file. Never reads past the end of the file. */
function readHeaderFromFd(fd: number, file: string): SafetensorsHeader {
  const fileSize = fstatSync(fd).size;
  if (fileSize < 8) {
    throw new CorruptModelFileError(file, `file is ${fileSize} bytes long, shorter than the 8-byte header length prefix`);
  }
  const prefix = Buffer.alloc(8);
  readExactly(fd, prefix, 0, file);
  const declared = prefix.readBigUInt64LE(0);
  if (declared > BigInt(SAFETENSORS_MAX_HEADER_BYTES)) {
    throw new CorruptModelFileError(file, `header length ${declared} exceeds the ${SAFETENSORS_MAX_HEADER_BYTES}-byte limit`);
  }
  const headerLength = Number(declared);
  if (8 + headerLength > fileSize) {
    throw new CorruptModelFileError(file, `header length ${headerLength} runs past the end of the file (${fileSize} bytes)`);
  }
  const headerBytes = Buffer.alloc(headerLength);
  readExactly(fd, headerBytes, 8, file);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw new CorruptModelFileError(file, 'header is not valid UTF-8');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new CorruptModelFileError(file, `header is not valid JSON (${(err as Error).message})`);
  }
  if (!isPlainObject(parsed)) throw new CorruptModelFileError(file, 'header is not a JSON object');

  const dataStart = 8 + headerLength;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> | null = null;
  const tensors = new Map<string, SafetensorsTensorInfo>();
  for (const [name, entry] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      if (entry === null) continue; // the reference reads null as "no metadata"
      if (!isPlainObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw new CorruptModelFileError(file, '__metadata__ must map strings to strings');
      }
      metadata = { ...(entry as Record<string, string>) };
      continue;
    }
    tensors.set(name, parseTensorEntry(file, name, entry, dataSize));
  }

  // Like the reference, the tensors must tile the data section exactly: no overlap, no gap,
  // nothing after the last one.
  const ordered = [...tensors.entries()].sort(
    (a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0] || a[1].dataOffsets[1] - b[1].dataOffsets[1],
  );
  let covered = 0;
  let previous: string | null = null;
  for (const [name, info] of ordered) {
    const [begin, end] = info.dataOffsets;
    if (begin < covered) {
      throw new CorruptModelFileError(file, `tensor '${name}' (bytes ${begin}..${end}) overlaps tensor '${previous}'`);
    }
    if (begin > covered) {
      throw new CorruptModelFileError(file, `bytes ${covered}..${begin} of the data section belong to no tensor (gap before '${name}')`);
    }
    covered = end;
    previous = name;
  }
  if (covered !== dataSize) {
    throw new CorruptModelFileError(file, `data section has ${dataSize - covered} bytes after the last tensor's data`);
  }
  return { path: file, fileSize, headerLength, dataStart, tensors, metadata };
}

/** Runs `work` on an open file; I/O failures (missing file, a directory, EACCES) become ModelLoadError. */
function withFile<T>(path: string, flags: 'r' | 'w', work: (fd: number) => T): T {
  let fd: number;
  try {
    fd = openSync(path, flags);
  } catch (err) {
    throw new ModelLoadError(`cannot open '${path}': ${(err as Error).message}`, { cause: err });
  }
  try {
    return work(fd);
  } catch (err) {
    if (err instanceof TinyServeError) throw err;
    throw new ModelLoadError(`cannot ${flags === 'r' ? 'read' : 'write'} '${path}': ${(err as Error).message}`, { cause: err });
  } finally {
    closeSync(fd);
  }
}

/** Reads and validates a safetensors file's header without reading tensor data. */
export function readSafetensorsHeader(path: string): SafetensorsHeader {
  return withFile(path, 'r', (fd) => readHeaderFromFd(fd, path));
}

function readTensor(fd: number, header: SafetensorsHeader, name: string, info: SafetensorsTensorInfo): TensorData {
  if (!READABLE_DTYPES.has(info.dtype)) {
    throw new UnsupportedModelError(
      `${header.path}: tensor '${name}' has dtype ${info.dtype}; TinyServe reads F32, F16 and BF16 tensors`,
    );
  }
  const [begin, end] = info.dataOffsets;
  const position = header.dataStart + begin;
  const elements = info.shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(elements);
  if (info.dtype === 'F32') {
    const bytes = new Uint8Array(data.buffer);
    readExactly(fd, bytes, position, header.path);
    if (!LITTLE_ENDIAN) Buffer.from(data.buffer).swap32();
  } else {
    const halves = new Uint16Array(elements);
    readExactly(fd, new Uint8Array(halves.buffer, 0, end - begin), position, header.path);
    if (!LITTLE_ENDIAN) Buffer.from(halves.buffer).swap16();
    if (info.dtype === 'F16') decodeFloat16Array(halves, data);
    else decodeBfloat16Array(halves, data);
  }
  return { dtype: info.dtype as SafetensorsDtype, shape: [...info.shape], data };
}

/**
 * Reads a safetensors file tensor by tensor through a file descriptor (never the whole file
 * at once), widening F16/BF16 to float32. Other dtypes are refused unless filtered out.
 */
export function readSafetensors(path: string, options: ReadSafetensorsOptions = {}): Map<string, TensorData> {
  return withFile(path, 'r', (fd) => {
    const header = readHeaderFromFd(fd, path);
    const out = new Map<string, TensorData>();
    // File order keeps the reads sequential (the Map keeps that order too).
    const ordered = [...header.tensors.entries()].sort((a, b) => a[1].dataOffsets[0] - b[1].dataOffsets[0]);
    for (const [name, info] of ordered) {
      if (options.filter && !options.filter(name, info)) continue;
      out.set(name, readTensor(fd, header, name, info));
    }
    return out;
  });
}

function writeAll(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done);
}

function encodeTensor(tensor: SafetensorsWriteTensor): Uint8Array {
  const { dtype, data } = tensor;
  if (dtype === 'F32') {
    const copy = new Float32Array(data);
    if (!LITTLE_ENDIAN) Buffer.from(copy.buffer).swap32();
    return new Uint8Array(copy.buffer);
  }
  const halves = new Uint16Array(data.length);
  const narrow = dtype === 'F16' ? float32ToFloat16Bits : float32ToBfloat16Bits;
  for (let i = 0; i < data.length; i++) halves[i] = narrow(data[i]);
  if (!LITTLE_ENDIAN) Buffer.from(halves.buffer).swap16();
  return new Uint8Array(halves.buffer);
}

/**
 * Writes a safetensors file the way the reference does: tensors sorted by dtype width then
 * name, contiguous, with the JSON header padded with spaces to a multiple of 8 bytes.
 */
export function writeSafetensors(
  path: string,
  tensors: Record<string, SafetensorsWriteTensor>,
  metadata?: Record<string, string>,
): void {
  const entries = Object.entries(tensors);
  for (const [name, tensor] of entries) {
    const field = `tensors['${name}']`;
    if (name === '__metadata__') throw new RequestValidationError(field, "the name '__metadata__' is reserved");
    if (!READABLE_DTYPES.has(tensor.dtype)) {
      throw new RequestValidationError(`${field}.dtype`, `must be F32, F16 or BF16, got ${formatJson(tensor.dtype)}`);
    }
    if (!Array.isArray(tensor.shape) || !tensor.shape.every(isNonNegativeSafeInteger)) {
      throw new RequestValidationError(`${field}.shape`, `must be a list of non-negative integers, got ${formatJson(tensor.shape)}`);
    }
    const elements = tensor.shape.reduce((a, b) => a * b, 1);
    if (!(tensor.data instanceof Float32Array) || tensor.data.length !== elements) {
      throw new RequestValidationError(
        `${field}.data`,
        `must be a Float32Array of ${elements} elements (shape ${formatJson(tensor.shape)}), got length ${tensor.data?.length}`,
      );
    }
  }
  if (metadata !== undefined && (!isPlainObject(metadata) || !Object.values(metadata).every((v) => typeof v === 'string'))) {
    throw new RequestValidationError('metadata', 'must map strings to strings');
  }
  entries.sort((a, b) => DTYPE_BITS[b[1].dtype] - DTYPE_BITS[a[1].dtype] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));

  const header: Record<string, unknown> = {};
  if (metadata !== undefined) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, tensor] of entries) {
    const length = (tensor.data.length * DTYPE_BITS[tensor.dtype]) / 8;
    header[name] = { dtype: tensor.dtype, shape: tensor.shape, data_offsets: [offset, offset + length] };
    offset += length;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Buffer.alloc(json.length + ((8 - (json.length % 8)) % 8), 0x20);
  json.copy(padded);
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(padded.length));

  withFile(path, 'w', (fd) => {
    writeAll(fd, prefix);
    writeAll(fd, padded);
    for (const [, tensor] of entries) writeAll(fd, encodeTensor(tensor));
  });
}
