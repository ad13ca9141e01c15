// The fused query-aware sparse decode step, one cooperative launch per layer:
//   1. score every page of every (sequence, KV head) from its key bounding box (Quest's upper
//      bound of q.k, the group's query heads aggregated by max), reading only the metadata;
//      many CTAs per pair, each a chunk of pages whose ids it stages in shared memory;
//   2. the last CTA to finish scoring a (sequence, KV head) selects its top-K pages (sinks
//      and the current page forced, ties to the lower page, as the TypeScript policy does)
//      by a radix search for the K-th largest key (8-bit digits, one shared-memory histogram
//      each), stopping as soon as a digit isolates exactly K pages;
//   3. attend over the selected pages only, split across CTAs; each waits for its pair's
//      selection only (a flag carrying the count), so attention overlaps the scoring of
//      other pairs;
//   4. the last CTA of each split group merges the splits.
// The launch is cooperative so that every CTA is resident and the waits cannot deadlock.
#include "block_scan.cuh"
#include "decode_core.cuh"
#include "dispatch.cuh"
#include "kernels.h"
#include "mma.cuh"

namespace ts {

constexpr unsigned FULL_MASK = 0xffffffffu;

/** Nanoseconds of the GPU's global timer (comparable across SMs). */
__device__ __forceinline__ unsigned long long globalNs() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

/**
 * A traced launch's timeline slots per (sequence, KV head): when its last scoring chunk
 * finished, when its selector had the keys in shared memory, had found the threshold, had
 * written the pages, had published them; when its first attender saw them, its last attender
 * finished attending, its last merge was written (the latest over head chunks); the selection's
 * radix digits and whether it ended on an exact count.
 */
enum TraceSlot { TR_SCORED = 0, TR_KEYS, TR_THRESHOLD, TR_WRITTEN, TR_PUBLISHED, TR_SEEN, TR_ATTENDED, TR_MERGED, TR_ROUNDS, TR_EXACT };

/** Order-preserving map of floats to unsigned keys (larger float, larger key). */
__device__ __forceinline__ unsigned floatKey(float s) {
  const unsigned u = __float_as_uint(s + 0.0f);  // -0 becomes +0, as JavaScript compares them
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/** Stages of the scoring prefetch ring, and the bytes of one stage per lane (see scorePages). */
constexpr int SCORE_STAGES = 3;
constexpr int SCORE_LANE_BYTES = 128;

/** Shared memory of the scoring prefetch rings of `warps` warps. */
inline int scoreRingBytes(int warps) { return warps * SCORE_STAGES * SCORE_LANE_BYTES * 32; }

/**
 * Quest bounds of `count` pages of one (sequence, KV head), their physical ids in `pages`
 * (shared memory): a box is read by D / 8 lanes, 8 channels each (16 or 32 bytes, coalesced);
 * each head's partial sums are reduced across those lanes, then aggregated over the group (max
 * or sum). max(q lo, q hi) is q times the bound q's sign picks (boxes are ordered, lo <= hi),
 * one FMA per channel. `qs` holds the group's queries, [G][D]. The boxes stream through a
 * per-lane cp.async ring in shared memory (`ring`, SCORE_STAGES batches of 128 bytes a lane: U
 * boxes' lo and hi), so two batches are in flight while one is scored (H200, scoring alone at
 * 32K: TinyLlama heads at batch 32 46.9 -> 36.7 us, GPT2 heads at batch 8 30.6 -> 26.8 us).
 */
template <int D, typename M>
__device__ void scorePages(const SparseArgs& a, const float* qs, int G, const int* pages, int kvh, int count, float* out,
                           uint4* ring) {
  constexpr int TPR = D / 8, RPW = 32 / TPR;
  constexpr int PIECES = (int)sizeof(M) / 2;  // 16-byte pieces of 8 channels
  constexpr int U = SCORE_LANE_BYTES / (2 * 16 * PIECES);  // boxes a lane per batch: 4 fp16, 2 fp32
  constexpr int SLOTS = U * 2 * PIECES;                    // 16-byte slots a lane per stage
  const DecodeArgs& d = a.d;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  const int row = lane / TPR, col = (lane % TPR) * 8;
  const bool sum = a.aggregateSum != 0;
  const M* mn = static_cast<const M*>(a.metaMin);
  const M* mx = static_cast<const M*>(a.metaMax);
  uint4* mine = ring + warp * SCORE_STAGES * SLOTS * 32 + lane;  // slot j of stage s at [(s * SLOTS + j) * 32]
  const int perBatch = RPW * U;
  const int batches = count > warp * perBatch ? ((count + perBatch - 1) / perBatch - warp + nw - 1) / nw : 0;
  auto issue = [&](int j) {
    if (j < batches) {
      const int pb = (warp + j * nw) * perBatch;
      uint4* st = mine + (j % SCORE_STAGES) * SLOTS * 32;
#pragma unroll
      for (int u = 0; u < U; u++) {
        const int p = pb + u * RPW + row;
        const bool ok = p < count;
        const long box = ((long)(ok ? pages[p] : 0) * d.numKvHeads + kvh) * D + col;
#pragma unroll
        for (int k = 0; k < PIECES; k++) {
          cpAsync16(st + ((u * 2) * PIECES + k) * 32, mn + box + k * (16 / (int)sizeof(M)), ok ? 16 : 0);
          cpAsync16(st + ((u * 2 + 1) * PIECES + k) * 32, mx + box + k * (16 / (int)sizeof(M)), ok ? 16 : 0);
        }
      }
    }
    cpAsyncCommit();  // (an empty group past the end keeps the wait count uniform)
  };
#pragma unroll
  for (int j = 0; j < SCORE_STAGES - 1; j++) issue(j);
  for (int j = 0; j < batches; j++) {
    issue(j + SCORE_STAGES - 1);
    cpAsyncWait<SCORE_STAGES - 1>();  // this lane's copies of batch j have landed (each lane reads only its own slots)
    const uint4* st = mine + (j % SCORE_STAGES) * SLOTS * 32;
    float lo[U][8], hi[U][8];
#pragma unroll
    for (int u = 0; u < U; u++) {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        float(&dst)[8] = h ? hi[u] : lo[u];
        if constexpr (sizeof(M) == 2)
          boxFromHalf8(st[(u * 2 + h) * 32], dst);
        else
          boxFromFloat8(st[((u * 2 + h) * 2) * 32], st[((u * 2 + h) * 2 + 1) * 32], dst);
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
        for (int c = 0; c < 8; c++) s = fmaf(qv[c], qv[c] >= 0.f ? hi[u][c] : lo[u][c], s);
#pragma unroll
        for (int o = TPR / 2; o > 0; o >>= 1) s += __shfl_xor_sync(FULL_MASK, s, o);
        best[u] = sum ? best[u] + s : fmaxf(best[u], s);
      }
    }
    const int pb = (warp + j * nw) * perBatch;
#pragma unroll
    for (int u = 0; u < U; u++) {
      const int p = pb + u * RPW + row;
      // An empty page's box is inverted (min > max) in every channel; its first lane sees channel 0.
      if (col == 0 && p < count) __stcg(out + p, lo[u][0] > hi[u][0] ? -INFINITY : best[u]);
    }
  }
  cpAsyncWait<0>();  // no copy may still target the ring when the caller reuses shared memory
}

/** Bank-conflict-free index of page p's key (threads also walk contiguous ranges of keys). */
__device__ __forceinline__ int skew(int p) { return p + (p >> 5); }

/**
 * Selection keys: 0 never chosen (an empty page, NaN, an empty forced page); KEY_FORCED a
 * non-empty forced page, ranked above every score; otherwise floatKey(score), in [1, KEY_FORCED).
 */
constexpr unsigned KEY_FORCED = 0xffffffffu;

/**
 * Top-K of one (sequence, KV head) over its n page scores, written as ascending logical pages
 * (`sel`) and their attention entries (`selPhys`: physical page, ~page for the last one):
 * forced pages (the first `sinks` and the last) are kept when non-empty; of the rest, the
 * `K - kept` highest scores, ties to the lower page; empty pages (-inf) and NaN never. K >= n
 * keeps every page (dense), as the policy does. Returns the count (to every thread).
 *
 * The K-th largest key is found digit by digit (8 bits), high to low, over the bits where the
 * candidates' keys differ (the bits they share are the answer's too): a histogram of the digit
 * over the candidates matching the prefix so far, scanned from the top by one warp, gives the
 * digit and the count above it (2-3 digits for 2048 fp32 scores, against ~12 rounds of a
 * bitwise search). A bucket holding exactly the pages still needed ends the search: the keys
 * from it up are the top K. The pages are then written in order from thread-contiguous ranges
 * with one block scan of two packed counts (pages above the threshold, ties at it; n < 2^16,
 * which the selection's shared memory bounds anyway).
 * `keys` (and `physS` unless null) hold skew(n) + 1 words of shared memory each. Not inlined:
 * its batched loads would otherwise raise the register count of the whole kernel (152 against
 * 128 for the TinyLlama instantiation, a quarter of the resident CTAs).
 */
__device__ __noinline__ int selectPages(const float* __restrict__ scores, const int* __restrict__ pages, int n, int K, int sinks,
                           int* __restrict__ sel, int* __restrict__ selPhys, int* __restrict__ count, unsigned* keys,
                           int* physS, unsigned long long* tr) {
  __shared__ unsigned agg[4][32];
  __shared__ unsigned scan[33];
  __shared__ int hist[2][256];
  __shared__ int pick[3];
  const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
  const int last = n - 1;
  if (K >= n) {
    for (int p = tid; p < n; p += nt) {
      const int phys = __ldg(pages + p);
      __stcg(sel + p, p);
      __stcg(selPhys + p, p == last ? ~phys : phys);
    }
    if (tid == 0) __stcg(count, n);
    return n;
  }
  const int nSinks = min(sinks, n);
  unsigned andK = FULL_MASK, orK = 0u;
  int keptLocal = 0, candLocal = 0;
  // Batches of B loads per thread in flight (scores from L2, page ids), then the keys.
  constexpr int B = 8;
  for (int p0 = tid; p0 < n; p0 += B * nt) {
    float s[B];
    int phys[B];
#pragma unroll
    for (int j = 0; j < B; j++) {
      const int p = p0 + j * nt;
      s[j] = p < n ? __ldcg(scores + p) : -INFINITY;
      phys[j] = physS != nullptr && p < n ? __ldg(pages + p) : 0;
    }
#pragma unroll
    for (int j = 0; j < B; j++) {
      const int p = p0 + j * nt;
      if (p < n) {
        unsigned key = 0u;
        if (s[j] > -INFINITY) {
          if (p < nSinks || p == last) {
            key = KEY_FORCED;
            keptLocal++;
          } else {
            key = floatKey(s[j]);
            andK &= key;
            orK |= key;
            candLocal++;
          }
        }
        keys[skew(p)] = key;
        if (physS != nullptr) physS[skew(p)] = p == last ? ~phys[j] : phys[j];
      }
    }
  }
  for (int i = tid; i < 256; i += nt) hist[0][i] = 0;  // the first digit's histogram
  keptLocal = __reduce_add_sync(FULL_MASK, keptLocal);
  candLocal = __reduce_add_sync(FULL_MASK, candLocal);
  andK = __reduce_and_sync(FULL_MASK, andK);
  orK = __reduce_or_sync(FULL_MASK, orK);
  if (lane == 0) {
    agg[0][warp] = (unsigned)keptLocal;
    agg[1][warp] = (unsigned)candLocal;
    agg[2][warp] = andK;
    agg[3][warp] = orK;
  }
  __syncthreads();  // also publishes the keys and the cleared histogram
  if (tr != nullptr && tid == 0) tr[TR_KEYS] = globalNs();
  int kept = 0, cand = 0;
  unsigned andAll = FULL_MASK, orAll = 0u;
  for (int w = 0; w < nw; w++) {
    kept += (int)agg[0][w];
    cand += (int)agg[1][w];
    andAll &= agg[2][w];
    orAll |= agg[3][w];
  }

  // Chosen: key > thr, and the first `ties` keys equal to thr in page order.
  unsigned thr;
  int ties = 0;
  int round = 0;
  if (kept + cand <= K) {
    thr = 0u;  // every non-empty page
  } else if (kept >= K) {
    thr = KEY_FORCED - 1u;  // the forced pages alone (all of them, as the policy keeps them)
  } else {
    // The K-th largest key (forced keys rank first, so it is a candidate's), by digits of up to
    // 8 bits, high to low, over the bits where the candidates' keys differ (the bits they share
    // are the answer's too): per digit, a shared-memory histogram of the candidates that match
    // the prefix found so far, and one warp's scan of it from the top. A digit whose bucket holds
    // exactly the pages still needed ends the search: the keys from that bucket up are the top K.
    const unsigned diff = andAll ^ orAll;
    thr = andAll;
    int above = kept;  // keys known to rank above the answer
    bool exact = false;
    for (int hi = diff ? 31 - __clz(diff) : -1; hi >= 0 && !exact; round++) {
      const int lo = max(0, hi - 7);
      int* h = hist[round & 1];
      for (int i = tid; i < 256; i += nt) hist[(round + 1) & 1][i] = 0;  // the next digit's (its last reader is past a barrier)
      const unsigned highMask = hi == 31 ? 0u : ~0u << (hi + 1);
#pragma unroll 4
      for (int p = tid; p < n; p += nt) {
        const unsigned k = keys[skew(p)];
        if (k != 0u && k != KEY_FORCED && (k & highMask) == (thr & highMask)) atomicAdd(h + ((k >> lo) & 0xffu), 1);
      }
      __syncthreads();
      if (warp == 0) {
        // Lane l holds buckets 8 (31 - l) .. + 7, so lanes run from the top bucket down.
        const int b0 = 8 * (31 - lane);
        int c[8], sum = 0;
#pragma unroll
        for (int j = 0; j < 8; j++) {
          c[j] = h[b0 + 7 - j];
          sum += c[j];
        }
        int incl = sum;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
          const int t = __shfl_up_sync(FULL_MASK, incl, o);
          if (lane >= o) incl += t;
        }
        const int need = K - above;
        const unsigned hit = __ballot_sync(FULL_MASK, incl >= need);
        if (lane == __ffs(hit) - 1) {
          int run = incl - sum;  // candidates in the buckets above this lane's
#pragma unroll
          for (int j = 0; j < 8; j++) {
            if (run + c[j] >= need) {
              pick[0] = b0 + 7 - j;
              pick[1] = above + run;
              pick[2] = run + c[j] == need;
              break;
            }
            run += c[j];
          }
        }
      }
      __syncthreads();
      thr |= (unsigned)pick[0] << lo;
      above = pick[1];
      exact = pick[2] != 0;
      if (exact) thr = (thr & (~0u << lo)) - 1u;  // keys >= the bucket's smallest are exactly the top K (it is >= 1)
      hi = lo - 1;
    }
    // Otherwise thr is the K-th largest key itself: `above` keys rank higher, the rest of the K are ties.
    if (!exact) ties = K - above;
    if (tr != nullptr && tid == 0) {
      tr[TR_ROUNDS] = (unsigned long long)round;
      tr[TR_EXACT] = exact ? 1ull : 0ull;
    }
  }
  if (tr != nullptr && tid == 0) tr[TR_THRESHOLD] = globalNs();

