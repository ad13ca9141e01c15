// The decode attention core on tensor cores, for fp16 KV and grouped-query attention: the up
// to 16 query heads of one KV head form the 16 rows of an m16n8k16 tile, so a K/V page is read
// once for the whole group and q.k and p.v run as mma.sync instead of per-head dot products.
// Each warp streams its pages through a two-stage cp.async ring in shared memory (16 tokens a
// tile). Queries enter as a hi + lo pair of fp16 matrices, so logits keep fp32 accuracy;
// probabilities are rounded to fp16 for p.v (and the normaliser sums the same rounded values).
#pragma once
#include "common.cuh"
#include "decode_args.h"
#include "decode_core.cuh"
#include "mma.cuh"
#include "tc_softmax.cuh"

namespace ts {

template <int D, int NW>
struct TcDecodeCore {
  using KV = __half;
  using KvType = __half;
  static constexpr int HEAD_DIM = D;
  static constexpr int WARPS = NW;
  static constexpr int GT = 16;
  /**
   * Head dims up to 64: two resident 8-warp CTAs a SM (at most 128 registers a thread; the
   * fused sparse kernel would otherwise take 136 and lose one). 128: the compiler's choice (one
   * CTA a SM fits in shared memory anyway; 128 registers would spill).
   */
  static constexpr int MIN_BLOCKS = D <= 64 ? 2 : 1;
  static_assert(D % 16 == 0 && D <= 128, "tensor-core decode needs a head dim multiple of 16, at most 128");
  static constexpr int KSTEPS = D / 16;  // k-steps of q.k
  static constexpr int NTILES = D / 8;   // n-tiles of p.v
  static constexpr int ROW = D + 8;      // padded smem row (halves): ldmatrix rows land in distinct banks
  static constexpr int TILE_HALVES = 16 * ROW;
  static constexpr int STAGE_HALVES = 2 * TILE_HALVES;  // K and V
  /**
   * Tiles in the ring per warp. Two measured best on an H200, at batch 8 and 32K tokens: with
   * 4-warp CTAs 84 us against 101 us for three (a third stage costs a quarter of the resident
   * CTAs in shared memory); with 8-warp CTAs dense 82.9 against 84.7 us, the fused sparse step
   * (budget 2048) 35.5 against 40.3 us.
   */
  static constexpr int STAGES = 2;
  static constexpr int WARP_BYTES_STAGING = STAGES * STAGE_HALVES * 2;
  static constexpr int SLOT = GT * (D + 2);
  static constexpr int WARP_BYTES = WARP_BYTES_STAGING > SLOT * 4 ? WARP_BYTES_STAGING : SLOT * 4;
  static constexpr int WARP_FLOATS = WARP_BYTES / 4;
  /** Per-warp areas (staging, then the warp's result) and the merged result. */
  static constexpr int SMEM_FLOATS = NW * WARP_FLOATS + SLOT;

  __device__ static float* result(float* smem) { return smem + NW * WARP_FLOATS; }

  /** As DecodeCore::run; fp16 only, so the int8 scale pointers are unused. */
  template <class Pages>
  __device__ static void run(const float* __restrict__ q, const KV* __restrict__ kc, const KV* __restrict__ vc,
                             const float* /*ksc*/, const float* /*vsc*/, int kvHead, int numKvHeads, int pageSize,
                             const Pages& src, int iBeg, int iEnd, int gCount, float scaleLog2, float* smem) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    __half* stage = reinterpret_cast<__half*>(smem + warp * WARP_FLOATS);

