import { ModelLoadError, UnsupportedModelError } from '../errors.js';
import type { ModelType } from '../config.js';
import type { Architecture, GenerationDefaults, ModelConfig } from '../model-types.js';

/** `model_type` values of config.json that TinyServe runs. */
const MODEL_TYPES: Record<string, Architecture> = { gpt2: 'gpt2', llama: 'llama' };

/** `architectures` classes of config.json that TinyServe runs (causal LM heads only). */
const ARCHITECTURE_CLASSES: Record<string, Architecture> = {
  GPT2LMHeadModel: 'gpt2',
  LlamaForCausalLM: 'llama',
};

/** GPT-2 activations that are all the tanh approximation of GELU (one executor kernel). */
const GELU_TANH_NAMES = new Set(['gelu_new', 'gelu_pytorch_tanh', 'gelu_fast']);

type Raw = Record<string, unknown>;

class KeyReader {
  constructor(
    private readonly raw: Raw,
    private readonly file: string,
  ) {}

  private fail(key: string, expected: string): never {
    const value = this.raw[key];
    const got = value === undefined ? 'it is missing' : `got ${JSON.stringify(value)}`;
    throw new ModelLoadError(`${this.file}: '${key}' must be ${expected}; ${got}`);
  }

  private present(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  /** A required integer >= min. */
  int(key: string, min = 1): number {
    const v = this.raw[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) this.fail(key, `an integer >= ${min}`);
    return v;
  }

  optInt(key: string, min = 1): number | undefined {
    return this.present(key) ? this.int(key, min) : undefined;
  }

  /** A finite number > 0 (epsilons, rope bases). */
  positive(key: string): number {
    const v = this.raw[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) this.fail(key, 'a positive number');
    return v;
  }

  optPositive(key: string): number | undefined {
    return this.present(key) ? this.positive(key) : undefined;
  }

  optNumber(key: string, check: (v: number) => boolean, expected: string): number | undefined {
    if (!this.present(key)) return undefined;
    const v = this.raw[key];
    if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) this.fail(key, expected);
    return v;
  }

  optBool(key: string): boolean | undefined {
    if (!this.present(key)) return undefined;
    const v = this.raw[key];
    if (typeof v !== 'boolean') this.fail(key, 'true or false');
    return v;
  }

  optString(key: string): string | undefined {
    if (!this.present(key)) return undefined;
    const v = this.raw[key];
    if (typeof v !== 'string') this.fail(key, 'a string');
    return v;
  }

  /** A token id or a list of them (`eos_token_id` may be either). */
  tokenIds(key: string): number[] {
    if (!this.present(key)) return [];
    const v = this.raw[key];
    const ids = Array.isArray(v) ? v : [v];
    if (!ids.every((id) => typeof id === 'number' && Number.isSafeInteger(id) && id >= 0)) {
      this.fail(key, 'a token id or a list of token ids');
    }
    return [...new Set(ids as number[])];
  }

  tokenId(key: string): number | null {
    return this.optInt(key, 0) ?? null;
  }
}

function describeConfig(raw: Raw): string {
  const parts: string[] = [];
  if (raw.model_type !== undefined) parts.push(`model_type ${JSON.stringify(raw.model_type)}`);
  if (raw.architectures !== undefined) parts.push(`architectures ${JSON.stringify(raw.architectures)}`);
  return parts.join(', ');
}

/**
 * The architecture config.json describes, checked against the requested `modelType`.
 * `model_type` decides where present; `architectures` must then agree with it.
 */
