// The decode attention core on tensor cores for int8 KV (per-token scales, the kv-retriever's
// KvCacheStorage format) and grouped-query attention: as the fp16 core, the up to 16 query
// heads of one KV head are the 16 rows of an m16n8k16 tile. Rows go straight from global
// memory into registers (half the bytes of fp16, so two 16-token tiles a warp fit without
// staging) and become fp16 operands exactly (|q| <= 127): a lane loads whole 8-byte pieces of
// its rows and the channel order of the queries (q.k) and of the output (p.v) is permuted to
// match. A row's k scale multiplies its logits after q.k; its v scale is folded into its
// probability before p.v. Queries enter as fp16 hi + lo parts (fp32-accurate logits);
// probabilities times v scales enter p.v as fp16, the normaliser sums them unrounded.
#pragma once
#include "common.cuh"
#include "decode_args.h"
#include "decode_core.cuh"
#include "mma.cuh"
#include "tc_softmax.cuh"

namespace ts {

/**
 * Two int8 values (bytes `b0` and `b1` of `w`, as byte_perm selects them) as an fp16 pair, exactly:
 * each byte with its sign bit flipped is x + 128, the low byte of the fp16 1024 + (x + 128).
 */
__device__ __forceinline__ uint32_t i8PairToHalf2(uint32_t w, unsigned sel) {
  const uint32_t h = __byte_perm(w, 0x64646464u, sel) ^ 0x00800080u;
  const __half2 r = __hsub2(*reinterpret_cast<const __half2*>(&h), __halves2half2(__float2half_rn(1152.f), __float2half_rn(1152.f)));
  return *reinterpret_cast<const uint32_t*>(&r);
}

template <int D, int NW>
struct TcDecodeCoreI8 {
  using KvType = int8_t;
  static constexpr int HEAD_DIM = D;
  static constexpr int WARPS = NW;
  static constexpr int GT = 16;
  /** Two resident CTAs a SM (at most 128 registers a thread with 8 warps). */
  static constexpr int MIN_BLOCKS = 2;
  static_assert(D % 16 == 0 && D <= 128, "tensor-core decode needs a head dim multiple of 16, at most 128");
  static constexpr int KSTEPS = D / 16;
  static constexpr int NTILES = D / 8;
  /** q.k: lane (g, t4) holds D / 4 channels of its token's key row (bytes e = channels kChannel(e, t4)); k-step ks takes bytes 4 ks .. 4 ks + 3. */
  static constexpr int KW = D / 4 < 8 ? D / 4 : 8;
  __device__ static __forceinline__ int kChannel(int e, int t4) { return 4 * KW * (e / KW) + KW * t4 + e % KW; }
  /** p.v: lane g holds channels VW g .. VW g + VW - 1 of a value row; n-tile j, column g is channel VW g + j. */
  static constexpr int VW = D / 8;
  static constexpr int VWORDS = (VW + 3) / 4;
  /** 16-token tiles a warp loads at once. */
  static constexpr int PT = D <= 64 ? 2 : 1;
  static constexpr int SLOT = GT * (D + 2);
  /** Per-warp result areas, the merged result, the query fragments. */
  static constexpr int WARP_FLOATS = SLOT;
  static constexpr int QFRAG_WORDS = 2 * KSTEPS * 32 * 4;
  static constexpr int SMEM_FLOATS = NW * WARP_FLOATS + SLOT + QFRAG_WORDS;

  __device__ static float* result(float* smem) { return smem + NW * WARP_FLOATS; }

