// Causal paged attention of new tokens (prompt chunks, or any mix of prefill and decode):
// one CTA takes a block of consecutive tokens of one sequence and up to 8 query heads of one
// KV head, stages their queries in shared memory and streams the sequence's keys and values
// through it in tiles, with an online softmax per (token, head) row. CUDA cores, fp32 math;
// fp16 and int8 (row scale applied) K/V are decoded to fp32 as they are staged.
#include "common.cuh"
#include "kernels.h"

namespace ts {

constexpr int PF_THREADS = 128;
constexpr int PF_ROWS = 64;  // (token, head) rows per CTA: two threads per row
constexpr int PF_KT = 32;    // keys per tile: 16 per thread of a row pair

template <int D>
constexpr int prefillSmemFloats() {
  return PF_ROWS * (D + 1) + PF_KT * (D + 1) + PF_KT * D + PF_ROWS * (PF_KT + 1);
}

template <typename KV, int D>
__global__ void __launch_bounds__(PF_THREADS) prefillKernel(PrefillArgs a) {
  extern __shared__ float sm[];
  float* Qs = sm;                        // [PF_ROWS][D + 1] (padded: rows read in parallel)
  float* Ks = Qs + PF_ROWS * (D + 1);    // [PF_KT][D + 1]
  float* Vs = Ks + PF_KT * (D + 1);      // [PF_KT][D]
  float* Ps = Vs + PF_KT * D;            // [PF_ROWS][PF_KT + 1]
  const KV* kc = static_cast<const KV*>(a.kCache);
  const KV* vc = static_cast<const KV*>(a.vCache);
  const int blk = blockIdx.x, y = blockIdx.y;
  const int kvHead = y / a.headChunks, chunk = y % a.headChunks;
  const int gCount = min(a.headsPerChunk, a.groupSize - chunk * a.headsPerChunk);
  const int h0 = kvHead * a.groupSize + chunk * a.headsPerChunk;
  const int seq = a.blockSeq[blk], row0 = a.blockRow[blk], pos0 = a.blockPos[blk], cnt = a.blockCount[blk];
  const int R = cnt * gCount;
  for (int idx = threadIdx.x; idx < R * D; idx += PF_THREADS) {
    const int r = idx / D, dd = idx % D;
    Qs[r * (D + 1) + dd] = a.q[(long)(row0 + r / gCount) * a.qStride + (long)(h0 + r % gCount) * D + dd] * a.scaleLog2;
  }
  const int r = threadIdx.x >> 1, half = threadIdx.x & 1;
  const bool rowValid = r < R;
  const int qpos = pos0 + (rowValid ? r / gCount : 0);
  constexpr int DH = D / 2;
  float acc[DH];
#pragma unroll
  for (int i = 0; i < DH; i++) acc[i] = 0.f;
  float m = -INFINITY, l = 0.f;
  const int maxPos = pos0 + cnt - 1;
  const int base = a.pageIndptr[seq];
  const long rowStride = (long)a.numKvHeads * D;
  for (int kp0 = 0; kp0 <= maxPos; kp0 += PF_KT) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < PF_KT * D; idx += PF_THREADS) {
      const int k = idx / D, dd = idx % D, kp = kp0 + k;
      float kv = 0.f, vv = 0.f;
      if (kp <= maxPos) {
        const long tokenRow = (long)a.pageIndices[base + kp / a.pageSize] * a.pageSize + kp % a.pageSize;
        const long off = tokenRow * rowStride + (long)kvHead * D + dd;
        kv = Kv<KV>::toFloat1(kc[off]);
        vv = Kv<KV>::toFloat1(vc[off]);
        if constexpr (Kv<KV>::SCALED) {
          // q * scale in fp32: exactly the value the TypeScript dequantisation stores.
          const long si = tokenRow * a.numKvHeads + kvHead;
          kv *= __ldg(a.kScale + si);
          vv *= __ldg(a.vScale + si);
        }
      }
      Ks[k * (D + 1) + dd] = kv;
      Vs[k * D + dd] = vv;
    }
    __syncthreads();
    float s[16];
#pragma unroll
    for (int j = 0; j < 16; j++) s[j] = 0.f;
    for (int d = 0; d < D; d++) {
      const float qd = Qs[r * (D + 1) + d];
#pragma unroll
      for (int j = 0; j < 16; j++) s[j] = fmaf(qd, Ks[(half * 16 + j) * (D + 1) + d], s[j]);
    }
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < 16; j++) {
      const int kp = kp0 + half * 16 + j;
      if (!rowValid || kp > qpos) s[j] = -INFINITY;
      mx = fmaxf(mx, s[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    const float mNew = fmaxf(m, mx);
    const float alpha = safeScale(m, mNew);
    float lsum = 0.f;
#pragma unroll
    for (int j = 0; j < 16; j++) {
      const float p = mNew == -INFINITY ? 0.f : exp2f(s[j] - mNew);
      Ps[r * (PF_KT + 1) + half * 16 + j] = p;
      lsum += p;
    }
    l = l * alpha + lsum;
#pragma unroll
    for (int i = 0; i < DH; i++) acc[i] *= alpha;
    m = mNew;
    __syncthreads();
    for (int k = 0; k < PF_KT; k++) {
      const float p = Ps[r * (PF_KT + 1) + k];
      const float* v = Vs + k * D + half * DH;
#pragma unroll
      for (int i = 0; i < DH; i++) acc[i] = fmaf(p, v[i], acc[i]);
    }
  }
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  if (rowValid) {
    float* o = a.out + (long)(row0 + r / gCount) * a.outStride + (long)(h0 + r % gCount) * D + half * DH;
    const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
    for (int i = 0; i < DH; i++) o[i] = acc[i] * inv;
  }
}

template <typename KV, int D>
void launchPrefillT(const PrefillArgs& a, cudaStream_t stream) {
  const int smem = prefillSmemFloats<D>() * 4;
  static bool attributeSet = false;  // per instantiation
  if (!attributeSet) {
    TS_CUDA(cudaFuncSetAttribute(prefillKernel<KV, D>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    attributeSet = true;
  }
  prefillKernel<KV, D><<<dim3(a.numBlocks, a.numKvHeads * a.headChunks), PF_THREADS, smem, stream>>>(a);
  checkLaunch("prefillKernel");
}

bool prefillSupported(int headDim) {
  return headDim == 8 || headDim == 16 || headDim == 32 || headDim == 64 || headDim == 128;
}

int prefillBlockTokens(int headsPerChunk) { return std::max(1, PF_ROWS / headsPerChunk); }

template <typename KV>
void launchPrefillKv(const PrefillArgs& a, cudaStream_t stream) {
  switch (a.headDim) {
    case 8: return launchPrefillT<KV, 8>(a, stream);
    case 16: return launchPrefillT<KV, 16>(a, stream);
    case 32: return launchPrefillT<KV, 32>(a, stream);
    case 64: return launchPrefillT<KV, 64>(a, stream);
    case 128: return launchPrefillT<KV, 128>(a, stream);
    default: throw ArgError("prefill attention: headDim " + std::to_string(a.headDim) + " is not supported (8, 16, 32, 64, 128)");
  }
}

void launchPrefill(const PrefillArgs& a, int kvDtype, cudaStream_t stream) {
  if (a.numBlocks == 0) return;
  if (kvDtype == KV_F16) return launchPrefillKv<__half>(a, stream);
  if (kvDtype == KV_F32) return launchPrefillKv<float>(a, stream);
  if (kvDtype == KV_I8) return launchPrefillKv<int8_t>(a, stream);
  throw ArgError("prefill attention: kv dtype " + std::to_string(kvDtype) + " is not supported");
}

}  // namespace ts