export function detectArchitecture(raw: Raw, modelType: ModelType = 'auto'): Architecture {
  if (modelType !== 'auto' && !Object.hasOwn(MODEL_TYPES, modelType)) {
    throw new UnsupportedModelError(`modelType '${String(modelType)}' is not supported (use 'auto', 'gpt2' or 'llama')`);
  }
  let fromType: Architecture | undefined;
  if (raw.model_type !== undefined && raw.model_type !== null) {
    if (typeof raw.model_type !== 'string') {
      throw new ModelLoadError(`config.json: 'model_type' must be a string; got ${JSON.stringify(raw.model_type)}`);
    }
    if (!Object.hasOwn(MODEL_TYPES, raw.model_type)) {
      throw new UnsupportedModelError(`config.json: model_type '${raw.model_type}' is not supported (TinyServe runs gpt2 and llama)`);
    }
    fromType = MODEL_TYPES[raw.model_type];
  }
  let fromClass: Architecture | undefined;
  if (raw.architectures !== undefined && raw.architectures !== null) {
    const list = raw.architectures;
    if (!Array.isArray(list) || !list.every((a) => typeof a === 'string')) {
      throw new ModelLoadError(`config.json: 'architectures' must be a list of class names; got ${JSON.stringify(list)}`);
    }
    if (list.length > 0) {
      const known = list.filter((a) => Object.hasOwn(ARCHITECTURE_CLASSES, a));
      if (known.length === 0) {
        throw new UnsupportedModelError(
          `config.json: architectures ${JSON.stringify(list)} are not supported (TinyServe runs ${Object.keys(ARCHITECTURE_CLASSES).join(' and ')})`,
        );
      }
      fromClass = ARCHITECTURE_CLASSES[known[0]];
    }
  }
  if (fromType && fromClass && fromType !== fromClass) {
    throw new ModelLoadError(`config.json is inconsistent: ${describeConfig(raw)}`);
  }
  const detected = fromType ?? fromClass;
  if (detected === undefined) {
    if (modelType === 'auto') {
      throw new ModelLoadError("config.json names neither model_type nor architectures; pass modelType 'gpt2' or 'llama'");
    }
    return modelType;
  }
  if (modelType !== 'auto' && modelType !== detected) {
    throw new UnsupportedModelError(
      `modelType '${modelType}' was requested, but config.json describes a ${detected} model (${describeConfig(raw)})`,
    );
  }
  return detected;
}

function torchDtype(raw: Raw): string | null {
  // transformers 5 writes `dtype`; earlier versions `torch_dtype`.
  const v = raw.torch_dtype ?? raw.dtype;
  return typeof v === 'string' ? v : null;
}

function parseGpt2(raw: Raw): ModelConfig {
  const r = new KeyReader(raw, 'config.json');
  const hiddenSize = r.int('n_embd');
  const numHeads = r.int('n_head');
  const maxPositionEmbeddings = raw.n_positions === undefined && raw.n_ctx !== undefined ? r.int('n_ctx') : r.int('n_positions');
  if (hiddenSize % numHeads !== 0) {
    throw new UnsupportedModelError(`config.json: n_embd ${hiddenSize} is not divisible by n_head ${numHeads}`);
  }
  const activation = r.optString('activation_function') ?? 'gelu_new';
  if (!GELU_TANH_NAMES.has(activation)) {
    throw new UnsupportedModelError(
      `config.json: activation_function '${activation}' is not supported for gpt2 (supported: ${[...GELU_TANH_NAMES].join(', ')})`,
    );
  }
  // These change the attention math of GPT2Attention; refuse rather than compute something else.
  if (r.optBool('scale_attn_weights') === false) {
    throw new UnsupportedModelError('config.json: scale_attn_weights false is not supported');
  }
  if (r.optBool('scale_attn_by_inverse_layer_idx') === true) {
    throw new UnsupportedModelError('config.json: scale_attn_by_inverse_layer_idx true is not supported');
  }
  if (r.optBool('add_cross_attention') === true) {
    throw new UnsupportedModelError('config.json: add_cross_attention true is not supported');
  }
  if (r.optBool('tie_word_embeddings') === false) {
    throw new UnsupportedModelError('config.json: GPT-2 with an untied lm_head (tie_word_embeddings false) is not supported');
  }
  return {
    architecture: 'gpt2',
    vocabSize: r.int('vocab_size'),
    hiddenSize,
    numLayers: r.int('n_layer'),
    numHeads,
    numKvHeads: numHeads,
    headDim: hiddenSize / numHeads,
    intermediateSize: r.optInt('n_inner') ?? 4 * hiddenSize,
    maxPositionEmbeddings,
    normEps: r.optPositive('layer_norm_epsilon') ?? 1e-5,
    ropeTheta: 0,
    hiddenAct: 'gelu_new',
    attentionBias: true,
    mlpBias: true,
    tieWordEmbeddings: true,
    bosTokenId: r.tokenId('bos_token_id'),
    eosTokenIds: r.tokenIds('eos_token_id'),
    padTokenId: r.tokenId('pad_token_id'),
    torchDtype: torchDtype(raw),
  };
}

function isDefaultRope(value: unknown): boolean {
  if (value === undefined || value === null) return true;
  if (typeof value !== 'object' || Array.isArray(value)) return false;
  const v = value as Raw;
  const type = v.rope_type ?? v.type;
  // transformers 5 keeps the base in `rope_parameters` with rope_type 'default'.
  return type === 'default' && Object.keys(v).every((k) => k === 'rope_type' || k === 'type' || k === 'rope_theta');
}

