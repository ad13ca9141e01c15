// Row-wise and element-wise ops of the model graph: broadcasting binary ops, gather, the
// norms and activations that TinyServe's custom tfjs kernels name, dtype casts.
#include "common.cuh"
#include "kernels.h"

namespace ts {

struct Shape6 {
  long dim[6];
  long a[6];
  long b[6];
};

__global__ void binaryKernel(int op, const float* __restrict__ x, const float* __restrict__ y, float* __restrict__ out, Shape6 s,
                             int rank, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    long rem = i, ia = 0, ib = 0;
    for (int d = rank - 1; d >= 0; d--) {
      const long c = rem % s.dim[d];
      rem /= s.dim[d];
      ia += c * s.a[d];
      ib += c * s.b[d];
    }
    const float u = x[ia], v = y[ib];
    float r;
    switch (op) {
      case OP_ADD: r = u + v; break;
      case OP_SUB: r = u - v; break;
      case OP_MUL: r = u * v; break;
      case OP_DIV: r = u / v; break;
      case OP_MAX: r = fmaxf(u, v); break;
      default: r = fminf(u, v); break;
    }
    out[i] = r;
  }
}

void launchBinary(int op, const float* a, const long* aStrides, const float* b, const long* bStrides, float* out, const long* outShape,
                  int rank, cudaStream_t stream) {
  if (rank > 6) throw ArgError("binary op: rank " + std::to_string(rank) + " exceeds 6");
  Shape6 s{};
  long n = 1;
  for (int d = 0; d < rank; d++) {
    s.dim[d] = outShape[d];
    s.a[d] = aStrides[d];
    s.b[d] = bStrides[d];
    n *= outShape[d];
  }
  if (n == 0) return;
  const int blocks = (int)std::min<long>((n + 255) / 256, 8192);
  binaryKernel<<<blocks, 256, 0, stream>>>(op, a, b, out, s, rank, n);
  checkLaunch("binaryKernel");
}

__global__ void gatherKernel(const char* __restrict__ x, int elemBytes, const int* __restrict__ idx, int numIdx, long axisDim, long inner,
                             char* __restrict__ out, long total) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
    const long in = i % inner, j = (i / inner) % numIdx, o = i / (inner * numIdx);
    const long src = (o * axisDim + idx[j]) * inner + in;
    for (int b = 0; b < elemBytes; b++) out[i * elemBytes + b] = x[src * elemBytes + b];
  }
}

void launchGather(const void* x, int elemBytes, const int* indices, int numIndices, long outer, long axisDim, long inner, void* out,
                  cudaStream_t stream) {
  const long total = outer * numIndices * inner;
  if (total == 0) return;
  const int blocks = (int)std::min<long>((total + 255) / 256, 8192);
  gatherKernel<<<blocks, 256, 0, stream>>>(static_cast<const char*>(x), elemBytes, indices, numIndices, axisDim, inner,
                                           static_cast<char*>(out), total);
  checkLaunch("gatherKernel");
}

__global__ void rmsNormKernel(const float* __restrict__ x, const float* __restrict__ w, float eps, int cols, float* __restrict__ out) {
  __shared__ float scratch[32];
  const float* r = x + (long)blockIdx.x * cols;
  float sq = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) sq += r[c] * r[c];
  sq = blockSum(sq, scratch);
  const float inv = rsqrtf(sq / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)blockIdx.x * cols + c] = r[c] * inv * w[c];
}

void launchRmsNorm(const float* x, const float* w, float eps, int rows, int cols, float* out, cudaStream_t stream) {
  if (rows == 0) return;
  rmsNormKernel<<<rows, 256, 0, stream>>>(x, w, eps, cols, out);
  checkLaunch("rmsNormKernel");
}

__global__ void layerNormKernel(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ b, float eps, int cols,
                                float* __restrict__ out) {
  __shared__ float scratch[32];
  const float* r = x + (long)blockIdx.x * cols;
  float sum = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) sum += r[c];
  const float mean = blockSum(sum, scratch) / cols;
  float sq = 0.f;
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = r[c] - mean;
    sq += v * v;
  }
  const float inv = rsqrtf(blockSum(sq, scratch) / cols + eps);
  for (int c = threadIdx.x; c < cols; c += blockDim.x) out[(long)blockIdx.x * cols + c] = (r[c] - mean) * inv * g[c] + b[c];
}

void launchLayerNorm(const float* x, const float* g, const float* b, float eps, int rows, int cols, float* out, cudaStream_t stream) {
  if (rows == 0) return;
  layerNormKernel<<<rows, 256, 0, stream>>>(x, g, b, eps, cols, out);
  checkLaunch("layerNormKernel");
}

__global__ void swiGluKernel(const float* __restrict__ x, int rows, int inter, float* __restrict__ out) {
  const long n = (long)rows * inter;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const long r = i / inter, c = i % inter;
    const float g = x[r * 2 * inter + c];
    out[i] = g / (1.f + expf(-g)) * x[r * 2 * inter + inter + c];
  }
}

void launchSwiGlu(const float* x, int rows, int inter, float* out, cudaStream_t stream) {
  const long n = (long)rows * inter;
  if (n == 0) return;
  swiGluKernel<<<(int)std::min<long>((n + 255) / 256, 8192), 256, 0, stream>>>(x, rows, inter, out);
  checkLaunch("swiGluKernel");
}

__global__ void geluNewKernel(const float* __restrict__ x, long n, float* __restrict__ out) {
  const float k = 0.7978845608028654f;  // sqrt(2 / pi)
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const float v = x[i];
    out[i] = 0.5f * v * (1.f + tanhf(k * (v + 0.044715f * v * v * v)));
  }
}

void launchGeluNew(const float* x, long n, float* out, cudaStream_t stream) {
  if (n == 0) return;
  geluNewKernel<<<(int)std::min<long>((n + 255) / 256, 8192), 256, 0, stream>>>(x, n, out);
  checkLaunch("geluNewKernel");
}

__global__ void castKernel(const void* x, int from, void* out, int to, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const float v = from == 2 ? (float)static_cast<const int*>(x)[i] : static_cast<const float*>(x)[i];
    if (to == 2) static_cast<int*>(out)[i] = (int)truncf(v);
    else static_cast<float*>(out)[i] = v;
  }
}

void launchCast(const void* x, int fromDtype, void* out, int toDtype, long n, cudaStream_t stream) {
  if (n == 0) return;
  castKernel<<<(int)std::min<long>((n + 255) / 256, 8192), 256, 0, stream>>>(x, fromDtype, out, toDtype, n);
  checkLaunch("castKernel");
}

}  // namespace ts
