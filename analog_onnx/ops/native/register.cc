// Registration of the kernels (kernels.h) with onnxruntime: the OrtCustomOp table of each op, the
// output shape rules, and the library's exported entry points.
//
// onnxruntime calls into this library through C function pointers, and a C++ exception that
// crossed one would end the process. So every entry point runs its work inside `guarded`, which
// turns any exception (a refused attribute, an allocation failure) into an OrtStatus; exceptions
// thrown on the intra-op pool's threads are carried to the caller by parallel_for (ort_glue.h).

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "kernels.h"
#include "ort_glue.h"
#include "simd.h"
#include "step_clock.h"

#if !defined(ANALOG_ONNX_DOMAIN) || !defined(ANALOG_ONNX_OPSET)
#error "build with analog_onnx/ops/native/build.py, which defines ANALOG_ONNX_DOMAIN and ANALOG_ONNX_OPSET"
#endif

#define ANALOG_EXPORT extern "C" __attribute__((visibility("default")))

namespace analog {
namespace {

// The C API version whose functions the kernels call (KernelContext_ParallelFor arrived in 17);
// asking for no more lets one build load in any onnxruntime from 1.17 on.
constexpr uint32_t kRequiredApi = 17;

// Runs f, turning any C++ exception into an OrtStatus for onnxruntime (nullptr: success). An
// error that does not yet say where it comes from (an onnxruntime call failing inside a kernel, an
// allocation) is prefixed with `label`.
template <typename F>
OrtStatus* guarded(F&& f, const std::string& label) noexcept {
  auto status = [&](OrtErrorCode code, const std::string& what) {
    const bool labelled = what.compare(0, label.size(), label) == 0;
    return g_api->CreateStatus(code, (labelled ? what : label + ": " + what).c_str());
  };
  try {
    f();
    return nullptr;
  } catch (const KernelError& error) {
    return status(ORT_INVALID_ARGUMENT, error.what());
  } catch (const std::bad_alloc&) {
    return status(ORT_FAIL, "out of memory");
  } catch (const std::exception& error) {
    return status(ORT_RUNTIME_EXCEPTION, error.what());
  } catch (...) {
    return status(ORT_RUNTIME_EXCEPTION, "unknown error");
  }
}

struct DimsInfo {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  std::vector<std::string> names;  // symbolic names ("" where the size is known)
};

DimsInfo dims_info(OrtShapeInferContext* context, size_t index) {
  OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
  check(g_api->ShapeInferContext_GetInputTypeShape(context, index, &info));
  DimsInfo out;
  size_t rank = 0;
  check(g_api->GetTensorElementType(info, &out.type));
  check(g_api->GetDimensionsCount(info, &rank));
  out.dims.resize(rank);
  std::vector<const char*> names(rank, nullptr);
  check(g_api->GetDimensions(info, out.dims.data(), rank));
  check(g_api->GetSymbolicDimensions(info, names.data(), rank));
  for (const char* name : names) out.names.emplace_back(name == nullptr ? "" : name);
  return out;
}

// Declares output `index` with `type` and `dims`, naming each unknown size that has no symbolic
// name: onnxruntime writes an unnamed -1 as the literal size -1 ("multiple -1 dimensions" in a
// Reshape downstream), and two sizes given one fresh name each are never taken for equal.
void set_output(OrtShapeInferContext* context, size_t index, ONNXTensorElementDataType type,
                const std::vector<int64_t>& dims, std::vector<std::string> names) {
  static std::atomic<uint64_t> unknowns{0};
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] < 0 && names[i].empty()) names[i] = "analog_unknown_" + std::to_string(unknowns++);
  std::vector<const char*> pointers;
  for (const auto& name : names) pointers.push_back(name.c_str());
  OrtTensorTypeAndShapeInfo* output = nullptr;
  check(g_api->CreateTensorTypeAndShapeInfo(&output));
  OrtStatus* status = g_api->SetTensorElementType(output, type);
  if (status == nullptr) status = g_api->SetDimensions(output, dims.data(), dims.size());
  if (status == nullptr) status = g_api->SetSymbolicDimensions(output, pointers.data(), pointers.size());
  if (status == nullptr) status = g_api->ShapeInferContext_SetOutputTypeShape(context, index, output);
  g_api->ReleaseTensorTypeAndShapeInfo(output);
  check(status);
}

