import { mulberry32 } from '@tinyserve/core';
import type { LoadedModel, ModelConfig, StreamDecoder, TensorData, Tokenizer } from '@tinyserve/core';

/** Deterministic PRNG (mulberry32) so that fixtures are identical on every run. */
export function makeRng(seed: number): () => number {
  return mulberry32(seed);
}

/** Standard normal draws (Box-Muller). */
export function makeNormal(seed: number): () => number {
  const rng = makeRng(seed);
  return () => {
    const u = Math.max(rng(), 1e-12);
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng());
  };
}

const BASE: Omit<ModelConfig, 'architecture' | 'hiddenAct' | 'ropeTheta' | 'attentionBias' | 'mlpBias' | 'tieWordEmbeddings'> = {
  vocabSize: 97,
  hiddenSize: 32,
  numLayers: 2,
  numHeads: 4,
  numKvHeads: 4,
  headDim: 8,
  intermediateSize: 64,
  maxPositionEmbeddings: 128,
  normEps: 1e-5,
  bosTokenId: 1,
  eosTokenIds: [2],
  padTokenId: null,
  torchDtype: 'float32',
};

/** A small GPT-2 configuration; override any field. */
export function gpt2Config(overrides: Partial<ModelConfig> = {}): ModelConfig {
  return {
    ...BASE,
    architecture: 'gpt2',
    hiddenAct: 'gelu_new',
    ropeTheta: 0,
    attentionBias: true,
    mlpBias: true,
    tieWordEmbeddings: true,
    intermediateSize: 4 * (overrides.hiddenSize ?? BASE.hiddenSize),
    ...overrides,
  };
}

/** A small LLaMA configuration (GQA 4:2 by default); override any field. */
export function llamaConfig(overrides: Partial<ModelConfig> = {}): ModelConfig {
  return {
    ...BASE,
    architecture: 'llama',
    numKvHeads: 2,
    hiddenAct: 'silu',
    ropeTheta: 10000,
    attentionBias: false,
    mlpBias: false,
    tieWordEmbeddings: false,
    normEps: 1e-6,
    ...overrides,
  };
}

/** Ids print as `<id>`; enough for a LoadedModel whose text nobody reads. */
class IdTokenizer implements Tokenizer {
  readonly bosTokenId: number | null;
  readonly eosTokenIds: readonly number[];
  constructor(
    readonly vocabSize: number,
    config: ModelConfig,
  ) {
    this.bosTokenId = config.bosTokenId;
    this.eosTokenIds = config.eosTokenIds;
  }
  encode(text: string): number[] {
    return Array.from(text, (ch) => (ch.codePointAt(0) ?? 0) % this.vocabSize);
  }
  decode(ids: ArrayLike<number>): string {
    return Array.from(ids, (id) => this.idToToken(id) ?? '').join('');
  }
  createStreamDecoder(): StreamDecoder {
    return { push: (id) => this.idToToken(id) ?? '', flush: () => '' };
  }
  idToToken(id: number): string | null {
    return Number.isInteger(id) && id >= 0 && id < this.vocabSize ? `<${id}>` : null;
  }
}

/** HF tensors of a model with random weights: std `1/sqrt(fanIn)` projections, norms near 1. */
export function randomWeights(config: ModelConfig, seed = 1): Map<string, TensorData> {
  const normal = makeNormal(seed);
  const weights = new Map<string, TensorData>();
  const put = (name: string, shape: number[], std: number, mean = 0) => {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = mean + std * normal();
    weights.set(name, { dtype: 'F32', shape, data });
  };
  const H = config.hiddenSize;
  const I = config.intermediateSize;
  const V = config.vocabSize;
  if (config.architecture === 'gpt2') {
    put('transformer.wte.weight', [V, H], 0.5);
    put('transformer.wpe.weight', [config.maxPositionEmbeddings, H], 0.2);
    for (let l = 0; l < config.numLayers; l++) {
      const p = `transformer.h.${l}.`;
      put(`${p}ln_1.weight`, [H], 0.1, 1);
      put(`${p}ln_1.bias`, [H], 0.1);
      put(`${p}attn.c_attn.weight`, [H, 3 * H], 1.5 / Math.sqrt(H));
      put(`${p}attn.c_attn.bias`, [3 * H], 0.1);
      put(`${p}attn.c_proj.weight`, [H, H], 1 / Math.sqrt(H));
      put(`${p}attn.c_proj.bias`, [H], 0.1);
      put(`${p}ln_2.weight`, [H], 0.1, 1);
      put(`${p}ln_2.bias`, [H], 0.1);
      put(`${p}mlp.c_fc.weight`, [H, I], 1 / Math.sqrt(H));
      put(`${p}mlp.c_fc.bias`, [I], 0.1);
      put(`${p}mlp.c_proj.weight`, [I, H], 1 / Math.sqrt(I));
      put(`${p}mlp.c_proj.bias`, [H], 0.1);
    }
    put('transformer.ln_f.weight', [H], 0.1, 1);
    put('transformer.ln_f.bias', [H], 0.1);
    return weights;
  }
  const qDim = config.numHeads * config.headDim;
  const kvDim = config.numKvHeads * config.headDim;
  put('model.embed_tokens.weight', [V, H], 0.5);
  for (let l = 0; l < config.numLayers; l++) {
    const p = `model.layers.${l}.`;
    put(`${p}input_layernorm.weight`, [H], 0.1, 1);
    put(`${p}self_attn.q_proj.weight`, [qDim, H], 1.5 / Math.sqrt(H));
    put(`${p}self_attn.k_proj.weight`, [kvDim, H], 1.5 / Math.sqrt(H));
    put(`${p}self_attn.v_proj.weight`, [kvDim, H], 1 / Math.sqrt(H));
    put(`${p}self_attn.o_proj.weight`, [H, qDim], 1 / Math.sqrt(qDim));
    if (config.attentionBias) {
      put(`${p}self_attn.q_proj.bias`, [qDim], 0.1);
      put(`${p}self_attn.k_proj.bias`, [kvDim], 0.1);
      put(`${p}self_attn.v_proj.bias`, [kvDim], 0.1);
      put(`${p}self_attn.o_proj.bias`, [H], 0.1);
    }
    put(`${p}post_attention_layernorm.weight`, [H], 0.1, 1);
    put(`${p}mlp.gate_proj.weight`, [I, H], 1 / Math.sqrt(H));
    put(`${p}mlp.up_proj.weight`, [I, H], 1 / Math.sqrt(H));
    put(`${p}mlp.down_proj.weight`, [H, I], 1 / Math.sqrt(I));
    if (config.mlpBias) {
      put(`${p}mlp.gate_proj.bias`, [I], 0.1);
      put(`${p}mlp.up_proj.bias`, [I], 0.1);
      put(`${p}mlp.down_proj.bias`, [H], 0.1);
    }
  }
  put('model.norm.weight', [H], 0.1, 1);
  if (!config.tieWordEmbeddings) put('lm_head.weight', [V, H], 1 / Math.sqrt(H));
  return weights;
}

/** A LoadedModel with random weights of the given configuration. */
export function createRandomModel(config: ModelConfig, seed = 1): LoadedModel {
  return {
    dir: `/random/${config.architecture}-${seed}`,
    name: `random-${config.architecture}-${seed}`,
    config,
    rawConfig: {},
    weights: randomWeights(config, seed),
    tokenizer: new IdTokenizer(config.vocabSize, config),
    generationDefaults: {},
    chatTemplate: null,
    tokenizerConfig: {},
  };
}
