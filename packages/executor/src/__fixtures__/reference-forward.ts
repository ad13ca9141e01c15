import type { LoadedModel } from '@tinyserve/core';

/**
 * A naive forward pass written independently of the executor: one sequence, full recompute,
 * no pages, float64 throughout, reading the Hugging Face tensors by name in their own layouts
 * (nn.Linear [out, in], Conv1D [in, out]). Returns the logits of every position.
 */
export function referenceForward(model: LoadedModel, tokenIds: number[]): Float64Array[] {
  return model.config.architecture === 'gpt2' ? gpt2Forward(model, tokenIds) : llamaForward(model, tokenIds);
}

type Vec = Float64Array;

function w(model: LoadedModel, name: string): Float32Array {
  const t = model.weights.get(name);
  if (!t) throw new Error(`reference: missing ${name}`);
  return t.data;
}

/** nn.Linear: W is [out, in]. */
function linear(x: Vec, W: Float32Array, outDim: number, bias?: Float32Array): Vec {
  const inDim = x.length;
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let s = bias ? bias[o] : 0;
    for (let i = 0; i < inDim; i++) s += W[o * inDim + i] * x[i];
    y[o] = s;
  }
  return y;
}

/** GPT-2 Conv1D: W is [in, out]. */
function conv1d(x: Vec, W: Float32Array, outDim: number, bias: Float32Array): Vec {
  const y = new Float64Array(outDim);
  for (let o = 0; o < outDim; o++) {
    let s = bias[o];
    for (let i = 0; i < x.length; i++) s += W[i * outDim + o] * x[i];
    y[o] = s;
  }
  return y;
}

function rmsNorm(x: Vec, g: Float32Array, eps: number): Vec {
  let ms = 0;
  for (const v of x) ms += v * v;
  ms /= x.length;
  return x.map((v, i) => (v / Math.sqrt(ms + eps)) * g[i]);
}

function layerNorm(x: Vec, g: Float32Array, b: Float32Array, eps: number): Vec {
  const mean = x.reduce((a, v) => a + v, 0) / x.length;
  const variance = x.reduce((a, v) => a + (v - mean) ** 2, 0) / x.length;
  return x.map((v, i) => ((v - mean) / Math.sqrt(variance + eps)) * g[i] + b[i]);
}

function addInto(a: Vec, b: Vec): void {
  for (let i = 0; i < a.length; i++) a[i] += b[i];
}

/** q·k/sqrt(d), softmax over positions 0..i, weighted sum of v; per head with GQA mapping. */
function causalAttention(qs: Vec[], ks: Vec[], vs: Vec[], numHeads: number, numKvHeads: number, headDim: number): Vec[] {
  const group = numHeads / numKvHeads;
  return qs.map((q, i) => {
    const out = new Float64Array(numHeads * headDim);
    for (let h = 0; h < numHeads; h++) {
      const kvh = Math.floor(h / group);
      const scores: number[] = [];
      for (let j = 0; j <= i; j++) {
        let s = 0;
        for (let d = 0; d < headDim; d++) s += q[h * headDim + d] * ks[j][kvh * headDim + d];
        scores.push(s / Math.sqrt(headDim));
      }
      const max = Math.max(...scores);
      const e = scores.map((s) => Math.exp(s - max));
      const z = e.reduce((a, b) => a + b, 0);
      for (let j = 0; j <= i; j++) {
        for (let d = 0; d < headDim; d++) out[h * headDim + d] += (e[j] / z) * vs[j][kvh * headDim + d];
      }
    }
    return out;
  });
}

/** HF apply_rotary_pos_emb: x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]. */
function rope(x: Vec, numHeads: number, headDim: number, pos: number, theta: number): Vec {
  const out = new Float64Array(x.length);
  const half = headDim / 2;
  for (let h = 0; h < numHeads; h++) {
    for (let d = 0; d < headDim; d++) {
      const freqIndex = d % half;
      const angle = pos / Math.pow(theta, (2 * freqIndex) / headDim);
      const rotated = d < half ? -x[h * headDim + d + half] : x[h * headDim + d - half];
      out[h * headDim + d] = x[h * headDim + d] * Math.cos(angle) + rotated * Math.sin(angle);
    }
  }
  return out;
}

function logitsFrom(x: Vec, W: Float32Array, vocab: number): Vec {
  return linear(x, W, vocab);
}