  // Thread-contiguous ranges: a page's position is the chosen pages before it, i.e. the pages
  // above the threshold before it plus the ties before it, capped at `ties`.
  const int per = (n + nt - 1) / nt;
  const int b0 = min(n, tid * per), b1 = min(n, b0 + per);
  int above = 0, tied = 0;
  for (int p = b0; p < b1; p++) {
    const unsigned k = keys[skew(p)];
    above += k > thr;
    tied += ties > 0 && k == thr;
  }
  unsigned totals;
  const unsigned packed = blockExclusiveScan<unsigned>((unsigned)above | ((unsigned)tied << 16), totals, scan);
  int a = (int)(packed & 0xffffu), t = (int)(packed >> 16);
  const int total = (int)(totals & 0xffffu) + min((int)(totals >> 16), ties);
  for (int p = b0; p < b1; p++) {
    const unsigned k = keys[skew(p)];
    int pos = -1;
    if (k > thr) {
      pos = a + min(t, ties);
      a++;
    } else if (ties > 0 && k == thr) {
      if (t < ties) pos = a + t;
      t++;
    }
    if (pos >= 0) {
      __stcg(sel + pos, p);
      int e;
      if (physS != nullptr) {
        e = physS[skew(p)];
      } else {
        const int phys = __ldg(pages + p);
        e = p == last ? ~phys : phys;
      }
      __stcg(selPhys + pos, e);
    }
  }
  if (tid == 0) __stcg(count, total);
  if (tr != nullptr && tid == 0) tr[TR_WRITTEN] = globalNs();
  return total;
}

