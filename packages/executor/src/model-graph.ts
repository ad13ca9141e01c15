import { add, fused, gather, matMul, tensor1d, tensor2d, tidy } from '@tensorflow/tfjs-core';
import type { Tensor, Tensor1D, Tensor2D } from '@tensorflow/tfjs-core';
import type { Architecture } from '@tinyserve/core';
import type { StepSelection } from './decode-selection.js';
import type { ForwardPlan } from './forward-plan.js';
import {
  FUSED_SPARSE_ATTENTION_KERNEL,
  GELU_NEW_KERNEL,
  KV_APPEND_KERNEL,
  LAYER_NORM_KERNEL,
  PAGED_ATTENTION_KERNEL,
  PAGE_SCORE_KERNEL,
  RMS_NORM_KERNEL,
  SPARSE_PAGED_ATTENTION_KERNEL,
  SWIGLU_KERNEL,
  runTinyServeKernel,
} from './kernels/register-kernels.js';
import type { AttentionStep } from './kernels/register-kernels.js';
import type { LinearWeights, NormWeights, PreparedWeights } from './model-weights.js';

interface GraphNorm {
  kind: 'rms' | 'layer';
  weight: Tensor1D;
  bias: Tensor1D | null;
  eps: number;
}

interface GraphLinear {
  /** [in, out] */
  weight: Tensor2D;
  bias: Tensor1D | null;
}

interface GraphLayer {
  norm1: GraphNorm;
  qkv: GraphLinear;
  o: GraphLinear;
  norm2: GraphNorm;
  up: GraphLinear;
  down: GraphLinear;
}

/** The weights the graph holds as tfjs tensors (embeddings stay in JS, see {@link embedTokens}). */
export interface GraphWeights {
  architecture: Architecture;
  hiddenSize: number;
  layers: GraphLayer[];
  finalNorm: GraphNorm;
  lmHead: GraphLinear;
  /** All tensors above, for dispose. */
  tensors: Tensor[];
}

/** Uploads the prepared weights to the active tfjs backend. */
export function uploadWeights(w: PreparedWeights, architecture: Architecture, hiddenSize: number): GraphWeights {
  const tensors: Tensor[] = [];
  const vec = (data: Float32Array) => {
    const t = tensor1d(data, 'float32');
    tensors.push(t);
    return t;
  };
  const norm = (n: NormWeights): GraphNorm => ({
    kind: n.kind,
    weight: vec(n.weight),
    bias: n.bias ? vec(n.bias) : null,
    eps: n.eps,
  });
  const linear = (l: LinearWeights): GraphLinear => {
    const weight = tensor2d(l.weight, [l.inDim, l.outDim], 'float32');
    tensors.push(weight);
    return { weight, bias: l.bias ? vec(l.bias) : null };
  };
  const layers = w.layers.map((l) => ({
    norm1: norm(l.norm1),
    qkv: linear(l.qkv),
    o: linear(l.o),
    norm2: norm(l.norm2),
    up: linear(l.up),
    down: linear(l.down),
  }));
  return { architecture, hiddenSize, layers, finalNorm: norm(w.finalNorm), lmHead: linear(w.lmHead), tensors };
}

/**
 * The input rows of the step: token embeddings (plus learned positions for GPT-2), gathered
 * in JS from the checkpoint arrays and uploaded as one tensor.
 */
export function embedTokens(
  embed: Float32Array,
  positions: Float32Array | null,
  hidden: number,
  tokenIds: Int32Array,
  tokenPos: Int32Array,
): Tensor2D {
  const rows = new Float32Array(tokenIds.length * hidden);
  for (let t = 0; t < tokenIds.length; t++) {
    const o = t * hidden;
    rows.set(embed.subarray(tokenIds[t] * hidden, (tokenIds[t] + 1) * hidden), o);
    if (positions) {
      const p = tokenPos[t] * hidden;
      for (let c = 0; c < hidden; c++) rows[o + c] += positions[p + c];
    }
  }
  return tensor2d(rows, [tokenIds.length, hidden], 'float32');
}

function norm(x: Tensor2D, n: GraphNorm): Tensor2D {
  if (n.kind === 'rms') return runTinyServeKernel(RMS_NORM_KERNEL, { x, weight: n.weight }, { eps: n.eps }) as Tensor2D;
  return runTinyServeKernel(LAYER_NORM_KERNEL, { x, weight: n.weight, bias: n.bias as Tensor1D }, { eps: n.eps }) as Tensor2D;
}

