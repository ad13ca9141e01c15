// The per-step plan: the batch's page tables and token placement on the device, the
// decode split counts and the kernels' scratch, built once per forward step and used by
// every layer's append and attention calls.
#pragma once
#include <vector>

#include "decode_args.h"
#include "device.h"

namespace ts {

struct KernelInfo;
/** Resident CTAs per SM of a kernel launched with `smem` bytes of dynamic shared memory. */
int occupancy(const KernelInfo& k, int smem);
/**
 * CTAs a decode launch (dense, or over page lists) splits its work for: one a SM for the fp16
 * tensor-core core, every resident CTA otherwise (see plan.cpp).
 */
int decodeTargetCtas(const KernelInfo& k, int kvDtype, int headsPerCta);
/** Decode splits per unit (see plan.cpp): `requested` when positive, else whole waves of `resident` CTAs. */
int chooseSplits(int requested, int units, int maxWork, int minPages, int resident, int slotFloats);

struct PlanParams {
  int numQHeads = 0, numKvHeads = 0, headDim = 0, pageSize = 0, kvDtype = 0;
  /** Pages in the KV pool (bounds check of pageIndices). */
  int numPagesTotal = 0;
  /** CSR: sequence s owns exactly ceil(seqLens[s] / pageSize) pages. */
  std::vector<int> pageIndptr, pageIndices, seqLens;
  /** Rows of the step's new tokens per sequence (the last tokens of each sequence); empty: one per sequence. */
  std::vector<int> queryIndptr;
  /** Per sequence, pages kept by sparse selection (forced ones included); empty: no sparse. */
  std::vector<int> topK;
  int sinkPages = 0;
  /** 0: chosen from the GPU's size. */
  int denseSplits = 0, sparseSplits = 0;
  int minPagesPerSplit = 8;
  /** Query heads per decode CTA (1, 2, 4 or 8; 0: the group size rounded up). */
  int headsPerCta = 0;
  /** Resident CTAs the split heuristic counts with; 0: SMs x the kernel's occupancy. */
  int targetCtas = 0;
  /** Warps per CTA of the fused sparse kernel, 4 or 8; 0: chosen from the step (plan.cpp). */
  int sparseWarps = 0;
};

struct StepPlan {
  int numSeqs = 0, numTokens = 0, numQHeads = 0, numKvHeads = 0, headDim = 0, pageSize = 0, kvDtype = 0;
  int groupSize = 0, headsPerCta = 0, headChunks = 0, maxPages = 0, sinkPages = 0;
  bool decodeOnly = false, hasSparse = false;
  /**
   * Every sequence keeps all its pages (topK >= its page count, e.g. a context within a token
   * budget): the sparse decode runs the dense kernel, and the selection (all pages) is written
   * once per step instead of by every layer's fused launch.
   */
  bool keepsAll = false;
  int denseSplits = 1, sparseSplits = 1, sparseGrid = 0, sparseSmem = 0, scoreChunk = 64, sparseWarps = 8;
  int numRuns = 0, numBlocks = 0, prefillHeads = 0, prefillChunks = 0;
  long kvPoolElems = 0;

  Scratch ints, partial, counters, scores, selected, selectedPhys, selectedCount;
  /** Item and page lists of the page-score, selected-decode and statistics calls (uploaded per call). */
  Scratch lists;
  /** The statistics call's per-head logits and probabilities (allocated on first use). */
  Scratch stats;
  /** Host copies for those calls' argument checks: pages, new-token rows and tokens per sequence. */
  std::vector<int> hostPageCounts, hostQueryIndptr, hostSeqLens;
  int *pageIndptr = nullptr, *pageIndices = nullptr, *lastLen = nullptr, *topK = nullptr;
  int *tokenPage = nullptr, *tokenSlot = nullptr, *tokenPos = nullptr, *runStart = nullptr;
  int *blockSeq = nullptr, *blockRow = nullptr, *blockPos = nullptr, *blockCount = nullptr;

  void update(const PlanParams& p);
  /** Frees the device scratch; the plan describes no step until the next update. */
  void release();
  ~StepPlan() { release(); }

  DecodeArgs decodeArgs(int splits) const;
};

}  // namespace ts
