// Attention statistics of a step, for plugins that ask for them (`collectAttentionStats`): the
// attention distribution of each sequence's last new token per query head, its entropy, and the
// probability of each position averaged over the heads. Not on the decode path: a separate pass
// over the attended keys, only in steps that ask. Each sequence and head keeps its logits, then
// its probabilities, in scratch, so the per-position mean sums heads in a fixed order (the same
// order as the TypeScript reference, `attentionStatsOverPages`).
#include "common.cuh"
#include "kernels.h"

namespace ts {

constexpr int STATS_THREADS = 256;

/** q . k over one stored key row (int8: times the row's scale); `q` is in shared memory, pre-scaled. */
template <typename KV>
__device__ __forceinline__ float statsLogit(const float* q, const KV* __restrict__ k, const float* __restrict__ kScale, long row, int D) {
  using K = Kv<KV>;
  float s = 0.f;
  for (int c = 0; c < D; c += K::VEC) {
    float kf[K::VEC];
    K::toFloat(K::load(k + row * D + c), kf);
#pragma unroll
    for (int v = 0; v < K::VEC; v++) s = fmaf(q[c + v], kf[v], s);
  }
  if constexpr (K::SCALED) s *= __ldg(kScale + row);
  return s;
}

/**
 * One CTA per (sequence, query head): logits of the attended positions into the head's scratch
 * row (0 elsewhere), their max and normaliser, then probabilities in place and the entropy. A
 * thread visits the same positions in every pass, so only the reductions synchronise.
 */
template <typename KV>
__global__ void __launch_bounds__(STATS_THREADS) headStatsKernel(StatsArgs a) {
  extern __shared__ float qs[];
  __shared__ float red[32];
  const int s = blockIdx.x, h = blockIdx.y, j = h / a.groupSize, D = a.headDim;
  const int base = a.pageIndptr[s], np = a.pageIndptr[s + 1] - base;
  const int len = (np - 1) * a.pageSize + a.lastPageLen[s];
  const int row = a.rows[s];
  float* P = a.probs + ((long)s * a.numQHeads + h) * a.probStride;
  for (int i = threadIdx.x; i < len; i += blockDim.x) P[i] = 0.f;
  if (row < 0) {
    if (threadIdx.x == 0) a.headEntropy[s * a.numQHeads + h] = 0.f;
    return;
  }
  for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = a.q[row * a.qStride + (long)h * D + d] * a.scale;
  __syncthreads();
  const KV* k = static_cast<const KV*>(a.kCache);
  const int l0 = a.listIndptr[s * a.numKvHeads + j], n = (a.listIndptr[s * a.numKvHeads + j + 1] - l0) * a.pageSize;
  auto position = [&](int t) { return a.listPages[l0 + t / a.pageSize] * a.pageSize + t % a.pageSize; };

  float mx = -INFINITY;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const int pos = position(t);
    if (pos >= len) continue;
    const long r = ((long)a.pageIndices[base + pos / a.pageSize] * a.pageSize + pos % a.pageSize) * a.numKvHeads + j;
    const float x = statsLogit<KV>(qs, k, a.kScale, r, D);
    P[pos] = x;
    mx = fmaxf(mx, x);
  }
  mx = blockMax(mx, red);
  float sum = 0.f;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const int pos = position(t);
    if (pos < len) sum += expf(P[pos] - mx);
  }
  sum = blockSum(sum, red);
  float ent = 0.f;
  for (int t = threadIdx.x; t < n; t += blockDim.x) {
    const int pos = position(t);
    if (pos >= len) continue;
    const float p = expf(P[pos] - mx) / sum;
    P[pos] = p;
    if (p > 0.f) ent -= p * logf(p);
  }
  ent = blockSum(ent, red);
  if (threadIdx.x == 0) a.headEntropy[s * a.numQHeads + h] = n > 0 ? ent : 0.f;
}

/** Per (sequence, block of positions): the heads' mean probability; block 0 also the mean entropy. */
__global__ void __launch_bounds__(STATS_THREADS) meanStatsKernel(StatsArgs a) {
  const int s = blockIdx.x, pos = blockIdx.y * blockDim.x + threadIdx.x;
  const int np = a.pageIndptr[s + 1] - a.pageIndptr[s];
  const int len = (np - 1) * a.pageSize + a.lastPageLen[s];
  const float share = 1.f / a.numQHeads;
  if (pos < len) {
    const float* P = a.probs + (long)s * a.numQHeads * a.probStride + pos;
    float m = 0.f;
    for (int h = 0; h < a.numQHeads; h++) m += P[(long)h * a.probStride] * share;
    a.mass[a.massOffset[s] + pos] = m;
  }
  if (blockIdx.y == 0 && threadIdx.x == 0) {
    float e = 0.f;
    for (int h = 0; h < a.numQHeads; h++) e += a.headEntropy[s * a.numQHeads + h];
    a.entropy[s] = e * share;
  }
}

void launchAttentionStats(const StatsArgs& a, int kvDtype, int maxLen, cudaStream_t stream) {
  if (a.numSeqs == 0) return;
  const dim3 heads(a.numSeqs, a.numQHeads);
  const size_t smem = (size_t)a.headDim * 4;
  if (kvDtype == KV_F16) headStatsKernel<__half><<<heads, STATS_THREADS, smem, stream>>>(a);
  else if (kvDtype == KV_I8) headStatsKernel<int8_t><<<heads, STATS_THREADS, smem, stream>>>(a);
  else headStatsKernel<float><<<heads, STATS_THREADS, smem, stream>>>(a);
  checkLaunch("headStatsKernel");
  meanStatsKernel<<<dim3(a.numSeqs, ceilDiv(std::max(maxLen, 1), STATS_THREADS)), STATS_THREADS, 0, stream>>>(a);
  checkLaunch("meanStatsKernel");
}

}  // namespace ts
