// The Node-API surface of the addon (typed in src/cuda/addon-types.ts): device memory,
// per-step plans, the attention kernels, the tfjs backend's ops, timing.
#include <functional>
#include <initializer_list>
#include <unordered_set>
#include <vector>

#include "device.h"
#include "kernels.h"
#include "napi_util.h"
#include "plan.h"

namespace ts {

static constexpr int ABI_VERSION = 3;
static const napi_type_tag BLOCK_TAG = {0x54696e7953727665ULL, 0x44657642756666ULL};
static const napi_type_tag PLAN_TAG = {0x54696e7953727665ULL, 0x53746570506c616eULL};

static void finalizeBlock(napi_env, void* data, void*) {
  auto* b = static_cast<DeviceBlock*>(data);
  deviceFree(b->ptr);
  delete b;
}

static void finalizePlan(napi_env, void* data, void*) { delete static_cast<StepPlan*>(data); }

template <typename T>
static T* unwrap(napi_env env, napi_value v, const napi_type_tag& tag, const std::string& field, const char* what) {
  napi_valuetype t;
  NAPI(napi_typeof(env, v, &t));
  bool ok = false;
  if (t == napi_external) NAPI(napi_check_object_type_tag(env, v, &tag, &ok));
  if (!ok) throw ArgError(field + ": must be " + what);
  void* data;
  NAPI(napi_get_value_external(env, v, &data));
  return static_cast<T*>(data);
}

static DeviceBlock* blockOf(napi_env env, napi_value v, const std::string& field) {
  DeviceBlock* b = unwrap<DeviceBlock>(env, v, BLOCK_TAG, field, "a device buffer from alloc()");
  if (b->ptr == nullptr) throw ArgError(field + ": the device buffer was freed");
  return b;
}

static StepPlan* planOf(napi_env env, napi_value v) { return unwrap<StepPlan>(env, v, PLAN_TAG, "plan", "a plan from createPlan()"); }

/**
 * Pointer to obj[name] at element offset obj[name + "Offset"], after checking that `elems`
 * elements of `elemBytes` fit from there.
 */
static char* bufferArg(napi_env env, napi_value obj, const char* name, long elems, int elemBytes, bool optional = false) {
  napi_value v = prop(env, obj, name);
  if (optional && isNullish(env, v)) return nullptr;
  DeviceBlock* b = blockOf(env, v, name);
  const std::string offName = std::string(name) + "Offset";
  const long off = integer(env, obj, offName.c_str(), 0);
  if (off < 0 || (size_t)(off + elems) * elemBytes > b->bytes)
    throw ArgError(std::string(name) + ": needs " + std::to_string((off + elems) * (long)elemBytes) + " bytes from offset " + std::to_string(off) +
                   ", the buffer holds " + std::to_string(b->bytes));
  return static_cast<char*>(b->ptr) + (size_t)off * elemBytes;
}

static napi_value arg(napi_env env, napi_callback_info info, size_t i, size_t* argc = nullptr) {
  napi_value argv[8];
  size_t n = 8;
  NAPI(napi_get_cb_info(env, info, &n, argv, nullptr, nullptr));
  if (argc) *argc = n;
  if (i >= n) throw ArgError("missing argument " + std::to_string(i));
  return argv[i];
}

static napi_value undefinedValue(napi_env env) {
  napi_value u;
  NAPI(napi_get_undefined(env, &u));
  return u;
}

static cudaStream_t stream() { return device().stream; }

// ---- device and memory ----

static napi_value deviceInfo(napi_env env, napi_callback_info) {
  const DeviceState& d = device();
  napi_value o, name;
  NAPI(napi_create_object(env, &o));
  NAPI(napi_create_string_utf8(env, d.props.name, NAPI_AUTO_LENGTH, &name));
  NAPI(napi_set_named_property(env, o, "name", name));
  setNumber(env, o, "major", d.props.major);
  setNumber(env, o, "minor", d.props.minor);
  setNumber(env, o, "multiProcessors", d.props.multiProcessorCount);
  setNumber(env, o, "totalMemory", (double)d.props.totalGlobalMem);
  setNumber(env, o, "l2CacheBytes", d.props.l2CacheSize);
  setNumber(env, o, "sharedMemPerBlockOptin", (double)d.props.sharedMemPerBlockOptin);
  setNumber(env, o, "driverVersion", d.driverVersion);
  setNumber(env, o, "runtimeVersion", d.runtimeVersion);
  setNumber(env, o, "abiVersion", ABI_VERSION);
  return o;
}

static napi_value alloc(napi_env env, napi_callback_info info) {
  const double bytes = toNumber(env, arg(env, info, 0), "bytes");
  if (!(bytes >= 0) || bytes != (double)(size_t)bytes) throw ArgError("bytes: must be a non-negative integer");
  auto* b = new DeviceBlock();
  try {
    b->ptr = deviceAlloc((size_t)bytes);
  } catch (...) {
    delete b;
    throw;
  }
  b->bytes = (size_t)bytes;
  napi_value ext;
  NAPI(napi_create_external(env, b, finalizeBlock, nullptr, &ext));
  NAPI(napi_type_tag_object(env, ext, &BLOCK_TAG));
  return ext;
}

static napi_value freeBlock(napi_env env, napi_callback_info info) {
  DeviceBlock* b = unwrap<DeviceBlock>(env, arg(env, info, 0), BLOCK_TAG, "buffer", "a device buffer from alloc()");
  if (b->ptr != nullptr) {
    // Work queued on the stream may still use it.
    TS_CUDA(cudaStreamSynchronize(stream()));
    deviceFree(b->ptr);
    b->ptr = nullptr;
  }
  return undefinedValue(env);
}

/** upload(dst, dstOffsetBytes, typedArray) */
static napi_value upload(napi_env env, napi_callback_info info) {
  DeviceBlock* b = blockOf(env, arg(env, info, 0), "dst");
  const double off = toNumber(env, arg(env, info, 1), "dstOffsetBytes");
  size_t bytes;
  const void* src = typedData(env, arg(env, info, 2), &bytes, nullptr, "src");
  if (off < 0 || off + bytes > b->bytes) throw ArgError("upload: " + std::to_string(bytes) + " bytes at " + std::to_string((long)off) + " overrun a buffer of " + std::to_string(b->bytes));
  TS_CUDA(cudaMemcpyAsync(static_cast<char*>(b->ptr) + (size_t)off, src, bytes, cudaMemcpyHostToDevice, stream()));
  // Pageable source: the call returns once staged, but make completion explicit for callers that reuse it.
  TS_CUDA(cudaStreamSynchronize(stream()));
  return undefinedValue(env);
}

/** download(src, srcOffsetBytes, typedArray): waits for queued work. */
static napi_value download(napi_env env, napi_callback_info info) {
  DeviceBlock* b = blockOf(env, arg(env, info, 0), "src");
  const double off = toNumber(env, arg(env, info, 1), "srcOffsetBytes");
  size_t bytes;
  void* dst = typedData(env, arg(env, info, 2), &bytes, nullptr, "dst");
  if (off < 0 || off + bytes > b->bytes) throw ArgError("download: " + std::to_string(bytes) + " bytes at " + std::to_string((long)off) + " overrun a buffer of " + std::to_string(b->bytes));
  TS_CUDA(cudaMemcpyAsync(dst, static_cast<char*>(b->ptr) + (size_t)off, bytes, cudaMemcpyDeviceToHost, stream()));
  TS_CUDA(cudaStreamSynchronize(stream()));
  return undefinedValue(env);
}

/** copy(dst, dstOffsetBytes, src, srcOffsetBytes, bytes) */
static napi_value copy(napi_env env, napi_callback_info info) {
  DeviceBlock* d = blockOf(env, arg(env, info, 0), "dst");
  const double dOff = toNumber(env, arg(env, info, 1), "dstOffsetBytes");
  DeviceBlock* s = blockOf(env, arg(env, info, 2), "src");
  const double sOff = toNumber(env, arg(env, info, 3), "srcOffsetBytes");
  const double bytes = toNumber(env, arg(env, info, 4), "bytes");
  if (dOff < 0 || sOff < 0 || bytes < 0 || dOff + bytes > d->bytes || sOff + bytes > s->bytes) throw ArgError("copy: range outside a buffer");
  TS_CUDA(cudaMemcpyAsync(static_cast<char*>(d->ptr) + (size_t)dOff, static_cast<char*>(s->ptr) + (size_t)sOff, (size_t)bytes,
                          cudaMemcpyDeviceToDevice, stream()));
  return undefinedValue(env);
}

static int elemBytesOf(int dtype) { return dtype == KV_I8 ? 1 : dtype == KV_F16 ? 2 : 4; }

/** fill({ dst, dstOffset, count, dtype (0 f32, 1 f16, 2 int8), value }) */
static napi_value fill(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const int dtype = (int)integer(env, o, "dtype");
  if (dtype != 0 && dtype != 1 && dtype != 2) throw ArgError("dtype: must be 0 (fp32), 1 (fp16) or 2 (int8)");
  const long count = integer(env, o, "count");
  void* dst = bufferArg(env, o, "dst", count, elemBytesOf(dtype));
  const double value = num(env, o, "value");
  if (dtype == 2 && !(value == std::floor(value) && value >= -128 && value <= 127)) throw ArgError("value: int8 fill needs an integer in [-128, 127]");
  launchFill(dst, dtype, count, (float)value, stream());
  return undefinedValue(env);
}

/**
 * randomFill({ dst, dstOffset, count, dtype (0 f32, 1 f16, 2 int8), seed, scale, scales?, scalesOffset?, rowLen? }):
 * int8 quantises rows of `rowLen` values (count a multiple of it) and writes one fp32 scale per row to `scales`.
 */
static napi_value randomFill(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const int dtype = (int)integer(env, o, "dtype");
  if (dtype != 0 && dtype != 1 && dtype != 2) throw ArgError("dtype: must be 0 (fp32), 1 (fp16) or 2 (int8)");
  const long count = integer(env, o, "count");
  void* dst = bufferArg(env, o, "dst", count, elemBytesOf(dtype));
  const uint32_t seed = (uint32_t)integer(env, o, "seed", 1);
  const float scale = (float)num(env, o, "scale", 1.0);
  if (dtype == 2) {
    const long rowLen = integer(env, o, "rowLen");
    if (rowLen <= 0 || count % rowLen != 0) throw ArgError("rowLen: must be a positive divisor of count (" + std::to_string(count) + ")");
    float* scales = reinterpret_cast<float*>(bufferArg(env, o, "scales", count / rowLen, 4));
    launchRandomFillInt8(static_cast<int8_t*>(dst), scales, count / rowLen, (int)rowLen, seed, scale, stream());
  } else {
    launchRandomFill(dst, dtype, count, seed, scale, stream());
  }
  return undefinedValue(env);
}

static napi_value synchronize(napi_env env, napi_callback_info) {
  TS_CUDA(cudaStreamSynchronize(stream()));
  return undefinedValue(env);
}

static napi_value memoryInfo(napi_env env, napi_callback_info) {
  device();
  size_t free = 0, total = 0;
  TS_CUDA(cudaMemGetInfo(&free, &total));
  napi_value o;
  NAPI(napi_create_object(env, &o));
  setNumber(env, o, "free", (double)free);
  setNumber(env, o, "total", (double)total);
  return o;
}

static napi_value copyBandwidth(napi_env env, napi_callback_info info) {
  const double bytes = toNumber(env, arg(env, info, 0), "bytes");
  const double iters = toNumber(env, arg(env, info, 1), "iterations");
  double ms = 0;
  const double gbps = measureCopyBandwidth((size_t)bytes, std::max(1, (int)iters), &ms);
  napi_value o;
  NAPI(napi_create_object(env, &o));
  setNumber(env, o, "gbPerSecond", gbps);
  setNumber(env, o, "msPerCopy", ms);
  return o;
}

// ---- plans ----

static napi_value createPlan(napi_env env, napi_callback_info) {
  device();
  auto* p = new StepPlan();
  napi_value ext;
  NAPI(napi_create_external(env, p, finalizePlan, nullptr, &ext));
  NAPI(napi_type_tag_object(env, ext, &PLAN_TAG));
  return ext;
}

/** releasePlan(plan): frees the plan's device scratch now; a later planUpdate makes it usable again. */
static napi_value releasePlan(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  plan->release();
  return undefinedValue(env);
}

static napi_value planUpdate(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  napi_value o = arg(env, info, 1);
  PlanParams p;
  p.numQHeads = (int)integer(env, o, "numQHeads");
  p.numKvHeads = (int)integer(env, o, "numKvHeads");
  p.headDim = (int)integer(env, o, "headDim");
  p.pageSize = (int)integer(env, o, "pageSize");
  p.kvDtype = (int)integer(env, o, "kvDtype");
  p.numPagesTotal = (int)integer(env, o, "numPagesTotal");
  p.pageIndptr = int32Prop(env, o, "pageIndptr");
  p.pageIndices = int32Prop(env, o, "pageIndices");
  p.seqLens = int32Prop(env, o, "seqLens");
  p.queryIndptr = int32Prop(env, o, "queryIndptr");
  p.topK = int32Prop(env, o, "topK");
  p.sinkPages = (int)integer(env, o, "sinkPages", 0);
  p.denseSplits = (int)integer(env, o, "denseSplits", 0);
  p.sparseSplits = (int)integer(env, o, "sparseSplits", 0);
  p.sparseWarps = (int)integer(env, o, "sparseWarps", 0);
  p.minPagesPerSplit = (int)integer(env, o, "minPagesPerSplit", 8);
  p.targetCtas = (int)integer(env, o, "targetCtas", 0);
  p.headsPerCta = (int)integer(env, o, "headsPerCta", 0);

  plan->update(p);
  napi_value r;
  NAPI(napi_create_object(env, &r));
  setNumber(env, r, "numSeqs", plan->numSeqs);
  setNumber(env, r, "numTokens", plan->numTokens);
  setNumber(env, r, "maxPages", plan->maxPages);
  setNumber(env, r, "denseSplits", plan->denseSplits);
  setNumber(env, r, "sparseSplits", plan->sparseSplits);
  setNumber(env, r, "sparseGrid", plan->sparseGrid);
  setNumber(env, r, "sparseWarps", plan->sparseWarps);
  setNumber(env, r, "numRuns", plan->numRuns);
  setNumber(env, r, "numBlocks", plan->numBlocks);
  setNumber(env, r, "headsPerCta", plan->headsPerCta);
  napi_value b;
  NAPI(napi_get_boolean(env, plan->decodeOnly, &b));
  NAPI(napi_set_named_property(env, r, "decodeOnly", b));
  return r;
}

static int kvBytes(const StepPlan& p) { return elemBytesOf(p.kvDtype); }

/**
 * The int8 scale buffers `kScale` / `vScale` of a call (one fp32 per (page, slot, KV head) of the
 * pool); both required for int8 KV, ignored otherwise (null).
 */
static void scaleArgs(napi_env env, napi_value o, const StepPlan& plan, float** k, float** v) {
  *k = *v = nullptr;
  if (plan.kvDtype != KV_I8) return;
  const long rows = plan.kvPoolElems / plan.headDim;
  *k = reinterpret_cast<float*>(bufferArg(env, o, "kScale", rows, 4));
  *v = reinterpret_cast<float*>(bufferArg(env, o, "vScale", rows, 4));
}

/** Row stride of a [numTokens, numQHeads * headDim] fp32 operand (field `name`), at least one row. */
static long rowStride(napi_env env, napi_value o, const char* name, const StepPlan& plan) {
  const long hd = (long)plan.numQHeads * plan.headDim;
  const long st = integer(env, o, name, hd);
  if (st < hd) throw ArgError(std::string(name) + ": must be at least numQHeads * headDim = " + std::to_string(hd) + ", got " + std::to_string(st));
  return st;
}

/**
 * The operands every decode attention call reads, into `a`: the step's queries and outputs
 * (`q`, `qStride`, `out`, `outStride`, one row per new token), the layer's K/V pool (`k`, `v`,
 * and `kScale` / `vScale` for int8) and the logit scale (`scale`, default 1/sqrt(headDim)).
 */
static void decodeOperands(napi_env env, napi_value o, StepPlan& plan, DecodeArgs& a) {
  const long hd = (long)plan.numQHeads * plan.headDim;
  const long lastRow = std::max(0, plan.numTokens - 1);
  a.qStride = rowStride(env, o, "qStride", plan);
  a.outStride = rowStride(env, o, "outStride", plan);
  a.q = reinterpret_cast<const float*>(bufferArg(env, o, "q", plan.numTokens ? lastRow * a.qStride + hd : 0, 4));
  a.out = reinterpret_cast<float*>(bufferArg(env, o, "out", plan.numTokens ? lastRow * a.outStride + hd : 0, 4));
  a.kCache = bufferArg(env, o, "k", plan.kvPoolElems, kvBytes(plan));
  a.vCache = bufferArg(env, o, "v", plan.kvPoolElems, kvBytes(plan));
  float *ks, *vs;
  scaleArgs(env, o, plan, &ks, &vs);
  a.kScale = ks;
  a.vScale = vs;
  a.scaleLog2 = (float)(num(env, o, "scale", 1.0 / std::sqrt((double)plan.headDim)) * 1.4426950408889634);
}

/** A layer's page metadata: `metaDtype` (0 fp32, 1 fp16) and the `metaMin` / `metaMax` boxes (both or, when optional, neither). */
struct MetaOperands {
  int dtype;
  void *min, *max;
};

static MetaOperands metaOperands(napi_env env, napi_value o, const StepPlan& plan, bool optional) {
  MetaOperands m{};
  m.dtype = (int)integer(env, o, "metaDtype", 0);
  if (m.dtype != META_F32 && m.dtype != META_F16) throw ArgError("metaDtype: must be 0 (fp32) or 1 (fp16), got " + std::to_string(m.dtype));
  const long elems = plan.kvPoolElems / std::max(plan.pageSize, 1);
  const int bytes = m.dtype == META_F16 ? 2 : 4;
  m.min = bufferArg(env, o, "metaMin", elems, bytes, optional);
  m.max = bufferArg(env, o, "metaMax", elems, bytes, optional);
  if ((m.min == nullptr) != (m.max == nullptr)) throw ArgError("metaMin/metaMax: give both or neither");
  return m;
}

/** The decode launch of one layer, checked against the plan; reused by timeCalls. */
static std::function<void()> decodeCall(napi_env env, StepPlan* plan, napi_value o, bool sparse) {
  if (!plan->decodeOnly) throw ArgError("decode: the plan's step is not one new token per sequence (use prefill)");
  if (sparse && !plan->hasSparse) throw ArgError("decodeSparse: the plan has no topK (sparse selection)");
  DecodeArgs a = plan->decodeArgs(sparse ? plan->sparseSplits : plan->denseSplits);
  decodeOperands(env, o, *plan, a);
  const int kv = plan->kvDtype;
  if (!sparse) return [a, kv]() { launchDenseDecode(a, kv, stream()); };
  SparseArgs s{};
  s.d = a;
  const MetaOperands meta = metaOperands(env, o, *plan, false);
  s.metaDtype = meta.dtype;
  s.metaMin = meta.min;
  s.metaMax = meta.max;
  s.aggregateSum = flag(env, o, "aggregateSum") ? 1 : 0;
  s.phases = (int)integer(env, o, "phases", 3);
  if (s.phases != 1 && s.phases != 2 && s.phases != 3 && s.phases != 5)
    throw ArgError("phases: must be 1 (score and select), 2 (attend), 3 (both) or 5 (score only), got " + std::to_string(s.phases));
  s.trace = nullptr;
  if (has(env, o, "trace"))
    s.trace = reinterpret_cast<unsigned long long*>(bufferArg(env, o, "trace", 2 + (long)plan->numSeqs * plan->numKvHeads * SPARSE_TRACE_SLOTS, 8));
  s.topK = plan->topK;
  s.sinkPages = plan->sinkPages;
  s.maxPages = plan->maxPages;
  s.scoreChunk = plan->scoreChunk;
  s.scores = static_cast<float*>(plan->scores.ptr);
  s.selected = static_cast<int*>(plan->selected.ptr);
  s.selectedPhys = static_cast<int*>(plan->selectedPhys.ptr);
  s.selectedCount = static_cast<int*>(plan->selectedCount.ptr);
  const int units = plan->numSeqs * plan->numKvHeads * plan->headChunks, pairs = plan->numSeqs * plan->numKvHeads;
  s.scoreCounters = static_cast<int*>(plan->counters.ptr) + units;
  s.ready = s.scoreCounters + pairs;
  s.pairDone = s.ready + pairs;
  if (plan->keepsAll && s.phases == 3 && s.trace == nullptr) {
    // Every page is kept: nothing to score or select (the plan wrote the selection), and the
    // dense kernel attends faster than the cooperative launch (H200, TinyLlama heads, batch 8,
    // 2048 tokens, budget 2048: results/h200-2026-11-27-session6-bench.md).
    DecodeArgs d = a;
    d.numSplits = plan->denseSplits;
    return [d, kv]() { launchDenseDecode(d, kv, stream()); };
  }
  const int grid = plan->sparseGrid;
  const int warps = plan->sparseWarps;
  return [s, kv, warps, grid]() { launchSparseDecode(s, kv, warps, grid, stream()); };
}

static napi_value decodeDense(napi_env env, napi_callback_info info) {
  decodeCall(env, planOf(env, arg(env, info, 0)), arg(env, info, 1), false)();
  return undefinedValue(env);
}

static napi_value decodeSparse(napi_env env, napi_callback_info info) {
  decodeCall(env, planOf(env, arg(env, info, 0)), arg(env, info, 1), true)();
  return undefinedValue(env);
}

/** The last sparse step's selection: counts per (sequence, KV head) and their logical pages. */
static napi_value readSelection(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  if (!plan->hasSparse) throw ArgError("readSelection: the plan has no sparse selection");
  const int pairs = plan->numSeqs * plan->numKvHeads;
  std::vector<int> counts(pairs), pages((size_t)pairs * plan->maxPages);
  TS_CUDA(cudaMemcpyAsync(counts.data(), plan->selectedCount.ptr, pairs * 4, cudaMemcpyDeviceToHost, stream()));
  TS_CUDA(cudaMemcpyAsync(pages.data(), plan->selected.ptr, pages.size() * 4, cudaMemcpyDeviceToHost, stream()));
  TS_CUDA(cudaStreamSynchronize(stream()));
  std::vector<int> indptr(pairs + 1, 0), flat;
  for (int i = 0; i < pairs; i++) {
    indptr[i + 1] = indptr[i] + counts[i];
    flat.insert(flat.end(), pages.begin() + (size_t)i * plan->maxPages, pages.begin() + (size_t)i * plan->maxPages + counts[i]);
  }
  napi_value o;
  NAPI(napi_create_object(env, &o));
  NAPI(napi_set_named_property(env, o, "indptr", makeInt32Array(env, indptr.data(), indptr.size())));
  NAPI(napi_set_named_property(env, o, "pages", makeInt32Array(env, flat.data(), flat.size())));
  return o;
}

/**
 * copySelection(plan, { dst, dstOffset, rowPages? }): queues a copy of the last fused sparse
 * launch's selection into dst (int32 elements): the counts [numSeqs * numKvHeads], then the
 * first `rowPages` (default maxPages) entries of each row of logical pages, rows packed. Lets a
 * step keep every layer's selection on the device and read them all once at its end; the caller
 * bounds the counts by rowPages (the plan's top-K and forced pages do).
 */
static napi_value copySelection(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  napi_value o = arg(env, info, 1);
  if (!plan->hasSparse) throw ArgError("copySelection: the plan has no sparse selection");
  const long rowPages = integer(env, o, "rowPages", plan->maxPages);
  if (rowPages < 1 || rowPages > plan->maxPages)
    throw ArgError("rowPages: must be in [1, maxPages = " + std::to_string(plan->maxPages) + "], got " + std::to_string(rowPages));
  const long pairs = (long)plan->numSeqs * plan->numKvHeads;
  char* dst = bufferArg(env, o, "dst", pairs + pairs * rowPages, 4);
  if (pairs == 0) return undefinedValue(env);
  TS_CUDA(cudaMemcpyAsync(dst, plan->selectedCount.ptr, pairs * 4, cudaMemcpyDeviceToDevice, stream()));
  TS_CUDA(cudaMemcpy2DAsync(dst + pairs * 4, rowPages * 4, plan->selected.ptr, (size_t)plan->maxPages * 4, rowPages * 4, pairs,
                            cudaMemcpyDeviceToDevice, stream()));
  return undefinedValue(env);
}

/**
 * The query rows of `seqs` (the "seqs" field): distinct sequences of the plan, each with exactly
 * one new token this step (page lists and page scores are for decode queries).
 */
static std::vector<int> itemRows(const StepPlan& plan, const std::vector<int>& seqs) {
  std::vector<int> rows(seqs.size());
  std::vector<char> seen(plan.numSeqs, 0);
  for (size_t i = 0; i < seqs.size(); i++) {
    const std::string field = "seqs[" + std::to_string(i) + "]";
    const int s = seqs[i];
    if (s < 0 || s >= plan.numSeqs) throw ArgError(field + ": must be a sequence of the plan, in [0, " + std::to_string(plan.numSeqs) + "), got " + std::to_string(s));
    if (seen[s]) throw ArgError(field + ": sequence " + std::to_string(s) + " is listed twice");
    seen[s] = 1;
    const int c = plan.hostQueryIndptr[s + 1] - plan.hostQueryIndptr[s];
    if (c != 1) throw ArgError(field + ": sequence " + std::to_string(s) + " has " + std::to_string(c) + " new tokens this step; only single decode tokens take page lists");
    rows[i] = plan.hostQueryIndptr[s];
  }
  return rows;
}

/**
 * Uploads the lists, concatenated, into the plan's list scratch (stream-ordered after earlier
 * readers); returns where each one starts on the device.
 */
static std::vector<const int*> uploadLists(StepPlan* plan, std::initializer_list<const std::vector<int>*> parts) {
  std::vector<int> host;
  for (const auto* v : parts) host.insert(host.end(), v->begin(), v->end());
  int* base = static_cast<int*>(plan->lists.ensure(std::max<size_t>(host.size(), 1) * 4, false));
  if (!host.empty()) TS_CUDA(cudaMemcpyAsync(base, host.data(), host.size() * 4, cudaMemcpyHostToDevice, stream()));
  const int* d = base;
  std::vector<const int*> at;
  for (const auto* v : parts) {
    at.push_back(d);
    d += v->size();
  }
  return at;
}

/**
 * pageScore(plan, { q, qStride?, metaMin, metaMax, metaDtype?, aggregateSum?, out, seqs, outOffsets }):
 * Quest scores of sequence seqs[i]'s pages for its decode query, [numKvHeads, its pages] at
 * out[outOffsets[i]..], bit-identical to the TypeScript `scorePages`.
 */
static napi_value pageScore(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  napi_value o = arg(env, info, 1);
  const std::vector<int> seqs = int32Array(env, prop(env, o, "seqs"), "seqs");
  const std::vector<int> offs = int32Array(env, prop(env, o, "outOffsets"), "outOffsets");
  if (offs.size() != seqs.size()) throw ArgError("outOffsets: must have one entry per entry of seqs (" + std::to_string(seqs.size()) + "), got " + std::to_string(offs.size()));
  const std::vector<int> rows = itemRows(*plan, seqs);
  long outNeed = 0;
  int maxPages = 0;
  for (size_t i = 0; i < seqs.size(); i++) {
    if (offs[i] < 0) throw ArgError("outOffsets[" + std::to_string(i) + "]: must be non-negative, got " + std::to_string(offs[i]));
    const int np = plan->hostPageCounts[seqs[i]];
    outNeed = std::max(outNeed, (long)offs[i] + (long)np * plan->numKvHeads);
    maxPages = std::max(maxPages, np);
  }
  PageScoreArgs a{};
  a.numItems = (int)seqs.size();
  a.numKvHeads = plan->numKvHeads;
  a.headDim = plan->headDim;
  a.groupSize = plan->groupSize;
  a.qStride = rowStride(env, o, "qStride", *plan);
  const long hd = (long)plan->numQHeads * plan->headDim;
  a.q = reinterpret_cast<const float*>(bufferArg(env, o, "q", plan->numTokens ? (plan->numTokens - 1) * a.qStride + hd : 0, 4));
  const MetaOperands meta = metaOperands(env, o, *plan, false);
  a.metaDtype = meta.dtype;
  a.metaMin = meta.min;
  a.metaMax = meta.max;
  a.out = reinterpret_cast<float*>(bufferArg(env, o, "out", outNeed, 4));
  a.aggregateSum = flag(env, o, "aggregateSum") ? 1 : 0;
  if (seqs.empty()) return undefinedValue(env);
  if ((long)a.numItems * a.numKvHeads > 65535) throw ArgError("seqs: seqs.length * numKvHeads must be at most 65535");
  const auto d = uploadLists(plan, {&seqs, &rows, &offs});
  a.itemSeq = d[0];
  a.itemRow = d[1];
  a.itemOut = d[2];
  a.pageIndptr = plan->pageIndptr;
  a.pageIndices = plan->pageIndices;
  launchPageScore(a, maxPages, stream());
  return undefinedValue(env);
}

/**
 * Checks page lists per (listed sequence, KV head): `indptr` of seqs.size() * numKvHeads + 1
 * offsets (`what` names that count in the error) from 0 to pages.length, non-decreasing, each
 * list ascending logical pages of its sequence. Returns the longest list.
 */
static int checkPageLists(const StepPlan& plan, const std::vector<int>& seqs, const std::vector<int>& indptr, const std::vector<int>& pages,
                          const char* what) {
  const int H = plan.numKvHeads;
  const size_t lists = seqs.size() * H;
  if (indptr.size() != lists + 1 || indptr[0] != 0 || indptr[lists] != (int)pages.size())
    throw ArgError(std::string("indptr: must be [") + what + " * numKvHeads + 1] = " + std::to_string(lists + 1) + " offsets from 0 to pages.length");
  int maxCount = 0;
  for (size_t i = 0; i < seqs.size(); i++) {
    const int np = plan.hostPageCounts[seqs[i]];
    for (int j = 0; j < H; j++) {
      const size_t l = i * H + j;
      const int lo = indptr[l], hi = indptr[l + 1];
      if (hi < lo) throw ArgError("indptr[" + std::to_string(l + 1) + "]: must be non-decreasing");
      maxCount = std::max(maxCount, hi - lo);
      for (int k = lo; k < hi; k++)
        if (pages[k] < 0 || pages[k] >= np || (k > lo && pages[k] <= pages[k - 1]))
          throw ArgError("pages[" + std::to_string(k) + "]: must be ascending logical pages in [0, " + std::to_string(np) + ") of sequence " +
                         std::to_string(seqs[i]) + ", got " + std::to_string(pages[k]));
    }
  }
  return maxCount;
}

/**
 * The launch of one decodeSelected call, checked against the plan, its lists uploaded into the
 * plan's list scratch now (so a timed replay launches the kernel alone; the lists stay valid
 * until the plan's next list-taking call). An empty `seqs` launches nothing.
 */
static std::function<void()> selectedCall(napi_env env, StepPlan* plan, napi_value o) {
  const std::vector<int> seqs = int32Array(env, prop(env, o, "seqs"), "seqs");
  const std::vector<int> indptr = int32Array(env, prop(env, o, "indptr"), "indptr");
  const std::vector<int> pages = int32Array(env, prop(env, o, "pages"), "pages");
  const std::vector<int> rows = itemRows(*plan, seqs);
  const int H = plan->numKvHeads;
  const int maxCount = checkPageLists(*plan, seqs, indptr, pages, "seqs.length");
  const long requested = integer(env, o, "splits", 0);
  if (requested < 0) throw ArgError("splits: must be 0 (auto) or positive, got " + std::to_string(requested));
  DecodeArgs operands{};
  decodeOperands(env, o, *plan, operands);
  if (seqs.empty()) return []() {};

  const KernelInfo k = selectedDecodeKernel(plan->kvDtype, plan->headDim, plan->headsPerCta);
  const int units = (int)seqs.size() * H * plan->headChunks;
  // Split as dense decode does (results/h200-2026-11-27-session6-bench.md).
  const int resident = decodeTargetCtas(k, plan->kvDtype, plan->headsPerCta);
  const int splits = chooseSplits((int)std::min<long>(requested, MAX_DECODE_SPLITS), units, maxCount, 8, resident,
                                  decodePartialFloats(plan->headDim, plan->headsPerCta));
  // Merge counters: the plan's first (numSeqs * numKvHeads * headChunks) >= units, zero between launches.
  plan->partial.ensure((size_t)units * splits * decodePartialFloats(plan->headDim, plan->headsPerCta) * 4, false);
  SelectedArgs a{};
  a.d = plan->decodeArgs(splits);
  a.d.numSeqs = (int)seqs.size();
  a.d.q = operands.q;
  a.d.qStride = operands.qStride;
  a.d.out = operands.out;
  a.d.outStride = operands.outStride;
  a.d.kCache = operands.kCache;
  a.d.vCache = operands.vCache;
  a.d.kScale = operands.kScale;
  a.d.vScale = operands.vScale;
  a.d.scaleLog2 = operands.scaleLog2;
  const auto d = uploadLists(plan, {&seqs, &rows, &indptr, &pages});
  a.itemSeq = d[0];
  a.itemRow = d[1];
  a.listIndptr = d[2];
  a.listPages = d[3];
  const int kv = plan->kvDtype;
  return [a, kv]() { launchSelectedDecode(a, kv, stream()); };
}

/**
 * decodeSelected(plan, { q, qStride?, k, v, kScale?, vScale? (int8), out, outStride?, scale?, seqs, indptr, pages, splits? }):
 * attention of sequence seqs[i]'s decode query over, per KV head j, the logical pages
 * pages[indptr[i * numKvHeads + j] .. indptr[i * numKvHeads + j + 1]) (ascending); rows of
 * other sequences in `out` are left alone. `splits` (optional) fixes the split count.
 */
static napi_value decodeSelected(napi_env env, napi_callback_info info) {
  selectedCall(env, planOf(env, arg(env, info, 0)), arg(env, info, 1))();
  return undefinedValue(env);
}

/**
 * attentionStats(plan, { q, qStride?, k, kScale? (int8), scale?, indptr, pages, entropy, entropyOffset?, mass, massOffset? }):
 * for every sequence s of the plan, the attention of its last new token (at position seqLen - 1)
 * per query head over, per KV head j, the logical pages pages[indptr[s * numKvHeads + j] ..
 * indptr[s * numKvHeads + j + 1]) (ascending; all its pages for dense attention).
 * entropy[entropyOffset + s] gets the mean over query heads of the entropy (nats; 0 for a head
 * that attends nothing), mass[massOffset + (earlier sequences' lengths) + pos] the mean over
 * query heads of position pos's probability (0 where no head attends it).
 */
static napi_value attentionStats(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  napi_value o = arg(env, info, 1);
  const std::vector<int> indptr = int32Array(env, prop(env, o, "indptr"), "indptr");
  const std::vector<int> pages = int32Array(env, prop(env, o, "pages"), "pages");
  const int S = plan->numSeqs, H = plan->numKvHeads;
  std::vector<int> all(S);
  for (int s = 0; s < S; s++) all[s] = s;
  checkPageLists(*plan, all, indptr, pages, "numSeqs");
  const long hd = (long)plan->numQHeads * plan->headDim;
  StatsArgs a{};
  a.qStride = rowStride(env, o, "qStride", *plan);
  a.q = reinterpret_cast<const float*>(bufferArg(env, o, "q", plan->numTokens ? (plan->numTokens - 1) * a.qStride + hd : 0, 4));
  a.kCache = bufferArg(env, o, "k", plan->kvPoolElems, kvBytes(*plan));
  a.kScale = plan->kvDtype == KV_I8 ? reinterpret_cast<const float*>(bufferArg(env, o, "kScale", plan->kvPoolElems / plan->headDim, 4)) : nullptr;
  a.scale = (float)num(env, o, "scale", 1.0 / std::sqrt((double)plan->headDim));
  std::vector<int> rows(S), massOffset(S);
  long total = 0;
  int maxLen = 1;
  for (int s = 0; s < S; s++) {
    const int c = plan->hostQueryIndptr[s + 1] - plan->hostQueryIndptr[s];
    rows[s] = c > 0 ? plan->hostQueryIndptr[s + 1] - 1 : -1;
    massOffset[s] = (int)total;
    total += plan->hostSeqLens[s];
    maxLen = std::max(maxLen, plan->hostSeqLens[s]);
  }
  if (total > INT32_MAX) throw ArgError("mass: the step's sequences hold more than 2^31 positions");
  // (bufferArg applies and checks `entropyOffset` / `massOffset`)
  a.entropy = reinterpret_cast<float*>(bufferArg(env, o, "entropy", S, 4));
  a.mass = reinterpret_cast<float*>(bufferArg(env, o, "mass", total, 4));
  if (S == 0) return undefinedValue(env);
  a.numSeqs = S;
  a.numQHeads = plan->numQHeads;
  a.numKvHeads = H;
  a.headDim = plan->headDim;
  a.pageSize = plan->pageSize;
  a.groupSize = plan->groupSize;
  a.pageIndptr = plan->pageIndptr;
  a.pageIndices = plan->pageIndices;
  a.lastPageLen = plan->lastLen;
  const long heads = (long)S * plan->numQHeads;
  a.probStride = maxLen;
  float* scratch = static_cast<float*>(plan->stats.ensure((size_t)heads * (maxLen + 1) * 4, false));
  a.headEntropy = scratch;
  a.probs = scratch + heads;
  const auto d = uploadLists(plan, {&rows, &massOffset, &indptr, &pages});
  a.rows = d[0];
  a.massOffset = d[1];
  a.listIndptr = d[2];
  a.listPages = d[3];
  launchAttentionStats(a, plan->kvDtype, maxLen, stream());
  return undefinedValue(env);
}

/** appendKv(plan, { qkv, qkvStride, qOut?, qOutStride, k, v, kScale?, vScale? (int8), metaMin?, metaMax?, metaDtype, rope, ropeTheta }) */
static napi_value appendKv(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  napi_value o = arg(env, info, 1);
  AppendArgs a{};
  a.numTokens = plan->numTokens;
  a.numHeads = plan->numQHeads;
  a.numKvHeads = plan->numKvHeads;
  a.headDim = plan->headDim;
  a.pageSize = plan->pageSize;
  const long width = (long)(plan->numQHeads + 2 * plan->numKvHeads) * plan->headDim;
  a.qkvStride = integer(env, o, "qkvStride", width);
  if (a.qkvStride < width) throw ArgError("qkvStride: must be at least (numQHeads + 2 * numKvHeads) * headDim = " + std::to_string(width));
  const long rows = std::max(0, plan->numTokens - 1);
  a.qkv = reinterpret_cast<const float*>(bufferArg(env, o, "qkv", plan->numTokens ? rows * a.qkvStride + width : 0, 4));
  a.qOutStride = integer(env, o, "qOutStride", (long)plan->numQHeads * plan->headDim);
  a.qOut = reinterpret_cast<float*>(bufferArg(env, o, "qOut", plan->numTokens ? rows * a.qOutStride + (long)plan->numQHeads * plan->headDim : 0, 4, true));
  a.kvDtype = plan->kvDtype;
  a.kCache = bufferArg(env, o, "k", plan->kvPoolElems, kvBytes(*plan));
  a.vCache = bufferArg(env, o, "v", plan->kvPoolElems, kvBytes(*plan));
  scaleArgs(env, o, *plan, &a.kScale, &a.vScale);
  const MetaOperands meta = metaOperands(env, o, *plan, true);
  a.metaDtype = meta.dtype;
  a.metaMin = meta.min;
  a.metaMax = meta.max;
  a.tokenPage = plan->tokenPage;
  a.tokenSlot = plan->tokenSlot;
  a.tokenPos = plan->tokenPos;
  a.runStart = plan->runStart;
  a.numRuns = plan->numRuns;
  a.rope = flag(env, o, "rope") ? 1 : 0;
  a.ropeTheta = num(env, o, "ropeTheta", 10000.0);
  launchAppendKv(a, stream());
  return undefinedValue(env);
}

/** prefill(plan, { q, qStride, k, v, kScale?, vScale? (int8), out, outStride, scale }): causal attention of every new token. */
static napi_value prefill(napi_env env, napi_callback_info info) {
  StepPlan* plan = planOf(env, arg(env, info, 0));
  napi_value o = arg(env, info, 1);
  PrefillArgs a{};
  a.numQHeads = plan->numQHeads;
  a.numKvHeads = plan->numKvHeads;
  a.headDim = plan->headDim;
  a.pageSize = plan->pageSize;
  a.groupSize = plan->groupSize;
  a.headsPerChunk = plan->prefillHeads;
  a.headChunks = plan->prefillChunks;
  a.numBlocks = plan->numBlocks;
  a.blockSeq = plan->blockSeq;
  a.blockRow = plan->blockRow;
  a.blockPos = plan->blockPos;
  a.blockCount = plan->blockCount;
  a.pageIndptr = plan->pageIndptr;
  a.pageIndices = plan->pageIndices;
  const long hd = (long)plan->numQHeads * plan->headDim;
  const long rows = std::max(0, plan->numTokens - 1);
  a.qStride = integer(env, o, "qStride", hd);
  a.outStride = integer(env, o, "outStride", hd);
  a.q = reinterpret_cast<const float*>(bufferArg(env, o, "q", plan->numTokens ? rows * a.qStride + hd : 0, 4));
  a.out = reinterpret_cast<float*>(bufferArg(env, o, "out", plan->numTokens ? rows * a.outStride + hd : 0, 4));
  a.kCache = bufferArg(env, o, "k", plan->kvPoolElems, kvBytes(*plan));
  a.vCache = bufferArg(env, o, "v", plan->kvPoolElems, kvBytes(*plan));
  float *ks, *vs;
  scaleArgs(env, o, *plan, &ks, &vs);
  a.kScale = ks;
  a.vScale = vs;
  a.scaleLog2 = (float)(num(env, o, "scale", 1.0 / std::sqrt((double)plan->headDim)) * 1.4426950408889634);
  launchPrefill(a, plan->kvDtype, stream());
  return undefinedValue(env);
}

/**
 * timeCalls(calls: { op: 'dense' | 'sparse' | 'selected', plan, args }[], iterations, warmup): milliseconds
 * per round of all calls, by CUDA events: `eager` over rounds launched back to back from here,
 * `graph` over the same rounds replayed from a CUDA graph (no host launch cost; NaN when the
 * launches cannot be captured).
 */
static napi_value timeCalls(napi_env env, napi_callback_info info) {
  napi_value list = arg(env, info, 0);
  const int iters = std::max(1, (int)toNumber(env, arg(env, info, 1), "iterations"));
  const int warmup = std::max(0, (int)toNumber(env, arg(env, info, 2), "warmup"));
  uint32_t n;
  NAPI(napi_get_array_length(env, list, &n));
  std::vector<std::function<void()>> calls;
  std::unordered_set<StepPlan*> listPlans;
  for (uint32_t i = 0; i < n; i++) {
    napi_value c;
    NAPI(napi_get_element(env, list, i, &c));
    char op[16] = {0};
    size_t len;
    NAPI(napi_get_value_string_utf8(env, prop(env, c, "op"), op, sizeof op, &len));
    const std::string s(op);
    StepPlan* plan = planOf(env, prop(env, c, "plan"));
    if (s == "selected") {
      // Each call's lists live in its plan's list scratch: a second one would replace them.
      if (!listPlans.insert(plan).second)
        throw ArgError("calls[" + std::to_string(i) + "]: a second 'selected' call on the same plan (give each its own plan)");
      calls.push_back(selectedCall(env, plan, prop(env, c, "args")));
    } else if (s == "dense" || s == "sparse") {
      calls.push_back(decodeCall(env, plan, prop(env, c, "args"), s == "sparse"));
    } else {
      throw ArgError("calls[" + std::to_string(i) + "].op: must be 'dense', 'sparse' or 'selected'");
    }
  }
  for (int w = 0; w < warmup; w++)
    for (auto& f : calls) f();
  cudaEvent_t e0, e1;
  TS_CUDA(cudaEventCreate(&e0));
  TS_CUDA(cudaEventCreate(&e1));
  TS_CUDA(cudaEventRecord(e0, stream()));
  for (int r = 0; r < iters; r++)
    for (auto& f : calls) f();
  TS_CUDA(cudaEventRecord(e1, stream()));
  TS_CUDA(cudaEventSynchronize(e1));
  float eager = 0;
  TS_CUDA(cudaEventElapsedTime(&eager, e0, e1));

  double graphMs = NAN;
  const int perGraph = std::max(1, std::min(iters, 20));
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  if (cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal) == cudaSuccess) {
    bool ok = true;
    try {
      for (int r = 0; r < perGraph; r++)
        for (auto& f : calls) f();
    } catch (...) {
      ok = false;
    }
    ok = cudaStreamEndCapture(stream(), &graph) == cudaSuccess && ok && graph != nullptr;
    ok = ok && cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess;
    if (ok && cudaGraphLaunch(exec, stream()) == cudaSuccess && cudaStreamSynchronize(stream()) == cudaSuccess) {
      const int reps = std::max(1, iters / perGraph);
      cudaEventRecord(e0, stream());
      for (int r = 0; r < reps; r++) cudaGraphLaunch(exec, stream());
      cudaEventRecord(e1, stream());
      if (cudaEventSynchronize(e1) == cudaSuccess) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess) graphMs = ms / ((double)reps * perGraph);
      }
    }
  }
  cudaGetLastError();  // a refused capture leaves an error behind; the eager figure stands
  if (exec) cudaGraphExecDestroy(exec);
  if (graph) cudaGraphDestroy(graph);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  napi_value o;
  NAPI(napi_create_object(env, &o));
  setNumber(env, o, "eager", eager / iters);
  setNumber(env, o, "graph", graphMs);
  return o;
}

