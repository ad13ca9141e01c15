// The fused query-aware sparse decode step, one cooperative launch per layer:
//   1. score every page of every (sequence, KV head) from its key bounding box (Quest's upper
//      bound of q.k, the group's query heads aggregated by max), reading only the metadata;
//   2. the last CTA to finish scoring a (sequence, KV head) selects its top-K pages (sinks
//      and the current page forced, ties to the lower page, as the TypeScript policy does);
//   3. attend over the selected pages only, split across CTAs; each waits for its pair's
//      selection only (a flag), so attention overlaps the scoring of other pairs;
//   4. the last CTA of each split group merges the splits.
// The launch is cooperative so that every CTA is resident and the waits cannot deadlock.
#include "block_scan.cuh"
#include "decode_core.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace ts {

constexpr int SPARSE_WARPS = 4;
constexpr int SPARSE_THREADS = SPARSE_WARPS * 32;

/** Order-preserving map of floats to unsigned keys (larger float, larger key). */
__device__ __forceinline__ unsigned floatKey(float s) {
  const unsigned u = __float_as_uint(s + 0.0f);  // -0 becomes +0, as JavaScript compares them
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float loadMeta(const void* p, long i, int dtype) {
  return dtype == META_F16 ? __half2float(__ldg(static_cast<const __half*>(p) + i)) : __ldg(static_cast<const float*>(p) + i);
}

/** 8 consecutive metadata channels starting at i (i a multiple of 8). */
__device__ __forceinline__ void loadMeta8(const void* p, long i, int dtype, float (&out)[8]) {
  if (dtype == META_F16) {
    const uint4 r = __ldg(reinterpret_cast<const uint4*>(static_cast<const __half*>(p) + i));
    const __half2* h = reinterpret_cast<const __half2*>(&r);
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const float2 f = __half22float2(h[j]);
      out[2 * j] = f.x;
      out[2 * j + 1] = f.y;
    }
  } else {
    const float4* f = reinterpret_cast<const float4*>(static_cast<const float*>(p) + i);
    const float4 a = __ldg(f), b = __ldg(f + 1);
    out[0] = a.x, out[1] = a.y, out[2] = a.z, out[3] = a.w;
    out[4] = b.x, out[5] = b.y, out[6] = b.z, out[7] = b.w;
  }
}


/**
 * Quest bounds of pages [p0, p1) of one (sequence, KV head): a box is read by D / 8 lanes, 8
 * channels each (16 or 32 bytes, coalesced), four boxes per lane in flight; each head's
 * partial sums are reduced across those lanes, then aggregated over the group (max or sum).
 * `qs` holds the group's queries, [G][D], in shared memory.
 */
template <int D>
__device__ void scorePages(const SparseArgs& a, const float* qs, int G, const int* pages, int kvh, int p0, int p1, float* out) {
  constexpr int TPR = D / 8, RPW = 32 / TPR, U = 4;
  const DecodeArgs& d = a.d;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int row = lane / TPR, col = (lane % TPR) * 8;
  const bool sum = a.aggregateSum != 0;
  for (int pb = p0 + warp * RPW * U; pb < p1; pb += nw * RPW * U) {
    float lo[U][8], hi[U][8];
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int p = pb + u * RPW + row;
      if (p < p1) {
        const long box = ((long)pages[p] * d.numKvHeads + kvh) * D + col;
        loadMeta8(a.metaMin, box, a.metaDtype, lo[u]);
        loadMeta8(a.metaMax, box, a.metaDtype, hi[u]);
      } else {
#pragma unroll
        for (int c = 0; c < 8; c++) lo[u][c] = hi[u][c] = 0.f;
      }
    }
    float best[U];
#pragma unroll
    for (int u = 0; u < U; u++) best[u] = sum ? 0.f : -INFINITY;
    for (int g = 0; g < G; g++) {
      const float4 qa = *reinterpret_cast<const float4*>(qs + g * D + col);
      const float4 qb = *reinterpret_cast<const float4*>(qs + g * D + col + 4);
      const float qv[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
#pragma unroll
      for (int u = 0; u < U; u++) {
        float s = 0.f;
#pragma unroll
        for (int c = 0; c < 8; c++) s += fmaxf(qv[c] * lo[u][c], qv[c] * hi[u][c]);
#pragma unroll
        for (int o = TPR / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        best[u] = sum ? best[u] + s : fmaxf(best[u], s);
      }
    }
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int p = pb + u * RPW + row;
      // An empty page's box is inverted (min > max) in every channel; its first lane sees channel 0.
      if (col == 0 && p < p1) __stcg(out + p, lo[u][0] > hi[u][0] ? -INFINITY : best[u]);
    }
  }
}

