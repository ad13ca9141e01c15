// Shared device helpers: error checking, KV element formats, warp reductions.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace ts {

/** A CUDA call failed; the message names the call and CUDA's reason. */
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/** Bad arguments from JavaScript (shape, dtype, range). */
struct ArgError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw CudaError(std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}
#define TS_CUDA(call) ::ts::check((call), #call)
/** Launch errors surface on the next API call; ask right after each launch. */
inline void checkLaunch(const char* kernel) { check(cudaGetLastError(), kernel); }

/** Element formats, numbered as the TypeScript surface numbers them. */
enum KvDtype : int { KV_F32 = 0, KV_F16 = 1, KV_I8 = 2 };
enum MetaDtype : int { META_F32 = 0, META_F16 = 1 };

constexpr float LOG2E = 1.4426950408889634f;

/** 16-byte vector loads of KV rows, converted to float. */
template <typename T>
struct Kv;

template <>
struct Kv<float> {
  static constexpr int VEC = 4;
  /** Rows carry a scale (int8): element = stored value * the row's scale. */
  static constexpr bool SCALED = false;
  struct Raw {
    float4 v;
  };
  __device__ __forceinline__ static Raw load(const float* p) { return Raw{__ldg(reinterpret_cast<const float4*>(p))}; }
  __device__ __forceinline__ static Raw zero() { return Raw{make_float4(0.f, 0.f, 0.f, 0.f)}; }
  __device__ __forceinline__ static void toFloat(const Raw& r, float (&out)[VEC]) {
    out[0] = r.v.x;
    out[1] = r.v.y;
    out[2] = r.v.z;
    out[3] = r.v.w;
  }
  __device__ __forceinline__ static float toFloat1(float x) { return x; }
  /** Stored value of x (what attention and the page metadata will see). */
  __device__ __forceinline__ static float fromFloat(float x) { return x; }
  __device__ __forceinline__ static float roundTrip(float x) { return x; }
};