// ---- tfjs backend ops ----

/** gemm({ batch, m, n, k, a, strideA, transA, b, strideB, transB, bias?, c }) */
static napi_value gemm(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const long batch = integer(env, o, "batch", 1), M = integer(env, o, "m"), N = integer(env, o, "n"), K = integer(env, o, "k");
  const long sa = integer(env, o, "strideA", M * K), sb = integer(env, o, "strideB", K * N);
  const float* A = reinterpret_cast<const float*>(bufferArg(env, o, "a", batch > 0 ? (batch - 1) * sa + M * K : 0, 4));
  const float* B = reinterpret_cast<const float*>(bufferArg(env, o, "b", batch > 0 ? (batch - 1) * sb + K * N : 0, 4));
  const float* bias = reinterpret_cast<const float*>(bufferArg(env, o, "bias", N, 4, true));
  float* C = reinterpret_cast<float*>(bufferArg(env, o, "c", batch * M * N, 4));
  launchGemm((int)batch, (int)M, (int)N, (int)K, A, sa, flag(env, o, "transA"), B, sb, flag(env, o, "transB"), bias, C, stream());
  return undefinedValue(env);
}

static std::vector<long> longArray(napi_env env, napi_value obj, const char* name) {
  napi_value v = prop(env, obj, name);
  bool isArr;
  NAPI(napi_is_array(env, v, &isArr));
  if (!isArr) throw ArgError(std::string(name) + ": must be an array of integers");
  uint32_t n;
  NAPI(napi_get_array_length(env, v, &n));
  std::vector<long> out(n);
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    NAPI(napi_get_element(env, v, i, &e));
    out[i] = (long)toNumber(env, e, name);
  }
  return out;
}

