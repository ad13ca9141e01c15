// Out-of-order KV maintenance: metadata initialisation and rebuild, token copies
// (compaction after pruning, copy-on-write), synthetic caches for benchmarks.
#include "common.cuh"
#include "kernels.h"

namespace ts {

__global__ void fillKernel(void* dst, int dtype, long count, float value) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x) {
    if (dtype == 1) static_cast<__half*>(dst)[i] = __float2half_rn(value);
    else if (dtype == 2) static_cast<int8_t*>(dst)[i] = (int8_t)value;
    else static_cast<float*>(dst)[i] = value;
  }
}

void launchFill(void* dst, int dtype, long count, float value, cudaStream_t stream) {
  if (count == 0) return;
  const int blocks = (int)std::min<long>((count + 255) / 256, 4096);
  fillKernel<<<blocks, 256, 0, stream>>>(dst, dtype, count, value);
  checkLaunch("fillKernel");
}

template <typename KV>
__global__ void rebuildKernel(const KV* kc, const float* kScale, void* metaMin, void* metaMax, int metaDtype, const int* pages,
                              const int* fills, int pageSize, int numKvHeads, int headDim) {
  const int page = pages[blockIdx.x], fill = fills[blockIdx.x];
  const int row = numKvHeads * headDim;
  for (int c = threadIdx.x; c < row; c += blockDim.x) {
    float lo = INFINITY, hi = -INFINITY;
    for (int s = 0; s < fill; s++) {
      const long tokenRow = (long)page * pageSize + s;
      float k = Kv<KV>::toFloat1(kc[tokenRow * row + c]);
      // int8: the key as the TypeScript dequantisation stores it (q * scale in fp32).
      if constexpr (Kv<KV>::SCALED) k *= kScale[tokenRow * numKvHeads + c / headDim];
      lo = fminf(lo, k);
      hi = fmaxf(hi, k);
    }
    const long mi = (long)page * row + c;
    if (metaDtype == META_F16) {
      static_cast<__half*>(metaMin)[mi] = fill == 0 ? __float2half_rn(INFINITY) : __float2half_rd(lo);
      static_cast<__half*>(metaMax)[mi] = fill == 0 ? __float2half_rn(-INFINITY) : __float2half_ru(hi);
    } else {
      static_cast<float*>(metaMin)[mi] = lo;
      static_cast<float*>(metaMax)[mi] = hi;
    }
  }
}

void launchRebuildMetadata(const void* kCache, int kvDtype, const float* kScale, void* metaMin, void* metaMax, int metaDtype,
                           const int* pages, const int* fills, int numPages, int pageSize, int numKvHeads, int headDim,
                           cudaStream_t stream) {
  if (numPages == 0) return;
  if (kvDtype == KV_I8 && kScale == nullptr) throw ArgError("rebuildMetadata: int8 KV needs kScale");
  if (kvDtype == KV_I8)
    rebuildKernel<int8_t><<<numPages, 256, 0, stream>>>(static_cast<const int8_t*>(kCache), kScale, metaMin, metaMax, metaDtype,
                                                         pages, fills, pageSize, numKvHeads, headDim);
  else if (kvDtype == KV_F16)
    rebuildKernel<__half><<<numPages, 256, 0, stream>>>(static_cast<const __half*>(kCache), nullptr, metaMin, metaMax, metaDtype,
                                                         pages, fills, pageSize, numKvHeads, headDim);
  else
    rebuildKernel<float><<<numPages, 256, 0, stream>>>(static_cast<const float*>(kCache), nullptr, metaMin, metaMax, metaDtype,
                                                        pages, fills, pageSize, numKvHeads, headDim);
  checkLaunch("rebuildKernel");
}

struct CachePtrs {
  void* p[64];
};

/** One CTA per cache buffer; entries in order (a later entry may read an earlier one's output). */
__global__ void copyTokensKernel(CachePtrs caches, int elemBytes, const int* src, const int* dst, int count, long rowBytes) {
  char* base = static_cast<char*>(caches.p[blockIdx.x]);
  for (int i = 0; i < count; i++) {
    const long s = (long)src[i] * rowBytes, d = (long)dst[i] * rowBytes;
    if (s != d)
      for (long b = threadIdx.x * 4L; b < rowBytes; b += blockDim.x * 4L)
        *reinterpret_cast<uint32_t*>(base + d + b) = *reinterpret_cast<const uint32_t*>(base + s + b);
    __syncthreads();
  }
}