template <class Core>
__global__ void __launch_bounds__(Core::WARPS * 32, Core::MIN_BLOCKS) sparseDecodeKernel(SparseArgs a) {
  extern __shared__ float smem[];
  using KV = typename Core::KvType;
  constexpr int D = Core::HEAD_DIM, GT = Core::GT;
  const DecodeArgs& d = a.d;
  const int G = d.groupSize;
  const int pairs = d.numSeqs * d.numKvHeads;
  const int chunksPerPair = (a.maxPages + a.scoreChunk - 1) / a.scoreChunk;
  const bool stage = a.maxPages <= SELECT_STAGED_PAGES;
  __shared__ int lastFlag;
  __shared__ int readyCount;
  if (a.trace != nullptr && threadIdx.x == 0) atomicMin(a.trace, globalNs());

  // Phases 1-2: scores, then selection by the last scorer of each (sequence, KV head).
  const int scoreItems = (a.phases & 1) ? pairs * chunksPerPair : 0;
  for (int item = blockIdx.x; item < scoreItems; item += gridDim.x) {
    const int pair = item / chunksPerPair, chunk = item % chunksPerPair;
    const int seq = pair / d.numKvHeads, kvh = pair % d.numKvHeads;
    const int base = d.pageIndptr[seq], np = d.pageIndptr[seq + 1] - base;
    const int K = a.topK[seq];
    const int p0 = min(np, chunk * a.scoreChunk), p1 = min(np, p0 + a.scoreChunk);
    __syncthreads();  // the previous item's selection may still read shared memory
    if (K < np && p1 > p0) {  // (K >= np keeps every page: nothing to score)
      // The group's queries and the chunk's page ids, loaded together (one round trip).
      float* qs = smem;
      int* ids = reinterpret_cast<int*>(smem + G * D);
#pragma unroll 4
      for (int i = threadIdx.x; i < G * D; i += blockDim.x) qs[i] = d.q[seq * d.qStride + (long)kvh * G * D + i];
#pragma unroll 4
      for (int i = threadIdx.x; i < p1 - p0; i += blockDim.x) ids[i] = __ldg(d.pageIndices + base + p0 + i);
      __syncthreads();
      uint4* ring = reinterpret_cast<uint4*>(smem + G * D + MAX_SCORE_CHUNK);
      if (a.metaDtype == META_F16)
        scorePages<D, __half>(a, qs, G, ids, kvh, p1 - p0, a.scores + (long)pair * a.maxPages + p0, ring);
      else
        scorePages<D, float>(a, qs, G, ids, kvh, p1 - p0, a.scores + (long)pair * a.maxPages + p0, ring);
    }
    // The barrier orders every thread's scores before thread 0's fence (cumulativity): one
    // device-scope fence per item instead of one per thread.
    __syncthreads();
    if (threadIdx.x == 0) {
      __threadfence();
      lastFlag = atomicAdd(a.scoreCounters + pair, 1) == chunksPerPair - 1;
      if (lastFlag) __threadfence();
      if (lastFlag && a.trace != nullptr) a.trace[2 + pair * SPARSE_TRACE_SLOTS + TR_SCORED] = globalNs();
    }
    __syncthreads();
    if (lastFlag && (a.phases & 4)) {  // score-only timing: no selection
      if (threadIdx.x == 0) a.scoreCounters[pair] = 0;
    } else if (lastFlag) {
      if (threadIdx.x == 0) a.scoreCounters[pair] = 0;
      unsigned* keys = reinterpret_cast<unsigned*>(smem);
      int* physS = stage ? reinterpret_cast<int*>(keys + np + (np >> 5) + 1) : nullptr;
      const long row = (long)pair * a.maxPages;
      unsigned long long* tr = a.trace != nullptr ? a.trace + 2 + pair * SPARSE_TRACE_SLOTS : nullptr;
      const int count = selectPages(a.scores + row, d.pageIndices + base, np, K, a.sinkPages, a.selected + row,
                                    a.selectedPhys + row, a.selectedCount + pair, keys, physS, tr);
      // Publish the count: the pair's attenders may start (no grid-wide barrier, so attention
      // overlaps scoring). A select-only launch (phases 1) publishes nothing, so no flag is left set.
      __syncthreads();
      if (threadIdx.x == 0 && (a.phases & 2)) {
        __threadfence();
        atomicExch(a.ready + pair, count + 1);
        if (tr != nullptr) tr[TR_PUBLISHED] = globalNs();
      }
    }
  }

  // Phases 3-4: attention over the selected pages, split and merged.
  const int units = (a.phases & 2) && !(a.phases & 4) ? pairs * d.headChunks : 0;
  for (int item = blockIdx.x; item < units * d.numSplits; item += gridDim.x) {
    const int unit = item / d.numSplits, split = item % d.numSplits;
    const int pair = unit / d.headChunks, chunk = unit % d.headChunks;
    const int seq = pair / d.numKvHeads, kvh = pair % d.numKvHeads;
    const int h0 = kvh * G + chunk * GT;
    const int gCount = min(GT, G - chunk * GT);
    int count;
    if (a.phases & 1) {  // (with phases 2 alone, the previous launch's selection is used)
      // Every CTA finished its scoring items before any waits here, and the launch is
      // cooperative (all CTAs resident), so the pair's selector always gets to run.
      if (threadIdx.x == 0) {
        int r;
        while ((r = atomicAdd(a.ready + pair, 0)) == 0) __nanosleep(64);
        __threadfence();
        readyCount = r - 1;
        if (a.trace != nullptr) atomicMin(a.trace + 2 + pair * SPARSE_TRACE_SLOTS + TR_SEEN, globalNs());
      }
      __syncthreads();
      count = readyCount;
    } else {
      count = __ldcg(a.selectedCount + pair);
    }
    const int per = (count + d.numSplits - 1) / d.numSplits;
    const int iBeg = min(count, split * per), iEnd = min(count, iBeg + per);
    const SelectedPages src{a.selectedPhys + (long)pair * a.maxPages, d.lastPageLen[seq], d.pageSize};
    __syncthreads();  // the previous item's merge may still read the scratch run() writes
    Core::run(d.q + seq * d.qStride + h0 * D, static_cast<const KV*>(d.kCache), static_cast<const KV*>(d.vCache), d.kScale,
              d.vScale, kvh, d.numKvHeads, d.pageSize, src, iBeg, iEnd, gCount, d.scaleLog2, smem);
    if (a.trace != nullptr && threadIdx.x == 0) atomicMax(a.trace + 2 + pair * SPARSE_TRACE_SLOTS + TR_ATTENDED, globalNs());
    const bool merged = finishDecode<Core>(smem, d.numSplits, split, d.partial, d.counters, unit, d.out + seq * d.outStride + h0 * D, gCount);
    // The unit's last CTA has seen every split pass the wait: once all head chunks of the pair
    // are done, re-arm the pair's flags for the next launch.
    if (merged && threadIdx.x == 0 && a.trace != nullptr) atomicMax(a.trace + 2 + pair * SPARSE_TRACE_SLOTS + TR_MERGED, globalNs());
    if (merged && threadIdx.x == 0 && (a.phases & 1)) {
      if (atomicAdd(a.pairDone + pair, 1) == d.headChunks - 1) {
        a.pairDone[pair] = 0;
        atomicExch(a.ready + pair, 0);
      }
    }
  }
  if (a.trace != nullptr && threadIdx.x == 0) atomicMax(a.trace + 1, globalNs());
}