/** binary({ op, a, aStrides, b, bStrides, out, shape }): numpy broadcasting through strides (0 = broadcast). */
static napi_value binary(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const std::vector<long> shape = longArray(env, o, "shape"), as = longArray(env, o, "aStrides"), bs = longArray(env, o, "bStrides");
  if (as.size() != shape.size() || bs.size() != shape.size()) throw ArgError("aStrides/bStrides: one stride per output dim");
  long n = 1, aMax = 0, bMax = 0;
  for (size_t d = 0; d < shape.size(); d++) {
    n *= shape[d];
    aMax += (shape[d] - 1) * as[d];
    bMax += (shape[d] - 1) * bs[d];
  }
  const bool empty = n == 0;
  const float* a = reinterpret_cast<const float*>(bufferArg(env, o, "a", empty ? 0 : aMax + 1, 4));
  const float* b = reinterpret_cast<const float*>(bufferArg(env, o, "b", empty ? 0 : bMax + 1, 4));
  float* out = reinterpret_cast<float*>(bufferArg(env, o, "out", n, 4));
  launchBinary((int)integer(env, o, "op"), a, as.data(), b, bs.data(), out, shape.data(), (int)shape.size(), stream());
  return undefinedValue(env);
}

/** gather({ x, elemBytes, indices, numIndices, outer, axisDim, inner, out }): indices is a device int32 buffer. */
static napi_value gather(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const int eb = (int)integer(env, o, "elemBytes");
  const long ni = integer(env, o, "numIndices"), outer = integer(env, o, "outer"), axis = integer(env, o, "axisDim"), inner = integer(env, o, "inner");
  const void* x = bufferArg(env, o, "x", outer * axis * inner, eb);
  const int* idx = reinterpret_cast<const int*>(bufferArg(env, o, "indices", ni, 4));
  void* out = bufferArg(env, o, "out", outer * ni * inner, eb);
  launchGather(x, eb, idx, (int)ni, outer, axis, inner, out, stream());
  return undefinedValue(env);
}

