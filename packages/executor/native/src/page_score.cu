// Quest page scores for the JavaScript policy route (the `TinyServePageScore` kernel): for
// each chosen decode sequence, KV head and page, the upper bound of q.k over the page's key box,
// sum over channels of max(q*lo, q*hi), aggregated over the GQA group's query heads by max or
// sum. The products of two floats are exact in double, and each thread sums its page's terms in
// double in the order the TypeScript reference (`scorePages`) does, channel by channel per head,
// head by head: the float32 results are bit-identical to the reference, so the policy in
// JavaScript picks exactly the pages it would pick from scores computed on the CPU.
#include "common.cuh"
#include "kernels.h"

namespace ts {

constexpr int SCORE_THREADS = 128;  // pages per CTA, one per thread
constexpr int SCORE_HEADS = 8;      // heads summed per pass over a box (registers)
constexpr int SCORE_SMEM_FLOATS = 12 * 1024;

int pageScoreMaxQueryFloats() { return SCORE_SMEM_FLOATS; }

/**
 * One CTA: up to SCORE_THREADS pages of one (item, KV head), the group's queries staged in
 * shared memory (every thread reads the same query element: a broadcast). A thread keeps the
 * running sums of up to SCORE_HEADS heads, so a box is read once per SCORE_HEADS heads; each
 * head's sum still runs over the channels in order, as the reference's does.
 */
__global__ void __launch_bounds__(SCORE_THREADS) pageScoreKernel(PageScoreArgs a) {
  extern __shared__ float qs[];
  const int pair = blockIdx.y;
  const int item = pair / a.numKvHeads, kvh = pair % a.numKvHeads;
  const int seq = a.itemSeq[item];
  const int base = a.pageIndptr[seq], np = a.pageIndptr[seq + 1] - base;
  const int p0 = blockIdx.x * SCORE_THREADS;
  if (p0 >= np) return;  // the whole CTA: before any barrier
  const int G = a.groupSize, D = a.headDim;
  const float* q = a.q + (long)a.itemRow[item] * a.qStride + (long)kvh * G * D;
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) qs[i] = q[i];
  __syncthreads();
  const int p = p0 + threadIdx.x;
  if (p >= np) return;
  float* out = a.out + (long)a.itemOut[item] + (long)kvh * np + p;
  const long box = ((long)__ldg(a.pageIndices + base + p) * a.numKvHeads + kvh) * D;
  {
    // An empty page's box is inverted (min > max); the reference looks at channel 0.
    float lo[8], hi[8];
    loadBox8(a.metaMin, box, a.metaDtype, lo);
    loadBox8(a.metaMax, box, a.metaDtype, hi);
    if (lo[0] > hi[0]) {
      *out = -INFINITY;
      return;
    }
  }
  const bool sum = a.aggregateSum != 0;
  double agg = sum ? 0.0 : -(double)INFINITY;
  for (int g0 = 0; g0 < G; g0 += SCORE_HEADS) {
    const int gn = min(SCORE_HEADS, G - g0);
    double s[SCORE_HEADS];
#pragma unroll
    for (int j = 0; j < SCORE_HEADS; j++) s[j] = 0.0;
    for (int c0 = 0; c0 < D; c0 += 8) {
      float lo[8], hi[8];
      loadBox8(a.metaMin, box + c0, a.metaDtype, lo);
      loadBox8(a.metaMax, box + c0, a.metaDtype, hi);
#pragma unroll
      for (int j = 0; j < SCORE_HEADS; j++) {
        if (j < gn) {
          const float* qg = qs + (g0 + j) * D + c0;
#pragma unroll
          for (int c = 0; c < 8; c++) {
            const double qd = qg[c];
            // Exact products (24 + 24 significant bits), so contraction into an FMA changes nothing.
            const double x = qd * (double)lo[c], y = qd * (double)hi[c];
            s[j] += x > y ? x : y;
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < SCORE_HEADS; j++)
      if (j < gn) agg = sum ? agg + s[j] : (s[j] > agg ? s[j] : agg);
  }
  *out = (float)agg;  // round to nearest even, as a Float32Array store
}

void launchPageScore(const PageScoreArgs& a, int maxPages, cudaStream_t stream) {
  if (a.numItems == 0 || maxPages == 0) return;
  const int smem = a.groupSize * a.headDim * 4;
  if (a.groupSize * a.headDim > SCORE_SMEM_FLOATS)
    throw ArgError("pageScore: a group of " + std::to_string(a.groupSize) + " query heads of dim " + std::to_string(a.headDim) +
                   " exceeds the " + std::to_string(SCORE_SMEM_FLOATS) + " query floats a CTA stages");
  const dim3 grid(ceilDiv(maxPages, SCORE_THREADS), a.numItems * a.numKvHeads);
  pageScoreKernel<<<grid, SCORE_THREADS, smem, stream>>>(a);
  checkLaunch("pageScoreKernel");
}

}  // namespace ts