  /** N bytes (2, 4, 8 or 16; aligned to N) as words (the first half of one word for N = 2); zeros when !ok. */
  template <int N>
  __device__ static __forceinline__ void loadBytes(const int8_t* p, bool ok, uint32_t* w) {
    if constexpr (N == 2) {
      w[0] = ok ? (uint32_t)__ldg(reinterpret_cast<const unsigned short*>(p)) : 0u;
    } else if constexpr (N == 4) {
      w[0] = ok ? __ldg(reinterpret_cast<const uint32_t*>(p)) : 0u;
    } else if constexpr (N == 8) {
      const uint2 v = ok ? __ldg(reinterpret_cast<const uint2*>(p)) : make_uint2(0u, 0u);
      w[0] = v.x;
      w[1] = v.y;
    } else {
      const uint4 v = ok ? __ldg(reinterpret_cast<const uint4*>(p)) : make_uint4(0u, 0u, 0u, 0u);
      w[0] = v.x;
      w[1] = v.y;
      w[2] = v.z;
      w[3] = v.w;
    }
  }

  /** As DecodeCore::run, over int8 rows and their scales. */
  template <class Pages>
  __device__ static void run(const float* __restrict__ q, const int8_t* __restrict__ kc, const int8_t* __restrict__ vc,
                             const float* __restrict__ ksc, const float* __restrict__ vsc, int kvHead, int numKvHeads,
                             int pageSize, const Pages& src, int iBeg, int iEnd, int gCount, float scaleLog2, float* smem) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t4 = lane & 3;

    // A fragments of the scaled queries in this lane's channel order, fp16 hi + lo, built once
    // per CTA in shared memory: [hi/lo][ks][lane][4 words].
    uint32_t* qfrag = reinterpret_cast<uint32_t*>(smem + NW * WARP_FLOATS + SLOT);
    for (int i = threadIdx.x; i < KSTEPS * 32 * 4; i += blockDim.x) {
      const int r = i & 3, ln = (i >> 2) & 31, ks = i >> 7;
      const int row = (ln >> 2) + ((r & 1) ? 8 : 0);
      const int e = 4 * ks + ((r & 2) ? 2 : 0);
      float x0 = 0.f, x1 = 0.f;
      if (row < gCount) {
        x0 = q[row * D + kChannel(e, ln & 3)] * scaleLog2;
        x1 = q[row * D + kChannel(e + 1, ln & 3)] * scaleLog2;
      }
      tcSplitHalf2(x0, x1, qfrag[i], qfrag[KSTEPS * 128 + i]);
    }
    __syncthreads();
    const uint4* qhi = reinterpret_cast<const uint4*>(qfrag) + lane;
    const uint4* qlo = reinterpret_cast<const uint4*>(qfrag + KSTEPS * 128) + lane;

