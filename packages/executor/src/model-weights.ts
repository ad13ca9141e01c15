import { ModelLoadError, UnsupportedModelError } from '@tinyserve/core';
import type { LoadedModel, ModelConfig, TensorData } from '@tinyserve/core';

/** A normalisation: RMSNorm (LLaMA, no bias) or LayerNorm (GPT-2). */
export interface NormWeights {
  kind: 'rms' | 'layer';
  weight: Float32Array;
  bias: Float32Array | null;
  eps: number;
}

/** A projection stored `[in, out]` (row-major), the layout tfjs's fast matMul path wants. */
export interface LinearWeights {
  inDim: number;
  outDim: number;
  weight: Float32Array;
  bias: Float32Array | null;
}

export interface LayerWeights {
  norm1: NormWeights;
  /** Fused [q | k | v] projection. */
  qkv: LinearWeights;
  o: LinearWeights;
  norm2: NormWeights;
  /** GPT-2: c_fc. LLaMA: fused [gate | up]. */
  up: LinearWeights;
  down: LinearWeights;
}

/** A model's weights rearranged once for the graph: fused, pre-transposed. */
export interface PreparedWeights {
  /** Token embeddings, [vocab, hidden]; the graph gathers rows in JS. */
  embed: Float32Array;
  /** Learned position embeddings (GPT-2), [maxPositions, hidden], else null. */
  positions: Float32Array | null;
  layers: LayerWeights[];
  finalNorm: NormWeights;
  /** [hidden, vocab]. */
  lmHead: LinearWeights;
}

/** Checks that the executors can run this configuration. */
export function checkModelConfig(config: ModelConfig): void {
  const { architecture, numHeads, numKvHeads, headDim, hiddenAct } = config;
  if (architecture !== 'gpt2' && architecture !== 'llama') {
    throw new UnsupportedModelError(`architecture '${String(architecture)}' is not supported (supported: gpt2, llama)`);
  }
  for (const field of ['vocabSize', 'hiddenSize', 'numLayers', 'numHeads', 'numKvHeads', 'headDim', 'intermediateSize'] as const) {
    const v = config[field];
    if (!Number.isInteger(v) || v <= 0) throw new ModelLoadError(`model config ${field} must be a positive integer, got ${v}`);
  }
  if (numHeads % numKvHeads !== 0) {
    throw new ModelLoadError(`numHeads (${numHeads}) must be a multiple of numKvHeads (${numKvHeads})`);
  }
  if (architecture === 'gpt2') {
    if (numKvHeads !== numHeads) throw new ModelLoadError(`gpt2 needs numKvHeads = numHeads, got ${numKvHeads} and ${numHeads}`);
    if (numHeads * headDim !== config.hiddenSize) {
      throw new ModelLoadError(`gpt2 needs numHeads * headDim = hiddenSize, got ${numHeads} * ${headDim} != ${config.hiddenSize}`);
    }
    if (!['gelu_new', 'gelu_pytorch_tanh'].includes(hiddenAct)) {
      throw new UnsupportedModelError(`gpt2 activation '${hiddenAct}' is not supported (supported: gelu_new, gelu_pytorch_tanh)`);
    }
    if (!Number.isInteger(config.maxPositionEmbeddings) || config.maxPositionEmbeddings <= 0) {
      throw new ModelLoadError(`gpt2 needs a positive maxPositionEmbeddings, got ${config.maxPositionEmbeddings}`);
    }
  } else {
    if (headDim % 2 !== 0) throw new ModelLoadError(`llama needs an even headDim for RoPE, got ${headDim}`);
    if (!(config.ropeTheta > 0)) throw new ModelLoadError(`llama needs ropeTheta > 0, got ${config.ropeTheta}`);
    if (hiddenAct !== 'silu') {
      throw new UnsupportedModelError(`llama activation '${hiddenAct}' is not supported (supported: silu)`);
    }
  }
}

class WeightReader {
  constructor(
    private readonly weights: Map<string, TensorData>,
    private readonly prefixes: string[],
  ) {}

  has(name: string): boolean {
    return this.prefixes.some((p) => this.weights.has(p + name));
  }

  get(name: string, shape: number[]): Float32Array {
    for (const prefix of this.prefixes) {
      const t = this.weights.get(prefix + name);
      if (t === undefined) continue;
      const same = t.shape.length === shape.length && t.shape.every((d, i) => d === shape[i]);
      if (!same) {
        throw new ModelLoadError(`tensor '${prefix + name}' has shape [${t.shape}], expected [${shape}]`);
      }
      if (t.data.length !== shape.reduce((a, b) => a * b, 1)) {
        throw new ModelLoadError(`tensor '${prefix + name}' holds ${t.data.length} values for shape [${shape}]`);
      }
      return t.data;
    }
    throw new ModelLoadError(`missing tensor '${this.prefixes[0] + name}'`);
  }

  optional(name: string, shape: number[]): Float32Array | null {
    return this.has(name) ? this.get(name, shape) : null;
  }
}

/** `[out, in]` matrices (nn.Linear) side by side as one `[in, sum(out)]` matrix. */
function fuseLinear(parts: { weight: Float32Array; outDim: number; bias: Float32Array | null }[], inDim: number): LinearWeights {
  const outDim = parts.reduce((a, p) => a + p.outDim, 0);
  const weight = new Float32Array(inDim * outDim);
  const anyBias = parts.some((p) => p.bias !== null);
  const bias = anyBias ? new Float32Array(outDim) : null;
  let col = 0;
  for (const part of parts) {
    const w = part.weight;
    for (let o = 0; o < part.outDim; o++) {
      const src = o * inDim;
      for (let i = 0; i < inDim; i++) weight[i * outDim + col + o] = w[src + i];
    }
    if (bias && part.bias) bias.set(part.bias, col);
    col += part.outDim;
  }
  return { inDim, outDim, weight, bias };
}

