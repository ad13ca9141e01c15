import { describe, expect, it } from 'vitest';
import { ModelLoadError, UnsupportedModelError } from '../errors.js';
import { detectArchitecture, parseGenerationConfig, parseModelConfig } from './hf-config.js';

// The shape of openai-community/gpt2's config.json.
const GPT2 = {
  activation_function: 'gelu_new',
  architectures: ['GPT2LMHeadModel'],
  attn_pdrop: 0.1,
  bos_token_id: 50256,
  embd_pdrop: 0.1,
  eos_token_id: 50256,
  initializer_range: 0.02,
  layer_norm_epsilon: 1e-5,
  model_type: 'gpt2',
  n_ctx: 1024,
  n_embd: 768,
  n_head: 12,
  n_layer: 12,
  n_positions: 1024,
  resid_pdrop: 0.1,
  vocab_size: 50257,
};

// The shape of TinyLlama-1.1B-Chat's config.json.
const LLAMA = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 5632,
  max_position_embeddings: 2048,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 22,
  num_key_value_heads: 4,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 10000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  use_cache: true,
  vocab_size: 32000,
};

function expectError(fn: () => unknown, type: typeof ModelLoadError | typeof UnsupportedModelError, pattern: RegExp): void {
  expect(fn).toThrow(type);
  expect(fn).toThrow(pattern);
}

describe('parseModelConfig: gpt2', () => {
  it('normalises GPT-2 keys', () => {
    expect(parseModelConfig(GPT2, 'auto')).toEqual({
      architecture: 'gpt2',
      vocabSize: 50257,
      hiddenSize: 768,
      numLayers: 12,
      numHeads: 12,
      numKvHeads: 12,
      headDim: 64,
      intermediateSize: 3072,
      maxPositionEmbeddings: 1024,
      normEps: 1e-5,
      ropeTheta: 0,
      hiddenAct: 'gelu_new',
      attentionBias: true,
      mlpBias: true,
      tieWordEmbeddings: true,
      bosTokenId: 50256,
      eosTokenIds: [50256],
      padTokenId: null,
      torchDtype: null,
    });
  });

  it('applies defaults and aliases', () => {
    const c = parseModelConfig(
      { model_type: 'gpt2', vocab_size: 100, n_embd: 8, n_layer: 1, n_head: 2, n_ctx: 16, n_inner: 20, activation_function: 'gelu_pytorch_tanh', dtype: 'float16' },
      'gpt2',
    );
    expect(c.maxPositionEmbeddings).toBe(16);
    expect(c.intermediateSize).toBe(20);
    expect(c.hiddenAct).toBe('gelu_new');
    expect(c.normEps).toBe(1e-5);
    expect(c.bosTokenId).toBeNull();
    expect(c.eosTokenIds).toEqual([]);
    expect(c.torchDtype).toBe('float16');
  });

  it('rejects GPT-2 variants it cannot run', () => {
    expectError(() => parseModelConfig({ ...GPT2, activation_function: 'relu' }), UnsupportedModelError, /activation_function 'relu'/);
    expectError(() => parseModelConfig({ ...GPT2, n_head: 7 }), UnsupportedModelError, /n_embd 768 is not divisible by n_head 7/);
    expectError(() => parseModelConfig({ ...GPT2, scale_attn_by_inverse_layer_idx: true }), UnsupportedModelError, /scale_attn_by_inverse_layer_idx/);
    expectError(() => parseModelConfig({ ...GPT2, tie_word_embeddings: false }), UnsupportedModelError, /untied lm_head/);
  });

  it('names missing or ill-typed keys', () => {
    const { n_embd: _drop, ...noEmbd } = GPT2;
    expectError(() => parseModelConfig(noEmbd), ModelLoadError, /config.json: 'n_embd' must be an integer >= 1; it is missing/);
    expectError(() => parseModelConfig({ ...GPT2, n_layer: '12' }), ModelLoadError, /'n_layer' must be an integer >= 1; got "12"/);
    expectError(() => parseModelConfig({ ...GPT2, n_head: 1.5 }), ModelLoadError, /'n_head'/);
    expectError(() => parseModelConfig({ ...GPT2, layer_norm_epsilon: -1 }), ModelLoadError, /'layer_norm_epsilon' must be a positive number/);
    expectError(() => parseModelConfig({ ...GPT2, eos_token_id: 'x' }), ModelLoadError, /'eos_token_id' must be a token id or a list/);
    const { n_positions: _p, n_ctx: _c, ...noPositions } = GPT2;
    expectError(() => parseModelConfig(noPositions), ModelLoadError, /'n_positions'/);
  });
});

