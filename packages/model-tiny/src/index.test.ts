import { existsSync, readFileSync, statSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MODEL_TINY_DIR, MODEL_TINY_NAME, modelTinyDir } from './index.js';

const readJson = (name: string): Record<string, unknown> =>
  JSON.parse(readFileSync(join(MODEL_TINY_DIR, name), 'utf8')) as Record<string, unknown>;

describe('@tinyserve/model-tiny', () => {
  it('points at the model folder, absolute, from the package root', () => {
    expect(isAbsolute(MODEL_TINY_DIR)).toBe(true);
    expect(modelTinyDir()).toBe(MODEL_TINY_DIR);
    expect(MODEL_TINY_DIR.endsWith(join('model-tiny', 'model'))).toBe(true);
    expect(statSync(MODEL_TINY_DIR).isDirectory()).toBe(true);
  });

  it('holds a complete Hugging Face LLaMA checkpoint whose config names the package', () => {
    const config = readJson('config.json');
    expect(config.model_type).toBe('llama');
    expect(config.tinyserve_model_name).toBe(MODEL_TINY_NAME);
    expect(config.num_key_value_heads).toBeLessThan(config.num_attention_heads as number);
    expect(config.max_position_embeddings).toBeGreaterThanOrEqual(2048);
    for (const f of ['generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'reference.json', 'metrics.json']) {
      expect(existsSync(join(MODEL_TINY_DIR, f)), f).toBe(true);
    }
  });

  it('lists only shards that exist, each small enough to travel, 30 MB at most in all', () => {
    const index = readJson('model.safetensors.index.json') as { weight_map: Record<string, string>; metadata: { total_size: number } };
    const shards = [...new Set(Object.values(index.weight_map))];
    expect(shards.length).toBeGreaterThan(0);
    let bytes = 0;
    for (const shard of shards) {
      const size = statSync(join(MODEL_TINY_DIR, shard)).size;
      expect(size, shard).toBeLessThanOrEqual(15_000_000);
      bytes += size;
    }
    expect(bytes).toBeLessThanOrEqual(30_000_000);
    // Each shard is the tensors plus an 8-byte length and a JSON header.
    expect(bytes).toBeGreaterThan(index.metadata.total_size);
  });

  it('ships a tokenizer with <s> </s> <unk> at 0 1 2, BOS added, and digits split one per token', () => {
    const tok = readJson('tokenizer.json') as {
      added_tokens: { id: number; content: string }[];
      pre_tokenizer: { type: string; pretokenizers: { type: string; individual_digits?: boolean }[] };
      post_processor: { type: string; single: unknown[] };
    };
    expect(tok.added_tokens.map((t) => [t.id, t.content])).toEqual([
      [0, '<s>'],
      [1, '</s>'],
      [2, '<unk>'],
    ]);
    expect(tok.pre_tokenizer.pretokenizers.find((p) => p.type === 'Digits')?.individual_digits).toBe(true);
    expect(tok.post_processor.type).toBe('TemplateProcessing');
    expect(JSON.stringify(tok.post_processor.single[0])).toContain('<s>');
    expect(typeof readJson('tokenizer_config.json').chat_template).toBe('string');
  });

  it('carries four fp32 reference continuations of 20 greedy tokens with their logprobs', () => {
    const ref = readJson('reference.json') as {
      prompts: { prompt: string; input_ids: number[]; output_ids: number[]; logprobs: number[]; text: string }[];
    };
    expect(ref.prompts).toHaveLength(4);
    for (const p of ref.prompts) {
      expect(p.input_ids[0]).toBe(0);
      expect(p.output_ids).toHaveLength(20);
      expect(p.logprobs).toHaveLength(20);
      for (const lp of p.logprobs) expect(lp <= 0 && Number.isFinite(lp)).toBe(true);
      expect(p.text.length).toBeGreaterThan(0);
    }
  });

  it('is published with its model folder', () => {
    const pkg = JSON.parse(readFileSync(join(MODEL_TINY_DIR, '..', 'package.json'), 'utf8')) as { files: string[] };
    expect(pkg.files).toContain('model');
    expect(existsSync(join(MODEL_TINY_DIR, '..', 'README.md'))).toBe(true);
  });
});
