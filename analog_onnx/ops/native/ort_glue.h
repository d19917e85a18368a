// Thin C++ helpers over onnxruntime's C API: status to exception and back, a node's attributes as
// its schema declares them, tensor access, and work splitting over ORT's intra-op thread pool.
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "analog_generated.h"
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

// Whether a call succeeded; its status, if any, is released.
inline bool succeeded(OrtStatus* status) {
  if (status == nullptr) return true;
  g_api->ReleaseStatus(status);
  return false;
}

// Text from a model file as it goes into one error line: control characters (a newline in a
// hostile file) are written as \xNN.
inline std::string printable(const std::string& text) {
  std::string out;
  for (const char c : text) {
    if (static_cast<unsigned char>(c) >= 0x20 && c != 0x7f) {
      out += c;
      continue;
    }
    const char* hex = "0123456789abcdef";
    out += std::string("\\x") + hex[(c >> 4) & 0xf] + hex[c & 0xf];
  }
  return out;
}

inline std::string node_name(const OrtKernelInfo* info) {
  size_t size = 0;
  check(g_api->KernelInfo_GetNodeName(info, nullptr, &size));
  std::string name(size, '\0');
  check(g_api->KernelInfo_GetNodeName(info, name.data(), &size));
  name.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
  return printable(name);
}

// An error naming the node: "ai.analog.Op node 'name': what".
struct NodeLabel {
  std::string text;
  [[noreturn]] void fail(const std::string& what) const { throw KernelError(text + ": " + what); }
};

// The attributes of one node, read as the op's schema declares them (analog_generated.h): of the
// declared kind, inside the declared interval, the default when the node does not have one. Any
// other value is refused with an error naming the node and the attribute, never replaced by the
// default. onnxruntime reads a list attribute of another kind as an empty list, so a list's kind
// is told by which reading gives values (an empty list is accepted as one of any kind).
class NodeAttributes {
 public:
  NodeAttributes(const OrtKernelInfo* info, const char* op, const NodeLabel& label)
      : info_(info), label_(label), op_(find_op(op)) {}

  int64_t integer(const char* name) const {
    const schema::Attribute& spec = declared(name, schema::Kind::kInt);
    int64_t value = 0;
    if (!present(spec, g_api->KernelInfoGetAttribute_int64(info_, name, &value))) {
      return static_cast<int64_t>(spec.number);
    }
    check_integer(spec, value);
    return value;
  }

  bool flag(const char* name) const { return integer(name) != 0; }

  float real(const char* name) const {
    const schema::Attribute& spec = declared(name, schema::Kind::kFloat);
    float value = 0.0f;
    if (!present(spec, g_api->KernelInfoGetAttribute_float(info_, name, &value))) {
      return static_cast<float>(spec.number);
    }
    check_value(spec, value, number_text(value));
    return value;
  }

  std::string text(const char* name) const {
    const schema::Attribute& spec = declared(name, schema::Kind::kString);
    size_t size = 0;
    if (!present(spec, g_api->KernelInfoGetAttribute_string(info_, name, nullptr, &size))) return spec.text;
    std::string value(size, '\0');
    check(g_api->KernelInfoGetAttribute_string(info_, name, value.data(), &size));
    value.resize(size > 0 ? size - 1 : 0);  // size counts the terminating NUL
    return value;
  }

  std::vector<int64_t> integers(const char* name) const { return list<int64_t>(name, schema::Kind::kInts); }
  std::vector<float> reals(const char* name) const { return list<float>(name, schema::Kind::kFloats); }

  // Reads every attribute the op declares, so a wrong kind or value is refused (the first, in the
  // schema's order) before a kernel combines values.
  void check_all() const {
    for (size_t i = 0; i < op_.count; ++i) {
      const schema::Attribute& spec = op_.attributes[i];
      switch (spec.kind) {
        case schema::Kind::kInt: integer(spec.name); break;
        case schema::Kind::kFloat: real(spec.name); break;
        case schema::Kind::kString: text(spec.name); break;
        case schema::Kind::kInts: integers(spec.name); break;
        case schema::Kind::kFloats: reals(spec.name); break;
      }
    }
  }

  [[noreturn]] void fail(const char* name, const std::string& what) const {
    label_.fail(std::string("attribute ") + name + " " + what);
  }

