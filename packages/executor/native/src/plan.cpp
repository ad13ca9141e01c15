#include "plan.h"

#include <cmath>
#include <string>

#include "common.cuh"
#include "kernels.h"

namespace ts {

constexpr int SCORE_CHUNK = 64;  // fewest pages per scoring item: one load round per warp

int occupancy(const KernelInfo& k, int smem) {
  prepareKernel(k, smem);
  int blocks = 0;
  TS_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, k.fn, k.threads, smem));
  return std::max(blocks, 1);
}

int decodeTargetCtas(const KernelInfo& k, int kvDtype, int headsPerCta) {
  // The fp16 tensor-core core splits for one CTA a SM although two fit: fewer, longer splits
  // stream faster than twice as many sharing each SM (H200, TinyLlama heads, same run: batch 8
  // 77.0 -> 72.7 us at 32K, 17.3 -> 15.7 at 4K; batch 32 280.0 -> 261.5 at 32K; over page lists
  // 11.6 -> 9.9 us at batch 8, 32K). GPT-2's CUDA-core core and int8 keep every resident CTA
  // (GPT2 heads batch 8, 32K: 243.1 against 284.0 us).
  const int sms = device().props.multiProcessorCount;
  return kvDtype == KV_F16 && headsPerCta == 16 ? sms : sms * occupancy(k, k.smemBytes);
}

/**
 * Splits per unit (sequence, KV head, head chunk). Units do equal work, so the count that
 * fills whole waves of `resident` CTAs wins (a second, partly filled wave costs as much as a
 * full one), and every wave has a fixed cost (0.5% of a unit's work); each split adds its
 * partial result (`slotFloats`) to the last CTA's merge, which reads them all. Each split gets
 * at least `minPages` pages. Cost in units of one unit's work spread over the whole GPU; the
 * charges are fitted to H200 timings at 32K context: a TinyLlama group (16-head slots) at
 * batch 1 is fastest with 33 or 64 splits (132 or 256 CTAs, 28 us; 23 splits: 34 us; 45: 31 us
 * (some SMs with one CTA, some with two); 128: 39 us), so it gets 32,
 * one-head GPT-2 slots at batch 1 with a full wave (33 splits: 53 us; 23: 67 us), while at
 * batch 8 and 32 more waves of smaller splits only lose (GPT-2 batch 8: 6 splits 292 us, 33
 * splits 319 us).
 */
int chooseSplits(int requested, int units, int maxWork, int minPages, int resident, int slotFloats) {
  if (requested > 0) return std::min(requested, MAX_DECODE_SPLITS);
  const int cap = std::max(1, std::min(MAX_DECODE_SPLITS, ceilDiv(maxWork, std::max(minPages, 1))));
  int best = 1;
  double bestCost = 1e30;
  for (int s = 1; s <= cap; s++) {
    const double waves = std::ceil((double)units * s / std::max(resident, 1));
    const double cost = waves / s + 0.005 * waves + (double)s * slotFloats / (1 << 20);
    if (cost < bestCost - 1e-12) {
      bestCost = cost;
      best = s;
    }
  }
  return best;
}

