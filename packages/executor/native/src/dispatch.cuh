// Switches from run-time (KV format, head dim, heads per CTA) to a decode core instantiation:
// CUDA cores for 1, 2, 4 or 8 heads per CTA (fp32, fp16 or int8 KV, head dims 8-128), tensor
// cores for 16 (fp16 or int8 KV, head dims 16-128).
#pragma once
#include "decode_core.cuh"
#include "decode_core_tc.cuh"
#include "decode_core_tc_i8.cuh"

#define TS_GT_CASES(KV, D, MAKE, NW)        \
  switch (gt) {                             \
    case 1:                                 \
      return MAKE<DecodeCore<KV, D, 1, NW>>(); \
    case 2:                                 \
      return MAKE<DecodeCore<KV, D, 2, NW>>(); \
    case 4:                                 \
      return MAKE<DecodeCore<KV, D, 4, NW>>(); \
    case 8:                                 \
      return MAKE<DecodeCore<KV, D, 8, NW>>(); \
    default:                                \
      break;                                \
  }                                         \
  break;

// Tensor-core cores: head dims 16-128.
#define TS_TC_CASES(CORE, HD, MAKE, NW)              \
  switch (HD) {                                      \
    case 16: return MAKE<CORE<16, NW>>();            \
    case 32: return MAKE<CORE<32, NW>>();            \
    case 64: return MAKE<CORE<64, NW>>();            \
    case 128: return MAKE<CORE<128, NW>>();          \
    default: break;                                  \
  }

#define TS_DECODE_DISPATCH(kvDtype, headDim, MAKE, NW)                   \
  do {                                                                   \
    if (gt == 16 && (kvDtype) == ::ts::KV_F16) {                         \
      TS_TC_CASES(TcDecodeCore, headDim, MAKE, NW)                       \
    } else if (gt == 16 && (kvDtype) == ::ts::KV_I8) {                   \
      TS_TC_CASES(TcDecodeCoreI8, headDim, MAKE, NW)                     \
    } else if ((kvDtype) == ::ts::KV_F16) {                              \
      switch (headDim) {                                                 \
        case 8: TS_GT_CASES(__half, 8, MAKE, NW)                         \
        case 16: TS_GT_CASES(__half, 16, MAKE, NW)                       \
        case 32: TS_GT_CASES(__half, 32, MAKE, NW)                       \
        case 64: TS_GT_CASES(__half, 64, MAKE, NW)                       \
        case 128: TS_GT_CASES(__half, 128, MAKE, NW)                     \
        default: break;                                                  \
      }                                                                  \
    } else if ((kvDtype) == ::ts::KV_I8) {                               \
      switch (headDim) {                                                 \
        case 8: TS_GT_CASES(int8_t, 8, MAKE, NW)                         \
        case 16: TS_GT_CASES(int8_t, 16, MAKE, NW)                       \
        case 32: TS_GT_CASES(int8_t, 32, MAKE, NW)                       \
        case 64: TS_GT_CASES(int8_t, 64, MAKE, NW)                       \
        case 128: TS_GT_CASES(int8_t, 128, MAKE, NW)                     \
        default: break;                                                  \
      }                                                                  \
    } else if ((kvDtype) == ::ts::KV_F32) {                              \
      switch (headDim) {                                                 \
        case 8: TS_GT_CASES(float, 8, MAKE, NW)                          \
        case 16: TS_GT_CASES(float, 16, MAKE, NW)                        \
        case 32: TS_GT_CASES(float, 32, MAKE, NW)                        \
        case 64: TS_GT_CASES(float, 64, MAKE, NW)                        \
        case 128: TS_GT_CASES(float, 128, MAKE, NW)                      \
        default: break;                                                  \
      }                                                                  \
    }                                                                    \
  } while (0)
