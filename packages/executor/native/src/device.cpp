#include "device.h"

#include "common.cuh"

namespace ts {

DeviceState& device() {
  static DeviceState* state = nullptr;
  if (state == nullptr) {
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) check(e, "cudaGetDeviceCount");
    if (count == 0) throw CudaError("no CUDA device is present");
    auto* s = new DeviceState();
    TS_CUDA(cudaSetDevice(0));
    TS_CUDA(cudaGetDeviceProperties(&s->props, 0));
    TS_CUDA(cudaDriverGetVersion(&s->driverVersion));
    TS_CUDA(cudaRuntimeGetVersion(&s->runtimeVersion));
    TS_CUDA(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    state = s;
  }
  return *state;
}

void* deviceAlloc(size_t bytes) {
  device();
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes == 0 ? 1 : bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls work
    throw CudaError("cudaMalloc(" + std::to_string(bytes) + " bytes): " + cudaGetErrorString(e));
  }
  return p;
}

void deviceFree(void* ptr) {
  if (ptr != nullptr) cudaFree(ptr);
}

void* Scratch::ensure(size_t need, bool zero) {
  if (need <= bytes && ptr != nullptr) return ptr;
  release();
  // Grow geometrically so steps of slowly growing size do not reallocate every time.
  const size_t cap = std::max(need, bytes + bytes / 2);
  ptr = deviceAlloc(cap);
  bytes = cap;
  if (zero) TS_CUDA(cudaMemsetAsync(ptr, 0, cap, device().stream));
  return ptr;
}

void Scratch::release() {
  if (ptr != nullptr) {
    // Kernels queued on the stream may still read it.
    cudaStreamSynchronize(device().stream);
    deviceFree(ptr);
  }
  ptr = nullptr;
  bytes = 0;
}

double measureCopyBandwidth(size_t bytes, int iters, double* msPerCopy) {
  DeviceState& d = device();
  void* a = deviceAlloc(bytes);
  void* b = nullptr;
  try {
    b = deviceAlloc(bytes);
  } catch (...) {
    deviceFree(a);
    throw;
  }
  cudaEvent_t e0, e1;
  TS_CUDA(cudaEventCreate(&e0));
  TS_CUDA(cudaEventCreate(&e1));
  TS_CUDA(cudaMemsetAsync(a, 1, bytes, d.stream));
  for (int i = 0; i < 3; i++) TS_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, d.stream));
  TS_CUDA(cudaEventRecord(e0, d.stream));
  for (int i = 0; i < iters; i++) TS_CUDA(cudaMemcpyAsync(i % 2 ? a : b, i % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, d.stream));
  TS_CUDA(cudaEventRecord(e1, d.stream));
  TS_CUDA(cudaEventSynchronize(e1));
  float ms = 0;
  TS_CUDA(cudaEventElapsedTime(&ms, e0, e1));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  deviceFree(a);
  deviceFree(b);
  const double per = ms / iters;
  if (msPerCopy) *msPerCopy = per;
  return 2.0 * bytes / (per * 1e-3) / 1e9;
}

}  // namespace ts
