// Launch arguments of the attention kernels, shared by host and device code.
#pragma once
#include <cstdint>

namespace ts {

/** Upper bound on decode splits per (sequence, KV head, head chunk): bounds the merge's scratch. */
constexpr int MAX_DECODE_SPLITS = 128;
/** Pages per scoring item of the sparse kernel, at most (their page ids are staged in shared memory). */
constexpr int MAX_SCORE_CHUNK = 1024;
/**
 * Up to this many pages per sequence, the sparse selection stages the pages' physical ids in
 * shared memory next to their keys (twice the selection's shared memory): the selector then
 * writes the attention's page list without a dependent load per chosen page.
 */
constexpr int SELECT_STAGED_PAGES = 4096;

/** One decode step of one layer: one query per sequence. */
struct DecodeArgs {
  int numSeqs, numQHeads, numKvHeads, headDim, pageSize;
  int groupSize;   // numQHeads / numKvHeads
  int headsPerCta;  // GT: query heads one CTA takes (1, 2, 4 or 8)
  int headChunks;   // CTAs per KV head: groupSize / headsPerCta rounded up
  int numSplits;   // CTAs per (sequence, KV head, head chunk), merged flash-decoding style
  const int* pageIndptr;
  const int* pageIndices;
  const int* lastPageLen;
  const float* q;  // query head h of sequence s at q + s * qStride + h * headDim
  long qStride;
  const void* kCache;
  const void* vCache;
  // int8 KV only (else null): one fp32 scale per (page, slot, KV head), at
  // (page * pageSize + slot) * numKvHeads + kvHead, for K and for V.
  const float* kScale;
  const float* vScale;
  float* out;  // same addressing as q, with outStride
  long outStride;
  float scaleLog2;  // logit scale * log2(e)
  float* partial;   // [units * numSplits * SLOT]
  int* counters;    // [units], zero between launches
};

/** The fused sparse step adds scoring and top-K selection per (sequence, KV head). */
struct SparseArgs {
  DecodeArgs d;
  const void* metaMin;  // [numPages, numKvHeads, headDim], fp32 or fp16 (metaDtype)
  const void* metaMax;
  int metaDtype;
  int aggregateSum;    // 0: max over the group's heads (default), 1: sum
  const int* topK;     // per sequence: pages to keep, forced ones included; >= numPages means all
  int sinkPages;
  int maxPages;        // row stride of scores / selected
  int scoreChunk;      // pages per scoring item, at most MAX_SCORE_CHUNK
  float* scores;       // [numSeqs * numKvHeads, maxPages]
  int* selected;       // [numSeqs * numKvHeads, maxPages] logical pages, ascending
  int* selectedPhys;   // same rows: their physical pages, bitwise-negated (~page) for the sequence's last page
  int* selectedCount;  // [numSeqs * numKvHeads]
  int* scoreCounters;  // [numSeqs * numKvHeads], zero between launches
  int* ready;          // [numSeqs * numKvHeads]: the pair's selected count + 1 once its selection is written; re-armed to 0 by its last attender
  int* pairDone;       // [numSeqs * numKvHeads]: head chunks of the pair finished (re-armed with `ready`)
  int phases;          // bit 1: score and select, bit 2: attend, 5: score only (benchmark breakdowns); 3 normally
  /**
   * Null, or a timeline for benchmarks (globaltimer ns): [0] the first CTA's start, [1] the last
   * CTA's end, then SPARSE_TRACE_SLOTS per (sequence, KV head), see decode_sparse.cu.
   */
  unsigned long long* trace;
};

/**
 * Quest page scores of some of the step's sequences (the policy picks the pages in JavaScript):
 * item i scores every page of sequence itemSeq[i] for the query at row itemRow[i], into
 * out[itemOut[i] + kvHead * numPages + page].
 */
struct PageScoreArgs {
  int numItems, numKvHeads, headDim, groupSize;
  const int* itemSeq;
  const int* itemRow;
  const int* itemOut;
  const int* pageIndptr;  // the plan's page table
  const int* pageIndices;
  const float* q;  // query head h of row r at q + r * qStride + h * headDim
  long qStride;
  const void* metaMin;  // [numPages, numKvHeads, headDim], fp32 or fp16 (metaDtype)
  const void* metaMax;
  int metaDtype;
  int aggregateSum;  // 0: max over the group's heads, 1: sum
  float* out;
};

/**
 * Decode attention over given page lists: item i is sequence itemSeq[i], its query and output at
 * row itemRow[i]; its KV head j reads the logical pages listPages[listIndptr[i * numKvHeads + j] ..
 * listIndptr[i * numKvHeads + j + 1]). `d.numSeqs` counts the items; d's page table is the plan's.
 */
struct SelectedArgs {
  DecodeArgs d;
  const int* itemSeq;
  const int* itemRow;
  const int* listIndptr;
  const int* listPages;
};

/** Timeline slots per (sequence, KV head) of a traced sparse launch. */
constexpr int SPARSE_TRACE_SLOTS = 10;

/**
 * Attention statistics of a step (plugins' `collectAttentionStats`): for each sequence s, the
 * attention of its row rows[s] (its last new token, at position seqLen - 1) per query head over
 * the logical pages listPages[listIndptr[s * numKvHeads + j] .. listIndptr[s * numKvHeads + j + 1])
 * of KV head j (ascending, each over its filled slots).
 */
struct StatsArgs {
  int numSeqs, numQHeads, numKvHeads, headDim, pageSize, groupSize;
  const int* pageIndptr;
  const int* pageIndices;
  const int* lastPageLen;
  const int* rows;        // per sequence: the recorded row, or -1 (nothing recorded)
  const int* listIndptr;  // [numSeqs * numKvHeads + 1]
  const int* listPages;
  const int* massOffset;  // per sequence: where its positions start in `mass`
  const float* q;         // query head h of row r at q + r * qStride + h * headDim
  long qStride;
  const void* kCache;
  const float* kScale;    // int8 KV only, as in DecodeArgs
  float scale;            // logit scale (natural units)
  float* probs;           // scratch: [numSeqs * numQHeads, probStride] logits, then probabilities
  long probStride;        // at least the longest sequence
  float* headEntropy;     // scratch: [numSeqs * numQHeads]
  float* entropy;         // [numSeqs]: mean over query heads of the entropy (nats)
  float* mass;            // [sum of seqLens]: mean over query heads of each position's probability
};

/** Causal attention of new tokens (prefill chunks, or any mix) over their sequences' pages. */
struct PrefillArgs {
  int numQHeads, numKvHeads, headDim, pageSize;
  int groupSize, headChunks, headsPerChunk;
  int numBlocks;
  const int* blockSeq;    // per query block: its sequence
  const int* blockRow;    // first token row of the block
  const int* blockPos;    // position of that token (the block's tokens are consecutive)
  const int* blockCount;  // tokens in the block
  const int* pageIndptr;
  const int* pageIndices;
  const float* q;  // row r, head h at q + r * qStride + h * headDim
  long qStride;
  const void* kCache;
  const void* vCache;
  const float* kScale;  // int8 KV only, as in DecodeArgs
  const float* vScale;
  float* out;
  long outStride;
  float scaleLog2;
};

/** Append of new K/V rows (RoPE applied) with the page metadata update fused in. */
struct AppendArgs {
  int numTokens, numHeads, numKvHeads, headDim, pageSize;
  const float* qkv;  // [numTokens, (numHeads + 2 * numKvHeads) * headDim] rows, stride qkvStride
  long qkvStride;
  float* qOut;  // rotated queries [numTokens, numHeads * headDim] (row stride qOutStride), or null
  long qOutStride;
  void* kCache;
  void* vCache;
  float* kScale;  // int8 KV only: written with the quantised rows (addressed as in DecodeArgs)
  float* vScale;
  int kvDtype;
  void* metaMin;  // null: no metadata
  void* metaMax;
  int metaDtype;
  const int* tokenPage;  // physical page of each token
  const int* tokenSlot;
  const int* tokenPos;
  const int* runStart;  // [numRuns + 1]: tokens of a run share one page, in slot order
  int numRuns;
  int rope;
  double ropeTheta;
};

}  // namespace ts