function llamaForward(model: LoadedModel, tokenIds: number[]): Vec[] {
  const c = model.config;
  const H = c.hiddenSize;
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const opt = (name: string) => model.weights.get(name)?.data;
  const emb = w(model, 'model.embed_tokens.weight');
  let xs: Vec[] = tokenIds.map((id) => Float64Array.from(emb.subarray(id * H, (id + 1) * H)));
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const normed = xs.map((x) => rmsNorm(x, w(model, `${p}input_layernorm.weight`), c.normEps));
    const qs = normed.map((x, i) =>
      rope(linear(x, w(model, `${p}self_attn.q_proj.weight`), qDim, opt(`${p}self_attn.q_proj.bias`)), c.numHeads, c.headDim, i, c.ropeTheta),
    );
    const ks = normed.map((x, i) =>
      rope(linear(x, w(model, `${p}self_attn.k_proj.weight`), kvDim, opt(`${p}self_attn.k_proj.bias`)), c.numKvHeads, c.headDim, i, c.ropeTheta),
    );
    const vs = normed.map((x) => linear(x, w(model, `${p}self_attn.v_proj.weight`), kvDim, opt(`${p}self_attn.v_proj.bias`)));
    const attn = causalAttention(qs, ks, vs, c.numHeads, c.numKvHeads, c.headDim);
    xs = xs.map((x, i) => {
      const y = Float64Array.from(x);
      addInto(y, linear(attn[i], w(model, `${p}self_attn.o_proj.weight`), H, opt(`${p}self_attn.o_proj.bias`)));
      const n2 = rmsNorm(y, w(model, `${p}post_attention_layernorm.weight`), c.normEps);
      const gate = linear(n2, w(model, `${p}mlp.gate_proj.weight`), c.intermediateSize, opt(`${p}mlp.gate_proj.bias`));
      const up = linear(n2, w(model, `${p}mlp.up_proj.weight`), c.intermediateSize, opt(`${p}mlp.up_proj.bias`));
      const act = gate.map((g, k) => (g / (1 + Math.exp(-g))) * up[k]);
      addInto(y, linear(act, w(model, `${p}mlp.down_proj.weight`), H, opt(`${p}mlp.down_proj.bias`)));
      return y;
    });
  }
  const head = c.tieWordEmbeddings ? emb : w(model, 'lm_head.weight');
  return xs.map((x) => logitsFrom(rmsNorm(x, w(model, 'model.norm.weight'), c.normEps), head, c.vocabSize));
}

function gpt2Forward(model: LoadedModel, tokenIds: number[]): Vec[] {
  const c = model.config;
  const H = c.hiddenSize;
  const g = (name: string) => w(model, `transformer.${name}`);
  const wte = g('wte.weight');
  const wpe = g('wpe.weight');
  let xs: Vec[] = tokenIds.map((id, pos) => {
    const x = new Float64Array(H);
    for (let i = 0; i < H; i++) x[i] = wte[id * H + i] + wpe[pos * H + i];
    return x;
  });
  for (let l = 0; l < c.numLayers; l++) {
    const p = `h.${l}.`;
    const qkv = xs.map((x) => conv1d(layerNorm(x, g(`${p}ln_1.weight`), g(`${p}ln_1.bias`), c.normEps), g(`${p}attn.c_attn.weight`), 3 * H, g(`${p}attn.c_attn.bias`)));
    const attn = causalAttention(
      qkv.map((v) => v.slice(0, H)),
      qkv.map((v) => v.slice(H, 2 * H)),
      qkv.map((v) => v.slice(2 * H)),
      c.numHeads,
      c.numHeads,
      c.headDim,
    );
    xs = xs.map((x, i) => {
      const y = Float64Array.from(x);
      addInto(y, conv1d(attn[i], g(`${p}attn.c_proj.weight`), H, g(`${p}attn.c_proj.bias`)));
      const n2 = layerNorm(y, g(`${p}ln_2.weight`), g(`${p}ln_2.bias`), c.normEps);
      const h = conv1d(n2, g(`${p}mlp.c_fc.weight`), c.intermediateSize, g(`${p}mlp.c_fc.bias`));
      const act = h.map((v) => 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3))));
      addInto(y, conv1d(act, g(`${p}mlp.c_proj.weight`), H, g(`${p}mlp.c_proj.bias`)));
      return y;
    });
  }
  return xs.map((x) => logitsFrom(layerNorm(x, g('ln_f.weight'), g('ln_f.bias'), c.normEps), wte, c.vocabSize));
}