/** Bank-conflict-free index of page p's key (threads also walk contiguous ranges of keys). */
__device__ __forceinline__ int skew(int p) { return p + (p >> 5); }

/**
 * Top-K of one (sequence, KV head) over its n page scores, written as ascending logical pages:
 * forced pages (the first `sinks` and the last) are kept when non-empty; of the rest, the
 * `K - kept` highest scores, ties to the lower page; empty pages (-inf) and NaN never.
 * K >= n keeps every page (dense), as the policy does. Radix select over the scores' order-
 * preserving keys held in shared memory (`keys`: skew(n) + 1 words), with warp-aggregated
 * histogram updates; then one pass over thread-contiguous ranges writes the pages in order.
 */
__device__ void selectPages(const float* scores, int n, int K, int sinks, int* sel, int* count, unsigned* keys) {
  __shared__ int hist[256];
  __shared__ int scratch[33];
  __shared__ int pick[2];
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31;
  if (K >= n) {
    for (int p = tid; p < n; p += nt) __stcg(sel + p, p);
    if (tid == 0) __stcg(count, n);
    return;
  }
  const int nSinks = min(sinks, n);
  int keptLocal = 0, candLocal = 0;
#pragma unroll 8
  for (int p = tid; p < n; p += nt) {
    const float s = __ldcg(scores + p);
    const bool valid = s > -INFINITY;
    const bool forced = p < nSinks || p == n - 1;
    keys[skew(p)] = (!forced && valid) ? floatKey(s) : 0u;  // 0: not a candidate (no float maps to it)
    keptLocal += forced && valid;
    candLocal += !forced && valid;
  }
  const int kept = blockSumInt(keptLocal, scratch);
  const int cand = blockSumInt(candLocal, scratch);
  const int kRem = K - kept;
  // mode 0: no candidate chosen, 1: all, 2: above the radix-selected threshold (plus ties)
  const int mode = kRem <= 0 ? 0 : kRem >= cand ? 1 : 2;
  unsigned thr = 0;
  int ties = 0;
  if (mode == 2) {
    unsigned prefix = 0, mask = 0;
    int kk = kRem;
    for (int pass = 0; pass < 4; pass++) {
      const int shift = 24 - 8 * pass;
      __syncthreads();
      for (int i = tid; i < 256; i += nt) hist[i] = 0;
      __syncthreads();
      for (int p = tid; p < n; p += nt) {
        const unsigned key = keys[skew(p)];
        if (key != 0u && (key & mask) == prefix) {
          const unsigned bin = (key >> shift) & 255u;
          const unsigned peers = __match_any_sync(__activemask(), bin);
          if (lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
        }
      }
      __syncthreads();
      if (tid < 32) {
        int local[8], tot = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) {
          local[j] = hist[tid * 8 + j];
          tot += local[j];
        }
        int suffix = tot;  // keys in this lane's bins and every higher bin
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int v = __shfl_down_sync(0xffffffffu, suffix, o);
          if (tid + o < 32) suffix += v;
        }
        const int above = suffix - tot;
        if (above < kk && kk <= suffix) {
          int acc = above;
          for (int j = 7; j >= 0; j--) {
            if (acc + local[j] >= kk) {
              pick[0] = tid * 8 + j;
              pick[1] = acc;
              break;
            }
            acc += local[j];
          }
        }
      }
      __syncthreads();
      prefix |= unsigned(pick[0]) << shift;
      mask |= 0xFFu << shift;
      kk -= pick[1];
    }
    thr = prefix;
    ties = kk;
  }
  // Thread-contiguous ranges: ties ranked in page order, then the chosen pages written in order.
  const int per = (n + nt - 1) / nt;
  const int b0 = min(n, tid * per), b1 = min(n, b0 + per);
  int tiesLocal = 0;
  if (mode == 2)
    for (int p = b0; p < b1; p++) tiesLocal += keys[skew(p)] == thr;
  int tieTotal;
  const int tieBase = blockExclusiveScan(tiesLocal, tieTotal, scratch);
  auto chosen = [&](int p, int& tieIdx) -> bool {
    if (p < nSinks || p == n - 1) return __ldcg(scores + p) > -INFINITY;
    const unsigned key = keys[skew(p)];
    if (key == 0u || mode == 0) return false;
    if (mode == 1 || key > thr) return true;
    return key == thr && tieBase + tieIdx++ < ties;
  };
  int chosenLocal = 0;
  int tieIdx = 0;
  for (int p = b0; p < b1; p++) chosenLocal += chosen(p, tieIdx);
  int chosenTotal;
  int pos = blockExclusiveScan(chosenLocal, chosenTotal, scratch);
  tieIdx = 0;
  for (int p = b0; p < b1; p++)
    if (chosen(p, tieIdx)) __stcg(sel + pos++, p);
  if (tid == 0) __stcg(count, chosenTotal);
}