template <>
struct Kv<__half> {
  static constexpr int VEC = 8;
  static constexpr bool SCALED = false;
  struct Raw {
    uint4 v;
  };
  __device__ __forceinline__ static Raw load(const __half* p) { return Raw{__ldg(reinterpret_cast<const uint4*>(p))}; }
  __device__ __forceinline__ static Raw zero() { return Raw{make_uint4(0u, 0u, 0u, 0u)}; }
  __device__ __forceinline__ static void toFloat(const Raw& r, float (&out)[VEC]) {
    const __half2* h = reinterpret_cast<const __half2*>(&r.v);
#pragma unroll
    for (int i = 0; i < 4; i++) {
      float2 f = __half22float2(h[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
  __device__ __forceinline__ static float toFloat1(__half x) { return __half2float(x); }
  __device__ __forceinline__ static __half fromFloat(float x) { return __float2half_rn(x); }
  __device__ __forceinline__ static float roundTrip(float x) { return __half2float(__float2half_rn(x)); }
};

/**
 * int8 KV (kv-retriever's KvCacheStorage, per-token scales): symmetric absmax quantisation per
 * (token, KV head) row, value = q * scale with the row's fp32 scale beside the cache. 8-byte
 * loads, so a row has as many lanes as an fp16 row. toFloat gives q unscaled: the decode core
 * applies the k scale to the whole dot product and folds the v scale into the probability.
 */
template <>
struct Kv<int8_t> {
  static constexpr int VEC = 8;
  static constexpr bool SCALED = true;
  struct Raw {
    uint2 v;
  };
  __device__ __forceinline__ static Raw load(const int8_t* p) { return Raw{__ldg(reinterpret_cast<const uint2*>(p))}; }
  __device__ __forceinline__ static Raw zero() { return Raw{make_uint2(0u, 0u)}; }
  __device__ __forceinline__ static void toFloat(const Raw& r, float (&out)[VEC]) {
    const uint32_t w[2] = {r.v.x, r.v.y};
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
      for (int j = 0; j < 4; j++) out[4 * i + j] = (float)(int8_t)(w[i] >> (8 * j));  // byte j: element 4i + j (little-endian)
  }
  __device__ __forceinline__ static float toFloat1(int8_t x) { return (float)x; }
};

/**
 * The int8 scale of a row with absolute maximum `absmax`: fround(absmax / 127) with the
 * division in double, as the TypeScript quantizeInt8 computes it (0 for an all-zero row).
 */
__device__ __forceinline__ float int8Scale(float absmax) { return __double2float_rn((double)absmax / 127.0); }

/** q = clamp(roundHalfToEven(x / scale), -127, 127), the division in double as in JavaScript; 0 when scale is 0. */
__device__ __forceinline__ int8_t int8Quantize(float x, float scale) {
  if (scale == 0.f) return 0;
  const double r = rint((double)x / (double)scale);  // rint: round half to even
  return (int8_t)fmin(fmax(r, -127.0), 127.0);
}

/** 8 channels of a key box, as 16 bytes of fp16 or 32 bytes of fp32, widened to float (exact). */
__device__ __forceinline__ void boxFromHalf8(const uint4& r, float (&out)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&r);
#pragma unroll
  for (int j = 0; j < 4; j++) {
    const float2 f = __half22float2(h[j]);
    out[2 * j] = f.x;
    out[2 * j + 1] = f.y;
  }
}
__device__ __forceinline__ void boxFromFloat8(const uint4& a, const uint4& b, float (&out)[8]) {
  out[0] = __uint_as_float(a.x), out[1] = __uint_as_float(a.y), out[2] = __uint_as_float(a.z), out[3] = __uint_as_float(a.w);
  out[4] = __uint_as_float(b.x), out[5] = __uint_as_float(b.y), out[6] = __uint_as_float(b.z), out[7] = __uint_as_float(b.w);
}

/**
 * 8 consecutive channels of a page's key box (page metadata, fp32 or fp16) from channel i (a
 * multiple of 8), widened to float (exact for fp16): one or two 16-byte loads.
 */
__device__ __forceinline__ void loadBox8(const void* p, long i, int dtype, float (&out)[8]) {
  if (dtype == META_F16) {
    boxFromHalf8(__ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(p) + i)), out);
  } else {
    const uint4* f = reinterpret_cast<const uint4*>(static_cast<const float*>(p) + i);
    boxFromFloat8(__ldg(f), __ldg(f + 1), out);
  }
}

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/**
 * Reduces over the block with the warp reduction `WarpOp` (blockDim.x a multiple of 32, at most
 * 1024); `scratch` holds 32 floats, `identity` stands in for the warps the block lacks.
 */
template <float (*WarpOp)(float)>
__device__ __forceinline__ float blockReduce(float v, float* scratch, float identity) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = WarpOp(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return WarpOp(lane < nw ? scratch[lane] : identity);
}
__device__ __forceinline__ float blockSum(float v, float* scratch) { return blockReduce<warpSum>(v, scratch, 0.f); }
__device__ __forceinline__ float blockMax(float v, float* scratch) { return blockReduce<warpMax>(v, scratch, -INFINITY); }

/** exp2 that maps -inf to 0 without producing NaN for (-inf) - (-inf). */
__device__ __forceinline__ float safeScale(float m, float M) { return m == -INFINITY ? 0.f : exp2f(m - M); }

/**
 * Merges the NW per-warp decode results of a CTA (warp k's acc[GT][D], m[GT], l[GT] at
 * smem + k * STRIDE, m in log2 units) into one at `res`, rescaled to the common max; called by
 * every thread after the warps' results are written and a barrier; ends with a barrier.
 */
template <int GT, int D, int NW, int STRIDE>
__device__ __forceinline__ void mergeWarpResults(const float* smem, float* res) {
  for (int idx = threadIdx.x; idx < GT * D; idx += blockDim.x) {
    const int g = idx / D;
    float M = -INFINITY;
#pragma unroll
    for (int k = 0; k < NW; k++) M = fmaxf(M, smem[k * STRIDE + GT * D + g]);
    float A = 0.f, L = 0.f;
#pragma unroll
    for (int k = 0; k < NW; k++) {
      const float c = safeScale(smem[k * STRIDE + GT * D + g], M);
      A += smem[k * STRIDE + idx] * c;
      L += smem[k * STRIDE + GT * D + GT + g] * c;
    }
    res[idx] = A;
    if (idx % D == 0) {
      res[GT * D + g] = M;
      res[GT * D + GT + g] = L;
    }
  }
  __syncthreads();
}

inline int ceilDiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace ts
