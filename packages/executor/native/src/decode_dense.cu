// Dense paged decode attention: every page of every sequence, split across CTAs along the
// pages (flash-decoding) and merged by the last CTA of each (sequence, KV head, head chunk).
#include <mutex>
#include <unordered_set>

#include "dispatch.cuh"
#include "kernels.h"

namespace ts {

constexpr int DECODE_WARPS = 8;

template <class Core>
__global__ void __launch_bounds__(DECODE_WARPS * 32, Core::MIN_BLOCKS) denseDecodeKernel(DecodeArgs a) {
  extern __shared__ float smem[];
  using KV = typename Core::KvType;
  constexpr int D = Core::HEAD_DIM, GT = Core::GT;
  const int split = blockIdx.x, y = blockIdx.y, seq = blockIdx.z;
  const int kvHead = y / a.headChunks, chunk = y % a.headChunks;
  const int h0 = kvHead * a.groupSize + chunk * GT;
  const int gCount = min(GT, a.groupSize - chunk * GT);
  const int base = a.pageIndptr[seq], np = a.pageIndptr[seq + 1] - base;
  const int per = (np + a.numSplits - 1) / a.numSplits;
  const int iBeg = min(np, split * per), iEnd = min(np, iBeg + per);
  const DensePages src{a.pageIndices + base, np, a.lastPageLen[seq], a.pageSize};
  Core::run(a.q + seq * a.qStride + h0 * D, static_cast<const KV*>(a.kCache), static_cast<const KV*>(a.vCache), a.kScale,
            a.vScale, kvHead, a.numKvHeads, a.pageSize, src, iBeg, iEnd, gCount, a.scaleLog2, smem);
  const int unit = seq * gridDim.y + y;
  finishDecode<Core>(smem, a.numSplits, split, a.partial, a.counters, unit, a.out + seq * a.outStride + h0 * D, gCount);
}

template <class Core>
KernelInfo makeDense() {
  return {reinterpret_cast<const void*>(&denseDecodeKernel<Core>), Core::SMEM_FLOATS * 4, DECODE_WARPS * 32};
}

int decodeHeadsPerCta(int groupSize, int kvDtype, int headDim) {
  // Groups of 4 or more share their K/V rows across an m16n8k16 tile on tensor cores (fp16 and
  // int8 KV; fp32 stays on CUDA cores, up to 8 heads per CTA).
  if ((kvDtype == KV_F16 || kvDtype == KV_I8) && headDim % 16 == 0 && groupSize >= 4) return 16;
  return groupSize <= 1 ? 1 : groupSize <= 2 ? 2 : groupSize <= 4 ? 4 : 8;
}

bool decodeSupported(int headDim, int kvDtype) {
  return (kvDtype == KV_F16 || kvDtype == KV_F32 || kvDtype == KV_I8) &&
         (headDim == 8 || headDim == 16 || headDim == 32 || headDim == 64 || headDim == 128);
}

int decodePartialFloats(int headDim, int headsPerCta) { return headsPerCta * (headDim + 2); }

KernelInfo denseDecodeKernel(int kvDtype, int headDim, int gt) {
  TS_DECODE_DISPATCH(kvDtype, headDim, makeDense, DECODE_WARPS);
  throw ArgError("dense decode: no kernel for headDim " + std::to_string(headDim) + ", kv dtype " + std::to_string(kvDtype) +
                 ", " + std::to_string(gt) + " heads per CTA (16 needs fp16 or int8 KV and a head dim multiple of 16)");
}

void prepareKernel(const KernelInfo& k, int smemBytes) {
  static std::mutex mu;
  static std::unordered_set<const void*> raised;
  if (smemBytes <= 48 * 1024) return;
  std::lock_guard<std::mutex> lock(mu);
  if (raised.count(k.fn)) return;
  TS_CUDA(cudaFuncSetAttribute(k.fn, cudaFuncAttributeMaxDynamicSharedMemorySize, std::max(smemBytes, 100 * 1024)));
  raised.insert(k.fn);
}

void launchDenseDecode(const DecodeArgs& a, int kvDtype, cudaStream_t stream) {
  if (a.numSeqs == 0) return;
  const KernelInfo k = denseDecodeKernel(kvDtype, a.headDim, a.headsPerCta);
  prepareKernel(k, k.smemBytes);
  const dim3 grid(a.numSplits, a.numKvHeads * a.headChunks, a.numSeqs);
  DecodeArgs copy = a;
  void* params[] = {&copy};
  TS_CUDA(cudaLaunchKernel(k.fn, grid, dim3(k.threads), params, k.smemBytes, stream));
}

}  // namespace ts