function parseLlama(raw: Raw): ModelConfig {
  const r = new KeyReader(raw, 'config.json');
  const hiddenSize = r.int('hidden_size');
  const numHeads = r.int('num_attention_heads');
  const numKvHeads = r.optInt('num_key_value_heads') ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new UnsupportedModelError(
      `config.json: num_attention_heads ${numHeads} is not divisible by num_key_value_heads ${numKvHeads}`,
    );
  }
  let headDim = r.optInt('head_dim');
  if (headDim === undefined) {
    if (hiddenSize % numHeads !== 0) {
      throw new UnsupportedModelError(`config.json: hidden_size ${hiddenSize} is not divisible by num_attention_heads ${numHeads}`);
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) throw new UnsupportedModelError(`config.json: head_dim ${headDim} must be even for RoPE`);
  if (!isDefaultRope(raw.rope_scaling)) {
    throw new UnsupportedModelError(`config.json: rope_scaling ${JSON.stringify(raw.rope_scaling)} is not supported (only null)`);
  }
  let ropeTheta = r.optPositive('rope_theta');
  if (raw.rope_parameters !== undefined && raw.rope_parameters !== null) {
    if (!isDefaultRope(raw.rope_parameters)) {
      throw new UnsupportedModelError(
        `config.json: rope_parameters ${JSON.stringify(raw.rope_parameters)} is not supported (only rope_type 'default')`,
      );
    }
    // Where both forms are present, transformers 5 reads rope_parameters.
    if ((raw.rope_parameters as Raw).rope_theta !== undefined) {
      ropeTheta = new KeyReader(raw.rope_parameters as Raw, 'config.json rope_parameters').positive('rope_theta');
    }
  }
  const hiddenAct = r.optString('hidden_act') ?? 'silu';
  if (hiddenAct !== 'silu') {
    throw new UnsupportedModelError(`config.json: hidden_act '${hiddenAct}' is not supported for llama (only silu)`);
  }
  return {
    architecture: 'llama',
    vocabSize: r.int('vocab_size'),
    hiddenSize,
    numLayers: r.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    intermediateSize: r.int('intermediate_size'),
    maxPositionEmbeddings: r.int('max_position_embeddings'),
    normEps: r.optPositive('rms_norm_eps') ?? 1e-6,
    ropeTheta: ropeTheta ?? 10000,
    hiddenAct,
    attentionBias: r.optBool('attention_bias') ?? false,
    mlpBias: r.optBool('mlp_bias') ?? false,
    tieWordEmbeddings: r.optBool('tie_word_embeddings') ?? false,
    bosTokenId: r.tokenId('bos_token_id'),
    eosTokenIds: r.tokenIds('eos_token_id'),
    padTokenId: r.tokenId('pad_token_id'),
    torchDtype: torchDtype(raw),
  };
}

/**
 * Normalises a Hugging Face config.json into {@link ModelConfig}. Optional keys take the
 * transformers class defaults; the size keys are required. Throws UnsupportedModelError for
 * models TinyServe cannot run, ModelLoadError naming the key for missing or ill-typed values.
 */
export function parseModelConfig(raw: Record<string, unknown>, modelType: ModelType = 'auto'): ModelConfig {
  const architecture = detectArchitecture(raw, modelType);
  return architecture === 'gpt2' ? parseGpt2(raw) : parseLlama(raw);
}

/**
 * Decoding defaults from generation_config.json. `do_sample: false` (transformers' greedy
 * mode) maps to temperature 0, since transformers then ignores the sampling knobs.
 */
export function parseGenerationConfig(raw: Record<string, unknown>): GenerationDefaults {
  const r = new KeyReader(raw, 'generation_config.json');
  const out: GenerationDefaults = {};
  const temperature = r.optNumber('temperature', (v) => v >= 0, 'a number >= 0');
  const topP = r.optNumber('top_p', (v) => v > 0 && v <= 1, 'a number in (0, 1]');
  const topK = r.optInt('top_k', 0);
  const maxNewTokens = r.optInt('max_new_tokens', 1);
  const repetitionPenalty = r.optNumber('repetition_penalty', (v) => v > 0, 'a positive number');
  const bos = r.optInt('bos_token_id', 0);
  const doSample = r.optBool('do_sample');
  const eos = r.tokenIds('eos_token_id');
  if (doSample === false) out.temperature = 0;
  else if (temperature !== undefined) out.temperature = temperature;
  if (topP !== undefined) out.topP = topP;
  if (topK !== undefined) out.topK = topK;
  if (maxNewTokens !== undefined) out.maxNewTokens = maxNewTokens;
  if (repetitionPenalty !== undefined) out.repetitionPenalty = repetitionPenalty;
  if (bos !== undefined) out.bosTokenId = bos;
  if (eos.length > 0) out.eosTokenIds = eos;
  return out;
}