// A node attribute's raw value of `type` (empty when the node does not have it).
std::vector<char> attribute_bytes(OrtShapeInferContext* context, const char* name, OrtOpAttrType type) {
  const OrtOpAttr* attribute = nullptr;
  if (OrtStatus* absent = g_api->ShapeInferContext_GetAttribute(context, name, &attribute)) {
    g_api->ReleaseStatus(absent);
    return {};
  }
  size_t size = 0;
  if (OrtStatus* too_small = g_api->ReadOpAttr(attribute, type, nullptr, 0, &size)) g_api->ReleaseStatus(too_small);
  std::vector<char> bytes(size);
  if (size > 0) check(g_api->ReadOpAttr(attribute, type, bytes.data(), size, &size));
  return bytes;
}

// The [outputs, inputs] of weights an AnalogTileEpilogue reads from the data file (attributes
// weight_file and weight_shape; its input W is left out), else no dimensions.
DimsInfo stored_weights(OrtShapeInferContext* context) {
  DimsInfo w;
  if (attribute_bytes(context, "weight_file", ORT_OP_ATTR_STRING).empty()) return w;
  const std::vector<char> bytes = attribute_bytes(context, "weight_shape", ORT_OP_ATTR_INTS);
  if (bytes.size() != 2 * sizeof(int64_t)) return w;
  w.dims.resize(2);
  std::memcpy(w.dims.data(), bytes.data(), bytes.size());
  w.names.assign(2, "");
  return w;
}

// The tiles' output shape: AnalogTile X[..., K] -> [..., M]; AnalogTileConv [N, C, H, W] ->
// [N, M, OH, OW]. onnxruntime hands an input of unknown rank over as rank 0, which no tile input
// has: then the output's shape stays unknown (its type comes from the op's declaration).
void tile_output_shape(OrtShapeInferContext* context) {
  DimsInfo x = dims_info(context, 0), w = stored_weights(context);
  if (w.dims.empty()) w = dims_info(context, 1);
  if (x.dims.empty() || w.dims.empty()) return;
  const bool conv = w.dims.size() == 4;
  if (conv) x.dims.resize(4, -1), x.names.resize(4, "");
  x.dims[conv ? 1 : x.dims.size() - 1] = w.dims[0];
  x.names[conv ? 1 : x.names.size() - 1] = w.names[0];
  if (conv) x.dims[2] = x.dims[3] = -1, x.names[2] = x.names[3] = "";
  set_output(context, 0, x.type, x.dims, x.names);
}

// StoredWeights' output: float32 of the shape its attribute weight_shape gives.
void stored_output_shape(OrtShapeInferContext* context) {
  const DimsInfo w = stored_weights(context);
  if (!w.dims.empty()) set_output(context, 0, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, w.dims, w.names);
}

// Declares output `index` a float32 scalar (DeviceWeights' alpha), so the layer output it scales
// keeps its inferred shape.
void set_scalar_output(OrtShapeInferContext* context, size_t index) {
  set_output(context, index, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, {}, {});
}

// The first output has the first input's shape; DeviceWeights' second output is a scalar. An
// input of unknown rank arrives as rank 0 (onnxruntime cannot tell them apart here): the output's
// shape is then left unknown rather than declared a scalar, which a real scalar loses nothing by.
void elementwise_output_shape(OrtShapeInferContext* context, bool scalar_second) {
  DimsInfo x = dims_info(context, 0);
  if (!x.dims.empty()) set_output(context, 0, x.type, x.dims, x.names);
  if (scalar_second) set_scalar_output(context, 1);
}

