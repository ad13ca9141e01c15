import { mulberry32 } from '../../random.js';
/**
 * Writes tiny random Hugging Face checkpoints (config.json, safetensors, tokenizer files) for
 * tests. Values come from a seeded generator so failures reproduce.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeSafetensors } from '../safetensors.js';
import type { FloatSafetensorsDtype, SafetensorsWriteTensor } from '../safetensors.js';
import { buildByteLevelTokenizer, buildSentencePieceTokenizer } from './tiny-tokenizers.js';

/** mulberry32: a small, fast, seedable PRNG. */
export function seededRandom(seed: number): () => number {
  return mulberry32(seed);
}

export function randomTensor(shape: number[], rand: () => number, dtype: FloatSafetensorsDtype = 'F32'): SafetensorsWriteTensor {
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = (rand() - 0.5) * 0.2;
  return { dtype, shape, data };
}

export interface TinyCheckpointOptions {
  dtype?: FloatSafetensorsDtype;
  seed?: number;
  /** Split the tensors over this many shards with model.safetensors.index.json. */
  shards?: number;
  /** Extra tensors to store (e.g. buffers a loader must skip). */
  extraTensors?: Record<string, SafetensorsWriteTensor>;
  /** Tensor names to leave out (to test missing-tensor errors). */
  omit?: string[];
  /** Shape overrides by tensor name (to test mis-shaped tensors). */
  reshape?: Record<string, number[]>;
}

export interface TinyGpt2Options extends TinyCheckpointOptions {
  /** Store names without the `transformer.` prefix, as GPT2Model checkpoints do. */
  noPrefix?: boolean;
}

export interface TinyLlamaOptions extends TinyCheckpointOptions {
  numHeads?: number;
  numKvHeads?: number;
  tie?: boolean;
  /** Post-processor adds <s> (newer files) or tokenizer_config's add_bos_token does. */
  bosInPostProcessor?: boolean;
}

function writeJson(path: string, value: unknown): void {
  writeFileSync(path, JSON.stringify(value, null, 2));
}

function writeWeights(dir: string, tensors: Record<string, SafetensorsWriteTensor>, options: TinyCheckpointOptions): void {
  for (const name of options.omit ?? []) delete tensors[name];
  for (const [name, shape] of Object.entries(options.reshape ?? {})) {
    tensors[name] = randomTensor(shape, seededRandom(1), tensors[name]?.dtype ?? 'F32');
  }
  Object.assign(tensors, options.extraTensors ?? {});
  const shards = options.shards ?? 1;
  if (shards <= 1) {
    writeSafetensors(join(dir, 'model.safetensors'), tensors, { format: 'pt' });
    return;
  }
  const names = Object.keys(tensors).sort();
  const weightMap: Record<string, string> = {};
  let totalSize = 0;
  for (let s = 0; s < shards; s++) {
    const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
    const part: Record<string, SafetensorsWriteTensor> = {};
    names.forEach((name, i) => {
      if (i % shards !== s) return;
      part[name] = tensors[name];
      weightMap[name] = file;
      totalSize += tensors[name].data.length * (tensors[name].dtype === 'F32' ? 4 : 2);
    });
    writeSafetensors(join(dir, file), part, { format: 'pt' });
  }
  writeJson(join(dir, 'model.safetensors.index.json'), { metadata: { total_size: totalSize }, weight_map: weightMap });
}

export const TINY_GPT2 = { vocabSize: 320, hidden: 16, layers: 2, heads: 4, positions: 32 } as const;

/** A 2-layer GPT-2 with a byte-level BPE tokenizer. Returns the config.json written. */
export function writeTinyGpt2(dir: string, options: TinyGpt2Options = {}): Record<string, unknown> {
  mkdirSync(dir, { recursive: true });
  const { vocabSize, hidden, layers, heads, positions } = TINY_GPT2;
  const tok = buildByteLevelTokenizer();
  if (tok.vocabSize > vocabSize) throw new Error(`tiny tokenizer has ${tok.vocabSize} tokens, more than ${vocabSize}`);
  const eos = tok.specialTokens['<|endoftext|>'];
  const config = {
    architectures: ['GPT2LMHeadModel'],
    model_type: 'gpt2',
    vocab_size: vocabSize,
    n_embd: hidden,
    n_layer: layers,
    n_head: heads,
    n_positions: positions,
    n_inner: null,
    activation_function: 'gelu_new',
    layer_norm_epsilon: 1e-5,
    bos_token_id: eos,
    eos_token_id: eos,
    torch_dtype: 'float32',
  };
  writeJson(join(dir, 'config.json'), config);
  writeJson(join(dir, 'tokenizer.json'), tok.tokenizerJson);
  writeJson(join(dir, 'tokenizer_config.json'), {
    bos_token: '<|endoftext|>',
    eos_token: '<|endoftext|>',
    add_bos_token: false,
    model_max_length: positions,
  });
  writeJson(join(dir, 'generation_config.json'), { bos_token_id: eos, eos_token_id: eos });

  const rand = seededRandom(options.seed ?? 2);
  const dtype = options.dtype ?? 'F32';
  const p = options.noPrefix ? '' : 'transformer.';
  const t: Record<string, SafetensorsWriteTensor> = {};
  t[`${p}wte.weight`] = randomTensor([vocabSize, hidden], rand, dtype);
  t[`${p}wpe.weight`] = randomTensor([positions, hidden], rand, dtype);
  for (let i = 0; i < layers; i++) {
    const l = `${p}h.${i}.`;
    t[`${l}ln_1.weight`] = randomTensor([hidden], rand, dtype);
    t[`${l}ln_1.bias`] = randomTensor([hidden], rand, dtype);
    t[`${l}attn.c_attn.weight`] = randomTensor([hidden, 3 * hidden], rand, dtype);
    t[`${l}attn.c_attn.bias`] = randomTensor([3 * hidden], rand, dtype);
    t[`${l}attn.c_proj.weight`] = randomTensor([hidden, hidden], rand, dtype);
    t[`${l}attn.c_proj.bias`] = randomTensor([hidden], rand, dtype);
    t[`${l}ln_2.weight`] = randomTensor([hidden], rand, dtype);
    t[`${l}ln_2.bias`] = randomTensor([hidden], rand, dtype);
    t[`${l}mlp.c_fc.weight`] = randomTensor([hidden, 4 * hidden], rand, dtype);
    t[`${l}mlp.c_fc.bias`] = randomTensor([4 * hidden], rand, dtype);
    t[`${l}mlp.c_proj.weight`] = randomTensor([4 * hidden, hidden], rand, dtype);
    t[`${l}mlp.c_proj.bias`] = randomTensor([hidden], rand, dtype);
  }
  t[`${p}ln_f.weight`] = randomTensor([hidden], rand, dtype);
  t[`${p}ln_f.bias`] = randomTensor([hidden], rand, dtype);
  writeWeights(dir, t, options);
  return config;
}

