/**
 * Rotary position embedding tables, in Hugging Face's `rotate_half` convention: the head
 * vector is split into halves (x1, x2) and pair i rotates (x1[i], x2[i]) by the angle
 * `position * theta^(-2i / headDim)`.
 */
export interface RopeTables {
  /** cos of the angle, [numTokens, headDim / 2]. */
  cos: Float32Array;
  /** sin of the angle, [numTokens, headDim / 2]. */
  sin: Float32Array;
}

/** Tables for the given token positions. Angles are computed in float64, then rounded once. */
export function computeRopeTables(positions: Int32Array, headDim: number, theta: number): RopeTables {
  const half = headDim >> 1;
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) invFreq[i] = 1 / Math.pow(theta, (2 * i) / headDim);
  const cos = new Float32Array(positions.length * half);
  const sin = new Float32Array(positions.length * half);
  for (let t = 0; t < positions.length; t++) {
    const p = positions[t];
    const base = t * half;
    for (let i = 0; i < half; i++) {
      const angle = p * invFreq[i];
      cos[base + i] = Math.cos(angle);
      sin[base + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}

/**
 * Writes the rotated head vector `src[srcOffset .. srcOffset + headDim)` of token `t` into
 * `dst` (float64 scratch or a float32 cache row), times `scale`.
 */
export function rotateHead(
  src: Float32Array,
  srcOffset: number,
  rope: RopeTables,
  t: number,
  headDim: number,
  scale: number,
  dst: Float64Array | Float32Array,
  dstOffset: number,
): void {
  const half = headDim >> 1;
  const base = t * half;
  for (let i = 0; i < half; i++) {
    const x1 = src[srcOffset + i];
    const x2 = src[srcOffset + i + half];
    const c = rope.cos[base + i];
    const s = rope.sin[base + i];
    dst[dstOffset + i] = (x1 * c - x2 * s) * scale;
    dst[dstOffset + i + half] = (x2 * c + x1 * s) * scale;
  }
}