// One op of the domain: the OrtCustomOp table onnxruntime reads, and the kernel entry behind it.
struct OpSpec : OrtCustomOp {
  const KernelEntry* kernel;
};

const KernelEntry& kernel_of(const OrtCustomOp* op) { return *static_cast<const OpSpec*>(op)->kernel; }

// "ai.analog.Op": what a shape error or a failed kernel creation starts with (before the node is known).
std::string op_label(const OrtCustomOp* op) { return std::string(ANALOG_ONNX_DOMAIN ".") + kernel_of(op).name; }

OpSpec make_op(const KernelEntry& kernel) {
  OpSpec spec{};
  spec.version = ORT_API_VERSION;
  spec.kernel = &kernel;
  spec.GetName = [](const OrtCustomOp* op) { return kernel_of(op).name; };
  spec.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };
  spec.GetInputType = [](const OrtCustomOp* op, size_t i) { return kernel_of(op).inputs[i]; };
  spec.GetInputTypeCount = [](const OrtCustomOp* op) { return kernel_of(op).inputs.size(); };
  spec.GetOutputType = [](const OrtCustomOp* op, size_t i) { return kernel_of(op).outputs[i]; };
  spec.GetOutputTypeCount = [](const OrtCustomOp* op) { return kernel_of(op).outputs.size(); };
  spec.GetInputCharacteristic = [](const OrtCustomOp* op, size_t i) {
    return kernel_of(op).optional[i] ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  };
  spec.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  spec.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  spec.CreateKernelV2 = [](const OrtCustomOp* op, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
    return guarded([&] { *kernel = kernel_of(op).create(info); }, op_label(op));
  };
  spec.KernelComputeV2 = [](void* kernel, OrtKernelContext* context) {
    const auto* self = static_cast<const OpKernel*>(kernel);
    return guarded([&] { self->compute(context); }, self->label());
  };
  spec.KernelDestroy = [](void* kernel) { delete static_cast<OpKernel*>(kernel); };
  spec.InferOutputShapeFn = [](const OrtCustomOp* op, OrtShapeInferContext* context) {
    return guarded(
        [&] {
          const OutputShape rule = kernel_of(op).shape;
          if (rule == OutputShape::kTile) return tile_output_shape(context);
          if (rule == OutputShape::kStored) return stored_output_shape(context);
          elementwise_output_shape(context, rule == OutputShape::kOfFirstInputAndScalar);
        },
        op_label(op));
  };
  if (kernel.shape == OutputShape::kOfFirstInput || kernel.shape == OutputShape::kOfFirstInputAndScalar) {
    // Every elementwise kernel reads an element (or its whole row) before writing the same
    // element, so the first output may reuse the first input's buffer: one memory stream, not two.
    spec.GetMayInplace = [](int** input_index, int** output_index) -> size_t {
      *input_index = new int[1]{0};
      *output_index = new int[1]{0};
      return 1;
    };
    spec.ReleaseMayInplace = [](int* input_index, int* output_index) {
      delete[] input_index;
      delete[] output_index;
    };
  }
  spec.GetStartVersion = [](const OrtCustomOp*) { return ANALOG_ONNX_OPSET; };
  spec.GetEndVersion = [](const OrtCustomOp*) { return ANALOG_ONNX_OPSET; };
  return spec;
}

std::vector<OpSpec>& op_table() {
  static std::vector<OpSpec> ops = [] {
    std::vector<OpSpec> specs;
    for (const KernelEntry& kernel : kernel_entries()) specs.push_back(make_op(kernel));
    return specs;
  }();
  return ops;
}

// Domains must outlive every session that uses them: kept until the library unloads.
struct ReleaseDomain {
  void operator()(OrtCustomOpDomain* domain) const { g_api->ReleaseCustomOpDomain(domain); }
};

