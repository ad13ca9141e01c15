// Small helpers over Node-API's C interface: typed argument reading with errors that name
// the field, tagged externals for device memory and plans.
#pragma once
#include <node_api.h>

#include <cstring>
#include <string>
#include <vector>

#include "common.cuh"

namespace ts {

/** Throws a pending JS exception out of the current binding (caught at its boundary). */
struct JsPending {};

inline void napiOk(napi_env env, napi_status st, const char* what) {
  if (st == napi_ok) return;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) throw JsPending{};
  throw ArgError(std::string("node-api call failed: ") + what);
}
#define NAPI(call) ::ts::napiOk(env, (call), #call)

inline napi_value prop(napi_env env, napi_value obj, const char* name) {
  napi_value v;
  NAPI(napi_get_named_property(env, obj, name, &v));
  return v;
}

inline bool isNullish(napi_env env, napi_value v) {
  napi_valuetype t;
  NAPI(napi_typeof(env, v, &t));
  return t == napi_undefined || t == napi_null;
}

inline bool has(napi_env env, napi_value obj, const char* name) { return !isNullish(env, prop(env, obj, name)); }

inline double toNumber(napi_env env, napi_value v, const std::string& field) {
  napi_valuetype t;
  NAPI(napi_typeof(env, v, &t));
  if (t != napi_number) throw ArgError(field + ": must be a number");
  double d;
  NAPI(napi_get_value_double(env, v, &d));
  return d;
}

inline double num(napi_env env, napi_value obj, const char* name) { return toNumber(env, prop(env, obj, name), name); }
inline double num(napi_env env, napi_value obj, const char* name, double fallback) {
  napi_value v = prop(env, obj, name);
  return isNullish(env, v) ? fallback : toNumber(env, v, name);
}
inline long integer(napi_env env, napi_value obj, const char* name) {
  const double d = num(env, obj, name);
  if (d != (double)(long)d) throw ArgError(std::string(name) + ": must be an integer, got " + std::to_string(d));
  return (long)d;
}
inline long integer(napi_env env, napi_value obj, const char* name, long fallback) {
  napi_value v = prop(env, obj, name);
  return isNullish(env, v) ? fallback : integer(env, obj, name);
}
inline bool flag(napi_env env, napi_value obj, const char* name) {
  napi_value v = prop(env, obj, name);
  if (isNullish(env, v)) return false;
  bool b;
  NAPI(napi_coerce_to_bool(env, v, &v));
  NAPI(napi_get_value_bool(env, v, &b));
  return b;
}

/** A typed array's bytes. */
inline void* typedData(napi_env env, napi_value v, size_t* bytes, napi_typedarray_type* type, const std::string& field) {
  bool is = false;
  NAPI(napi_is_typedarray(env, v, &is));
  if (!is) throw ArgError(field + ": must be a typed array");
  size_t length, offset;
  void* data;
  napi_value ab;
  napi_typedarray_type t;
  NAPI(napi_get_typedarray_info(env, v, &t, &length, &data, &ab, &offset));
  static const int width[] = {1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 2};
  if (type) *type = t;
  if (bytes) *bytes = length * (t < 12 ? width[t] : 1);
  return data;
}

inline std::vector<int> int32Array(napi_env env, napi_value v, const std::string& field) {
  size_t bytes;
  napi_typedarray_type t;
  const void* d = typedData(env, v, &bytes, &t, field);
  if (t != napi_int32_array) throw ArgError(field + ": must be an Int32Array");
  const int* p = static_cast<const int*>(d);
  return std::vector<int>(p, p + bytes / 4);
}

inline std::vector<int> int32Prop(napi_env env, napi_value obj, const char* name) {
  napi_value v = prop(env, obj, name);
  if (isNullish(env, v)) return {};
  return int32Array(env, v, name);
}

inline napi_value makeNumber(napi_env env, double d) {
  napi_value v;
  NAPI(napi_create_double(env, d, &v));
  return v;
}

inline void setNumber(napi_env env, napi_value obj, const char* name, double d) {
  NAPI(napi_set_named_property(env, obj, name, makeNumber(env, d)));
}

inline napi_value makeInt32Array(napi_env env, const int* src, size_t n) {
  void* data;
  napi_value ab, arr;
  NAPI(napi_create_arraybuffer(env, n * 4, &data, &ab));
  if (n) memcpy(data, src, n * 4);
  NAPI(napi_create_typedarray(env, napi_int32_array, n, ab, 0, &arr));
  return arr;
}

}  // namespace ts
