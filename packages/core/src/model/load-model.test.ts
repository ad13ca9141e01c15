import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ModelLoadError, UnsupportedModelError } from '../errors.js';
import { expectedWeightShapes, isModelDirectory, loadModel } from './load-model.js';
import { readSafetensors } from './safetensors.js';
import { float16BitsToFloat32, float32ToFloat16Bits } from './half-float.js';
import { TINY_GPT2, TINY_LLAMA, randomTensor, seededRandom, writeTinyGpt2, writeTinyLlama } from './__fixtures__/tiny-checkpoints.js';

const root = mkdtempSync(join(tmpdir(), 'tinyserve-load-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let counter = 0;
const freshDir = (name = `m${counter++}`) => join(root, name);

async function loadError(dir: string, modelType: 'auto' | 'gpt2' | 'llama' = 'auto'): Promise<Error> {
  try {
    await loadModel(dir, modelType);
  } catch (err) {
    return err as Error;
  }
  throw new Error(`loadModel('${dir}') did not fail`);
}

describe('loadModel: gpt2', () => {
  it('loads a tiny GPT-2 under canonical transformer.* names, skipping buffers', async () => {
    const dir = freshDir('tiny-gpt2');
    writeTinyGpt2(dir, {
      extraTensors: {
        'transformer.h.0.attn.bias': randomTensor([1, 1, 32, 32], seededRandom(1)),
        'lm_head.weight': randomTensor([TINY_GPT2.vocabSize, TINY_GPT2.hidden], seededRandom(2)),
      },
    });
    const model = await loadModel(dir);
    expect(model.name).toBe('tiny-gpt2');
    expect(model.dir).toBe(dir);
    expect(model.config).toMatchObject({ architecture: 'gpt2', numLayers: 2, hiddenSize: 16, numHeads: 4, headDim: 4, intermediateSize: 64, tieWordEmbeddings: true });
    expect(model.rawConfig.model_type).toBe('gpt2');
    const expected = expectedWeightShapes(model.config);
    expect([...model.weights.keys()].sort()).toEqual([...expected.keys()].sort());
    for (const [name, shape] of expected) expect(model.weights.get(name)!.shape, name).toEqual(shape);
    expect(model.weights.has('lm_head.weight')).toBe(false);
    expect(model.weights.has('transformer.h.0.attn.bias')).toBe(false);
    // Values are the file's values.
    const file = readSafetensors(join(dir, 'model.safetensors'));
    expect(Array.from(model.weights.get('transformer.h.1.mlp.c_fc.weight')!.data)).toEqual(Array.from(file.get('transformer.h.1.mlp.c_fc.weight')!.data));

    const eos = model.config.eosTokenIds[0];
    expect(model.generationDefaults).toEqual({ bosTokenId: eos, eosTokenIds: [eos] });
    expect(model.tokenizer.eosTokenIds).toEqual([eos]);
    expect(model.tokenizer.decode(model.tokenizer.encode('café 😀'))).toBe('café 😀');
    expect(model.chatTemplate).toBeNull();
    expect(model.tokenizerConfig.eos_token).toBe('<|endoftext|>');
  });

  it('adds the transformer. prefix for GPT2Model-style checkpoints', async () => {
    const withPrefix = freshDir();
    const without = freshDir();
    writeTinyGpt2(withPrefix, { seed: 9 });
    writeTinyGpt2(without, { seed: 9, noPrefix: true, extraTensors: { 'h.0.attn.masked_bias': randomTensor([1], seededRandom(3)) } });
    const a = await loadModel(withPrefix, 'gpt2');
    const b = await loadModel(without, 'gpt2');
    expect([...b.weights.keys()].sort()).toEqual([...a.weights.keys()].sort());
    for (const [name, t] of a.weights) expect(Array.from(b.weights.get(name)!.data), name).toEqual(Array.from(t.data));
  });

  it('names a missing or mis-shaped tensor', async () => {
    const missing = freshDir();
    writeTinyGpt2(missing, { omit: ['transformer.h.1.ln_2.bias'] });
    const err = await loadError(missing);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect(err.message).toMatch(/checkpoint has no tensor 'transformer.h.1.ln_2.bias'/);

    const misshaped = freshDir();
    writeTinyGpt2(misshaped, { reshape: { 'transformer.wpe.weight': [16, 16] } });
    expect((await loadError(misshaped)).message).toMatch(
      /tensor 'transformer.wpe.weight' has shape \[16, 16\], expected \[32, 16\] from config.json \(.*n_positions=32/,
    );
  });
});

describe('loadModel: llama', () => {
  it('loads a tiny GQA LLaMA (F16, sharded, untied) with tokenizer, chat template and defaults', async () => {
    const dir = freshDir();
    writeTinyLlama(dir, { dtype: 'F16', shards: 2, numHeads: 4, numKvHeads: 2 });
    const model = await loadModel(dir);
    expect(model.config).toMatchObject({ architecture: 'llama', numHeads: 4, numKvHeads: 2, headDim: 4, tieWordEmbeddings: false, bosTokenId: 1, eosTokenIds: [2] });
    const expected = expectedWeightShapes(model.config);
    expect([...model.weights.keys()].sort()).toEqual([...expected.keys()].sort());
    expect(model.weights.get('model.layers.0.self_attn.k_proj.weight')!.shape).toEqual([8, 16]);
    expect(model.weights.get('model.layers.0.self_attn.q_proj.weight')!.shape).toEqual([16, 16]);
    expect(model.weights.get('lm_head.weight')!.shape).toEqual([TINY_LLAMA.vocabSize, 16]);
    const norm = model.weights.get('model.norm.weight')!;
    expect(norm.dtype).toBe('F16');
    // F16 values are exactly representable, i.e. really widened from binary16.
    for (const v of norm.data) expect(float16BitsToFloat32(float32ToFloat16Bits(v))).toBe(v);
    expect(model.chatTemplate).toContain("m['role']");
    expect(model.generationDefaults).toEqual({ bosTokenId: 1, eosTokenIds: [2] });
    const ids = model.tokenizer.encode('hello 中文');
    expect(ids[0]).toBe(1);
    expect(model.tokenizer.decode(ids, { skipSpecialTokens: true })).toBe('hello 中文');
  });

  it('loads multi-query, tied, BF16 checkpoints without lm_head.weight', async () => {
    const dir = freshDir();
    writeTinyLlama(dir, { dtype: 'BF16', numHeads: 4, numKvHeads: 1, tie: true, bosInPostProcessor: true });
    const model = await loadModel(dir, 'llama');
    expect(model.config.numKvHeads).toBe(1);
    expect(model.config.tieWordEmbeddings).toBe(true);
    expect(model.weights.has('lm_head.weight')).toBe(false);
    expect(model.weights.get('model.layers.1.self_attn.v_proj.weight')!.shape).toEqual([4, 16]);
    expect(model.weights.get('model.embed_tokens.weight')!.dtype).toBe('BF16');
    expect(model.tokenizer.encode('hi').filter((id) => id === 1)).toHaveLength(1);
  });

  it('names the tensor when the checkpoint disagrees with num_key_value_heads', async () => {
    const dir = freshDir();
    writeTinyLlama(dir, { numKvHeads: 2 });
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, num_key_value_heads: 4 }));
    const err = await loadError(dir);
    expect(err).toBeInstanceOf(ModelLoadError);
    expect(err.message).toMatch(/tensor 'model.layers.0.self_attn.k_proj.weight' has shape \[8, 16\], expected \[16, 16\] .*num_key_value_heads=4/);
  });

  it('requires lm_head.weight for untied models', async () => {
    const dir = freshDir();
    writeTinyLlama(dir, { omit: ['lm_head.weight'] });
    expect((await loadError(dir)).message).toMatch(/no tensor 'lm_head.weight'/);
  });

  it('reads chat templates in list form and from chat_template.jinja', async () => {
    const dir = freshDir();
    writeTinyLlama(dir);
    const tcPath = join(dir, 'tokenizer_config.json');
    const tc = JSON.parse(readFileSync(tcPath, 'utf8'));
    writeFileSync(tcPath, JSON.stringify({ ...tc, chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: 'D' }] }));
    expect((await loadModel(dir)).chatTemplate).toBe('D');
    writeFileSync(tcPath, JSON.stringify({ ...tc, chat_template: [{ name: 'rag', template: 'R' }] }));
    expect((await loadModel(dir)).chatTemplate).toBe('R');
    const { chat_template: _drop, ...noTemplate } = tc;
    writeFileSync(tcPath, JSON.stringify(noTemplate));
    writeFileSync(join(dir, 'chat_template.jinja'), '{{ messages }}');
    expect((await loadModel(dir)).chatTemplate).toBe('{{ messages }}');
  });
});

