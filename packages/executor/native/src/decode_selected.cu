// Decode attention over page lists chosen elsewhere (the `TinyServeSparsePagedAttention`
// kernel: a selection policy ran in JavaScript): per (sequence, KV head) a CSR list of logical
// pages, split across CTAs along the list (flash-decoding) and merged by the last CTA of each
// (sequence, KV head, head chunk), on the same attention cores as the dense and fused decode
// (tensor cores for fp16 KV and GQA groups of 4+).
#include "dispatch.cuh"
#include "kernels.h"

namespace ts {

constexpr int SELECTED_WARPS = 8;

/** The i-th listed page: its logical index, then the sequence's physical page (two loads). */
struct ListedPages {
  const int* logical;  // the (sequence, KV head)'s list
  const int* indices;  // the sequence's physical pages
  int numPages;
  int lastLen;
  int pageSize;
  __device__ __forceinline__ int entry(int i) const {
    const int li = __ldg(logical + i);
    const int phys = __ldg(indices + li);
    return li == numPages - 1 ? ~phys : phys;
  }
};

template <class Core>
__global__ void __launch_bounds__(SELECTED_WARPS * 32, Core::MIN_BLOCKS) selectedDecodeKernel(SelectedArgs a) {
  extern __shared__ float smem[];
  using KV = typename Core::KvType;
  constexpr int D = Core::HEAD_DIM, GT = Core::GT;
  const DecodeArgs& d = a.d;
  const int split = blockIdx.x, y = blockIdx.y, item = blockIdx.z;
  const int kvHead = y / d.headChunks, chunk = y % d.headChunks;
  const int h0 = kvHead * d.groupSize + chunk * GT;
  const int gCount = min(GT, d.groupSize - chunk * GT);
  const int seq = a.itemSeq[item], row = a.itemRow[item];
  const int base = d.pageIndptr[seq], np = d.pageIndptr[seq + 1] - base;
  const int list = item * d.numKvHeads + kvHead;
  const int l0 = a.listIndptr[list], count = a.listIndptr[list + 1] - l0;
  const int per = (count + d.numSplits - 1) / d.numSplits;
  const int iBeg = min(count, split * per), iEnd = min(count, iBeg + per);
  const ListedPages src{a.listPages + l0, d.pageIndices + base, np, d.lastPageLen[seq], d.pageSize};
  // An empty list (or split) attends nothing: m = -inf, l = 0, and the output is zeros, as the reference's.
  Core::run(d.q + row * d.qStride + h0 * D, static_cast<const KV*>(d.kCache), static_cast<const KV*>(d.vCache), d.kScale,
            d.vScale, kvHead, d.numKvHeads, d.pageSize, src, iBeg, iEnd, gCount, d.scaleLog2, smem);
  const int unit = item * gridDim.y + y;
  finishDecode<Core>(smem, d.numSplits, split, d.partial, d.counters, unit, d.out + row * d.outStride + h0 * D, gCount);
}

template <class Core>
KernelInfo makeSelected() {
  return {reinterpret_cast<const void*>(&selectedDecodeKernel<Core>), Core::SMEM_FLOATS * 4, SELECTED_WARPS * 32};
}

KernelInfo selectedDecodeKernel(int kvDtype, int headDim, int gt) {
  TS_DECODE_DISPATCH(kvDtype, headDim, makeSelected, SELECTED_WARPS);
  throw ArgError("selected decode: no kernel for headDim " + std::to_string(headDim) + ", kv dtype " + std::to_string(kvDtype) +
                 ", " + std::to_string(gt) + " heads per CTA");
}

void launchSelectedDecode(const SelectedArgs& a, int kvDtype, cudaStream_t stream) {
  if (a.d.numSeqs == 0) return;
  const KernelInfo k = selectedDecodeKernel(kvDtype, a.d.headDim, a.d.headsPerCta);
  prepareKernel(k, k.smemBytes);
  const dim3 grid(a.d.numSplits, a.d.numKvHeads * a.d.headChunks, a.d.numSeqs);
  SelectedArgs copy = a;
  void* params[] = {&copy};
  TS_CUDA(cudaLaunchKernel(k.fn, grid, dim3(k.threads), params, k.smemBytes, stream));
}

}  // namespace ts