/** norm({ kind: 'rms' | 'layer', x, weight, bias?, eps, rows, cols, out }) */
static napi_value norm(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const long rows = integer(env, o, "rows"), cols = integer(env, o, "cols");
  const float* x = reinterpret_cast<const float*>(bufferArg(env, o, "x", rows * cols, 4));
  const float* w = reinterpret_cast<const float*>(bufferArg(env, o, "weight", cols, 4));
  const float* b = reinterpret_cast<const float*>(bufferArg(env, o, "bias", cols, 4, true));
  float* out = reinterpret_cast<float*>(bufferArg(env, o, "out", rows * cols, 4));
  const float eps = (float)num(env, o, "eps");
  if (b != nullptr) launchLayerNorm(x, w, b, eps, (int)rows, (int)cols, out, stream());
  else launchRmsNorm(x, w, eps, (int)rows, (int)cols, out, stream());
  return undefinedValue(env);
}

/** activation({ kind: 0 swiglu | 1 gelu_new, x, rows, cols (input columns), out }) */
static napi_value activation(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const long rows = integer(env, o, "rows"), cols = integer(env, o, "cols");
  const float* x = reinterpret_cast<const float*>(bufferArg(env, o, "x", rows * cols, 4));
  if (integer(env, o, "kind") == 0) {
    if (cols % 2) throw ArgError("swiglu: cols must be even (gate | up), got " + std::to_string(cols));
    float* out = reinterpret_cast<float*>(bufferArg(env, o, "out", rows * cols / 2, 4));
    launchSwiGlu(x, (int)rows, (int)(cols / 2), out, stream());
  } else {
    float* out = reinterpret_cast<float*>(bufferArg(env, o, "out", rows * cols, 4));
    launchGeluNew(x, rows * cols, out, stream());
  }
  return undefinedValue(env);
}