describe('loadModel: directories and errors', () => {
  it('fails clearly on a missing directory, a file, or a directory without config.json', async () => {
    const nowhere = join(root, 'does-not-exist');
    expect(await loadError(nowhere)).toBeInstanceOf(ModelLoadError);
    expect((await loadError(nowhere)).message).toMatch(/model directory '.*does-not-exist' does not exist/);
    const file = join(root, 'a-file');
    writeFileSync(file, '');
    expect((await loadError(file)).message).toMatch(/is not a directory/);
    const empty = freshDir();
    mkdirSync(empty);
    expect((await loadError(empty)).message).toMatch(/has no config.json/);
  });

  it('fails clearly on a corrupt config.json, a missing tokenizer.json or weights', async () => {
    const dir = freshDir();
    writeTinyGpt2(dir);
    writeFileSync(join(dir, 'config.json'), '{ nope');
    expect((await loadError(dir)).message).toMatch(/config.json: not valid JSON/);

    const noTok = freshDir();
    writeTinyGpt2(noTok);
    unlinkSync(join(noTok, 'tokenizer.json'));
    expect((await loadError(noTok)).message).toMatch(/has no tokenizer.json/);

    const noWeights = freshDir();
    writeTinyGpt2(noWeights);
    unlinkSync(join(noWeights, 'model.safetensors'));
    expect((await loadError(noWeights)).message).toMatch(/no weights in/);
  });

  it('rejects a modelType that contradicts config.json', async () => {
    const dir = freshDir();
    writeTinyLlama(dir);
    const err = await loadError(dir, 'gpt2');
    expect(err).toBeInstanceOf(UnsupportedModelError);
    expect(err.message).toMatch(/modelType 'gpt2' was requested, but config.json describes a llama model/);
  });

  it('rejects a tokenizer larger than the model vocabulary', async () => {
    const dir = freshDir();
    writeTinyGpt2(dir);
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...config, vocab_size: 100 }));
    expect((await loadError(dir)).message).toMatch(/tokenizer has \d+ tokens but config.json's vocab_size is 100/);
  });

  it('names Hugging Face cache snapshots by repository', async () => {
    const dir = join(root, 'hub', 'models--tiny-org--tiny-llama', 'snapshots', '0123abcd');
    writeTinyLlama(dir);
    expect((await loadModel(dir)).name).toBe('tiny-org/tiny-llama');
  });

  it('isModelDirectory recognises model directories', () => {
    const dir = freshDir();
    writeTinyLlama(dir, { shards: 2 });
    expect(isModelDirectory(dir)).toBe(true);
    expect(isModelDirectory(join(dir, 'config.json'))).toBe(false);
    expect(isModelDirectory(join(root, 'missing'))).toBe(false);
    const configOnly = freshDir();
    mkdirSync(configOnly);
    writeFileSync(join(configOnly, 'config.json'), '{}');
    expect(isModelDirectory(configOnly)).toBe(false);
  });
});