describe('parseModelConfig: llama', () => {
  it('normalises LLaMA keys with grouped-query attention', () => {
    expect(parseModelConfig(LLAMA, 'llama')).toEqual({
      architecture: 'llama',
      vocabSize: 32000,
      hiddenSize: 2048,
      numLayers: 22,
      numHeads: 32,
      numKvHeads: 4,
      headDim: 64,
      intermediateSize: 5632,
      maxPositionEmbeddings: 2048,
      normEps: 1e-5,
      ropeTheta: 10000,
      hiddenAct: 'silu',
      attentionBias: false,
      mlpBias: false,
      tieWordEmbeddings: false,
      bosTokenId: 1,
      eosTokenIds: [2],
      padTokenId: null,
      torchDtype: 'bfloat16',
    });
  });

  it('applies transformers defaults and reads the optional forms', () => {
    const minimal = {
      model_type: 'llama',
      vocab_size: 64,
      hidden_size: 16,
      num_hidden_layers: 2,
      num_attention_heads: 4,
      intermediate_size: 32,
      max_position_embeddings: 128,
    };
    const c = parseModelConfig(minimal);
    expect(c.numKvHeads).toBe(4);
    expect(c.headDim).toBe(4);
    expect(c.ropeTheta).toBe(10000);
    expect(c.normEps).toBe(1e-6);
    expect(c.tieWordEmbeddings).toBe(false);
    expect(c.attentionBias).toBe(false);
    expect(c.mlpBias).toBe(false);

    const mqa = parseModelConfig({ ...minimal, num_key_value_heads: 1, head_dim: 8, tie_word_embeddings: true, attention_bias: true, mlp_bias: true, eos_token_id: [2, 7, 2], pad_token_id: 0 });
    expect(mqa).toMatchObject({ numKvHeads: 1, headDim: 8, tieWordEmbeddings: true, attentionBias: true, mlpBias: true, eosTokenIds: [2, 7], padTokenId: 0 });

    // transformers 5 nests the RoPE base.
    expect(parseModelConfig({ ...minimal, rope_parameters: { rope_type: 'default', rope_theta: 500000 } }).ropeTheta).toBe(500000);
    expect(parseModelConfig({ ...minimal, rope_theta: 1e6 }).ropeTheta).toBe(1e6);
  });

  it('rejects LLaMA variants it cannot run', () => {
    expectError(() => parseModelConfig({ ...LLAMA, rope_scaling: { type: 'linear', factor: 2 } }), UnsupportedModelError, /rope_scaling .* is not supported/);
    expectError(() => parseModelConfig({ ...LLAMA, rope_scaling: { rope_type: 'llama3', factor: 8 } }), UnsupportedModelError, /rope_scaling/);
    expectError(() => parseModelConfig({ ...LLAMA, rope_parameters: { rope_type: 'yarn', factor: 4 } }), UnsupportedModelError, /rope_parameters/);
    expectError(() => parseModelConfig({ ...LLAMA, num_key_value_heads: 5 }), UnsupportedModelError, /num_attention_heads 32 is not divisible by num_key_value_heads 5/);
    expectError(() => parseModelConfig({ ...LLAMA, num_attention_heads: 24 }), UnsupportedModelError, /hidden_size 2048 is not divisible by num_attention_heads 24/);
    expectError(() => parseModelConfig({ ...LLAMA, hidden_act: 'gelu' }), UnsupportedModelError, /hidden_act 'gelu'/);
  });

  it('names missing or ill-typed keys', () => {
    const { hidden_size: _h, ...noHidden } = LLAMA;
    expectError(() => parseModelConfig(noHidden), ModelLoadError, /'hidden_size' must be an integer >= 1; it is missing/);
    expectError(() => parseModelConfig({ ...LLAMA, intermediate_size: null }), ModelLoadError, /'intermediate_size'/);
    expectError(() => parseModelConfig({ ...LLAMA, tie_word_embeddings: 'no' }), ModelLoadError, /'tie_word_embeddings' must be true or false/);
    expectError(() => parseModelConfig({ ...LLAMA, rope_theta: 'big' }), ModelLoadError, /'rope_theta' must be a positive number/);
    expectError(() => parseModelConfig({ ...LLAMA, eos_token_id: [2, -1] }), ModelLoadError, /'eos_token_id'/);
  });
});