    float o[NTILES][4];
#pragma unroll
    for (int j = 0; j < NTILES; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8

    const long rowStride = (long)numKvHeads * D;
    const int tilesPerPage = (pageSize + 15) / 16;
    const int numTiles = tcWarpTiles<NW>(iBeg, iEnd, warp, pageSize);

    WarpPages<Pages, NW> pages(src, iBeg + warp, iEnd);
    for (int tile0 = 0; tile0 < numTiles; tile0 += PT) {
      // Keys of tokens g and g + 8 (this lane's channels); values and both scales of tokens
      // 2 t4, 2 t4 + 1, 2 t4 + 8, 2 t4 + 9 (the logits' columns this lane holds): all loads first.
      uint32_t kw[PT][2][D / 16], vw[PT][4][VWORDS];
      float kS[PT][4], vS[PT][4];
      int valid[PT];
#pragma unroll
      for (int pt = 0; pt < PT; pt++) {
        const int tile = tile0 + pt;
        int phys = 0, len = 0, t0 = 0;
        if (tile < numTiles) {
          pages.at(tile / tilesPerPage, phys, len);
          t0 = (tile % tilesPerPage) * 16;
        }
        valid[pt] = len - t0;
        const long first = ((long)phys * pageSize + t0) * rowStride + (long)kvHead * D;
        const long scale0 = ((long)phys * pageSize + t0) * numKvHeads + kvHead;
#pragma unroll
        for (int n = 0; n < 2; n++) {
          const int t = n * 8 + g;
#pragma unroll
          for (int c = 0; c < D / 4 / KW; c++)
            loadBytes<KW>(kc + first + (long)t * rowStride + 4 * KW * c + KW * t4, t < valid[pt], &kw[pt][n][c * KW / 4]);
        }
#pragma unroll
        for (int r = 0; r < 4; r++) {
          const int t = 2 * t4 + (r & 1) + ((r & 2) ? 8 : 0);
          const bool ok = t < valid[pt];
          loadBytes<VW>(vc + first + (long)t * rowStride + VW * g, ok, vw[pt][r]);
          kS[pt][r] = ok ? __ldg(ksc + scale0 + (long)t * numKvHeads) : 0.f;
          vS[pt][r] = ok ? __ldg(vsc + scale0 + (long)t * numKvHeads) : 0.f;
        }
      }
#pragma unroll
      for (int pt = 0; pt < PT; pt++) {
        float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int k = 0; k < KSTEPS; k++) {
          const uint4 h = qhi[k * 32], lo4 = qlo[k * 32];
          const uint32_t ah[4] = {h.x, h.y, h.z, h.w}, al[4] = {lo4.x, lo4.y, lo4.z, lo4.w};
#pragma unroll
          for (int n = 0; n < 2; n++) {
            const uint32_t b0 = i8PairToHalf2(kw[pt][n][k], 0x4140u), b1 = i8PairToHalf2(kw[pt][n][k], 0x4342u);
            mma16816(s[n], ah, b0, b1);
            mma16816(s[n], al, b0, b1);
          }
        }
        // k scales per column (token n * 8 + 2 t4 + c), rows g (c0, c1) and g + 8 (c2, c3).
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
          for (int c = 0; c < 2; c++) {
            s[n][c] *= kS[pt][2 * n + c];
            s[n][c + 2] *= kS[pt][2 * n + c];
          }
        tcRescale(s, valid[pt], t4, m0, m1, l0, l1, o);
        // p times the row's v scale, in fp16, as the A operand of p.v.
        uint32_t pa[4];
#pragma unroll
        for (int n = 0; n < 2; n++) {
          const float p0 = tcProb(s[n][0], m0), p1 = tcProb(s[n][1], m0);
          const float p2 = tcProb(s[n][2], m1), p3 = tcProb(s[n][3], m1);
          l0 += p0 + p1;
          l1 += p2 + p3;
          pa[n * 2] = packHalf2(p0 * vS[pt][2 * n], p1 * vS[pt][2 * n + 1]);
          pa[n * 2 + 1] = packHalf2(p2 * vS[pt][2 * n], p3 * vS[pt][2 * n + 1]);
        }
        // o += p v: b0 pairs tokens 2 t4, 2 t4 + 1 and b1 tokens 2 t4 + 8, + 9 of channel VW g + j (byte j).
#pragma unroll
        for (int j = 0; j < NTILES; j++) {
          const int wi = j / 4;
          const unsigned pick = (unsigned)(j % 4) | ((unsigned)(j % 4 + 4) << 4);
          const uint32_t b0 = i8PairToHalf2(__byte_perm(vw[pt][0][wi], vw[pt][1][wi], pick), 0x4140u);
          const uint32_t b1 = i8PairToHalf2(__byte_perm(vw[pt][2][wi], vw[pt][3][wi], pick), 0x4140u);
          mma16816(o[j], pa, b0, b1);
        }
      }
    }
    // o[j] holds columns 2 t4 and 2 t4 + 1 of n-tile j: channels VW (2 t4 + c) + j.
    tcStoreWarp<GT, D, NTILES>(smem + warp * WARP_FLOATS, o, m0, m1, l0, l1, g, t4, [&](int j, int c) { return VW * (2 * t4 + c) + j; });
    __syncthreads();
    mergeWarpResults<GT, D, NW, WARP_FLOATS>(smem, result(smem));
  }
};

}  // namespace ts
