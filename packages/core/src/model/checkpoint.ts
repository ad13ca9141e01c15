import { existsSync, statSync } from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { CorruptModelFileError, ModelLoadError } from '../errors.js';
import type { TensorData } from '../model-types.js';
import { readJsonObject } from './json-file.js';
import { readSafetensors, readSafetensorsHeader } from './safetensors.js';
import type { ReadSafetensorsOptions, SafetensorsTensorInfo } from './safetensors.js';

export const SAFETENSORS_WEIGHTS_FILE = 'model.safetensors';
export const SAFETENSORS_INDEX_FILE = 'model.safetensors.index.json';

export interface CheckpointTensorInfo extends SafetensorsTensorInfo {
  /** Absolute path of the safetensors file holding the tensor. */
  file: string;
}

/** A checkpoint's tensors as described by its headers, before any data is read. */
export interface CheckpointIndex {
  dir: string;
  /** Absolute paths of the safetensors files, in the order first named. */
  files: string[];
  tensors: Map<string, CheckpointTensorInfo>;
}

function isFile(path: string): boolean {
  try {
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function noWeightsError(dir: string): ModelLoadError {
  const pickle = ['pytorch_model.bin', 'pytorch_model.bin.index.json'].find((f) => existsSync(join(dir, f)));
  const hint = pickle
    ? `; found ${pickle}, but PyTorch pickle checkpoints are not supported: convert it to safetensors first`
    : '';
  return new ModelLoadError(`no weights in '${dir}': expected ${SAFETENSORS_WEIGHTS_FILE} or ${SAFETENSORS_INDEX_FILE}${hint}`);
}

function readShardMap(dir: string, indexPath: string): Map<string, string> {
  const parsed = readJsonObject(indexPath);
  const weightMap = parsed.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new CorruptModelFileError(indexPath, 'weight_map must be an object mapping tensor names to shard files');
  }
  const entries = Object.entries(weightMap as Record<string, unknown>);
  if (entries.length === 0) throw new CorruptModelFileError(indexPath, 'weight_map names no tensors');
  const shardOf = new Map<string, string>();
  const checked = new Map<string, string>();
  for (const [name, shard] of entries) {
    if (typeof shard !== 'string' || shard === '') {
      throw new CorruptModelFileError(indexPath, `weight_map['${name}'] must be a shard file name, got ${JSON.stringify(shard)}`);
    }
    let full = checked.get(shard);
    if (full === undefined) {
      // Lexical containment only: Hugging Face cache snapshots are symlinks into blobs/.
      full = resolve(dir, shard);
      const rel = relative(dir, full);
      if (isAbsolute(shard) || rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel)) {
        throw new CorruptModelFileError(indexPath, `shard '${shard}' (for tensor '${name}') lies outside the model directory`);
      }
      if (!isFile(full)) {
        throw new ModelLoadError(`shard '${shard}' named by ${SAFETENSORS_INDEX_FILE} (for tensor '${name}') is missing from '${dir}'`);
      }
      checked.set(shard, full);
    }
    shardOf.set(name, full);
  }
  return shardOf;
}

/**
 * Reads the headers of a checkpoint directory: `model.safetensors`, or
 * `model.safetensors.index.json` and its shards. Validates the index against the shards'
 * headers (each tensor in the shard the index names, none in two shards).
 */
export function readCheckpointIndex(dir: string): CheckpointIndex {
  const root = resolve(dir);
  const single = join(root, SAFETENSORS_WEIGHTS_FILE);
  const indexPath = join(root, SAFETENSORS_INDEX_FILE);
  if (isFile(single)) {
    const header = readSafetensorsHeader(single);
    const tensors = new Map<string, CheckpointTensorInfo>();
    for (const [name, info] of header.tensors) tensors.set(name, { ...info, file: single });
    return { dir: root, files: [single], tensors };
  }
  if (!isFile(indexPath)) throw noWeightsError(root);

  const shardOf = readShardMap(root, indexPath);
  const files = [...new Set(shardOf.values())];
  const foundIn = new Map<string, { file: string; info: SafetensorsTensorInfo }>();
  for (const file of files) {
    for (const [name, info] of readSafetensorsHeader(file).tensors) {
      const other = foundIn.get(name);
      if (other) {
        throw new CorruptModelFileError(indexPath, `tensor '${name}' is stored in two shards: '${relative(root, other.file)}' and '${relative(root, file)}'`);
      }
      foundIn.set(name, { file, info });
    }
  }
  const tensors = new Map<string, CheckpointTensorInfo>();
  for (const [name, file] of shardOf) {
    const found = foundIn.get(name);
    if (!found || found.file !== file) {
      throw new CorruptModelFileError(
        indexPath,
        `tensor '${name}' is mapped to '${relative(root, file)}' but that shard has no such tensor` +
          (found ? ` (it is in '${relative(root, found.file)}')` : ''),
      );
    }
    tensors.set(name, { ...found.info, file });
  }
  return { dir: root, files, tensors };
}

/**
 * Loads a checkpoint directory's tensors (single file or sharded), widened to float32.
 * Tensors a shard holds but the index does not name are not read.
 */
export function loadCheckpointWeights(dir: string, options: ReadSafetensorsOptions = {}): Map<string, TensorData> {
  const index = readCheckpointIndex(dir);
  const out = new Map<string, TensorData>();
  for (const file of index.files) {
    const part = readSafetensors(file, {
      filter: (name, info) => index.tensors.get(name)?.file === file && (options.filter?.(name, info) ?? true),
    });
    for (const [name, tensor] of part) out.set(name, tensor);
  }
  return out;
}
