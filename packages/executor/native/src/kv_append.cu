// Appends the step's keys (RoPE applied) and values into their pages, writes the rotated
// queries, and folds the stored keys into the page metadata (channel-wise min/max boxes) in
// the same pass. One CTA per run of tokens that share a page (consecutive slots), so the
// box update needs no atomics: a run starting at slot 0 replaces the box, any other run
// widens it, exactly as the TypeScript updatePageMetadata does token by token.
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

template <typename KV>
__device__ void appendRun(const AppendArgs& a, int t0, int t1) {
  const int D = a.headDim;
  const int qCols = a.numHeads * D, kvCols = a.numKvHeads * D;
  KV* kc = static_cast<KV*>(a.kCache);
  KV* vc = static_cast<KV*>(a.vCache);
  if (a.qOut != nullptr) {
    for (int t = t0; t < t1; t++) {
      const float* row = a.qkv + (long)t * a.qkvStride;
      for (int c = threadIdx.x; c < qCols; c += blockDim.x) {
        const int h = c / D, d = c % D;
        a.qOut[(long)t * a.qOutStride + c] = a.rope ? ropeElement(row + h * D, d, D, a.tokenPos[t], a.ropeTheta) : row[c];
      }
    }
  }
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
    if (a.metaMin == nullptr) continue;
    const long mi = (long)page * kvCols + c;
    const bool fresh = a.tokenSlot[t0] == 0;
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
}

__global__ void __launch_bounds__(APPEND_THREADS) appendKvKernel(AppendArgs a) {
  const int t0 = a.runStart[blockIdx.x], t1 = a.runStart[blockIdx.x + 1];
  if (a.kvDtype == KV_F16) appendRun<__half>(a, t0, t1);
  else appendRun<float>(a, t0, t1);
}

void launchAppendKv(const AppendArgs& a, cudaStream_t stream) {
  if (a.numRuns == 0) return;
  if (a.kvDtype != KV_F16 && a.kvDtype != KV_F32) throw ArgError("appendKv: kv dtype " + std::to_string(a.kvDtype) + " is not supported");
  if (a.rope && (a.headDim & 1)) throw ArgError("appendKv: RoPE needs an even headDim, got " + std::to_string(a.headDim));
  appendKvKernel<<<a.numRuns, APPEND_THREADS, 0, stream>>>(a);
  checkLaunch("appendKvKernel");
}

}  // namespace ts