function prepareLlama(model: LoadedModel): PreparedWeights {
  const c = model.config;
  const r = new WeightReader(model.weights, ['']);
  const H = c.hiddenSize;
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const I = c.intermediateSize;
  const rms = (name: string): NormWeights => ({ kind: 'rms', weight: r.get(name, [H]), bias: null, eps: c.normEps });
  const attnBias = (name: string, dim: number) => (c.attentionBias ? r.get(name, [dim]) : r.optional(name, [dim]));
  const mlpBias = (name: string, dim: number) => (c.mlpBias ? r.get(name, [dim]) : r.optional(name, [dim]));

  const embed = r.get('model.embed_tokens.weight', [c.vocabSize, H]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    layers.push({
      norm1: rms(`${p}input_layernorm.weight`),
      qkv: fuseLinear(
        [
          { weight: r.get(`${p}self_attn.q_proj.weight`, [qDim, H]), outDim: qDim, bias: attnBias(`${p}self_attn.q_proj.bias`, qDim) },
          { weight: r.get(`${p}self_attn.k_proj.weight`, [kvDim, H]), outDim: kvDim, bias: attnBias(`${p}self_attn.k_proj.bias`, kvDim) },
          { weight: r.get(`${p}self_attn.v_proj.weight`, [kvDim, H]), outDim: kvDim, bias: attnBias(`${p}self_attn.v_proj.bias`, kvDim) },
        ],
        H,
      ),
      o: fuseLinear(
        [{ weight: r.get(`${p}self_attn.o_proj.weight`, [H, qDim]), outDim: H, bias: attnBias(`${p}self_attn.o_proj.bias`, H) }],
        qDim,
      ),
      norm2: rms(`${p}post_attention_layernorm.weight`),
      up: fuseLinear(
        [
          { weight: r.get(`${p}mlp.gate_proj.weight`, [I, H]), outDim: I, bias: mlpBias(`${p}mlp.gate_proj.bias`, I) },
          { weight: r.get(`${p}mlp.up_proj.weight`, [I, H]), outDim: I, bias: mlpBias(`${p}mlp.up_proj.bias`, I) },
        ],
        H,
      ),
      down: fuseLinear([{ weight: r.get(`${p}mlp.down_proj.weight`, [H, I]), outDim: H, bias: mlpBias(`${p}mlp.down_proj.bias`, H) }], I),
    });
  }
  // Some checkpoints store lm_head even when tied; tie_word_embeddings decides.
  const head = c.tieWordEmbeddings ? embed : r.get('lm_head.weight', [c.vocabSize, H]);
  return {
    embed,
    positions: null,
    layers,
    finalNorm: rms('model.norm.weight'),
    lmHead: fuseLinear([{ weight: head, outDim: c.vocabSize, bias: null }], H),
  };
}

function prepareGpt2(model: LoadedModel): PreparedWeights {
  const c = model.config;
  // GPT2LMHeadModel prefixes the body with `transformer.`; GPT2Model checkpoints do not.
  const r = new WeightReader(model.weights, ['transformer.', '']);
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const ln = (name: string): NormWeights => ({
    kind: 'layer',
    weight: r.get(`${name}.weight`, [H]),
    bias: r.get(`${name}.bias`, [H]),
    eps: c.normEps,
  });
  // Conv1D stores [in, out] already.
  const conv = (name: string, inDim: number, outDim: number): LinearWeights => ({
    inDim,
    outDim,
    weight: r.get(`${name}.weight`, [inDim, outDim]),
    bias: r.get(`${name}.bias`, [outDim]),
  });
  const embed = r.get('wte.weight', [c.vocabSize, H]);
  const layers: LayerWeights[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `h.${l}.`;
    layers.push({
      norm1: ln(`${p}ln_1`),
      qkv: conv(`${p}attn.c_attn`, H, 3 * H),
      o: conv(`${p}attn.c_proj`, H, H),
      norm2: ln(`${p}ln_2`),
      up: conv(`${p}mlp.c_fc`, H, I),
      down: conv(`${p}mlp.c_proj`, I, H),
    });
  }
  // GPT2LMHeadModel ties lm_head to wte; honour an explicit untied head where one is stored.
  const untied = !c.tieWordEmbeddings && model.weights.has('lm_head.weight');
  const head = untied ? new WeightReader(model.weights, ['']).get('lm_head.weight', [c.vocabSize, H]) : embed;
  return {
    embed,
    positions: r.get('wpe.weight', [c.maxPositionEmbeddings, H]),
    layers,
    finalNorm: ln('ln_f'),
    lmHead: fuseLinear([{ weight: head, outDim: c.vocabSize, bias: null }], H),
  };
}

/** Bytes of the tensors the graph uploads to the backend (the embeddings stay in JS). */
export function graphWeightBytes(w: PreparedWeights): number {
  const norm = (n: NormWeights) => n.weight.byteLength + (n.bias?.byteLength ?? 0);
  const linear = (l: LinearWeights) => l.weight.byteLength + (l.bias?.byteLength ?? 0);
  let bytes = norm(w.finalNorm) + linear(w.lmHead);
  for (const l of w.layers) bytes += norm(l.norm1) + linear(l.qkv) + linear(l.o) + norm(l.norm2) + linear(l.up) + linear(l.down);
  return bytes;
}

/** Reads a loaded model's Hugging Face tensors into the executor's fused, pre-transposed layout. */
export function prepareWeights(model: LoadedModel): PreparedWeights {
  checkModelConfig(model.config);
  return model.config.architecture === 'gpt2' ? prepareGpt2(model) : prepareLlama(model);
}