void StepPlan::update(const PlanParams& p) {
  const int S = (int)p.seqLens.size();
  auto fail = [](const std::string& field, const std::string& msg) { throw ArgError(field + ": " + msg); };
  if (p.numKvHeads <= 0 || p.numQHeads <= 0 || p.numQHeads % p.numKvHeads != 0)
    fail("numQHeads", "must be a positive multiple of numKvHeads (" + std::to_string(p.numKvHeads) + "), got " + std::to_string(p.numQHeads));
  if (p.pageSize <= 0) fail("pageSize", "must be positive, got " + std::to_string(p.pageSize));
  if (p.kvDtype != KV_F32 && p.kvDtype != KV_F16 && p.kvDtype != KV_I8)
    fail("kvDtype", "must be 0 (fp32), 1 (fp16) or 2 (int8), got " + std::to_string(p.kvDtype));
  if ((int)p.pageIndptr.size() != S + 1 || p.pageIndptr[0] != 0 || p.pageIndptr[S] != (int)p.pageIndices.size())
    fail("pageIndptr", "must be [numSeqs + 1] offsets from 0 to pageIndices.length");
  int maxPages = 0;
  for (int s = 0; s < S; s++) {
    const int np = p.pageIndptr[s + 1] - p.pageIndptr[s];
    const int len = p.seqLens[s];
    if (len < 1 || np != ceilDiv(len, p.pageSize))
      fail("seqLens[" + std::to_string(s) + "]", std::to_string(len) + " tokens need " + std::to_string(ceilDiv(std::max(len, 1), p.pageSize)) +
                                                   " pages of " + std::to_string(p.pageSize) + ", the page table gives " + std::to_string(np));
    maxPages = std::max(maxPages, np);
  }
  for (size_t i = 0; i < p.pageIndices.size(); i++)
    if (p.pageIndices[i] < 0 || p.pageIndices[i] >= p.numPagesTotal)
      fail("pageIndices[" + std::to_string(i) + "]", "must be a page in [0, " + std::to_string(p.numPagesTotal) + "), got " + std::to_string(p.pageIndices[i]));
  std::vector<int> qIndptr = p.queryIndptr;
  if (qIndptr.empty()) {
    qIndptr.resize(S + 1);
    for (int s = 0; s <= S; s++) qIndptr[s] = s;
  }
  if ((int)qIndptr.size() != S + 1 || qIndptr[0] != 0) fail("queryIndptr", "must be [numSeqs + 1] row offsets from 0");
  bool decode = true;
  for (int s = 0; s < S; s++) {
    const int c = qIndptr[s + 1] - qIndptr[s];
    if (c < 0 || c > p.seqLens[s]) fail("queryIndptr", "sequence " + std::to_string(s) + " has " + std::to_string(c) + " new tokens but " + std::to_string(p.seqLens[s]) + " in all");
    decode = decode && c == 1;
  }
  if (!p.topK.empty() && (int)p.topK.size() != S) fail("topK", "must have one entry per sequence");
  if (!decodeSupported(p.headDim, p.kvDtype) || !prefillSupported(p.headDim))
    fail("headDim", std::to_string(p.headDim) + " is not supported (8, 16, 32, 64 or 128)");

  numSeqs = S;
  numTokens = qIndptr[S];
  numQHeads = p.numQHeads;
  numKvHeads = p.numKvHeads;
  headDim = p.headDim;
  pageSize = p.pageSize;
  kvDtype = p.kvDtype;
  kvPoolElems = (long)p.numPagesTotal * p.pageSize * p.numKvHeads * p.headDim;
  groupSize = p.numQHeads / p.numKvHeads;
  if (p.headsPerCta != 0 && p.headsPerCta != 1 && p.headsPerCta != 2 && p.headsPerCta != 4 && p.headsPerCta != 8 && p.headsPerCta != 16)
    fail("headsPerCta", "must be 0 (auto), 1, 2, 4, 8 or 16 (tensor cores), got " + std::to_string(p.headsPerCta));
  if (p.headsPerCta == 16 && ((p.kvDtype != KV_F16 && p.kvDtype != KV_I8) || p.headDim % 16 != 0))
    fail("headsPerCta", "16 (tensor cores) needs fp16 or int8 KV and a head dim multiple of 16");
  if (p.headsPerCta == 0) {
    headsPerCta = decodeHeadsPerCta(groupSize, p.kvDtype, p.headDim);
  } else if (p.headsPerCta == 16) {
    headsPerCta = 16;
  } else {
    const int h = std::min(p.headsPerCta, groupSize);
    headsPerCta = h <= 1 ? 1 : h <= 2 ? 2 : h <= 4 ? 4 : 8;
  }
  headChunks = ceilDiv(groupSize, headsPerCta);
  this->maxPages = std::max(maxPages, 1);
  decodeOnly = decode;
  hasSparse = !p.topK.empty();
  sinkPages = p.sinkPages;
  hostQueryIndptr = qIndptr;
  hostSeqLens = p.seqLens;
  hostPageCounts.resize(S);
  for (int s = 0; s < S; s++) hostPageCounts[s] = p.pageIndptr[s + 1] - p.pageIndptr[s];

  // Token placement, runs of tokens sharing a page, prefill blocks.
  std::vector<int> tPage(numTokens), tSlot(numTokens), tPos(numTokens), runs;
  std::vector<int> bSeq, bRow, bPos, bCount;
  prefillHeads = std::min(groupSize, 8);
  prefillChunks = ceilDiv(groupSize, prefillHeads);
  const int qb = prefillBlockTokens(prefillHeads);
  for (int s = 0; s < S; s++) {
    const int r0 = qIndptr[s], c = qIndptr[s + 1] - r0, pos0 = p.seqLens[s] - c;
    for (int i = 0; i < c; i++) {
      const int pos = pos0 + i;
      tPage[r0 + i] = p.pageIndices[p.pageIndptr[s] + pos / p.pageSize];
      tSlot[r0 + i] = pos % p.pageSize;
      tPos[r0 + i] = pos;
      if (i == 0 || tPage[r0 + i] != tPage[r0 + i - 1]) runs.push_back(r0 + i);
    }
    for (int i = 0; i < c; i += qb) {
      bSeq.push_back(s);
      bRow.push_back(r0 + i);
      bPos.push_back(pos0 + i);
      bCount.push_back(std::min(qb, c - i));
    }
  }
  runs.push_back(numTokens);
  numRuns = (int)runs.size() - 1;
  numBlocks = (int)bSeq.size();

  std::vector<int> last(S), topk(S, 0);
  for (int s = 0; s < S; s++) {
    last[s] = p.seqLens[s] - (p.pageIndptr[s + 1] - p.pageIndptr[s] - 1) * p.pageSize;
    if (hasSparse) topk[s] = p.topK[s];
  }
  // One upload for every index array.
  std::vector<int> host;
  auto put = [&host](const std::vector<int>& v) {
    const size_t at = host.size();
    host.insert(host.end(), v.begin(), v.end());
    return at;
  };
  const size_t oIndptr = put(p.pageIndptr), oIndices = put(p.pageIndices), oLast = put(last), oTopK = put(topk);
  const size_t oTPage = put(tPage), oTSlot = put(tSlot), oTPos = put(tPos), oRuns = put(runs);
  const size_t oBSeq = put(bSeq), oBRow = put(bRow), oBPos = put(bPos), oBCount = put(bCount);
  int* base = static_cast<int*>(ints.ensure(std::max<size_t>(host.size(), 1) * 4, false));
  TS_CUDA(cudaMemcpyAsync(base, host.data(), host.size() * 4, cudaMemcpyHostToDevice, device().stream));
  pageIndptr = base + oIndptr;
  pageIndices = base + oIndices;
  lastLen = base + oLast;
  topK = base + oTopK;
  tokenPage = base + oTPage;
  tokenSlot = base + oTSlot;
  tokenPos = base + oTPos;
  runStart = base + oRuns;
  blockSeq = base + oBSeq;
  blockRow = base + oBRow;
  blockPos = base + oBPos;
  blockCount = base + oBCount;

  // Splits: aim for one full wave of resident CTAs, at least minPagesPerSplit pages each.
  const DeviceState& dev = device();
  const int units = S * numKvHeads * headChunks;
  const KernelInfo dk = denseDecodeKernel(kvDtype, headDim, headsPerCta);
  const int denseTarget = p.targetCtas > 0 ? p.targetCtas : decodeTargetCtas(dk, kvDtype, headsPerCta);
  denseSplits = chooseSplits(p.denseSplits, units, maxPages, p.minPagesPerSplit, denseTarget, decodePartialFloats(headDim, headsPerCta));
  sparseSplits = 1;
  sparseGrid = 0;
  keepsAll = false;
  if (hasSparse) {
    int maxSel = 1;
    for (int s = 0; s < S; s++) {
      const int np = p.pageIndptr[s + 1] - p.pageIndptr[s];
      maxSel = std::max(maxSel, topk[s] >= np ? np : std::min(np, std::max(topk[s], std::min(p.sinkPages, np) + 1)));
    }
    // The selection packs two page counts in one 32-bit scan.
    if (this->maxPages > 65535)
      fail("seqLens", "sparse selection takes at most 65535 pages per sequence, got " + std::to_string(this->maxPages));
    const int pairs = S * numKvHeads;
    // Eight warps a CTA (measured on an H200 at 32K, budget 2048: TinyLlama heads batch 8 41.5 ->
    // 35.4 us, GPT2 heads batch 1 26.2 -> 23.0 us), unless the step has more (sequence, KV head)
    // pairs than eight-warp CTAs fit on the GPU at once (GPT2 heads batch 32, 512 pairs: 198 us
    // with four warps, 215 us with eight) or their shared memory does not fit.
    int warps = p.sparseWarps;
    if (warps != 0 && warps != 4 && warps != 8) fail("sparseWarps", "must be 0 (chosen per step), 4 or 8, got " + std::to_string(warps));
    if (warps == 0) {
      const KernelInfo wide = sparseDecodeKernel(kvDtype, headDim, headsPerCta, 8);
      const int wideSmem = sparseDecodeSmem(wide, groupSize, headDim, this->maxPages);
      const bool fits = wideSmem <= (int)dev.props.sharedMemPerBlockOptin - 4096;
      warps = fits && pairs <= dev.props.multiProcessorCount * occupancy(wide, wideSmem) ? 8 : 4;
    }
    sparseWarps = warps;
    const KernelInfo sk = sparseDecodeKernel(kvDtype, headDim, headsPerCta, warps);
    sparseSmem = sparseDecodeSmem(sk, groupSize, headDim, this->maxPages);
    if (sparseSmem > (int)dev.props.sharedMemPerBlockOptin - 4096)
      fail("seqLens", "the fused sparse kernel needs " + std::to_string(sparseSmem) + " bytes of shared memory for " + std::to_string(this->maxPages) +
                          " pages and a group of " + std::to_string(groupSize) + " heads; the GPU allows " + std::to_string(dev.props.sharedMemPerBlockOptin));
    const int resident = dev.props.multiProcessorCount * occupancy(sk, sparseSmem);
    const int sparseTarget = p.targetCtas > 0 ? p.targetCtas : resident;
    sparseSplits = chooseSplits(p.sparseSplits, units, maxSel, p.minPagesPerSplit, sparseTarget, decodePartialFloats(headDim, headsPerCta));
    // Pages per scoring item: about one item per resident CTA, so that every CTA scores at once
    // (the selection of a pair waits for its slowest chunk), 64 to MAX_SCORE_CHUNK pages.
    scoreChunk = std::max(SCORE_CHUNK, std::min(MAX_SCORE_CHUNK, ceilDiv(ceilDiv(pairs * this->maxPages, resident), 64) * 64));
    const int items1 = pairs * ceilDiv(this->maxPages, scoreChunk);
    const int items3 = units * sparseSplits;
    sparseGrid = std::max(1, std::min(resident, std::max(items1, items3)));
    scores.ensure((size_t)pairs * this->maxPages * 4, false);
    selected.ensure((size_t)pairs * this->maxPages * 4, false);
    selectedPhys.ensure((size_t)pairs * this->maxPages * 4, false);
    selectedCount.ensure((size_t)pairs * 4, false);
    keepsAll = true;
    for (int s = 0; s < S && keepsAll; s++) keepsAll = topk[s] >= p.pageIndptr[s + 1] - p.pageIndptr[s];
    if (keepsAll && decodeOnly)
      launchSelectAll(pageIndptr, S, numKvHeads, this->maxPages, static_cast<int*>(selected.ptr), static_cast<int*>(selectedCount.ptr),
                      dev.stream);
  }
  const int slot = decodePartialFloats(headDim, headsPerCta);
  partial.ensure((size_t)units * std::max(denseSplits, sparseSplits) * slot * 4, false);
  // Merge counters per unit, then per (sequence, KV head) score counters, ready flags and done
  // counters; the kernels re-arm them all.
  counters.ensure((size_t)(units + 3 * S * numKvHeads) * 4, true);
}

DecodeArgs StepPlan::decodeArgs(int splits) const {
  DecodeArgs a{};
  a.numSeqs = numSeqs;
  a.numQHeads = numQHeads;
  a.numKvHeads = numKvHeads;
  a.headDim = headDim;
  a.pageSize = pageSize;
  a.groupSize = groupSize;
  a.headsPerCta = headsPerCta;
  a.headChunks = headChunks;
  a.numSplits = splits;
  a.pageIndptr = pageIndptr;
  a.pageIndices = pageIndices;
  a.lastPageLen = lastLen;
  a.partial = static_cast<float*>(partial.ptr);
  a.counters = static_cast<int*>(counters.ptr);
  return a;
}

void StepPlan::release() {
  numSeqs = numTokens = numRuns = numBlocks = 0;
  decodeOnly = hasSparse = keepsAll = false;
  ints.release();
  partial.release();
  counters.release();
  scores.release();
  selected.release();
  selectedPhys.release();
  selectedCount.release();
  lists.release();
  stats.release();
  hostPageCounts.clear();
  hostQueryIndptr.clear();
  hostSeqLens.clear();
}

}  // namespace ts
