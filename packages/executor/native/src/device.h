// The process's CUDA device, its stream, and device memory blocks.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <string>

namespace ts {

struct DeviceState {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudaDeviceProp props{};
  int driverVersion = 0, runtimeVersion = 0;
};

/** Initialises device 0 and the addon's stream on first use; throws CudaError without a GPU. */
DeviceState& device();

/** A device allocation owned by a JavaScript handle. */
struct DeviceBlock {
  void* ptr = nullptr;
  size_t bytes = 0;
};

void* deviceAlloc(size_t bytes);
void deviceFree(void* ptr);

/** Growable device scratch (plans): reallocates only when asked for more. */
struct Scratch {
  void* ptr = nullptr;
  size_t bytes = 0;
  /** Ensures capacity; new memory is zeroed when `zero` (counters). */
  void* ensure(size_t need, bool zero);
  void release();
};

/** Device-to-device copy bandwidth: bytes read plus written per second, over `iters` copies. */
double measureCopyBandwidth(size_t bytes, int iters, double* msPerCopy);

}  // namespace ts
