// Thin C++ helpers over onnxruntime's C API: status to exception and back, attributes with
// defaults, tensor access, and work splitting over ORT's intra-op thread pool.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "onnxruntime_c_api.h"

namespace analog {

// The API table handed to RegisterCustomOps; set once before any kernel exists.
inline const OrtApi* g_api = nullptr;

// An error with a message for the user; converted to an OrtStatus at the C API boundary.
struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check(OrtStatus* status) {
  if (status == nullptr) return;
  std::string message = g_api->GetErrorMessage(status);
  g_api->ReleaseStatus(status);
  throw KernelError(message);
}

inline float attribute(const OrtKernelInfo* info, const char* name, float fallback) {
  float value = fallback;
  if (OrtStatus* status = g_api->KernelInfoGetAttribute_float(info, name, &value)) {
    g_api->ReleaseStatus(status);
    return fallback;
  }
  return value;
}

inline int64_t attribute(const OrtKernelInfo* info, const char* name, int64_t fallback) {
  int64_t value = fallback;
  if (OrtStatus* status = g_api->KernelInfoGetAttribute_int64(info, name, &value)) {
    g_api->ReleaseStatus(status);
    return fallback;
  }
  return value;
}

// A list attribute (ints or floats); `fallback` when the node does not have it.
template <typename T>
std::vector<T> attribute_list(const OrtKernelInfo* info, const char* name, std::vector<T> fallback = {}) {
  static_assert(std::is_same_v<T, int64_t> || std::is_same_v<T, float>, "ONNX lists are ints or floats");
  auto get = [&](T* values, size_t* size) {
    if constexpr (std::is_same_v<T, int64_t>) return g_api->KernelInfoGetAttributeArray_int64(info, name, values, size);
    else return g_api->KernelInfoGetAttributeArray_float(info, name, values, size);
  };
  size_t size = 0;
  if (OrtStatus* status = get(nullptr, &size)) {
    g_api->ReleaseStatus(status);
    return fallback;
  }
  std::vector<T> values(size);
  check(get(values.data(), &size));
  return values;
}

inline bool has_int_attribute(const OrtKernelInfo* info, const char* name) {
  int64_t value = 0;
  OrtStatus* status = g_api->KernelInfoGetAttribute_int64(info, name, &value);
  if (status) g_api->ReleaseStatus(status);
  return status == nullptr;
}

inline std::string node_name(const OrtKernelInfo* info) {
  size_t size = 0;
  check(g_api->KernelInfo_GetNodeName(info, nullptr, &size));
  std::string name(size, '\0');
  check(g_api->KernelInfo_GetNodeName(info, name.data(), &size));
  name.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return name;
}

inline ONNXTensorElementDataType input_element_type(const OrtKernelInfo* info, size_t index) {
  OrtTypeInfo* type_info = nullptr;
  check(g_api->KernelInfo_GetInputTypeInfo(info, index, &type_info));
  const OrtTensorTypeAndShapeInfo* tensor_info = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  OrtStatus* status = g_api->CastTypeInfoToTensorInfo(type_info, &tensor_info);
  if (status == nullptr && tensor_info != nullptr) status = g_api->GetTensorElementType(tensor_info, &type);
  g_api->ReleaseTypeInfo(type_info);
  check(status);
  return type;
}

struct Shape {
  std::vector<int64_t> dims;
  size_t size = 0;

  // Flatten(x, axis) as ONNX defines it: rows = prod(dims[:axis]), row length = prod(dims[axis:]).
  size_t rows(int64_t axis) const {
    size_t lead = 1;
    for (int64_t i = 0; i < axis; ++i) lead *= static_cast<size_t>(dims[i]);
    return lead;
  }
};

inline Shape shape_of(const OrtValue* value) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(g_api->GetTensorTypeAndShape(value, &info));
  Shape shape;
  size_t rank = 0;
  OrtStatus* status = g_api->GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    shape.dims.resize(rank);
    status = g_api->GetDimensions(info, shape.dims.data(), rank);
  }
  if (status == nullptr) status = g_api->GetTensorShapeElementCount(info, &shape.size);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  check(status);
  return shape;
}

struct InputTensor {
  const float* data;
  Shape shape;
};

inline const OrtValue* input_value(const OrtKernelContext* context, size_t index) {
  const OrtValue* value = nullptr;
  check(g_api->KernelContext_GetInput(context, index, &value));
  return value;
}

inline InputTensor input_tensor(const OrtKernelContext* context, size_t index) {
  const OrtValue* value = input_value(context, index);
  void* data = nullptr;
  check(g_api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  return {static_cast<const float*>(data), shape_of(value)};
}

// The single value of a scalar (or one-element) input such as noise_scale or seed.
template <typename T>
T input_scalar(const OrtKernelContext* context, size_t index, const std::string& what) {
  const OrtValue* value = input_value(context, index);
  if (shape_of(value).size != 1) throw KernelError(what + " must hold exactly one value");
  void* data = nullptr;
  check(g_api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  return *static_cast<const T*>(data);
}

inline float* output_tensor(OrtKernelContext* context, size_t index, const std::vector<int64_t>& dims) {
  OrtValue* value = nullptr;
  check(g_api->KernelContext_GetOutput(context, index, dims.data(), dims.size(), &value));
  void* data = nullptr;
  check(g_api->GetTensorMutableData(value, &data));
  return static_cast<float*>(data);
}

// Runs body(task) for task in [0, tasks) on ORT's intra-op pool (inline when there is one task).
// The body must not throw: it runs on pool threads.
template <typename Body>
void parallel_for(OrtKernelContext* context, size_t tasks, Body& body) {
  if (tasks == 0) return;
  if (tasks == 1) {
    body(size_t{0});
    return;
  }
  auto trampoline = [](void* user, size_t task) { (*static_cast<Body*>(user))(task); };
  check(g_api->KernelContext_ParallelFor(context, trampoline, tasks, 0, &body));
}

}  // namespace analog
