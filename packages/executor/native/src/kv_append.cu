// Appends the step's keys (RoPE applied) and values into their pages, writes the rotated
// queries, and folds the stored keys into the page metadata (channel-wise min/max boxes) in
// the same pass. One CTA per run of tokens that share a page (consecutive slots), so the
// box update needs no atomics: a run starting at slot 0 replaces the box, any other run
// widens it, exactly as the TypeScript updatePageMetadata does token by token. int8 KV is
// quantised per (token, KV head) row (absmax over the row's channels) as the kv-retriever's
// KvCacheStorage does, and the boxes bound the dequantised keys.
#include "common.cuh"
#include "kernels.h"

namespace ts {

constexpr int APPEND_THREADS = 256;

/** Element d of the rotated head at `x` (HF rotate_half): angle pos * theta^(-2i/D), in double as the TS tables. */
__device__ __forceinline__ float ropeElement(const float* x, int d, int D, int pos, double theta) {
  const int half = D >> 1, i = d < half ? d : d - half;
  const double invFreq = 1.0 / pow(theta, (2.0 * i) / D);
  const double angle = (double)pos * invFreq;
  const float c = (float)cos(angle), s = (float)sin(angle);
  const float x1 = x[i], x2 = x[i + half];
  // The reference computes in double from float32 inputs and rounds once.
  return d < half ? (float)((double)x1 * c - (double)x2 * s) : (float)((double)x2 * c + (double)x1 * s);
}

/** The rotated (or copied) queries of tokens [t0, t1), when asked for. */
__device__ void writeQueries(const AppendArgs& a, int t0, int t1) {
  if (a.qOut == nullptr) return;
  const int D = a.headDim, qCols = a.numHeads * D;
  for (int t = t0; t < t1; t++) {
    const float* row = a.qkv + (long)t * a.qkvStride;
    for (int c = threadIdx.x; c < qCols; c += blockDim.x) {
      const int h = c / D, d = c % D;
      a.qOut[(long)t * a.qOutStride + c] = a.rope ? ropeElement(row + h * D, d, D, a.tokenPos[t], a.ropeTheta) : row[c];
    }
  }
}

/**
 * Folds the run's box of metadata channel c (lo, hi over its stored keys) into the page's box: a
 * run starting at slot 0 replaces it, any other run widens it.
 */
__device__ void updateBox(const AppendArgs& a, int page, int c, bool fresh, float lo, float hi) {
  const long mi = (long)page * a.numKvHeads * a.headDim + c;
  if (a.metaDtype == META_F16) {
    __half* mn = static_cast<__half*>(a.metaMin);
    __half* mx = static_cast<__half*>(a.metaMax);
    // Rounded outward, so the fp16 box still contains every key.
    const float oldLo = fresh ? INFINITY : __half2float(mn[mi]);
    const float oldHi = fresh ? -INFINITY : __half2float(mx[mi]);
    mn[mi] = __float2half_rd(fminf(oldLo, lo));
    mx[mi] = __float2half_ru(fmaxf(oldHi, hi));
  } else {
    float* mn = static_cast<float*>(a.metaMin);
    float* mx = static_cast<float*>(a.metaMax);
    mn[mi] = fresh ? lo : fminf(mn[mi], lo);
    mx[mi] = fresh ? hi : fmaxf(mx[mi], hi);
  }
}

template <typename KV>
__device__ void appendRun(const AppendArgs& a, int t0, int t1) {
  const int D = a.headDim;
  const int qCols = a.numHeads * D, kvCols = a.numKvHeads * D;
  KV* kc = static_cast<KV*>(a.kCache);
  KV* vc = static_cast<KV*>(a.vCache);
  writeQueries(a, t0, t1);
  const int page = a.tokenPage[t0];
  for (int c = threadIdx.x; c < kvCols; c += blockDim.x) {
    const int h = c / D, d = c % D;
    float lo = INFINITY, hi = -INFINITY;
    for (int t = t0; t < t1; t++) {
      const float* row = a.qkv + (long)t * a.qkvStride;
      const float k = a.rope ? ropeElement(row + qCols + h * D, d, D, a.tokenPos[t], a.ropeTheta) : row[qCols + c];
      const long off = ((long)a.tokenPage[t] * a.pageSize + a.tokenSlot[t]) * kvCols + c;
      const auto stored = Kv<KV>::fromFloat(k);
      kc[off] = stored;
      vc[off] = Kv<KV>::fromFloat(row[qCols + kvCols + c]);
      const float kr = Kv<KV>::toFloat1(stored);  // the box bounds the keys attention will read
      lo = fminf(lo, kr);
      hi = fmaxf(hi, kr);
    }
    if (a.metaMin != nullptr) updateBox(a, page, c, a.tokenSlot[t0] == 0, lo, hi);
  }
}

/** Channels of a row one lane holds in the int8 append (head dims up to 128). */
constexpr int I8_PER_LANE = 4;

/**
 * int8 append: one warp per (token, KV head) row holds the row's rotated key and value (lane
 * owns channels lane, lane + 32, ...), reduces their absolute maxima, and writes q and the
 * scale exactly as the TypeScript quantizeInt8 does. The run's boxes then fold the keys as
 * stored (q * scale in fp32, the value the TypeScript dequantisation produces), read back
 * after a block barrier.
 */
__device__ void appendRunInt8(const AppendArgs& a, int t0, int t1) {
  const int D = a.headDim, Hk = a.numKvHeads;
  const int qCols = a.numHeads * D, kvCols = Hk * D;
  int8_t* kc = static_cast<int8_t*>(a.kCache);
  int8_t* vc = static_cast<int8_t*>(a.vCache);
  writeQueries(a, t0, t1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int rows = (t1 - t0) * Hk;
  for (int r = warp; r < rows; r += nw) {
    const int t = t0 + r / Hk, h = r % Hk;
    const float* src = a.qkv + (long)t * a.qkvStride;
    const long tokenRow = (long)a.tokenPage[t] * a.pageSize + a.tokenSlot[t];
    float kx[I8_PER_LANE], vx[I8_PER_LANE];
    float kMax = 0.f, vMax = 0.f;
#pragma unroll
    for (int j = 0; j < I8_PER_LANE; j++) {
      const int d = lane + 32 * j;
      kx[j] = vx[j] = 0.f;
      if (d < D) {
        kx[j] = a.rope ? ropeElement(src + qCols + h * D, d, D, a.tokenPos[t], a.ropeTheta) : src[qCols + h * D + d];
        vx[j] = src[qCols + kvCols + h * D + d];
        kMax = fmaxf(kMax, fabsf(kx[j]));
        vMax = fmaxf(vMax, fabsf(vx[j]));
      }
    }
    const float ks = int8Scale(warpMax(kMax)), vs = int8Scale(warpMax(vMax));
    const long off = tokenRow * kvCols + (long)h * D;
#pragma unroll
    for (int j = 0; j < I8_PER_LANE; j++) {
      const int d = lane + 32 * j;
      if (d < D) {
        kc[off + d] = int8Quantize(kx[j], ks);
        vc[off + d] = int8Quantize(vx[j], vs);
      }
    }
    if (lane == 0) {
      a.kScale[tokenRow * Hk + h] = ks;
      a.vScale[tokenRow * Hk + h] = vs;
    }
  }
  if (a.metaMin == nullptr) return;
  __syncthreads();  // the run's rows and scales, written by other warps, are visible to the block
  const int page = a.tokenPage[t0];
  for (int c = threadIdx.x; c < kvCols; c += blockDim.x) {
    const int h = c / D;
    float lo = INFINITY, hi = -INFINITY;
    for (int t = t0; t < t1; t++) {
      const long tokenRow = (long)a.tokenPage[t] * a.pageSize + a.tokenSlot[t];
      const float k = (float)kc[tokenRow * kvCols + c] * a.kScale[tokenRow * Hk + h];
      lo = fminf(lo, k);
      hi = fmaxf(hi, k);
    }
    updateBox(a, page, c, a.tokenSlot[t0] == 0, lo, hi);
  }
}

__global__ void __launch_bounds__(APPEND_THREADS) appendKvKernel(AppendArgs a) {
  const int t0 = a.runStart[blockIdx.x], t1 = a.runStart[blockIdx.x + 1];
  if (a.kvDtype == KV_I8) appendRunInt8(a, t0, t1);
  else if (a.kvDtype == KV_F16) appendRun<__half>(a, t0, t1);
  else appendRun<float>(a, t0, t1);
}

void launchAppendKv(const AppendArgs& a, cudaStream_t stream) {
  if (a.numRuns == 0) return;
  if (a.kvDtype != KV_F16 && a.kvDtype != KV_F32 && a.kvDtype != KV_I8)
    throw ArgError("appendKv: kv dtype " + std::to_string(a.kvDtype) + " is not supported");
  if (a.kvDtype == KV_I8 && (a.kScale == nullptr || a.vScale == nullptr)) throw ArgError("appendKv: int8 KV needs kScale and vScale");
  if (a.kvDtype == KV_I8 && a.headDim > 32 * I8_PER_LANE)
    throw ArgError("appendKv: int8 KV supports head dims up to " + std::to_string(32 * I8_PER_LANE) + ", got " + std::to_string(a.headDim));
  if (a.rope && (a.headDim & 1)) throw ArgError("appendKv: RoPE needs an even headDim, got " + std::to_string(a.headDim));
  appendKvKernel<<<a.numRuns, APPEND_THREADS, 0, stream>>>(a);
  checkLaunch("appendKvKernel");
}

}  // namespace ts