template <class Core>
__global__ void __launch_bounds__(SPARSE_THREADS) sparseDecodeKernel(SparseArgs a) {
  extern __shared__ float smem[];
  using KV = typename Core::KvType;
  constexpr int D = Core::HEAD_DIM, GT = Core::GT;
  const DecodeArgs& d = a.d;
  const int G = d.groupSize;
  const int pairs = d.numSeqs * d.numKvHeads;
  const int chunksPerPair = (a.maxPages + a.scoreChunk - 1) / a.scoreChunk;
  __shared__ int lastFlag;

  // Phases 1-2: scores, then selection by the last scorer of each (sequence, KV head).
  const int scoreItems = (a.phases & 1) ? pairs * chunksPerPair : 0;
  for (int item = blockIdx.x; item < scoreItems; item += gridDim.x) {
    const int pair = item / chunksPerPair, chunk = item % chunksPerPair;
    const int seq = pair / d.numKvHeads, kvh = pair % d.numKvHeads;
    const int base = d.pageIndptr[seq], np = d.pageIndptr[seq + 1] - base;
    __syncthreads();
#pragma unroll 4
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) smem[i] = d.q[seq * d.qStride + (long)kvh * G * D + i];
    __syncthreads();
    const int p0 = min(np, chunk * a.scoreChunk), p1 = min(np, p0 + a.scoreChunk);
    scorePages<D>(a, smem, G, d.pageIndices + base, kvh, p0, p1, a.scores + (long)pair * a.maxPages);
    // The barrier orders every thread's scores before thread 0's fence (cumulativity): one
    // device-scope fence per item instead of one per thread.
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      lastFlag = atomicAdd(a.scoreCounters + pair, 1) == chunksPerPair - 1;
      if (lastFlag) __threadfence();
    }
    __syncthreads();
    if (lastFlag) {
      if (threadIdx.x == 0) a.scoreCounters[pair] = 0;
      selectPages(a.scores + (long)pair * a.maxPages, np, a.topK[seq], a.sinkPages, a.selected + (long)pair * a.maxPages,
                  a.selectedCount + pair, reinterpret_cast<unsigned*>(smem));
      // Publish: the pair's attenders may start (no grid-wide barrier, so attention overlaps
      // scoring). A select-only launch (phases 1) publishes nothing, so no flag is left set.
      __syncthreads();
      if (threadIdx.x == 0 && (a.phases & 2)) {
        __threadfence();
        atomicExch(a.ready + pair, 1);
      }
    }
  }

  // Phases 3-4: attention over the selected pages, split and merged.
  const int units = (a.phases & 2) ? pairs * d.headChunks : 0;
  for (int item = blockIdx.x; item < units * d.numSplits; item += gridDim.x) {
    const int unit = item / d.numSplits, split = item % d.numSplits;
    const int pair = unit / d.headChunks, chunk = unit % d.headChunks;
    const int seq = pair / d.numKvHeads, kvh = pair % d.numKvHeads;
    const int h0 = kvh * G + chunk * GT;
    const int gCount = min(GT, G - chunk * GT);
    const int base = d.pageIndptr[seq], np = d.pageIndptr[seq + 1] - base;
    if (a.phases & 1) {  // (with phases 2 alone, the previous launch's selection is used)
      // Every CTA finished its scoring items before any waits here, and the launch is
      // cooperative (all CTAs resident), so the pair's selector always gets to run.
      if (threadIdx.x == 0) {
        while (atomicAdd(a.ready + pair, 0) == 0) __nanosleep(64);
        __threadfence();
      }
      __syncthreads();
    }
    const int count = __ldcg(a.selectedCount + pair);
    const int per = (count + d.numSplits - 1) / d.numSplits;
    const int iBeg = min(count, split * per), iEnd = min(count, iBeg + per);
    const SelectedPages src{a.selected + (long)pair * a.maxPages, d.pageIndices + base, np, d.lastPageLen[seq], d.pageSize};
    __syncthreads();  // the previous item's merge may still read the scratch run() writes
    Core::run(d.q + seq * d.qStride + h0 * D, static_cast<const KV*>(d.kCache), static_cast<const KV*>(d.vCache), kvh,
              d.numKvHeads, d.pageSize, src, iBeg, iEnd, gCount, d.scaleLog2, smem);
    const bool merged = finishDecode<Core>(smem, d.numSplits, split, d.partial, d.counters, unit, d.out + seq * d.outStride + h0 * D, gCount);
    // The unit's last CTA has seen every split pass the wait: once all head chunks of the pair
    // are done, re-arm the pair's flags for the next launch.
    if (merged && threadIdx.x == 0 && (a.phases & 1)) {
      if (atomicAdd(a.pairDone + pair, 1) == d.headChunks - 1) {
        a.pairDone[pair] = 0;
        atomicExch(a.ready + pair, 0);
      }
    }
  }
}