describe('detectArchitecture', () => {
  it('reads model_type or architectures', () => {
    expect(detectArchitecture({ model_type: 'llama' })).toBe('llama');
    expect(detectArchitecture({ architectures: ['GPT2LMHeadModel'] })).toBe('gpt2');
    expect(detectArchitecture({ architectures: ['Other', 'LlamaForCausalLM'] })).toBe('llama');
    expect(detectArchitecture({}, 'gpt2')).toBe('gpt2');
  });

  it('rejects unknown, unsupported and contradicting types', () => {
    expectError(() => detectArchitecture({ model_type: 'mistral' }), UnsupportedModelError, /model_type 'mistral' is not supported/);
    expectError(() => detectArchitecture({ architectures: ['LlamaForSequenceClassification'] }), UnsupportedModelError, /architectures \["LlamaForSequenceClassification"\] are not supported/);
    expectError(() => parseModelConfig(LLAMA, 'gpt2'), UnsupportedModelError, /modelType 'gpt2' was requested, but config.json describes a llama model/);
    expectError(() => parseModelConfig(GPT2, 'llama'), UnsupportedModelError, /describes a gpt2 model/);
    expectError(() => detectArchitecture({ model_type: 'llama' }, 'bert' as 'gpt2'), UnsupportedModelError, /modelType 'bert' is not supported/);
    expectError(() => detectArchitecture({ model_type: 'llama', architectures: ['GPT2LMHeadModel'] }), ModelLoadError, /inconsistent/);
    expectError(() => detectArchitecture({}), ModelLoadError, /names neither model_type nor architectures/);
    expectError(() => detectArchitecture({ model_type: 3 }), ModelLoadError, /'model_type' must be a string/);
    expectError(() => detectArchitecture({ architectures: 'LlamaForCausalLM' }), ModelLoadError, /'architectures' must be a list/);
  });
});

describe('parseGenerationConfig', () => {
  it('maps generation_config.json keys', () => {
    expect(
      parseGenerationConfig({ do_sample: true, temperature: 0.6, top_p: 0.9, top_k: 40, max_new_tokens: 64, repetition_penalty: 1.1, bos_token_id: 1, eos_token_id: [2, 32000], max_length: 2048 }),
    ).toEqual({ temperature: 0.6, topP: 0.9, topK: 40, maxNewTokens: 64, repetitionPenalty: 1.1, bosTokenId: 1, eosTokenIds: [2, 32000] });
    expect(parseGenerationConfig({ bos_token_id: 50256, eos_token_id: 50256, transformers_version: '4.46.0' })).toEqual({ bosTokenId: 50256, eosTokenIds: [50256] });
    expect(parseGenerationConfig({})).toEqual({});
  });

  it('treats do_sample false as greedy', () => {
    expect(parseGenerationConfig({ do_sample: false, temperature: 0.7 })).toEqual({ temperature: 0 });
  });

  it('names ill-typed keys', () => {
    expectError(() => parseGenerationConfig({ top_p: 2 }), ModelLoadError, /generation_config.json: 'top_p' must be a number in \(0, 1\]; got 2/);
    expectError(() => parseGenerationConfig({ temperature: 'hot' }), ModelLoadError, /'temperature'/);
    expectError(() => parseGenerationConfig({ top_k: -1 }), ModelLoadError, /'top_k' must be an integer >= 0/);
    expectError(() => parseGenerationConfig({ do_sample: 'yes' }), ModelLoadError, /'do_sample'/);
  });
});
