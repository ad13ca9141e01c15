import { mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CorruptModelFileError, ModelLoadError } from '../errors.js';
import { loadCheckpointWeights, readCheckpointIndex } from './checkpoint.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { writeTinyLlama } from './__fixtures__/tiny-checkpoints.js';

const root = mkdtempSync(join(tmpdir(), 'tinyserve-checkpoint-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
const freshDir = () => join(root, `m${counter++}`);

const INDEX = 'model.safetensors.index.json';
const readIndex = (dir: string) => JSON.parse(readFileSync(join(dir, INDEX), 'utf8'));
const writeIndex = (dir: string, value: unknown) => writeFileSync(join(dir, INDEX), JSON.stringify(value));

describe('loadCheckpointWeights', () => {
  it('loads a sharded checkpoint with the same tensors and values as the single file', () => {
    const single = freshDir();
    const sharded = freshDir();
    writeTinyLlama(single, { seed: 5 });
    writeTinyLlama(sharded, { seed: 5, shards: 3 });
    const a = loadCheckpointWeights(single);
    const b = loadCheckpointWeights(sharded);
    expect(readCheckpointIndex(sharded).files).toHaveLength(3);
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [name, t] of a) {
      expect(b.get(name)!.shape, name).toEqual(t.shape);
      expect(Array.from(b.get(name)!.data), name).toEqual(Array.from(t.data));
    }
  });

  it('reports which file holds each tensor and honours the filter', () => {
    const dir = freshDir();
    writeTinyLlama(dir, { shards: 2 });
    const index = readCheckpointIndex(dir);
    const map = readIndex(dir).weight_map as Record<string, string>;
    for (const [name, info] of index.tensors) expect(info.file).toBe(join(dir, map[name]));
    const only = loadCheckpointWeights(dir, { filter: (name) => name.startsWith('model.norm') });
    expect([...only.keys()]).toEqual(['model.norm.weight']);
  });

  it('does not read tensors a shard holds but the index does not name', () => {
    const dir = freshDir();
    writeTinyLlama(dir, { shards: 2 });
    const index = readIndex(dir);
    delete index.weight_map['model.norm.weight'];
    writeIndex(dir, index);
    expect(loadCheckpointWeights(dir).has('model.norm.weight')).toBe(false);
  });

  it('fails clearly on a missing shard', () => {
    const dir = freshDir();
    writeTinyLlama(dir, { shards: 2 });
    unlinkSync(join(dir, 'model-00002-of-00002.safetensors'));
    expect(() => loadCheckpointWeights(dir)).toThrow(ModelLoadError);
    expect(() => loadCheckpointWeights(dir)).toThrow(/shard 'model-00002-of-00002.safetensors' .* is missing/);
  });

  it('refuses shard paths outside the model directory', () => {
    const dir = freshDir();
    writeTinyLlama(dir, { shards: 2 });
    // A real safetensors file outside the directory must still be refused.
    writeSafetensors(join(root, 'x.safetensors'), { t: { dtype: 'F32', shape: [1], data: new Float32Array(1) } });
    for (const evil of ['../x.safetensors', join(root, 'x.safetensors'), 'sub/../../x.safetensors', '.']) {
      const index = readIndex(dir);
      index.weight_map['model.norm.weight'] = evil;
      writeIndex(dir, index);
      expect(() => loadCheckpointWeights(dir), evil).toThrow(CorruptModelFileError);
      expect(() => loadCheckpointWeights(dir), evil).toThrow(/lies outside the model directory/);
    }
  });

  it('checks that each tensor is in the shard the index names, and in one shard only', () => {
    const dir = freshDir();
    writeTinyLlama(dir, { shards: 2 });
    const index = readIndex(dir);
    const [name, shard] = Object.entries(index.weight_map as Record<string, string>)[0];
    const other = shard.includes('00001') ? 'model-00002-of-00002.safetensors' : 'model-00001-of-00002.safetensors';
    writeIndex(dir, { ...index, weight_map: { ...index.weight_map, [name]: other } });
    expect(() => loadCheckpointWeights(dir)).toThrow(new RegExp(`tensor '${name.replaceAll('.', '\\.')}' is mapped to '${other}' but that shard has no such tensor`));

    writeIndex(dir, { ...index, weight_map: { ...index.weight_map, 'not.a.tensor': shard } });
    expect(() => loadCheckpointWeights(dir)).toThrow(/tensor 'not.a.tensor' is mapped/);

    // The same tensor stored in both shards.
    writeIndex(dir, index);
    const otherPath = join(dir, other);
    const tensors = Object.fromEntries(
      [...readSafetensors(otherPath)].map(([n, t]) => [n, { dtype: 'F32' as const, shape: t.shape, data: t.data }]),
    );
    tensors[name] = { dtype: 'F32', shape: [1], data: new Float32Array(1) };
    writeSafetensors(otherPath, tensors);
    expect(() => loadCheckpointWeights(dir)).toThrow(CorruptModelFileError);
    expect(() => loadCheckpointWeights(dir)).toThrow(/is stored in two shards/);
  });

  it('validates the index file itself', () => {
    const dir = freshDir();
    writeTinyLlama(dir, { shards: 2 });
    writeFileSync(join(dir, INDEX), '{"weight_map": ');
    expect(() => loadCheckpointWeights(dir)).toThrow(/model.safetensors.index.json: not valid JSON/);
    writeIndex(dir, { weight_map: ['a'] });
    expect(() => loadCheckpointWeights(dir)).toThrow(/weight_map must be an object/);
    writeIndex(dir, { metadata: {} });
    expect(() => loadCheckpointWeights(dir)).toThrow(/weight_map must be an object/);
    writeIndex(dir, { weight_map: {} });
    expect(() => loadCheckpointWeights(dir)).toThrow(/weight_map names no tensors/);
    writeIndex(dir, { weight_map: { a: 3 } });
    expect(() => loadCheckpointWeights(dir)).toThrow(/weight_map\['a'\] must be a shard file name/);
  });

  it('explains when there are no safetensors weights, mentioning pytorch_model.bin', () => {
    const dir = freshDir();
    writeTinyLlama(dir);
    unlinkSync(join(dir, 'model.safetensors'));
    expect(() => loadCheckpointWeights(dir)).toThrow(ModelLoadError);
    expect(() => loadCheckpointWeights(dir)).toThrow(/expected model.safetensors or model.safetensors.index.json$/);
    writeFileSync(join(dir, 'pytorch_model.bin'), 'not really');
    expect(() => loadCheckpointWeights(dir)).toThrow(/found pytorch_model.bin, but PyTorch pickle checkpoints are not supported/);
  });

  it('prefers model.safetensors when both layouts are present', () => {
    const dir = freshDir();
    writeTinyLlama(dir);
    writeIndex(dir, { weight_map: { a: 'missing.safetensors' } });
    expect(readCheckpointIndex(dir).files).toEqual([join(dir, 'model.safetensors')]);
  });
});
