// Host entry points of the kernels (one .cu file per concern implements each group).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "decode_args.h"

namespace ts {

/** A kernel instantiation and its dynamic shared memory. */
struct KernelInfo {
  const void* fn;
  int smemBytes;
  int threads;
};

/**
 * Query heads one decode CTA takes: 16 (tensor cores) for fp16 KV, a head dim multiple of 16
 * and groups of 4 or more; otherwise (fp32, int8, small groups) the group size rounded up to
 * 1, 2, 4 or 8 (CUDA cores).
 */
int decodeHeadsPerCta(int groupSize, int kvDtype, int headDim);
/** Allows a kernel more than 48 KB of dynamic shared memory (once per kernel). */
void prepareKernel(const KernelInfo& k, int smemBytes);
/** Whether the decode kernels have an instantiation for this head dim and KV format. */
bool decodeSupported(int headDim, int kvDtype);

KernelInfo denseDecodeKernel(int kvDtype, int headDim, int headsPerCta);
/** The fused sparse kernel with 4 or 8 warps a CTA. */
KernelInfo sparseDecodeKernel(int kvDtype, int headDim, int headsPerCta, int warps);
/** Floats of one split's partial result (acc, m, l for each head of the CTA). */
int decodePartialFloats(int headDim, int headsPerCta);

void launchDenseDecode(const DecodeArgs& a, int kvDtype, cudaStream_t stream);
/** Dynamic shared memory of the sparse kernel: its core, the group's queries, the selection keys. */
int sparseDecodeSmem(const KernelInfo& k, int groupSize, int headDim, int maxPages);
/** One cooperative launch: scores, selects, attends, merges. `gridBlocks` from the plan. */
void launchSparseDecode(const SparseArgs& a, int kvDtype, int warps, int gridBlocks, cudaStream_t stream);

/**
 * The selection of a step whose every sequence keeps all its pages (topK >= pages): each
 * (sequence, KV head)'s pages 0 .. n-1 and count n, as the fused kernel would write them, so
 * that its attention can run on the dense kernel while readSelection / copySelection still see it.
 */
void launchSelectAll(const int* pageIndptr, int numSeqs, int numKvHeads, int maxPages, int* selected, int* selectedCount,
                     cudaStream_t stream);

/** Quest page scores summed in float64 in the TypeScript reference's order: bit-identical float32 results. */
void launchPageScore(const PageScoreArgs& a, int maxPages, cudaStream_t stream);
/** Query heads times head dim a page-score CTA stages in shared memory, at most. */
int pageScoreMaxQueryFloats();

KernelInfo selectedDecodeKernel(int kvDtype, int headDim, int headsPerCta);
/** Decode attention over given page lists, split `a.d.numSplits` ways and merged. */
void launchSelectedDecode(const SelectedArgs& a, int kvDtype, cudaStream_t stream);

bool prefillSupported(int headDim);
void launchPrefill(const PrefillArgs& a, int kvDtype, cudaStream_t stream);
/** Query tokens per prefill CTA for a head chunk of `headsPerChunk` heads. */
int prefillBlockTokens(int headsPerChunk);

void launchAppendKv(const AppendArgs& a, cudaStream_t stream);
/** Attention statistics of each sequence's last new token (attention_stats.cu); `maxLen`: the longest sequence. */
void launchAttentionStats(const StatsArgs& a, int kvDtype, int maxLen, cudaStream_t stream);
/** Fills `count` floats (halves, dtype 1; int8, dtype 2) with `value`: empty metadata boxes are +inf / -inf. */
void launchFill(void* dst, int dtype, long count, float value, cudaStream_t stream);
/** Pseudo-random values with mean 0 and standard deviation `scale` (benchmarks, large tests). */
void launchRandomFill(void* dst, int dtype, long count, uint32_t seed, float scale, cudaStream_t stream);
/** int8 KV: the same values quantised per row of `rowLen` (one scale each), as the append quantises. */
void launchRandomFillInt8(int8_t* dst, float* scales, long rows, int rowLen, uint32_t seed, float scale, cudaStream_t stream);
/** Recomputes page boxes from the K pages (int8: dequantised with kScale) over each page's first fills[i] slots. */
void launchRebuildMetadata(const void* kCache, int kvDtype, const float* kScale, void* metaMin, void* metaMax, int metaDtype,
                           const int* pages, const int* fills, int numPages, int pageSize, int numKvHeads, int headDim,
                           cudaStream_t stream);
/** Copies token rows between (page, slot)s, in order: all of K and V of `layers` caches. */
void launchCopyTokens(void* const* caches, int numCaches, int elemBytes, const int* src, const int* dst, int count,
                      long rowElems, cudaStream_t stream);

// gemm.cu
/** C[b] = op(A[b]) op(B[b]) (+ bias[n]); batch strides 0 broadcast. Row-major fp32. */
void launchGemm(int batch, int M, int N, int K, const float* A, long strideA, bool transA, const float* B, long strideB,
                bool transB, const float* bias, float* C, cudaStream_t stream);

// elementwise.cu
enum BinaryOp : int { OP_ADD = 0, OP_SUB = 1, OP_MUL = 2, OP_DIV = 3, OP_MAX = 4, OP_MIN = 5 };
/** out = a (op) b with numpy broadcasting; shapes padded to `rank` dims (at most 6). */
void launchBinary(int op, const float* a, const long* aStrides, const float* b, const long* bStrides, float* out,
                  const long* outShape, int rank, cudaStream_t stream);
void launchGather(const void* x, int elemBytes, const int* indices, int numIndices, long outer, long axisDim, long inner,
                  void* out, cudaStream_t stream);
void launchRmsNorm(const float* x, const float* w, float eps, int rows, int cols, float* out, cudaStream_t stream);
void launchLayerNorm(const float* x, const float* g, const float* b, float eps, int rows, int cols, float* out,
                     cudaStream_t stream);
void launchSwiGlu(const float* x, int rows, int inter, float* out, cudaStream_t stream);
void launchGeluNew(const float* x, long n, float* out, cudaStream_t stream);
/** dtype conversions: 0 f32, 2 i32 (float -> int truncates, as tfjs's cast). */
void launchCast(const void* x, int fromDtype, void* out, int toDtype, long n, cudaStream_t stream);

}  // namespace ts