function linear(x: Tensor2D, l: GraphLinear): Tensor2D {
  return l.bias ? (fused.matMul({ a: x, b: l.weight, bias: l.bias }) as Tensor2D) : matMul(x, l.weight);
}

/**
 * The layer's attention. Dense (no decode sequence, the dense policy, or a dense layer): one
 * `TinyServePagedAttention`. Sparse with `useFusedKernel`: one `TinyServeFusedSparseAttention`
 * (append, score, select, attend). Sparse otherwise: `TinyServeKvAppend`, then
 * `TinyServePageScore` when the policy ranks by metadata, the policy's choice in JS, then
 * `TinyServeSparsePagedAttention`. Both sparse routes run the same functions in the same
 * order, so they give identical results.
 */
function attention(qkv: Tensor2D, step: AttentionStep, selection: StepSelection | null, layer: number): Tensor2D {
  if (selection === null || !selection.isSparse(layer)) {
    const out = runTinyServeKernel(PAGED_ATTENTION_KERNEL, { qkv }, { step, layer }) as Tensor2D;
    selection?.recordDense(layer);
    return out;
  }
  if (selection.fused) return runTinyServeKernel(FUSED_SPARSE_ATTENTION_KERNEL, { qkv }, { step, layer }) as Tensor2D;
  const queries = runTinyServeKernel(KV_APPEND_KERNEL, { qkv }, { step, layer }) as Tensor2D;
  const scores = selection.needsScores(layer) ? runTinyServeKernel(PAGE_SCORE_KERNEL, { queries }, { step, layer }) : null;
  const chosen = selection.select(layer, queries.dataSync() as Float32Array, scores ? (scores.dataSync() as Float32Array) : null);
  return runTinyServeKernel(SPARSE_PAGED_ATTENTION_KERNEL, { queries }, { step, layer, selection: chosen }) as Tensor2D;
}

/**
 * The transformer layers, once for both architectures: ten tfjs ops per layer (norm, QKV,
 * paged attention, output projection, residual, norm, up, activation, down, residual).
 * Ops run eagerly, so the KV pages are written as this returns. Call inside `tidy`.
 */
export function runLayers(w: GraphWeights, x: Tensor2D, step: AttentionStep, selection: StepSelection | null = null): Tensor2D {
  const activation = w.architecture === 'llama' ? SWIGLU_KERNEL : GELU_NEW_KERNEL;
  for (let layer = 0; layer < w.layers.length; layer++) {
    const L = w.layers[layer];
    const qkv = linear(norm(x, L.norm1), L.qkv);
    const attn = attention(qkv, step, selection, layer);
    x = add(x, linear(attn, L.o));
    const hidden = runTinyServeKernel(activation, { x: linear(norm(x, L.norm2), L.up) }) as Tensor2D;
    x = add(x, linear(hidden, L.down));
  }
  return x;
}

/** Final norm and LM head over the rows that need logits: [rows, vocab]. */
export function finalLogits(w: GraphWeights, x: Tensor2D): Tensor2D {
  return linear(norm(x, w.finalNorm), w.lmHead);
}

/**
 * One step through the graph, shared by every executor: embeds the step's tokens, runs the
 * layers (writing the KV pages as it goes) and returns the logits of the rows that need them
 * (`plan.logitRows`, [rows, vocab] flattened; empty when none).
 */
export function stepLogits(
  w: GraphWeights,
  embed: Float32Array,
  positions: Float32Array | null,
  tokenIds: Int32Array,
  plan: ForwardPlan,
  step: AttentionStep,
  selection: StepSelection | null,
): Float32Array {
  let logits: Float32Array = new Float32Array(0);
  // The tidy callback returns nothing: tfjs walks a returned container element by element.
  tidy(() => {
    let x = runLayers(w, embedTokens(embed, positions, w.hiddenSize, tokenIds, plan.tokenPos), step, selection);
    const rows = plan.logitRows;
    if (rows.length === 0) return;
    // Rows are increasing, so as many rows as tokens means every token in order.
    if (rows.length < plan.numTokens) x = gather(x, tensor1d(rows, 'int32')) as Tensor2D;
    logits = finalLogits(w, x).dataSync() as Float32Array;
  });
  return logits;
}
