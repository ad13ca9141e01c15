// The online softmax of the tensor-core decode cores, per 16-token tile in the m16n8k16 C
// layout: lane (g, t4) holds the logits of rows (query heads) g and g + 8 for tokens
// n * 8 + 2 t4 + c (s[n][c] and s[n][c + 2]).
#pragma once
#include "common.cuh"
#include "mma.cuh"

namespace ts {

/** x0, x1 as an fp16 pair `hi` plus the fp16 pair `lo` of what it misses: hi + lo carries fp32 accuracy into an mma. */
__device__ __forceinline__ void tcSplitHalf2(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __half h0 = __float2half_rn(x0), h1 = __float2half_rn(x1);
  hi = packHalf2(__half2float(h0), __half2float(h1));
  lo = packHalf2(x0 - __half2float(h0), x1 - __half2float(h1));
}

/** 16-token tiles of a warp's pages (iBeg + warp, + NW, ... below iEnd), pages of `pageSize` tokens. */
template <int NW>
__device__ __forceinline__ int tcWarpTiles(int iBeg, int iEnd, int warp, int pageSize) {
  const int myPages = iEnd > iBeg + warp ? (iEnd - iBeg - warp + NW - 1) / NW : 0;
  return myPages * ((pageSize + 15) / 16);
}

/**
 * Masks the tile's tokens at or past `valid`, folds its row maxima into m0 / m1 (rows g, g + 8,
 * log2 units) and rescales the running sums l0 / l1 and the accumulators `o` to them.
 */
template <int NTILES>
__device__ __forceinline__ void tcRescale(float (&s)[2][4], int valid, int t4, float& m0, float& m1, float& l0, float& l1,
                                          float (&o)[NTILES][4]) {
  float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
  for (int n = 0; n < 2; n++)
#pragma unroll
    for (int c = 0; c < 2; c++) {
      if (n * 8 + 2 * t4 + c >= valid) s[n][c] = s[n][c + 2] = -INFINITY;
      mx0 = fmaxf(mx0, s[n][c]);
      mx1 = fmaxf(mx1, s[n][c + 2]);
    }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
  const float a0 = safeScale(m0, n0), a1 = safeScale(m1, n1);
  m0 = n0;
  m1 = n1;
  l0 *= a0;
  l1 *= a1;
#pragma unroll
  for (int j = 0; j < NTILES; j++) {
    o[j][0] *= a0;
    o[j][1] *= a0;
    o[j][2] *= a1;
    o[j][3] *= a1;
  }
}

/** exp2(x - m), 0 while the row has seen no token (m still -inf). */
__device__ __forceinline__ float tcProb(float x, float m) { return m == -INFINITY ? 0.f : exp2f(x - m); }

/**
 * Sums l over the lane quad and writes a warp's result to `w` for mergeWarpResults: acc[GT][D]
 * (o[j][c] of rows g / g + 8 at the channel `channel(j, c)` gives, c = 0 or 1), then m[GT], l[GT].
 */
template <int GT, int D, int NTILES, class Channel>
__device__ __forceinline__ void tcStoreWarp(float* w, const float (&o)[NTILES][4], float m0, float m1, float l0, float l1, int g,
                                            int t4, Channel channel) {
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
#pragma unroll
  for (int j = 0; j < NTILES; j++) {
    const int d0 = channel(j, 0), d1 = channel(j, 1);
    w[g * D + d0] = o[j][0];
    w[g * D + d1] = o[j][1];
    w[(g + 8) * D + d0] = o[j][2];
    w[(g + 8) * D + d1] = o[j][3];
  }
  if (t4 == 0) {
    w[GT * D + g] = m0;
    w[GT * D + g + 8] = m1;
    w[GT * D + GT + g] = l0;
    w[GT * D + GT + g + 8] = l1;
  }
}

}  // namespace ts
