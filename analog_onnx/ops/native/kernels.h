// What registration (register.cc) needs of the kernels (analog_ops.cc): one entry per op, with
// its tensor types, how its output shape is inferred, and how to make its kernel. Making and
// running a kernel may throw; register.cc turns every exception into an onnxruntime status.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "onnxruntime_c_api.h"

namespace analog {

enum class OutputShape {
  kOfFirstInput,           // every output of the first input's shape and type
  kOfFirstInputAndScalar,  // ... and output 1 a float32 scalar (DeviceWeights' alpha)
  kTile,                   // the tiles' own shape rule (register.cc)
  kStored,                 // a float32 tensor of the shape attribute weight_shape says (StoredWeights)
};

// A kernel: made from its node (whose attributes it validates), run once per call.
class OpKernel {
 public:
  virtual ~OpKernel() = default;
  virtual void compute(OrtKernelContext* context) const = 0;
  virtual const std::string& label() const = 0;  // "ai.analog.Op node 'name'", which starts its errors
};

struct KernelEntry {
  const char* name;
  std::vector<ONNXTensorElementDataType> inputs, outputs;
  std::vector<bool> optional;  // per input: whether a node may leave it out
  OutputShape shape;
  OpKernel* (*create)(const OrtKernelInfo* info);
};

// Every kernel of the library, in the order of analog_onnx.ops.NATIVE_OPS.
const std::vector<KernelEntry>& kernel_entries();

}  // namespace analog