void launchCopyTokens(void* const* caches, int numCaches, int elemBytes, const int* src, const int* dst, int count, long rowElems,
                      cudaStream_t stream) {
  if (count == 0 || numCaches == 0) return;
  const long rowBytes = rowElems * elemBytes;
  if (rowBytes % 4 != 0) throw ArgError("copyTokens: a token row must be a multiple of 4 bytes");
  for (int c0 = 0; c0 < numCaches; c0 += 64) {
    CachePtrs ptrs{};
    const int n = std::min(64, numCaches - c0);
    for (int i = 0; i < n; i++) ptrs.p[i] = caches[c0 + i];
    copyTokensKernel<<<n, 256, 0, stream>>>(ptrs, elemBytes, src, dst, count, rowBytes);
    checkLaunch("copyTokensKernel");
  }
}

/** Deterministic pseudo-random normal-ish value i (sum of uniforms), mean 0, standard deviation `scale`. */
__device__ __forceinline__ float randomValue(long i, uint32_t seed, float scale) {
  uint32_t h = (uint32_t)i * 0x9e3779b1u ^ seed ^ (uint32_t)(i >> 32) * 0x85ebca6bu;
  float acc = 0.f;
#pragma unroll
  for (int r = 0; r < 4; r++) {
    h ^= h >> 16;
    h *= 0x7feb352du;
    h ^= h >> 15;
    h *= 0x846ca68bu;
    h ^= h >> 16;
    acc += (h >> 8) * (1.f / 16777216.f);
  }
  return (acc - 2.f) * 1.7320508f * scale;  // variance of 4 uniforms is 1/3
}

/** Pseudo-random values for benchmarks and tests on large pools. */
__global__ void randomFillKernel(void* dst, int dtype, long count, uint32_t seed, float scale) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < count; i += (long)gridDim.x * blockDim.x) {
    const float v = randomValue(i, seed, scale);
    if (dtype == 1) static_cast<__half*>(dst)[i] = __float2half_rn(v);
    else static_cast<float*>(dst)[i] = v;
  }
}

/**
 * int8: the same values quantised row by row (rows of `rowLen`, one scale each) exactly as the
 * append does, so the cache holds what appending those values would have stored. One warp per row.
 */
__global__ void randomFillInt8Kernel(int8_t* dst, float* scales, long rows, int rowLen, uint32_t seed, float scale) {
  const int lane = threadIdx.x & 31;
  const long warps = (long)gridDim.x * (blockDim.x >> 5);
  for (long r = blockIdx.x * (long)(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const long base = r * rowLen;
    float absmax = 0.f;
    for (int d = lane; d < rowLen; d += 32) absmax = fmaxf(absmax, fabsf(randomValue(base + d, seed, scale)));
    const float s = int8Scale(warpMax(absmax));
    for (int d = lane; d < rowLen; d += 32) dst[base + d] = int8Quantize(randomValue(base + d, seed, scale), s);
    if (lane == 0) scales[r] = s;
  }
}

void launchRandomFill(void* dst, int dtype, long count, uint32_t seed, float scale, cudaStream_t stream) {
  if (count == 0) return;
  const int blocks = (int)std::min<long>((count + 255) / 256, 16384);
  randomFillKernel<<<blocks, 256, 0, stream>>>(dst, dtype, count, seed, scale);
  checkLaunch("randomFillKernel");
}

void launchRandomFillInt8(int8_t* dst, float* scales, long rows, int rowLen, uint32_t seed, float scale, cudaStream_t stream) {
  if (rows == 0) return;
  if (rowLen <= 0) throw ArgError("randomFill: rowLen must be positive, got " + std::to_string(rowLen));
  const int blocks = (int)std::min<long>((rows + 7) / 8, 16384);
  randomFillInt8Kernel<<<blocks, 256, 0, stream>>>(dst, scales, rows, rowLen, seed, scale);
  checkLaunch("randomFillInt8Kernel");
}

}  // namespace ts