/** cast({ x, from (0 f32 | 2 i32), out, to, count }) */
static napi_value cast(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const long n = integer(env, o, "count");
  const int from = (int)integer(env, o, "from"), to = (int)integer(env, o, "to");
  if ((from != 0 && from != 2) || (to != 0 && to != 2)) throw ArgError("cast: dtypes must be 0 (float32) or 2 (int32)");
  launchCast(bufferArg(env, o, "x", n, 4), from, bufferArg(env, o, "out", n, 4), to, n, stream());
  return undefinedValue(env);
}

/** rebuildMetadata({ k, kScale? (int8), kvDtype, metaMin, metaMax, metaDtype, pages, fills, pageSize, numKvHeads, headDim, numPagesTotal }) */
static napi_value rebuildMetadata(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const int kvDtype = (int)integer(env, o, "kvDtype"), metaDtype = (int)integer(env, o, "metaDtype");
  if (kvDtype != KV_F32 && kvDtype != KV_F16 && kvDtype != KV_I8) throw ArgError("kvDtype: must be 0 (fp32), 1 (fp16) or 2 (int8)");
  if (metaDtype != META_F32 && metaDtype != META_F16) throw ArgError("metaDtype: must be 0 (fp32) or 1 (fp16)");
  const long pageSize = integer(env, o, "pageSize"), heads = integer(env, o, "numKvHeads"), hd = integer(env, o, "headDim");
  const long total = integer(env, o, "numPagesTotal");
  const std::vector<int> pages = int32Prop(env, o, "pages"), fills = int32Prop(env, o, "fills");
  if (pages.size() != fills.size()) throw ArgError("fills: must have one entry per page");
  for (size_t i = 0; i < pages.size(); i++) {
    if (pages[i] < 0 || pages[i] >= total) throw ArgError("pages[" + std::to_string(i) + "]: must be in [0, " + std::to_string(total) + ")");
    if (fills[i] < 0 || fills[i] > pageSize) throw ArgError("fills[" + std::to_string(i) + "]: must be in [0, " + std::to_string(pageSize) + "]");
  }
  const void* k = bufferArg(env, o, "k", total * pageSize * heads * hd, elemBytesOf(kvDtype));
  const float* kScale = kvDtype == KV_I8 ? reinterpret_cast<const float*>(bufferArg(env, o, "kScale", total * pageSize * heads, 4)) : nullptr;
  void* mn = bufferArg(env, o, "metaMin", total * heads * hd, metaDtype == META_F16 ? 2 : 4);
  void* mx = bufferArg(env, o, "metaMax", total * heads * hd, metaDtype == META_F16 ? 2 : 4);
  if (pages.empty()) return undefinedValue(env);
  std::vector<int> host(pages);
  host.insert(host.end(), fills.begin(), fills.end());
  int* d = static_cast<int*>(deviceAlloc(host.size() * 4));
  try {
    TS_CUDA(cudaMemcpyAsync(d, host.data(), host.size() * 4, cudaMemcpyHostToDevice, stream()));
    launchRebuildMetadata(k, kvDtype, kScale, mn, mx, metaDtype, d, d + pages.size(), (int)pages.size(), (int)pageSize, (int)heads, (int)hd,
                          stream());
    TS_CUDA(cudaStreamSynchronize(stream()));
  } catch (...) {
    deviceFree(d);
    throw;
  }
  deviceFree(d);
  return undefinedValue(env);
}

