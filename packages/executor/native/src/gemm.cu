// fp32 matrix products for the tfjs backend's BatchMatMul / _FusedMatMul: a shared-memory
// tiled kernel, and a weight-streaming kernel for the few-row products of decode steps.
#include "common.cuh"
#include "kernels.h"

namespace ts {

constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4;

__global__ void __launch_bounds__(256) gemmTiledKernel(int M, int N, int K, const float* __restrict__ A, long strideA, bool transA,
                                                       const float* __restrict__ B, long strideB, bool transB,
                                                       const float* __restrict__ bias, float* __restrict__ C) {
  __shared__ float As[BK][BM + 4];
  __shared__ float Bs[BK][BN + 4];
  const float* a = A + blockIdx.z * strideA;
  const float* b = B + blockIdx.z * strideB;
  float* c = C + (long)blockIdx.z * M * N;
  const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
  const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
  float acc[TM][TN] = {};
  for (int k0 = 0; k0 < K; k0 += BK) {
    for (int i = threadIdx.x; i < BM * BK; i += 256) {
      // Consecutive threads walk the contiguous dimension of each operand.
      int mm, kk;
      if (transA) {
        mm = i % BM;
        kk = i / BM;
      } else {
        kk = i % BK;
        mm = i / BK;
      }
      const int m = m0 + mm, k = k0 + kk;
      As[kk][mm] = (m < M && k < K) ? (transA ? a[(long)k * M + m] : a[(long)m * K + k]) : 0.f;
    }
    for (int i = threadIdx.x; i < BN * BK; i += 256) {
      int nn, kk;
      if (transB) {
        kk = i % BK;
        nn = i / BK;
      } else {
        nn = i % BN;
        kk = i / BN;
      }
      const int n = n0 + nn, k = k0 + kk;
      Bs[kk][nn] = (n < N && k < K) ? (transB ? b[(long)n * K + k] : b[(long)k * N + n]) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; kk++) {
      float av[TM], bv[TN];
#pragma unroll
      for (int i = 0; i < TM; i++) av[i] = As[kk][ty * TM + i];
#pragma unroll
      for (int j = 0; j < TN; j++) bv[j] = Bs[kk][tx * TN + j];
#pragma unroll
      for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; i++) {
    const int m = m0 + ty * TM + i;
    if (m >= M) continue;
#pragma unroll
    for (int j = 0; j < TN; j++) {
      const int n = n0 + tx * TN + j;
      if (n < N) c[(long)m * N + n] = acc[i][j] + (bias ? bias[n] : 0.f);
    }
  }
}

constexpr int SKINNY_MAX_M = 16;
constexpr int SKINNY_WARPS = 8;

/** M <= 16, B not transposed: lane = column (coalesced rows of B), warp = a slice of K. */
__global__ void __launch_bounds__(SKINNY_WARPS * 32) gemmSkinnyKernel(int M, int N, int K, const float* __restrict__ A, long strideA,
                                                                      bool transA, const float* __restrict__ B, long strideB,
                                                                      const float* __restrict__ bias, float* __restrict__ C) {
  __shared__ float part[SKINNY_WARPS][SKINNY_MAX_M][33];
  const float* a = A + blockIdx.z * strideA;
  const float* b = B + blockIdx.z * strideB;
  float* c = C + (long)blockIdx.z * M * N;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = blockIdx.x * 32 + lane;
  float acc[SKINNY_MAX_M] = {};
  if (n < N) {
    for (int k = warp; k < K; k += SKINNY_WARPS) {
      const float bv = b[(long)k * N + n];
#pragma unroll
      for (int m = 0; m < SKINNY_MAX_M; m++)
        if (m < M) acc[m] = fmaf(transA ? a[(long)k * M + m] : a[(long)m * K + k], bv, acc[m]);
    }
  }
#pragma unroll
  for (int m = 0; m < SKINNY_MAX_M; m++) part[warp][m][lane] = acc[m];
  __syncthreads();
  for (int idx = threadIdx.x; idx < M * 32; idx += blockDim.x) {
    const int m = idx / 32, l = idx % 32, nn = blockIdx.x * 32 + l;
    if (nn >= N) continue;
    float s = bias ? bias[nn] : 0.f;
#pragma unroll
    for (int w = 0; w < SKINNY_WARPS; w++) s += part[w][m][l];
    c[(long)m * N + nn] = s;
  }
}

void launchGemm(int batch, int M, int N, int K, const float* A, long strideA, bool transA, const float* B, long strideB, bool transB,
                const float* bias, float* C, cudaStream_t stream) {
  if (batch == 0 || M == 0 || N == 0) return;
  if (M <= SKINNY_MAX_M && !transB) {
    gemmSkinnyKernel<<<dim3((N + 31) / 32, 1, batch), SKINNY_WARPS * 32, 0, stream>>>(M, N, K, A, strideA, transA, B, strideB, bias, C);
    checkLaunch("gemmSkinnyKernel");
    return;
  }
  gemmTiledKernel<<<dim3((N + BN - 1) / BN, (M + BM - 1) / BM, batch), 256, 0, stream>>>(M, N, K, A, strideA, transA, B, strideB,
                                                                                         transB, bias, C);
  checkLaunch("gemmTiledKernel");
}

}  // namespace ts