struct Domains {
  std::mutex mutex;
  std::vector<std::unique_ptr<OrtCustomOpDomain, ReleaseDomain>> owned;
};

Domains& domains() {
  static Domains all;
  return all;
}

}  // namespace
}  // namespace analog

#if defined(ANALOG_STEP_CLOCK)
// The step clock of a -DANALOG_STEP_CLOCK build (step_clock.h), for tools/bench_steps.py: the
// ticks of a step summed over threads (reset: then set to 0), and ticks per second.
ANALOG_EXPORT uint64_t analog_step_ticks(size_t step, int reset) {
  return step < analog::kSteps ? analog::step_ticks(step, reset != 0) : 0;
}
ANALOG_EXPORT double analog_ticks_per_second() {
  const auto start = std::chrono::steady_clock::now();
  const uint64_t ticks = __rdtsc();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(100)) {
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(__rdtsc() - ticks) / seconds;
}
// One thread's multiply-adds per second at the build's SIMD width: independent chains of FMAs,
// enough to hide their latency (two units of 4 cycles need 8) and few enough for AVX2's 16
// registers with the two constants, for about 100 ms. The product's floor is its multiply-adds at
// this rate.
ANALOG_EXPORT double analog_multiply_adds_per_second() {
  constexpr int kChains = 12;
  analog::VecF chain[kChains];
  for (int i = 0; i < kChains; ++i) chain[i] = analog::vec_broadcast(0.001f * static_cast<float>(i));
  const analog::VecF a = analog::vec_broadcast(0.9999f), b = analog::vec_broadcast(1e-4f);
  constexpr long kSteps = 4000000;
  const auto start = std::chrono::steady_clock::now();
  for (long step = 0; step < kSteps; ++step)
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) chain[i] = analog::vec_fma(chain[i], a, b);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  static volatile float sink;  // the chains' results are used, so they are computed
  alignas(64) float lanes[analog::kLanes];
  for (int i = 0; i < kChains; ++i) analog::vec_store(lanes, chain[i]), sink = lanes[0];
  return static_cast<double>(kSteps) * kChains * analog::kLanes / seconds;
}
#endif

ANALOG_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace analog;
  const OrtApi* api = api_base == nullptr ? nullptr : api_base->GetApi(kRequiredApi);
  if (api == nullptr) {  // an onnxruntime older than 1.17: say so through its oldest API
    const OrtApi* oldest = api_base == nullptr ? nullptr : api_base->GetApi(1);
    return oldest == nullptr ? nullptr
                             : oldest->CreateStatus(ORT_FAIL, "the analog kernels need onnxruntime 1.17 or newer");
  }
  g_api = api;
  return guarded(
      [&] {
        OrtCustomOpDomain* created = nullptr;
        check(api->CreateCustomOpDomain(ANALOG_ONNX_DOMAIN, &created));
        std::unique_ptr<OrtCustomOpDomain, ReleaseDomain> domain(created);
        for (OpSpec& op : op_table()) check(api->CustomOpDomain_Add(domain.get(), &op));
        check(api->AddCustomOpDomain(options, domain.get()));
        std::lock_guard<std::mutex> lock(domains().mutex);
        domains().owned.push_back(std::move(domain));
      },
      "registering the " ANALOG_ONNX_DOMAIN " kernels");
}

// For `analog-onnx kernels status`: what this library provides, readable without onnxruntime.
ANALOG_EXPORT int AnalogOnnxOrtApiVersion() { return ORT_API_VERSION; }

ANALOG_EXPORT const char* AnalogOnnxOps() {
  static const std::string names = []() -> std::string {
    try {
      std::string joined;
      for (const analog::KernelEntry& kernel : analog::kernel_entries()) {
        joined += (joined.empty() ? "" : ",") + std::string(kernel.name);
      }
      return joined;
    } catch (...) {
      return "";
    }
  }();
  return names.c_str();
}
