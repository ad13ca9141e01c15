/**
 * Row-wise pieces of the layer that tfjs would spell as 5-8 separate ops each (norms, gated
 * activations). As one JS loop they cost one kernel dispatch; statistics in float64.
 */

/** LLaMA RMSNorm: `x / sqrt(mean(x^2) + eps) * weight`, per row of `cols`. */
export function rmsNormRows(x: Float32Array, weight: Float32Array, eps: number, cols: number, out: Float32Array): void {
  const rows = x.length / cols;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let sq = 0;
    for (let c = 0; c < cols; c++) {
      const v = x[o + c];
      sq += v * v;
    }
    const inv = 1 / Math.sqrt(sq / cols + eps);
    for (let c = 0; c < cols; c++) out[o + c] = x[o + c] * inv * weight[c];
  }
}

/** GPT-2 LayerNorm: `(x - mean) / sqrt(var + eps) * gamma + beta` (biased variance), per row. */
export function layerNormRows(
  x: Float32Array,
  gamma: Float32Array,
  beta: Float32Array,
  eps: number,
  cols: number,
  out: Float32Array,
): void {
  const rows = x.length / cols;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let sum = 0;
    for (let c = 0; c < cols; c++) sum += x[o + c];
    const mean = sum / cols;
    let sq = 0;
    for (let c = 0; c < cols; c++) {
      const v = x[o + c] - mean;
      sq += v * v;
    }
    const inv = 1 / Math.sqrt(sq / cols + eps);
    for (let c = 0; c < cols; c++) out[o + c] = (x[o + c] - mean) * inv * gamma[c] + beta[c];
  }
}

/** SwiGLU over fused rows `[gate (inter) | up (inter)]`: `silu(gate) * up`, output [rows, inter]. */
export function swiGluRows(x: Float32Array, inter: number, out: Float32Array): void {
  const rows = x.length / (2 * inter);
  for (let r = 0; r < rows; r++) {
    const i = r * 2 * inter;
    const o = r * inter;
    for (let c = 0; c < inter; c++) {
      const g = x[i + c];
      out[o + c] = (g / (1 + Math.exp(-g))) * x[i + inter + c];
    }
  }
}

const GELU_K = Math.sqrt(2 / Math.PI);

/** GPT-2's "gelu_new": `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`. */
export function geluNew(x: Float32Array, out: Float32Array): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    out[i] = 0.5 * v * (1 + Math.tanh(GELU_K * (v + 0.044715 * v * v * v)));
  }
}
