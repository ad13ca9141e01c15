// Block-wide integer reductions and scans (blockDim.x a multiple of 32).
#pragma once
#include "common.cuh"

namespace ts {

/** Sum over the block; every thread gets it. `scratch` holds 33 ints. */
__device__ __forceinline__ int blockSumInt(int v, int* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  int t = lane < nw ? scratch[lane] : 0;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}

/**
 * Exclusive prefix sum of `v` in thread order; `total` gets the block's sum. `scratch` holds
 * 33 values. T int or unsigned (unsigned sums wrap, so packed fields may carry into each other
 * only if their totals overflow).
 */
template <typename T>
__device__ __forceinline__ T blockExclusiveScan(T v, T& total, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  T x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const T y = __shfl_up_sync(0xffffffffu, x, o);
    if (lane >= o) x += y;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = x;
  __syncthreads();
  if (warp == 0) {
    T w = lane < nw ? scratch[lane] : T(0);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const T y = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += y;
    }
    if (lane < nw) scratch[lane] = w;  // inclusive prefix of warp totals
    if (lane == nw - 1) scratch[32] = w;
  }
  __syncthreads();
  total = scratch[32];
  return x - v + (warp > 0 ? scratch[warp - 1] : T(0));
}

}  // namespace ts