export const TINY_LLAMA = { vocabSize: 384, hidden: 16, layers: 2, intermediate: 24, positions: 64 } as const;

/** A 2-layer LLaMA (GQA by default: 4 query heads, 2 KV heads) with a SentencePiece-style tokenizer. */
export function writeTinyLlama(dir: string, options: TinyLlamaOptions = {}): Record<string, unknown> {
  mkdirSync(dir, { recursive: true });
  const { vocabSize, hidden, layers, intermediate, positions } = TINY_LLAMA;
  const heads = options.numHeads ?? 4;
  const kvHeads = options.numKvHeads ?? 2;
  const headDim = hidden / heads;
  const tie = options.tie ?? false;
  const tok = buildSentencePieceTokenizer({ bosInPostProcessor: options.bosInPostProcessor ?? false });
  if (tok.vocabSize > vocabSize) throw new Error(`tiny tokenizer has ${tok.vocabSize} tokens, more than ${vocabSize}`);
  const config = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: vocabSize,
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_hidden_layers: layers,
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    max_position_embeddings: positions,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    rope_scaling: null,
    hidden_act: 'silu',
    attention_bias: false,
    mlp_bias: false,
    tie_word_embeddings: tie,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
  writeJson(join(dir, 'config.json'), config);
  writeJson(join(dir, 'tokenizer.json'), tok.tokenizerJson);
  writeJson(join(dir, 'tokenizer_config.json'), {
    add_bos_token: true,
    add_eos_token: false,
    bos_token: { __type: 'AddedToken', content: '<s>', lstrip: false, normalized: false, rstrip: false, single_word: false },
    eos_token: '</s>',
    unk_token: '<unk>',
    clean_up_tokenization_spaces: false,
    chat_template: "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}",
  });
  writeJson(join(dir, 'generation_config.json'), { bos_token_id: 1, eos_token_id: 2, max_length: positions });

  const rand = seededRandom(options.seed ?? 3);
  const dtype = options.dtype ?? 'F32';
  const t: Record<string, SafetensorsWriteTensor> = {};
  t['model.embed_tokens.weight'] = randomTensor([vocabSize, hidden], rand, dtype);
  for (let i = 0; i < layers; i++) {
    const l = `model.layers.${i}.`;
    t[`${l}input_layernorm.weight`] = randomTensor([hidden], rand, dtype);
    t[`${l}self_attn.q_proj.weight`] = randomTensor([heads * headDim, hidden], rand, dtype);
    t[`${l}self_attn.k_proj.weight`] = randomTensor([kvHeads * headDim, hidden], rand, dtype);
    t[`${l}self_attn.v_proj.weight`] = randomTensor([kvHeads * headDim, hidden], rand, dtype);
    t[`${l}self_attn.o_proj.weight`] = randomTensor([hidden, heads * headDim], rand, dtype);
    t[`${l}post_attention_layernorm.weight`] = randomTensor([hidden], rand, dtype);
    t[`${l}mlp.gate_proj.weight`] = randomTensor([intermediate, hidden], rand, dtype);
    t[`${l}mlp.up_proj.weight`] = randomTensor([intermediate, hidden], rand, dtype);
    t[`${l}mlp.down_proj.weight`] = randomTensor([hidden, intermediate], rand, dtype);
  }
  t['model.norm.weight'] = randomTensor([hidden], rand, dtype);
  if (!tie) t['lm_head.weight'] = randomTensor([vocabSize, hidden], rand, dtype);
  writeWeights(dir, t, options);
  return config;
}