template <class Core>
KernelInfo makeSparse() {
  return {reinterpret_cast<const void*>(&sparseDecodeKernel<Core>), Core::SMEM_FLOATS * 4, SPARSE_THREADS};
}

KernelInfo sparseDecodeKernel(int kvDtype, int headDim, int gt) {
  TS_DECODE_DISPATCH(kvDtype, headDim, makeSparse, SPARSE_WARPS);
  throw ArgError("sparse decode: no kernel for headDim " + std::to_string(headDim) + ", kv dtype " + std::to_string(kvDtype) +
                 ", " + std::to_string(gt) + " heads per CTA");
}

int sparseDecodeSmem(const KernelInfo& k, int groupSize, int headDim, int maxPages) {
  const int keys = (maxPages + (maxPages >> 5) + 1) * 4;
  return std::max(k.smemBytes, std::max(groupSize * headDim * 4, keys));
}

void launchSparseDecode(const SparseArgs& a, int kvDtype, int gridBlocks, cudaStream_t stream) {
  if (a.d.numSeqs == 0) return;
  const KernelInfo k = sparseDecodeKernel(kvDtype, a.d.headDim, a.d.headsPerCta);
  const int smem = sparseDecodeSmem(k, a.d.groupSize, a.d.headDim, a.maxPages);
  prepareKernel(k, smem);
  SparseArgs copy = a;
  void* params[] = {&copy};
  TS_CUDA(cudaLaunchCooperativeKernel(k.fn, dim3(gridBlocks), dim3(k.threads), params, smem, stream));
}

}  // namespace ts