template <class Core>
KernelInfo makeSparse() {
  return {reinterpret_cast<const void*>(&sparseDecodeKernel<Core>), Core::SMEM_FLOATS * 4, Core::WARPS * 32};
}

KernelInfo sparseDecodeKernel(int kvDtype, int headDim, int gt, int warps) {
  // Eight warps a CTA: fewer keys per thread in the selection and more pages in flight per
  // CTA; four: twice the resident CTAs, for steps with more (sequence, KV head) pairs than
  // eight-warp CTAs fit on the GPU at once (see plan.cpp).
  if (warps == 8) {
    TS_DECODE_DISPATCH(kvDtype, headDim, makeSparse, 8);
  } else if (warps == 4) {
    TS_DECODE_DISPATCH(kvDtype, headDim, makeSparse, 4);
  }
  throw ArgError("sparse decode: no kernel for headDim " + std::to_string(headDim) + ", kv dtype " + std::to_string(kvDtype) +
                 ", " + std::to_string(gt) + " heads per CTA, " + std::to_string(warps) + " warps");
}

int sparseDecodeSmem(const KernelInfo& k, int groupSize, int headDim, int maxPages) {
  const int keys = (maxPages + (maxPages >> 5) + 1) * 4;
  const int select = maxPages <= SELECT_STAGED_PAGES ? 2 * keys : keys;
  const int score = (groupSize * headDim + MAX_SCORE_CHUNK) * 4 + scoreRingBytes(k.threads / 32);
  return std::max(k.smemBytes, std::max(score, select));
}