    // A fragments of the scaled queries (rows = heads), split into fp16 hi + lo parts.
    uint32_t qhi[KSTEPS][4], qlo[KSTEPS][4];
#pragma unroll
    for (int ks = 0; ks < KSTEPS; ks++) {
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const int row = g + ((r & 1) ? 8 : 0);
        const int col = ks * 16 + 2 * t4 + ((r & 2) ? 8 : 0);
        float x0 = 0.f, x1 = 0.f;
        if (row < gCount) {
          x0 = q[row * D + col] * scaleLog2;
          x1 = q[row * D + col + 1] * scaleLog2;
        }
        tcSplitHalf2(x0, x1, qhi[ks][r], qlo[ks][r]);
      }
    }
    float o[NTILES][4];
#pragma unroll
    for (int j = 0; j < NTILES; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8

    const long rowStride = (long)numKvHeads * D;
    const int tilesPerPage = (pageSize + 15) / 16;
    const int numTiles = tcWarpTiles<NW>(iBeg, iEnd, warp, pageSize);

    WarpPages<Pages, NW> pages(src, iBeg + warp, iEnd);
    auto issue = [&](int tile, int buf) {
      const int t0 = (tile % tilesPerPage) * 16;
      int phys, len;
      pages.at(tile / tilesPerPage, phys, len);
      const long first = (long)phys * pageSize * rowStride + (long)kvHead * D;
      __half* ks = stage + buf * STAGE_HALVES;
      __half* vs = ks + TILE_HALVES;
      constexpr int CHUNKS = 16 * D / 8;  // 16-byte chunks per tile
#pragma unroll
      for (int c = lane; c < CHUNKS; c += 32) {
        const int r = c / (D / 8), cc = (c % (D / 8)) * 8;
        const int t = t0 + r;
        const bool ok = t < len;
        const long off = first + (long)(ok ? t : 0) * rowStride + cc;
        cpAsync16(ks + r * ROW + cc, kc + off, ok ? 16 : 0);
        cpAsync16(vs + r * ROW + cc, vc + off, ok ? 16 : 0);
      }
      cpAsyncCommit();
      return len - t0;  // valid tokens in the tile (may exceed 16)
    };

    // A ring of STAGES tiles: up to STAGES - 1 loads in flight while one tile is consumed.
    int validRing[STAGES];
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) validRing[st] = st < numTiles ? issue(st, st) : 0;
    for (int tile = 0; tile < numTiles; tile++) {
      const int buf = tile % STAGES;
      int valid = 0;
#pragma unroll
      for (int st = 0; st < STAGES; st++)
        if (st == buf) valid = validRing[st];
      const int ahead = tile + STAGES - 1;
      if (ahead < numTiles) {
        const int v = issue(ahead, ahead % STAGES);
#pragma unroll
        for (int st = 0; st < STAGES; st++)
          if (st == ahead % STAGES) validRing[st] = v;
        cpAsyncWait<STAGES - 1>();
      } else {
        // Fewer loads are pending near the end: wait for all (the tail is short).
        cpAsyncWait<0>();
      }
      __syncwarp();
      const __half* ks = stage + buf * STAGE_HALVES;
      const __half* vs = ks + TILE_HALVES;

      // s = q k^T for 16 tokens: two n-tiles of 8 tokens.
      float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
      for (int k = 0; k < KSTEPS; k++) {
        uint32_t b[4];
        // matrices: (tokens 0-7, dims k0..+7), (tokens 0-7, dims k0+8..), (tokens 8-15, k0..), (tokens 8-15, k0+8..)
        const int mtx = lane >> 3, r = lane & 7;
        ldmatrixX4(b, ks + ((mtx >> 1) * 8 + r) * ROW + k * 16 + (mtx & 1) * 8);
        mma16816(s[0], qhi[k], b[0], b[1]);
        mma16816(s[0], qlo[k], b[0], b[1]);
        mma16816(s[1], qhi[k], b[2], b[3]);
        mma16816(s[1], qlo[k], b[2], b[3]);
      }
      tcRescale(s, valid, t4, m0, m1, l0, l1, o);
      // p in fp16 as the A operand of p.v (the C layout of two n-tiles is the A layout).
      uint32_t pa[4];
#pragma unroll
      for (int n = 0; n < 2; n++) {
        const __half2 p01 = __floats2half2_rn(tcProb(s[n][0], m0), tcProb(s[n][1], m0));
        const __half2 p23 = __floats2half2_rn(tcProb(s[n][2], m1), tcProb(s[n][3], m1));
        const float2 f01 = __half22float2(p01), f23 = __half22float2(p23);
        l0 += f01.x + f01.y;
        l1 += f23.x + f23.y;
        pa[n * 2] = *reinterpret_cast<const uint32_t*>(&p01);
        pa[n * 2 + 1] = *reinterpret_cast<const uint32_t*>(&p23);
      }
      // o += p v: k = 16 tokens, n-tiles of 8 dims, two per ldmatrix.x4.trans.
#pragma unroll
      for (int j = 0; j < NTILES; j += 2) {
        uint32_t b[4];
        // matrices: (tokens 0-7, dims 8j..), (tokens 8-15, dims 8j..), (tokens 0-7, dims 8j+8..), (tokens 8-15, dims 8j+8..)
        const int mtx = lane >> 3, r = lane & 7;
        ldmatrixX4Trans(b, vs + ((mtx & 1) * 8 + r) * ROW + j * 8 + (mtx >> 1) * 8);
        mma16816(o[j], pa, b[0], b[1]);
        mma16816(o[j + 1], pa, b[2], b[3]);
      }
      __syncwarp();  // this buffer is refilled STAGES - 1 tiles later
    }
    // This warp's result into its area (staging is done): o[j] holds channels 8 j + 2 t4, + 1.
    tcStoreWarp<GT, D, NTILES>(smem + warp * WARP_FLOATS, o, m0, m1, l0, l1, g, t4, [&](int j, int c) { return j * 8 + 2 * t4 + c; });
    __syncthreads();
    mergeWarpResults<GT, D, NW, WARP_FLOATS>(smem, result(smem));
  }
};

}  // namespace ts