 private:
  static const schema::Op& find_op(const char* op) {
    for (const schema::Op& entry : schema::kOps)
      if (std::string(entry.name) == op) return entry;
    throw std::logic_error(std::string("no schema for op ") + op);
  }

  const schema::Attribute& declared(const char* name, schema::Kind kind) const {
    for (size_t i = 0; i < op_.count; ++i) {
      const schema::Attribute& spec = op_.attributes[i];
      if (std::string(spec.name) == name) {
        if (spec.kind != kind) throw std::logic_error(std::string(op_.name) + "." + name + " read as another kind");
        return spec;
      }
    }
    throw std::logic_error(std::string(op_.name) + " declares no attribute " + name);
  }

  // Whether the attribute is there and of its kind (`read`, the status of reading it so, says);
  // absent: false (or an error when required); of another kind: an error.
  bool present(const schema::Attribute& spec, OrtStatus* read) const {
    if (succeeded(read)) return true;
    const char* found = found_kind(spec.name);
    if (found == nullptr) {
      if (spec.required) fail(spec.name, "is required");
      return false;
    }
    fail(spec.name, std::string("must be ") + kind_text(spec.kind) + ", not " + found);
  }

  // What the node's attribute `name` is, told by which reading succeeds (nullptr: it has none).
  const char* found_kind(const char* name) const {
    int64_t i = 0;
    float f = 0.0f;
    size_t size = 0;
    if (succeeded(g_api->KernelInfoGetAttribute_int64(info_, name, &i))) return "an integer";
    if (succeeded(g_api->KernelInfoGetAttribute_float(info_, name, &f))) return "a float";
    if (succeeded(g_api->KernelInfoGetAttribute_string(info_, name, nullptr, &size))) return "a string";
    if (!succeeded(g_api->KernelInfoGetAttributeArray_int64(info_, name, nullptr, &size))) return nullptr;
    if (size > 0) return "a list of integers";
    if (succeeded(g_api->KernelInfoGetAttributeArray_float(info_, name, nullptr, &size)) && size > 0) {
      return "a list of floats";
    }
    return "an empty list, a tensor or a graph";
  }

  static const char* kind_text(schema::Kind kind) {
    switch (kind) {
      case schema::Kind::kInt: return "an integer";
      case schema::Kind::kFloat: return "a float";
      case schema::Kind::kString: return "a string";
      case schema::Kind::kInts: return "a list of integers";
      default: return "a list of floats";
    }
  }

  static std::string number_text(double value) {
    if (std::isnan(value)) return "nan";
    if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
    std::string text = std::to_string(value);
    text.erase(text.find_last_not_of('0') + 1);
    if (!text.empty() && text.back() == '.') text.pop_back();
    return text;
  }

  static bool inside(const schema::Attribute& spec, double value) {
    const bool above = spec.open_low ? value > spec.low : value >= spec.low;
    const bool below = spec.open_high ? value < spec.high : value <= spec.high;
    return above && below;  // false for NaN
  }

  void check_value(const schema::Attribute& spec, double value, const std::string& text) const {
    if (!inside(spec, value)) fail(spec.name, std::string("must be ") + spec.must_be + ", got " + text);
  }

  void check_integer(const schema::Attribute& spec, int64_t value, const std::string& at = "") const {
    if (value < spec.int_low || value > spec.int_high) {
      fail(spec.name, std::string(at.empty() ? "must be " : "values must each be ") + spec.must_be + ", got " +
                          std::to_string(value) + at);
    }
  }

  template <typename T>
  std::vector<T> list(const char* name, schema::Kind kind) const {
    const schema::Attribute& spec = declared(name, kind);
    auto get = [&](T* values, size_t* size) {
      if constexpr (std::is_same_v<T, int64_t>) return g_api->KernelInfoGetAttributeArray_int64(info_, name, values, size);
      else return g_api->KernelInfoGetAttributeArray_float(info_, name, values, size);
    };
    size_t size = 0;
    if (!succeeded(get(nullptr, &size))) {  // absent
      if (spec.required) fail(name, "is required");
      return std::vector<T>(spec.list, spec.list + spec.list_size);
    }
    const char* found = found_kind(name);
    const bool empty_or_other = std::string(found) == "an empty list, a tensor or a graph";
    if (std::string(found) != kind_text(kind) && !empty_or_other) {
      fail(name, std::string("must be ") + kind_text(kind) + ", not " + found);
    }
    std::vector<T> values(size);
    if (size > 0) check(get(values.data(), &size));
    if (spec.list_size > 0 && values.size() != spec.list_size) {
      fail(name, "must have " + std::to_string(spec.list_size) + " values, got " + std::to_string(values.size()));
    }
    for (size_t i = 0; i < values.size(); ++i) {
      const std::string at = " at position " + std::to_string(i);
      if constexpr (std::is_same_v<T, int64_t>) {
        check_integer(spec, values[i], at);
      } else if (!inside(spec, values[i])) {
        fail(name, std::string("values must each be ") + spec.must_be + ", got " + number_text(values[i]) + at);
      }
    }
    return values;
  }