__global__ void selectAllKernel(const int* __restrict__ indptr, int numKvHeads, int maxPages, int* __restrict__ selected,
                                int* __restrict__ selectedCount) {
  const int pair = blockIdx.x, seq = pair / numKvHeads;
  const int n = indptr[seq + 1] - indptr[seq];
  for (int i = threadIdx.x; i < n; i += blockDim.x) selected[(long)pair * maxPages + i] = i;
  if (threadIdx.x == 0) selectedCount[pair] = n;
}

void launchSelectAll(const int* pageIndptr, int numSeqs, int numKvHeads, int maxPages, int* selected, int* selectedCount,
                     cudaStream_t stream) {
  if (numSeqs == 0) return;
  selectAllKernel<<<numSeqs * numKvHeads, 128, 0, stream>>>(pageIndptr, numKvHeads, maxPages, selected, selectedCount);
  TS_CUDA(cudaGetLastError());
}

void launchSparseDecode(const SparseArgs& a, int kvDtype, int warps, int gridBlocks, cudaStream_t stream) {
  if (a.d.numSeqs == 0) return;
  const KernelInfo k = sparseDecodeKernel(kvDtype, a.d.headDim, a.d.headsPerCta, warps);
  const int smem = sparseDecodeSmem(k, a.d.groupSize, a.d.headDim, a.maxPages);
  prepareKernel(k, smem);
  SparseArgs copy = a;
  void* params[] = {&copy};
  TS_CUDA(cudaLaunchCooperativeKernel(k.fn, dim3(gridBlocks), dim3(k.threads), params, smem, stream));
}

}  // namespace ts
