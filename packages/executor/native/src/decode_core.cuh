// The attention core shared by the dense and the fused sparse decode kernels: one CTA
// attends the query heads of one KV head (up to GT of them) over a range of pages, split
// into per-warp online softmaxes that are merged at the end; split results across CTAs are
// merged flash-decoding style by the last CTA to finish (no second launch).
#pragma once
#include <type_traits>
#include "common.cuh"
#include "decode_args.h"

namespace ts {

constexpr int MAX_SPLITS = MAX_DECODE_SPLITS;

/**
 * Page lists hand out entries: the physical page, bitwise-negated for the sequence's last
 * (partly filled) page, whose length is `lastLen`.
 */
__device__ __forceinline__ void decodePageEntry(int e, int lastLen, int pageSize, int& phys, int& len) {
  phys = e < 0 ? ~e : e;
  len = e < 0 ? lastLen : pageSize;
}

/** Dense decode: logical page i of the sequence. */
struct DensePages {
  const int* indices;  // the sequence's physical pages
  int numPages;
  int lastLen;
  int pageSize;
  __device__ __forceinline__ int entry(int i) const {
    const int phys = __ldg(indices + i);
    return i == numPages - 1 ? ~phys : phys;
  }
};

/** Sparse decode: the i-th selected page, written earlier in the same launch as its entry. */
struct SelectedPages {
  const int* entries;
  int lastLen;
  int pageSize;
  __device__ __forceinline__ int entry(int i) const { return __ldcg(entries + i); }
};

/** A warp's pages as WarpPages hands them out, each entry loaded when asked for. */
template <class Pages, int NW>
struct DirectPages {
  const Pages& src;
  int first;
  __device__ __forceinline__ DirectPages(const Pages& s, int first_, int /*end*/) : src(s), first(first_) {}
  __device__ __forceinline__ void at(int j, int& phys, int& len) const {
    decodePageEntry(src.entry(first + j * NW), src.lastLen, src.pageSize, phys, len);
  }
};

/**
 * A warp's pages i = first + j * NW (j = 0, 1, ...) below `end`, their entries fetched 32 at a
 * time one block ahead (lane l holds entry 32 b + l): the K/V loads of a page never wait on a
 * dependent page-table load, which otherwise sits on every page's critical path (TinyLlama
 * heads on tensor cores, batch 8, 32K: 81.7 -> 78.4 us dense). `at` takes a warp-uniform j
 * that never decreases.
 */
template <class Pages, int NW>
struct WarpPages {
  const Pages& src;
  int first, end, block, cur, next;
  __device__ __forceinline__ WarpPages(const Pages& s, int first_, int end_) : src(s), first(first_), end(end_), block(0) {
    cur = fetch(0);
    next = fetch(1);
  }
  __device__ __forceinline__ int fetch(int b) const {
    const int i = first + (b * 32 + (int)(threadIdx.x & 31)) * NW;
    return i < end ? src.entry(i) : 0;
  }
  __device__ __forceinline__ void at(int j, int& phys, int& len) {
    const int b = j >> 5;
    if (b != block) {
      cur = b == block + 1 ? next : fetch(b);
      next = fetch(b + 1);
      block = b;
    }
    decodePageEntry(__shfl_sync(0xffffffffu, cur, j & 31), src.lastLen, src.pageSize, phys, len);
  }
};

template <typename KV, int D, int GT_, int NW>
struct DecodeCore {
  using K = Kv<KV>;
  using KvType = KV;
  static constexpr int HEAD_DIM = D;
  static constexpr int WARPS = NW;
  static constexpr int GT = GT_;
  static constexpr int VEC = K::VEC;
  /** Threads sharing one K/V row (each loads 16 bytes of it). */
  static constexpr int TPR = D / VEC;
  static_assert(TPR >= 1 && TPR <= 32 && (TPR & (TPR - 1)) == 0, "head dim must be VEC * 2^k, at most 32 * VEC");
  /** Rows a warp covers per load; U loads per thread per step keep several 16-byte loads in flight. */
  static constexpr int RPW = 32 / TPR;
  static constexpr int U = RPW >= 16 ? 1 : (16 / RPW > 4 ? 4 : 16 / RPW);
  static constexpr int SLOT = GT * (D + 2);
  /** Resident CTAs per SM the kernels' register budget is set for (1: the compiler's choice). */
  static constexpr int MIN_BLOCKS = 1;
  /** Per-warp results and the merged result. */
  static constexpr int SMEM_FLOATS = (NW + 1) * SLOT;