  const OrtKernelInfo* info_;
  const NodeLabel& label_;
  const schema::Op& op_;
};

// Whether the node gives input `index`: an optional input may be left out (its name is empty).
inline bool has_input(const OrtKernelInfo* info, size_t index) {
  size_t count = 0, size = 0;
  check(g_api->KernelInfo_GetInputCount(info, &count));
  if (index >= count) return false;
  check(g_api->KernelInfo_GetInputName(info, index, nullptr, &size));
  return size > 1;  // the name's length with its terminating NUL
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
  // An empty tensor's leading dimensions may multiply past 64 bits: that is an error, not a wrap.
  size_t rows(int64_t axis) const {
    size_t lead = 1;
    for (int64_t i = 0; i < axis; ++i) {
      if (__builtin_mul_overflow(lead, static_cast<size_t>(dims[i]), &lead)) {
        throw KernelError("the leading dimensions of a tensor multiply to more than 2^64");
      }
    }
    return lead;
  }
};

// a * b, or an error naming `what` when it does not fit in int64 (shapes from a file can be anything).
inline int64_t checked_product(int64_t a, int64_t b, const char* what) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) throw KernelError(std::string(what) + " does not fit in 64 bits");
  return product;
}

inline Shape shape_of(const OrtValue* value, ONNXTensorElementDataType* type = nullptr) {
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
  if (status == nullptr && type != nullptr) status = g_api->GetTensorElementType(info, type);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  check(status);
  return shape;
}

struct InputTensor {
  const float* data;  // valid only when type is float32 (Kernel::tensor checks)
  Shape shape;
  ONNXTensorElementDataType type;
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
  InputTensor tensor{static_cast<const float*>(data), {}, ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED};
  tensor.shape = shape_of(value, &tensor.type);
  return tensor;
}

// The single value of a scalar (or one-element) input such as noise_scale or seed, of type T.
template <typename T>
T input_scalar(const OrtKernelContext* context, size_t index, const std::string& what) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, int64_t>, "controls are float32 or int64");
  constexpr auto wanted = std::is_same_v<T, float> ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT : ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
  const OrtValue* value = input_value(context, index);
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  if (shape_of(value, &type).size != 1) throw KernelError(what + " must hold exactly one value");
  if (type != wanted) throw KernelError(what + (std::is_same_v<T, float> ? " must be float32" : " must be int64"));
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
// An exception must not leave a pool thread (it would end the process), so the first one a task
// throws is kept, the tasks not yet started are skipped, and it is thrown again here, on the
// caller's thread, once the pool is done.
template <typename Body>
void parallel_for(OrtKernelContext* context, size_t tasks, Body& body) {
  if (tasks == 0) return;
  if (tasks == 1) {
    body(size_t{0});
    return;
  }
  struct Shared {
    explicit Shared(Body& b) : body(b) {}
    Body& body;
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::exception_ptr error;
  } shared(body);
  auto trampoline = [](void* user, size_t task) {
    Shared& s = *static_cast<Shared*>(user);
    if (s.failed.load(std::memory_order_relaxed)) return;
    try {
      s.body(task);
    } catch (...) {
      std::lock_guard<std::mutex> lock(s.mutex);
      if (!s.error) s.error = std::current_exception();
      s.failed.store(true, std::memory_order_relaxed);
    }
  };
  check(g_api->KernelContext_ParallelFor(context, trampoline, tasks, 0, &shared));
  if (shared.error) std::rethrow_exception(shared.error);
}

}  // namespace analog