/** copyTokens({ caches: buffer[], elemBytes, rowElems, numRows, src: Int32Array, dst: Int32Array }) with row = page * pageSize + slot. */
static napi_value copyTokens(napi_env env, napi_callback_info info) {
  napi_value o = arg(env, info, 0);
  const int eb = (int)integer(env, o, "elemBytes");
  const long rowElems = integer(env, o, "rowElems"), numRows = integer(env, o, "numRows");
  const std::vector<int> src = int32Prop(env, o, "src"), dst = int32Prop(env, o, "dst");
  if (src.size() != dst.size()) throw ArgError("dst: must have one entry per src entry");
  for (size_t i = 0; i < src.size(); i++)
    if (src[i] < 0 || src[i] >= numRows || dst[i] < 0 || dst[i] >= numRows) throw ArgError("src/dst[" + std::to_string(i) + "]: row outside the cache");
  napi_value list = prop(env, o, "caches");
  uint32_t n;
  NAPI(napi_get_array_length(env, list, &n));
  std::vector<void*> caches(n);
  for (uint32_t i = 0; i < n; i++) {
    napi_value c;
    NAPI(napi_get_element(env, list, i, &c));
    DeviceBlock* b = blockOf(env, c, "caches[" + std::to_string(i) + "]");
    if ((size_t)(numRows * rowElems * eb) > b->bytes) throw ArgError("caches[" + std::to_string(i) + "]: smaller than numRows * rowElems");
    caches[i] = b->ptr;
  }
  if (src.empty()) return undefinedValue(env);
  std::vector<int> host(src);
  host.insert(host.end(), dst.begin(), dst.end());
  int* d = static_cast<int*>(deviceAlloc(host.size() * 4));
  try {
    TS_CUDA(cudaMemcpyAsync(d, host.data(), host.size() * 4, cudaMemcpyHostToDevice, stream()));
    launchCopyTokens(caches.data(), (int)n, eb, d, d + src.size(), (int)src.size(), rowElems, stream());
    TS_CUDA(cudaStreamSynchronize(stream()));
  } catch (...) {
    deviceFree(d);
    throw;
  }
  deviceFree(d);
  return undefinedValue(env);
}