  /**
   * Attends heads [0, gCount) of `q` (rows of D floats, head-major) over pages [iBeg, iEnd) of
   * `src`. Leaves the CTA's merged (acc[GT][D], m[GT], l[GT]) at `result(smem)`, m in log2 units.
   * int8 KV: `ksc` / `vsc` hold the rows' scales (ignored otherwise); a row's k scale multiplies
   * its whole q.k, its v scale is folded into its probability (one scale load per row).
   */
  template <class Pages>
  __device__ static void run(const float* __restrict__ q, const KV* __restrict__ kc, const KV* __restrict__ vc,
                             const float* __restrict__ ksc, const float* __restrict__ vsc, int kvHead, int numKvHeads,
                             int pageSize, const Pages& src, int iBeg, int iEnd, int gCount, float scaleLog2, float* smem) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int row = lane / TPR, col = (lane % TPR) * VEC;
    float qr[GT][VEC];
#pragma unroll
    for (int g = 0; g < GT; g++)
#pragma unroll
      for (int v = 0; v < VEC; v++) qr[g][v] = g < gCount ? q[g * D + col + v] * scaleLog2 : 0.f;
    float m[GT], l[GT], acc[GT][VEC];
#pragma unroll
    for (int g = 0; g < GT; g++) {
      m[g] = -INFINITY;
      l[g] = 0.f;
#pragma unroll
      for (int v = 0; v < VEC; v++) acc[g][v] = 0.f;
    }
    const long rowStride = (long)numKvHeads * D;
    // A warp loads the rows of PP of its pages at once (pages i, i + NW, ...): more bytes in
    // flight per warp where the registers allow it (one or two heads per CTA, 8-warp CTAs;
    // the fused sparse kernel's 4-warp CTAs need the registers for more resident scorers).
    // Not for int8, whose scale loads made it slower (GPT2 heads, batch 8, 32K: 285 -> 348 us).
    constexpr int PP = GT <= 2 && NW >= 8 && !K::SCALED ? 2 : 1;
    constexpr int R = PP * U;
    // Two pages a warp hide the page-table load well enough, and the prefetch's registers cost
    // more there (GPT2 heads, batch 8, 32K: 242.3 -> 252.2 us with it; one page a warp gains).
    std::conditional_t<PP == 1, WarpPages<Pages, NW>, DirectPages<Pages, NW>> pages(src, iBeg + warp, iEnd);
    for (int i0 = iBeg + warp, j0 = 0; i0 < iEnd; i0 += NW * PP, j0 += PP) {
      int lenP[PP];
      long firstP[PP], scaleP[PP];
      int maxLen = 0;
#pragma unroll
      for (int pp = 0; pp < PP; pp++) {
        const int i = i0 + pp * NW;
        int phys = 0, len = 0;
        if (i < iEnd) pages.at(j0 + pp, phys, len);
        lenP[pp] = len;
        firstP[pp] = (long)phys * pageSize * rowStride + (long)kvHead * D + col;
        scaleP[pp] = (long)phys * pageSize * numKvHeads + kvHead;
        maxLen = max(maxLen, len);
      }
      for (int t0 = 0; t0 < maxLen; t0 += RPW * U) {
        typename K::Raw kr[R], vr[R];
        float kS[R], vS[R];  // int8 only: the rows' scales (all lanes of a row load the same word)
#pragma unroll
        for (int pp = 0; pp < PP; pp++)
#pragma unroll
          for (int u = 0; u < U; u++) {
            const int t = t0 + u * RPW + row, x = pp * U + u;
            if (t < lenP[pp]) {
              kr[x] = K::load(kc + firstP[pp] + t * rowStride);
              vr[x] = K::load(vc + firstP[pp] + t * rowStride);
              if constexpr (K::SCALED) {
                const long si = scaleP[pp] + (long)t * numKvHeads;
                kS[x] = __ldg(ksc + si);
                vS[x] = __ldg(vsc + si);
              }
            } else {
              kr[x] = K::zero();
              vr[x] = K::zero();
              if constexpr (K::SCALED) kS[x] = vS[x] = 0.f;
            }
          }
        float s[R][GT];
#pragma unroll
        for (int x = 0; x < R; x++) {
          float kf[VEC];
          K::toFloat(kr[x], kf);
#pragma unroll
          for (int g = 0; g < GT; g++) {
            float d = 0.f;
#pragma unroll
            for (int v = 0; v < VEC; v++) d = fmaf(qr[g][v], kf[v], d);
            s[x][g] = d;
          }
        }
#pragma unroll
        for (int o = TPR / 2; o > 0; o >>= 1)
#pragma unroll
          for (int x = 0; x < R; x++)
#pragma unroll
            for (int g = 0; g < GT; g++) s[x][g] += __shfl_xor_sync(0xffffffffu, s[x][g], o);
        if constexpr (K::SCALED) {
#pragma unroll
          for (int x = 0; x < R; x++)
#pragma unroll
            for (int g = 0; g < GT; g++) s[x][g] *= kS[x];
        }
#pragma unroll
        for (int pp = 0; pp < PP; pp++)
#pragma unroll
          for (int u = 0; u < U; u++)
            if (t0 + u * RPW + row >= lenP[pp])
#pragma unroll
              for (int g = 0; g < GT; g++) s[pp * U + u][g] = -INFINITY;
#pragma unroll
        for (int g = 0; g < GT; g++) {
          float mx = s[0][g];
#pragma unroll
          for (int x = 1; x < R; x++) mx = fmaxf(mx, s[x][g]);
#pragma unroll
          for (int o = TPR; o < 32; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
          if (mx > m[g]) {  // warp-uniform: mx and m are the same on every lane
            const float a = safeScale(m[g], mx);
            l[g] *= a;
#pragma unroll
            for (int v = 0; v < VEC; v++) acc[g][v] *= a;
            m[g] = mx;
          }
        }
#pragma unroll
        for (int x = 0; x < R; x++) {
          float vf[VEC];
          K::toFloat(vr[x], vf);
#pragma unroll
          for (int g = 0; g < GT; g++) {
            // (a masked row is 0 even while m is still -inf: its page may be this warp's only one)
            const float p = s[x][g] == -INFINITY ? 0.f : exp2f(s[x][g] - m[g]);
            l[g] += p;
            float pv = p;
            if constexpr (K::SCALED) pv *= vS[x];
#pragma unroll
            for (int v = 0; v < VEC; v++) acc[g][v] = fmaf(pv, vf[v], acc[g][v]);
          }
        }
      }
    }
    // Rows of a warp hold different tokens: sum their partial sums (m is warp-uniform).
#pragma unroll
    for (int o = TPR; o < 32; o <<= 1)
#pragma unroll
      for (int g = 0; g < GT; g++) {
        l[g] += __shfl_xor_sync(0xffffffffu, l[g], o);
#pragma unroll
        for (int v = 0; v < VEC; v++) acc[g][v] += __shfl_xor_sync(0xffffffffu, acc[g][v], o);
      }
    float* w = smem + warp * SLOT;
    if (row == 0)
#pragma unroll
      for (int g = 0; g < GT; g++)
#pragma unroll
        for (int v = 0; v < VEC; v++) w[g * D + col + v] = acc[g][v];
    if (lane == 0)
#pragma unroll
      for (int g = 0; g < GT; g++) {
        w[GT * D + g] = m[g];
        w[GT * D + GT + g] = l[g];
      }
    __syncthreads();
    mergeWarpResults<GT, D, NW, SLOT>(smem, result(smem));
  }