// ---- registration ----

using Fn = napi_value (*)(napi_env, napi_callback_info);

template <Fn F>
static napi_value guarded(napi_env env, napi_callback_info info) {
  try {
    return F(env, info);
  } catch (const JsPending&) {
  } catch (const ArgError& e) {
    napi_throw_type_error(env, "ERR_TINYSERVE_CUDA_ARG", e.what());
  } catch (const std::exception& e) {
    napi_throw_error(env, "ERR_TINYSERVE_CUDA", e.what());
  }
  return nullptr;
}

static napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor fns[] = {
      {"deviceInfo", nullptr, guarded<deviceInfo>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"alloc", nullptr, guarded<alloc>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"free", nullptr, guarded<freeBlock>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"upload", nullptr, guarded<upload>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"download", nullptr, guarded<download>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"copy", nullptr, guarded<copy>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"fill", nullptr, guarded<fill>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"randomFill", nullptr, guarded<randomFill>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"synchronize", nullptr, guarded<synchronize>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"memoryInfo", nullptr, guarded<memoryInfo>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"copyBandwidth", nullptr, guarded<copyBandwidth>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"createPlan", nullptr, guarded<createPlan>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"releasePlan", nullptr, guarded<releasePlan>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"planUpdate", nullptr, guarded<planUpdate>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"decodeDense", nullptr, guarded<decodeDense>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"decodeSparse", nullptr, guarded<decodeSparse>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"readSelection", nullptr, guarded<readSelection>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"copySelection", nullptr, guarded<copySelection>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"pageScore", nullptr, guarded<pageScore>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"decodeSelected", nullptr, guarded<decodeSelected>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"attentionStats", nullptr, guarded<attentionStats>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"appendKv", nullptr, guarded<appendKv>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"prefill", nullptr, guarded<prefill>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"timeCalls", nullptr, guarded<timeCalls>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"gemm", nullptr, guarded<gemm>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"binary", nullptr, guarded<binary>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"gather", nullptr, guarded<gather>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"norm", nullptr, guarded<norm>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"activation", nullptr, guarded<activation>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"cast", nullptr, guarded<cast>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"rebuildMetadata", nullptr, guarded<rebuildMetadata>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"copyTokens", nullptr, guarded<copyTokens>, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  napi_define_properties(env, exports, sizeof fns / sizeof fns[0], fns);
  napi_value v;
  napi_create_int32(env, ABI_VERSION, &v);
  napi_set_named_property(env, exports, "abiVersion", v);
  return exports;
}

}  // namespace ts

NAPI_MODULE_INIT() { return ts::init(env, exports); }