  __device__ static float* result(float* smem) { return smem + NW * SLOT; }
};

/** out[g * D + d] = acc / l for a core's merged result (zeros where nothing was attended). */
template <class Core>
__device__ void writeFinal(const float* res, float* __restrict__ out, int gCount) {
  constexpr int D = Core::HEAD_DIM, GT = Core::GT;
  for (int idx = threadIdx.x; idx < gCount * D; idx += blockDim.x) {
    const int g = idx / D;
    const float L = res[GT * D + GT + g];
    out[idx] = L > 0.f ? res[idx] / L : 0.f;
  }
}

/**
 * The last CTA of a unit: a thread folds two adjacent output channels of one head over the
 * splits' (m, l, acc) at `all`, in chunks of 8 splits with every load of a chunk issued before
 * any math: one L2 round trip for up to 8 splits where the two-pass merge it replaced took
 * two and a barrier (this merge is the launch's tail; TinyLlama heads at batch 8 and 32K,
 * 76.3 -> 74.8 us, at batch 1 19.1 -> 17.4 us). Within a chunk the arithmetic is that of one
 * pass over the splits' maximum.
 */
template <int D, int GT, int SLOT>
__device__ __forceinline__ void mergeSplits(const float* __restrict__ all, int numSplits, float* __restrict__ out, int gCount) {
  const int pairs = gCount * D / 2;
  for (int pi = threadIdx.x; pi < pairs; pi += blockDim.x) {
    const int idx = 2 * pi, g = idx / D;
    float M = -INFINITY, L = 0.f;
    float2 A = make_float2(0.f, 0.f);
    for (int k0 = 0; k0 < numSplits; k0 += 8) {
      float mk[8], lk[8];
      float2 ak[8];
#pragma unroll
      for (int u = 0; u < 8; u++) {
        const int k = k0 + u;
        const bool ok = k < numSplits;
        mk[u] = ok ? __ldcg(all + k * SLOT + GT * D + g) : -INFINITY;
        lk[u] = ok ? __ldcg(all + k * SLOT + GT * D + GT + g) : 0.f;
        ak[u] = ok ? __ldcg(reinterpret_cast<const float2*>(all + k * SLOT + idx)) : make_float2(0.f, 0.f);
      }
      float Mn = M;
#pragma unroll
      for (int u = 0; u < 8; u++) Mn = fmaxf(Mn, mk[u]);
      const float c = safeScale(M, Mn);
      L *= c;
      A.x *= c;
      A.y *= c;
#pragma unroll
      for (int u = 0; u < 8; u++) {
        const float w = safeScale(mk[u], Mn);
        L += lk[u] * w;
        A.x += ak[u].x * w;
        A.y += ak[u].y * w;
      }
      M = Mn;
    }
    out[idx] = L > 0.f ? A.x / L : 0.f;
    out[idx + 1] = L > 0.f ? A.y / L : 0.f;
  }
}

/**
 * Stores this CTA's result as split `split` of `unit`; the last CTA of the unit to arrive
 * merges all splits into `out` and re-arms the unit's counter for the next launch. Returns
 * whether this CTA wrote the unit's output (the only split, or the merger).
 */
template <class Core>
__device__ bool finishDecode(float* smem, int numSplits, int split, float* __restrict__ partial, int* counters, int unit,
                             float* __restrict__ out, int gCount) {
  constexpr int D = Core::HEAD_DIM, GT = Core::GT, SLOT = Core::SLOT;
  const float* res = Core::result(smem);
  if (numSplits == 1) {
    writeFinal<Core>(res, out, gCount);
    return true;
  }
  float* mine = partial + ((long)unit * numSplits + split) * SLOT;
  for (int idx = threadIdx.x; idx < SLOT; idx += blockDim.x) __stcg(mine + idx, res[idx]);
  // Barrier, then one acquire-release add by the thread that signals: it releases the CTA's
  // stores (ordered before it by the barrier) and, for the last CTA, acquires the others' (the
  // same pattern as a fence on each side, without waiting on two full fences on the tail).
  __syncthreads();
  __shared__ int last;
  if (threadIdx.x == 0) {
    int prev;
    asm volatile("atom.acq_rel.gpu.global.add.s32 %0, [%1], 1;\n" : "=r"(prev) : "l"(counters + unit) : "memory");
    last = prev == numSplits - 1;
  }
  __syncthreads();
  if (!last) return false;
  mergeSplits<D, GT, SLOT>(partial + (long)unit * numSplits * SLOT, numSplits, out, gCount);
  if (threadIdx.x == 0) counters[unit] = 0;
  // A persistent caller's next item rewrites the scratch read above.
  __syncthreads();
  return true;
}

}  // namespace ts
