// Native onnxruntime kernels of the analog op set (see analog_onnx/ops/reference.py for the
// definitions). Each op is one fused pass over its tensor: noise generation, clipping, rounding
// and rescaling happen per element in registers, rows' abs-max scales are taken while the row is
// in cache, and the work is split over ORT's intra-op thread pool so its thread setting applies.
//
// Every kernel validates what the model file gives it before computing: each attribute as the
// op's schema declares it (NodeAttributes), the combinations the schema cannot say (a grid needs a
// finite bound), and at every run the inputs' element types, shapes and control values. Shapes
// from a file can be anything, so their arithmetic is checked. A refusal is one error naming the
// node and what is wrong; register.cc hands it to onnxruntime as a status.
//
// build.py compiles this file with ANALOG_ONNX_DOMAIN and ANALOG_ONNX_OPSET defined from the
// Python package, so the domain and version have one source of truth.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "analog_tile.h"
#include "counter_rng.h"
#include "device_physics.h"
#include "kernels.h"
#include "ort_glue.h"
#include "quantize.h"
#include "row_schedule.h"
#include "stored_weights.h"

#if !defined(ANALOG_ONNX_DOMAIN) || !defined(ANALOG_ONNX_OPSET)
#error "build with analog_onnx/ops/native/build.py, which defines ANALOG_ONNX_DOMAIN and ANALOG_ONNX_OPSET"
#endif

namespace analog {
namespace {

const char* type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    default: return "not float32";
  }
}

// Common to all kernels: a label for error messages, the node's attributes, the float32-only
// input check.
class Kernel : public OpKernel {
 protected:
  Kernel(const OrtKernelInfo* info, const char* op, std::initializer_list<std::pair<size_t, const char*>> tensors)
      : op_(op), label_{std::string(ANALOG_ONNX_DOMAIN ".") + op + " node '" + node_name(info) + "'"} {
    for (const auto& [index, name] : tensors) {
      if (!has_input(info, index)) continue;  // an optional input left out; the kernel checks what it needs
      const ONNXTensorElementDataType type = input_element_type(info, index);
      if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(not_float(name, type));
    }
    attributes(info).check_all();
  }

  NodeAttributes attributes(const OrtKernelInfo* info) const { return {info, op_, label_}; }

  const std::string& label() const override { return label_.text; }

  [[noreturn]] void fail(const std::string& what) const { label_.fail(what); }

  static std::string not_float(const char* name, ONNXTensorElementDataType type) {
    return std::string("input ") + name + " is " + type_name(type) +
           "; the native analog kernels compute in float32 only (export or cast the model to float32)";
  }

  // Input `index` (called `name`), which must be a float32 tensor.
  InputTensor tensor(const OrtKernelContext* context, size_t index, const char* name) const {
    const InputTensor t = input_tensor(context, index);
    if (t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(not_float(name, t.type));
    return t;
  }

  // The noise_scale control (input `index`): one finite value.
  float noise_scale(const OrtKernelContext* context, size_t index) const {
    const float value = input_scalar<float>(context, index, label_.text + ": input noise_scale");
    if (!std::isfinite(value)) fail("input noise_scale must be finite, got " + std::to_string(value));
    return value;
  }

  int64_t seed(const OrtKernelContext* context, size_t index, const char* name = "seed") const {
    return input_scalar<int64_t>(context, index, label_.text + ": input " + name);
  }

  // The rows of Flatten(X, axis), with ONNX's axis rules.
  RowLayout flatten(const Shape& shape, int64_t axis) const {
    const auto rank = static_cast<int64_t>(shape.dims.size());
    if (rank == 0) return {1, shape.size};
    const int64_t normalized = axis < 0 ? axis + rank : axis;
    if (normalized < 0 || normalized > rank) {
      fail("axis " + std::to_string(axis) + " is out of range for a rank-" + std::to_string(rank) + " input");
    }
    const size_t rows = shape.rows(normalized);
    return {rows, rows == 0 ? 0 : shape.size / rows};
  }

  const char* op_;
  NodeLabel label_;
};

// A DAC's, ADC's or quantizer's attributes `bits` and `bound`: with bits > 0 the bound must be
// finite (the grid's step is bound / levels).
void check_grid(const NodeAttributes& a, const char* bits, const char* bound) {
  if (a.integer(bits) > 0 && std::isinf(a.real(bound))) a.fail(bound, std::string("must be finite when ") + bits + " > 0");
}

ClipRound grid(const NodeAttributes& a, const char* bits, const char* bound, bool is_signed) {
  check_grid(a, bits, bound);
  return ClipRound(a.integer(bits), a.real(bound), is_signed);
}

// clip_and_round(x / scale) * back over n elements (back is the scale or 1, both exact).
void scaled_clip_round(const float* x, float* out, size_t n, float scale, float back,
                       const ClipRound& grid) {
  if (grid.rounds) {
    for (size_t i = 0; i < n; ++i) out[i] = grid.round(grid.clip(x[i] / scale)) * back;
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = grid.clip(x[i] / scale) * back;
  }
}

class QuantizeKernel : public Kernel {
 public:
  explicit QuantizeKernel(const OrtKernelInfo* info)
      : Kernel(info, "Quantize", {{0, "X"}}),
        grid_(grid(attributes(info), "bits", "bound", attributes(info).flag("signed"))),
        dynamic_(attributes(info).flag("dynamic")),
        axis_(attributes(info).integer("axis")) {}

  void compute(OrtKernelContext* context) const override {
    const InputTensor x = tensor(context, 0, "X");
    float* out = output_tensor(context, 0, x.shape.dims);
    if (x.shape.size == 0) return;  // (however many empty rows its shape has)
    const RowLayout layout = dynamic_ ? flatten(x.shape, axis_) : RowLayout{1, x.shape.size};
    std::vector<float> scales(layout.rows, 1.0f);
    for_each_row_range(context, x.data, layout, dynamic_, scales.data(), scales.size(),
                       [&](size_t begin, size_t end, size_t, float scale) {
                         scaled_clip_round(x.data + begin, out + begin, end - begin, scale, scale, grid_);
                       });
  }

 private:
  ClipRound grid_;
  bool dynamic_;
  int64_t axis_;
};

class MvmInputKernel : public Kernel {
 public:
  explicit MvmInputKernel(const OrtKernelInfo* info)
      : Kernel(info, "MvmInput", {{0, "X"}}),
        dac_(grid(attributes(info), "inp_bits", "inp_bound", true)),
        manage_(attributes(info).flag("noise_management")),
        axis_(attributes(info).integer("axis")) {}

  void compute(OrtKernelContext* context) const override {
    const InputTensor x = tensor(context, 0, "X");
    const RowLayout layout = flatten(x.shape, axis_);
    float* xn = output_tensor(context, 0, x.shape.dims);
    float* scales = output_tensor(context, 1, {static_cast<int64_t>(layout.rows), 1});
    if (!manage_) std::fill(scales, scales + layout.rows, 1.0f);
    for_each_row_range(context, x.data, layout, manage_, scales, layout.rows,
                       [&](size_t begin, size_t end, size_t, float scale) {
                         scaled_clip_round(x.data + begin, xn + begin, end - begin, scale, 1.0f, dac_);
                       });
  }

 private:
  ClipRound dac_;
  bool manage_;
  int64_t axis_;
};

// Y = X * (1 + mul * z1) + add * z2 over elements [begin, end) (rng.noise_normals: element i
// takes pair i when both sigmas are set, else normal i); a zero sigma skips its normals.
void add_noise(const float* x, float* y, size_t begin, size_t end, uint64_t key, bool both, float mul,
               float add) {
  alignas(64) float z1[kNormalsBuffer];
  alignas(64) float z2[kBlock];
  for (size_t first = begin; first < end; first += kBlock) {
    const size_t n = std::min(kBlock, end - first);
    const float* xb = x + first;
    float* yb = y + first;
    if (both) {
      normal_pairs(key, first, n, z1, z2);
      for (size_t i = 0; i < n; ++i) yb[i] = xb[i] * (1.0f + mul * z1[i]) + add * z2[i];
    } else if (mul != 0.0f) {
      const float* z = normals(key, first, n, z1);
      for (size_t i = 0; i < n; ++i) yb[i] = xb[i] * (1.0f + mul * z[i]);
    } else if (add != 0.0f) {
      const float* z = normals(key, first, n, z1);
      for (size_t i = 0; i < n; ++i) yb[i] = xb[i] + add * z[i];
    } else if (yb != xb) {
      std::memcpy(yb, xb, n * sizeof(float));
    }
  }
}

class NoiseKernel : public Kernel {
 public:
  explicit NoiseKernel(const OrtKernelInfo* info)
      : Kernel(info, "Noise", {{0, "X"}}),
        sigma_add_(attributes(info).real("sigma_add")),
        sigma_mul_(attributes(info).real("sigma_mul")),
        relative_(attributes(info).flag("relative")),
        stream_(attributes(info).integer("stream")),
        both_(sigma_add_ != 0.0f && sigma_mul_ != 0.0f) {}

  void compute(OrtKernelContext* context) const override {
    const InputTensor x = tensor(context, 0, "X");
    const float scale = noise_scale(context, 1);
    const uint64_t key = stream_key(seed(context, 2), stream_);
    float* y = output_tensor(context, 0, x.shape.dims);
    if (x.shape.size == 0) return;  // (however many empty rows its shape has)
    const float mul = scale * sigma_mul_;
    const float add = scale * sigma_add_;
    const RowLayout layout = relative_ ? flatten(x.shape, 1) : RowLayout{1, x.shape.size};
    std::vector<float> scales(layout.rows, 1.0f);
    for_each_row_range(context, x.data, layout, relative_, scales.data(), scales.size(),
                       [&](size_t begin, size_t end, size_t, float reference) {
                         add_noise(x.data, y, begin, end, key, both_, mul, add * reference);
                       });
  }

 private:
  float sigma_add_, sigma_mul_;
  bool relative_;
  int64_t stream_;
  bool both_;  // which normals the stream gives each element depends on the attributes only
};

// The digital layers that follow an MVM, applied per channel in MvmOutput's pass: Z * a[c] + b[c]
// (a bias and an inference BatchNormalization folded together), then ReLU when asked. Only
// sessions with this library use it (native_graph.py rewrites the graph for them).
struct Epilogue {
  const float* scale;
  const float* shift;
  size_t channels, inner;  // Y is [N, channels, inner...]
  bool relu;

  void apply(float* out, size_t first, size_t n) const {
    size_t plane = first / inner, offset = first % inner;
    for (size_t i = 0; i < n; offset = 0, ++plane) {
      const size_t length = std::min(n - i, inner - offset);
      const float a = scale[plane % channels], b = shift[plane % channels];
      float* o = out + i;
      if (relu) {
        for (size_t j = 0; j < length; ++j) o[j] = std::max(o[j] * a + b, 0.0f);
      } else {
        for (size_t j = 0; j < length; ++j) o[j] = o[j] * a + b;
      }
      i += length;
    }
  }
};

// Z = ADC(Y / w + noise * z) * w * scale over elements [begin, end), then the epilogue if any.
void noisy_adc(const float* y, float* out, size_t begin, size_t end, uint64_t key, float noise,
               float w, float scale, const ClipRound& adc, const Epilogue* epilogue) {
  alignas(64) float yn[kBlock];
  alignas(64) float buffer[kNormalsBuffer];
  for (size_t first = begin; first < end; first += kBlock) {
    const size_t n = std::min(kBlock, end - first);
    const float* yb = y + first;
    if (noise != 0.0f) {
      const float* z = normals(key, first, n, buffer);
      for (size_t i = 0; i < n; ++i) yn[i] = yb[i] / w + noise * z[i];
    } else {
      for (size_t i = 0; i < n; ++i) yn[i] = yb[i] / w;
    }
    float* ob = out + first;
    if (adc.rounds) {
      for (size_t i = 0; i < n; ++i) ob[i] = (adc.round(adc.clip(yn[i])) * w) * scale;
    } else {
      for (size_t i = 0; i < n; ++i) ob[i] = (adc.clip(yn[i]) * w) * scale;
    }
    if (epilogue != nullptr) epilogue->apply(ob, first, n);
  }
}

class MvmOutputKernel : public Kernel {
 public:
  explicit MvmOutputKernel(const OrtKernelInfo* info, const char* op = "MvmOutput")
      : Kernel(info, op, {{0, "Y"}, {1, "S"}}),
        weight_scale_(attributes(info).real("weight_scale")),
        out_noise_(attributes(info).real("out_noise")),
        adc_(grid(attributes(info), "out_bits", "out_bound", true)),
        axis_(attributes(info).integer("axis")),
        stream_(attributes(info).integer("stream")) {}

  void compute(OrtKernelContext* context) const override { run(context, nullptr); }

 protected:
  void run(OrtKernelContext* context, const Epilogue* epilogue) const {
    const InputTensor y = tensor(context, 0, "Y");
    const InputTensor scales = tensor(context, 1, "S");
    const float scale = noise_scale(context, 2);
    const uint64_t key = stream_key(seed(context, 3), stream_);
    const RowLayout layout = flatten(y.shape, axis_);
    if (scales.shape.size != layout.rows && scales.shape.size != 1) {
      fail("S has " + std::to_string(scales.shape.size) + " values but Flatten(Y, axis) has " +
           std::to_string(layout.rows) + " rows");
    }
    float* out = output_tensor(context, 0, y.shape.dims);
    const float noise = scale * out_noise_;
    for_each_row_range(context, y.data, layout, false, const_cast<float*>(scales.data), scales.shape.size,
                       [&](size_t begin, size_t end, size_t, float scale) {
                         noisy_adc(y.data, out, begin, end, key, noise, weight_scale_, scale, adc_, epilogue);
                       });
  }

 private:
  float weight_scale_, out_noise_;
  ClipRound adc_;
  int64_t axis_, stream_;
};

// MvmOutput followed by its layer's digital epilogue: inputs 4 and 5 are the per-channel a and b.
class MvmOutputEpilogueKernel : public MvmOutputKernel {
 public:
  explicit MvmOutputEpilogueKernel(const OrtKernelInfo* info)
      : MvmOutputKernel(info, "MvmOutputEpilogue"), relu_(attributes(info).flag("relu")) {}

  void compute(OrtKernelContext* context) const override {
    const Shape shape = tensor(context, 0, "Y").shape;
    const InputTensor scale = tensor(context, 4, "scale");
    const InputTensor shift = tensor(context, 5, "shift");
    const size_t channels = shape.dims.size() < 2 ? 0 : static_cast<size_t>(shape.dims[1]);
    if (channels == 0 || scale.shape.size != channels || shift.shape.size != channels) {
      fail("the epilogue's scale and shift must have one value per channel (dimension 1 of Y)");
    }
    if (shape.size == 0) return run(context, nullptr);
    const Epilogue epilogue{scale.data, shift.data, channels, shape.size / shape.rows(2), relu_};
    run(context, &epilogue);
  }

 private:
  bool relu_;
};

// NoiseChain (native sessions only; native_graph.fuse_noise_chains): an additive/multiplicative
// Noise and the elementwise layers after it, run as a program over each task's range of the tensor
// (kGrain elements, 64 KB: it stays in L2 from step to step; stepping block by block instead was
// 20% slower). Every stage computes what its own op would: a noise stage draws the normals of
// its stream at the same element indices as NoiseKernel, an affine stage is a folded inference
// BatchNormalization or per-channel bias (the next row of scale and shift, [stages, C]), a
// residual stage adds input R (X's shape), a relu stage clips at 0.
// (The step codes are schema.ChainStep's, from analog_generated.h.)
class NoiseChainKernel : public Kernel {
 public:
  explicit NoiseChainKernel(const OrtKernelInfo* info)
      : Kernel(info, "NoiseChain", {{0, "X"}}),
        steps_(attributes(info).integers("steps")),
        sigma_add_(attributes(info).reals("sigma_add")),
        sigma_mul_(attributes(info).reals("sigma_mul")),
        streams_(attributes(info).integers("streams")) {
    const auto noises = static_cast<size_t>(std::count(steps_.begin(), steps_.end(), kNoise));
    if (sigma_add_.size() != noises || sigma_mul_.size() != noises || streams_.size() != noises) {
      fail("attributes sigma_add, sigma_mul and streams need one value per noise step");
    }
    affines_ = static_cast<size_t>(std::count(steps_.begin(), steps_.end(), kAffine));
  }

  void compute(OrtKernelContext* context) const override {
    const InputTensor x = tensor(context, 0, "X");
    const float scale_of_noise = noise_scale(context, 1);
    const int64_t run_seed = seed(context, 2);
    float* out = output_tensor(context, 0, x.shape.dims);
    const size_t channels = x.shape.dims.size() < 2 ? 0 : static_cast<size_t>(x.shape.dims[1]);
    const float *scale = nullptr, *shift = nullptr, *residual = nullptr;
    if (affines_ > 0) {
      const InputTensor a = optional_input(context, 3, "scale"), b = optional_input(context, 4, "shift");
      if (channels == 0 || a.shape.size != affines_ * channels || b.shape.size != affines_ * channels) {
        fail("scale and shift must hold one row of C values (dimension 1 of X) per affine step");
      }
      scale = a.data, shift = b.data;
    }
    if (std::count(steps_.begin(), steps_.end(), kResidual) > 0) {
      const InputTensor r = optional_input(context, 5, "R");  // float32: read as such below
      if (r.shape.dims != x.shape.dims) fail("R must have X's shape");
      residual = r.data;
    }
    if (x.shape.size == 0) return;
    std::vector<NoiseStage> noises;
    for (size_t k = 0; k < streams_.size(); ++k) {
      noises.push_back({stream_key(run_seed, streams_[k]), sigma_add_[k] != 0.0f && sigma_mul_[k] != 0.0f,
                        scale_of_noise * sigma_mul_[k], scale_of_noise * sigma_add_[k]});
    }
    const size_t inner = channels == 0 ? 1 : x.shape.size / x.shape.rows(2);
    auto range = [&](size_t begin, size_t end, size_t, float) {
      run_range(x.data, out, begin, end - begin, noises, scale, shift, channels, inner, residual);
    };
    for_each_row_range(context, x.data, {1, x.shape.size}, false, nullptr, 0, range);
  }

 private:
  struct NoiseStage {
    uint64_t key;
    bool both;
    float mul, add;
  };

  InputTensor optional_input(const OrtKernelContext* context, size_t index, const char* name) const {
    size_t count = 0;
    check(g_api->KernelContext_GetInputCount(context, &count));
    if (index >= count || input_value(context, index) == nullptr) fail(std::string("input ") + name + " is not given");
    return tensor(context, index, name);
  }

  void run_range(const float* x, float* out, size_t first, size_t n, const std::vector<NoiseStage>& noises,
                 const float* scale, const float* shift, size_t channels, size_t inner, const float* residual) const {
    float* o = out + first;
    if (o != x + first) std::memcpy(o, x + first, n * sizeof(float));
    size_t noise = 0, affine = 0;
    for (const int64_t step : steps_) {
      switch (step) {
        case kNoise: {
          const NoiseStage& s = noises[noise++];
          add_noise(out, out, first, first + n, s.key, s.both, s.mul, s.add);
          break;
        }
        case kAffine: {
          const Epilogue epilogue{scale + affine * channels, shift + affine * channels, channels, inner, false};
          epilogue.apply(o, first, n);
          ++affine;
          break;
        }
        case kResidual:
          for (size_t i = 0; i < n; ++i) o[i] += residual[first + i];
          break;
        default:
          for (size_t i = 0; i < n; ++i) o[i] = std::max(o[i], 0.0f);
      }
    }
  }

  std::vector<int64_t> steps_;
  std::vector<float> sigma_add_, sigma_mul_;
  std::vector<int64_t> streams_;
  size_t affines_ = 0;
};

// The weights on a chip (devices/chip.py): the programmed and drifted conductances of the last
// (chip_seed, t_inference, noise_scale, W) are kept, so a run with the same chip and time only
// draws its read noise; a negative chip_seed is a fresh chip on every run and is never kept.
class DeviceWeightsKernel : public Kernel {
 public:
  explicit DeviceWeightsKernel(const OrtKernelInfo* info)
      : Kernel(info, "DeviceWeights", {{0, "W"}}), settings_(device_settings(attributes(info))),
        program_(device_model(settings_.device)) {
    if (program_ == nullptr) {
      attributes(info).fail("device", "must name a device model (" + device_model_names() + "), got '" +
                                          printable(settings_.device) + "'");
    }
  }

  void compute(OrtKernelContext* context) const override {
    const InputTensor w = tensor(context, 0, "W");
    const float scale = noise_scale(context, 1);
    const int64_t read_seed = seed(context, 2);
    const int64_t chip_seed = seed(context, 3, "chip_seed");
    const float t = input_scalar<float>(context, 4, label_.text + ": input t_inference");
    if (!(std::isfinite(t) && t >= 0.0f)) fail("input t_inference must be a finite number of seconds >= 0, got " + std::to_string(t));
    if (w.shape.size == 0) {  // no devices (and no rows to map, however many W's shape says)
      output_tensor(context, 0, w.shape.dims);
      *output_tensor(context, 1, {}) = settings_.drift_compensation ? std::numeric_limits<float>::quiet_NaN() : 1.0f;
      return;  // (alpha is the mean over no weights, as the reference's)
    }
    const RowLayout layout = settings_.per_channel ? flatten(w.shape, 1) : RowLayout{1, w.shape.size};
    const std::shared_ptr<const Entry> entry = chip(w, layout, scale, chip_seed, t);
    const ProgrammedChip& programmed = entry->chip;
    const size_t size = w.shape.size;
    float* out = output_tensor(context, 0, w.shape.dims);  // may share W's buffer: W was read above
    *output_tensor(context, 1, {}) = programmed.alpha;
    const bool reads = settings_.read_noise;
    const uint64_t key = reads ? draw_key(read_seed, settings_.stream, kRead) : 0;
    const float* now = programmed.now.data();
    const float* sigma = programmed.read_sigma.data();
    constexpr size_t kChunk = 16 * kBlock;  // elements per task
    auto body = [&](size_t task) {
      alignas(64) float plus_buffer[kNormalsBuffer];
      alignas(64) float minus_buffer[kNormalsBuffer];
      const size_t end = std::min(size, (task + 1) * kChunk);
      for (size_t first = task * kChunk; first < end; first += kBlock) {
        const size_t n = std::min(kBlock, end - first);
        const float* z_plus = reads ? normals(key, first, n, plus_buffer) : nullptr;
        const float* z_minus = reads ? normals(key, size + first, n, minus_buffer) : nullptr;
        size_t row = first / programmed.columns, column = first % programmed.columns;  // no division per element
        for (size_t i = 0; i < n; ++i) {
          const size_t p = first + i, m = size + first + i;
          const float plus = reads ? std::max(now[p] + sigma[p] * z_plus[i], 0.0f) : now[p];
          const float minus = reads ? std::max(now[m] + sigma[m] * z_minus[i], 0.0f) : now[m];
          out[p] = (plus - minus) / programmed.scale[row];
          if (++column == programmed.columns) column = 0, ++row;
        }
      }
    };
    parallel_for(context, (size + kChunk - 1) / kChunk, body);
  }

 private:
  static DeviceSettings device_settings(const NodeAttributes& a) {
    const DeviceSettings s{a.text("device"),
                           a.real("g_max"),
                           a.real("prog_noise_scale"),
                           a.real("drift_scale"),
                           a.real("read_noise_scale"),
                           a.real("stuck_at_zero"),
                           a.real("stuck_at_gmax"),
                           a.flag("drift"),
                           a.flag("read_noise"),
                           a.flag("drift_compensation"),
                           a.real("prog_noise_add"),
                           a.real("prog_noise_rel"),
                           a.real("drift_nu"),
                           a.real("drift_nu_std"),
                           a.real("read_noise_rel"),
                           a.integer("bits"),
                           a.flag("per_channel"),
                           a.integer("stream")};
    if (s.stuck_at_zero + s.stuck_at_gmax > 1.0f) a.fail("stuck_at_gmax", "plus stuck_at_zero must be at most 1");
    return s;
  }

  struct Entry {
    int64_t chip_seed;
    float t, noise_scale;
    std::vector<float> weights;
    ProgrammedChip chip;
  };

  std::shared_ptr<const Entry> chip(const InputTensor& w, const RowLayout& layout, float noise_scale,
                                    int64_t chip_seed, float t) const {
    std::lock_guard<std::mutex> lock(mutex_);
    const bool same = cached_ != nullptr && chip_seed >= 0 && cached_->chip_seed == chip_seed && cached_->t == t &&
                      cached_->noise_scale == noise_scale && cached_->weights.size() == w.shape.size &&
                      std::equal(w.data, w.data + w.shape.size, cached_->weights.begin());
    if (same) return cached_;
    // a fresh chip (chip_seed < 0) is never kept: no copy of W to recognize it by (a layer's worth
    // of memory at the peak of a big model)
    const bool keep = chip_seed >= 0;
    auto entry = std::make_shared<Entry>(Entry{chip_seed, t, noise_scale,
                                               keep ? std::vector<float>(w.data, w.data + w.shape.size) : std::vector<float>{},
                                               program_(settings_, w.data, layout.rows, layout.length, noise_scale,
                                                        chip_seed, t)});
    if (keep) cached_ = entry;
    return entry;
  }

  DeviceSettings settings_;
  ProgramChip program_;
  mutable std::mutex mutex_;
  mutable std::shared_ptr<const Entry> cached_;
};

// The weights a node reads from the data file, checked to lie inside it.
StoredWeights stored_weights(const NodeAttributes& a) {
  StoredWeights stored{a.text("weight_file"), a.integer("weight_offset"), a.integers("weight_shape"),
                       a.flag("weight_transposed")};
  int64_t count = 0, bytes = 0;
  if (__builtin_mul_overflow(stored.dims[0], stored.dims[1], &count) || __builtin_mul_overflow(count, 4, &bytes)) {
    a.fail("weight_shape", "is more than 2^63 bytes of float32");
  }
  const std::string problem = stored.problem();
  if (!problem.empty()) a.fail("weight_file", problem);
  return stored;
}

TileSettings tile_settings(const NodeAttributes& a) {
  TileSettings s{};
  s.inp_bits = a.integer("inp_bits");
  s.noise_management = a.integer("noise_management");
  s.out_bits = a.integer("out_bits");
  s.bm_rounds = a.integer("bm_rounds");
  s.max_input_size = a.integer("max_input_size");
  s.max_output_size = a.integer("max_output_size");
  s.columnwise = a.integer("weight_scaling_columnwise");
  s.stream = a.integer("stream");
  s.inp_bound = a.real("inp_bound");
  s.out_noise = a.real("out_noise");
  s.out_bound = a.real("out_bound");
  s.omega = a.real("weight_scaling_omega");
  s.w_noise = a.real("w_noise");
  check_grid(a, "inp_bits", "inp_bound");
  check_grid(a, "out_bits", "out_bound");
  return s;
}

// AnalogTile: Y[..., M] = X[..., K] W^T on tiles (analog_tile.h). AnalogTileEpilogue (native
// sessions only) adds the per-channel epilogue of its inputs 4 and 5 when it has them, and may
// read a constant W from the model's data file itself (attribute weight_file: input W left out).
class AnalogTileKernel : public Kernel {
 public:
  explicit AnalogTileKernel(const OrtKernelInfo* info, const char* op = "AnalogTile")
      : Kernel(info, op, {{0, "X"}, {1, "W"}, {4, "scale"}, {5, "shift"}}),
        settings_(tile_settings(attributes(info))),
        relu_(std::string(op) != "AnalogTile" && attributes(info).flag("relu")),
        epilogue_(std::string(op) != "AnalogTile" && has_input(info, 4)) {
    if (relu_ && !epilogue_) fail("relu needs the epilogue's inputs scale and shift");
    if (std::string(op) == "AnalogTileEpilogue" && !attributes(info).text("weight_file").empty()) {
      read_weights(info);
      return;
    }
    if (!has_input(info, 1)) fail("input W is missing");
    int is_constant = 0;
    const OrtValue* w = nullptr;
    check(g_api->KernelInfoGetConstantInput_tensor(info, 1, &is_constant, &w));
    if (is_constant && w != nullptr) {  // a constant W is mapped and packed once, for every run
      const Shape shape = shape_of(w);
      const size_t outputs = shape.dims.empty() ? 0 : static_cast<size_t>(shape.dims[0]);
      if (outputs > 0) {
        void* data = nullptr;
        check(g_api->GetTensorMutableData(const_cast<OrtValue*>(w), &data));
        constant_tiles_ = pack_weights(static_cast<const float*>(data), outputs, shape.size / outputs, settings_);
        constant_ = true;
      }
    }
  }

  void compute(OrtKernelContext* context) const override {
    const InputTensor x = tensor(context, 0, "X"), w = weight(context);
    const float scale = noise_scale(context, 2);
    const int64_t run_seed = seed(context, 3);
    if (w.shape.dims.size() != 2 || x.shape.dims.empty() || x.shape.dims.back() != w.shape.dims[1]) {
      fail("W must be [outputs, inputs] with inputs the last dimension of X");
    }
    std::vector<int64_t> dims = x.shape.dims;
    dims.back() = w.shape.dims[0];
    float* out = output_tensor(context, 0, dims);
    const size_t k = static_cast<size_t>(w.shape.dims[1]);
    VectorSource source{x.data, k};
    const ChannelEpilogue epilogue = channel_epilogue(context, w.shape.dims[0]);
    const size_t outputs = static_cast<size_t>(w.shape.dims[0]);
    const size_t vectors = x.shape.rows(static_cast<int64_t>(x.shape.dims.size()) - 1);  // not size / k: K may be 0
    std::vector<PackedTile> fresh;
    analog_tile(context, source, packed(w, outputs, k, fresh), outputs, vectors, settings_, scale, run_seed,
                epilogue_ ? &epilogue : nullptr, out);
  }

 protected:
  // W: input 1, or the shape of the weights read from the data file (their packed tiles are kept).
  InputTensor weight(const OrtKernelContext* context) const {
    if (!stored_dims_.empty()) {
      return {nullptr, {stored_dims_, static_cast<size_t>(stored_dims_[0] * stored_dims_[1])},
              ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
    }
    return tensor(context, 1, "W");
  }

  // The packed weights of W: those packed at construction for a constant W, else packed into `fresh`.
  const std::vector<PackedTile>& packed(const InputTensor& w, size_t outputs, size_t k,
                                        std::vector<PackedTile>& fresh) const {
    if (constant_) return constant_tiles_;
    fresh = outputs > 0 ? pack_weights(w.data, outputs, k, settings_) : std::vector<PackedTile>{};
    return fresh;
  }

  ChannelEpilogue channel_epilogue(const OrtKernelContext* context, int64_t channels) const {
    if (!epilogue_) return {nullptr, nullptr, false};
    const InputTensor scale = tensor(context, 4, "scale"), shift = tensor(context, 5, "shift");
    if (scale.shape.size != static_cast<size_t>(channels) || shift.shape.size != static_cast<size_t>(channels)) {
      fail("the epilogue's scale and shift must have one value per output channel");
    }
    return {scale.data, shift.data, relu_};
  }

  TileSettings settings_;
  bool relu_, epilogue_;
  bool constant_ = false;
  std::vector<PackedTile> constant_tiles_;
  std::vector<int64_t> stored_dims_;  // [outputs, inputs] of weights read from the data file, else empty

 private:
  void read_weights(const OrtKernelInfo* info) {
    if (has_input(info, 1)) fail("attribute weight_file is set, so input W must be left out");
    const NodeAttributes a = attributes(info);
    const StoredWeights stored = stored_weights(a);
    std::vector<float> rows(stored.size());
    stored.read(rows.data());
    if (stored.dims[0] > 0) constant_tiles_ = pack_weights(rows.data(), static_cast<size_t>(stored.dims[0]),
                                                           static_cast<size_t>(stored.dims[1]), settings_);
    constant_ = true;
    stored_dims_ = stored.dims;
  }
};

class AnalogTileEpilogueKernel : public AnalogTileKernel {
 public:
  explicit AnalogTileEpilogueKernel(const OrtKernelInfo* info) : AnalogTileKernel(info, "AnalogTileEpilogue") {}
};

// AnalogTileConv (native sessions only): a 2-D Conv (group 1) as AnalogTile on its im2col patches,
// read from the NCHW input and written to the NCHW output, with the per-channel epilogue of
// inputs 4 and 5 (native_graph.fuse_tile_convolutions) and the residual input R of the output's
// shape added before the ReLU (native_graph.fuse_residuals).
class AnalogTileConvKernel : public AnalogTileKernel {
 public:
  explicit AnalogTileConvKernel(const OrtKernelInfo* info)
      : AnalogTileKernel(info, "AnalogTileConv"),
        pads_(attributes(info).integers("pads")),
        strides_(attributes(info).integers("strides")),
        dilations_(attributes(info).integers("dilations")),
        residual_(has_input(info, 6)) {
    if (residual_ && !epilogue_) fail("R needs the epilogue's inputs scale and shift");
  }

  void compute(OrtKernelContext* context) const override {
    const InputTensor x = tensor(context, 0, "X"), w = tensor(context, 1, "W");
    const float scale = noise_scale(context, 2);
    const int64_t run_seed = seed(context, 3);
    if (x.shape.dims.size() != 4 || w.shape.dims.size() != 4 || x.shape.dims[1] != w.shape.dims[1]) {
      fail("X must be NCHW and W [M, C, kh, kw] with the same C");
    }
    const int64_t outputs = w.shape.dims[0];
    const int64_t patch = checked_product(checked_product(w.shape.dims[1], w.shape.dims[2], "the patch size"),
                                          w.shape.dims[3], "the patch size");
    VectorSource src{x.data, static_cast<size_t>(patch), true, x.shape.size};
    src.channels = x.shape.dims[1], src.height = x.shape.dims[2], src.width = x.shape.dims[3];
    src.kh = w.shape.dims[2], src.kw = w.shape.dims[3];
    src.sh = strides_[0], src.sw = strides_[1], src.dh = dilations_[0], src.dw = dilations_[1];
    src.pad_top = pads_[0], src.pad_left = pads_[1];
    src.out_h = output_size(src.height, pads_[0] + pads_[2], src.kh, src.dh, src.sh);
    src.out_w = output_size(src.width, pads_[1] + pads_[3], src.kw, src.dw, src.sw);
    const int64_t vectors = checked_product(checked_product(x.shape.dims[0], src.out_h, "the output size"), src.out_w,
                                            "the output size");
    float* out = output_tensor(context, 0, {x.shape.dims[0], outputs, src.out_h, src.out_w});
    ChannelEpilogue epilogue = channel_epilogue(context, outputs);
    if (residual_) {
      const InputTensor r = tensor(context, 6, "R");
      if (r.shape.dims != std::vector<int64_t>{x.shape.dims[0], outputs, src.out_h, src.out_w}) {
        fail("R must have the output's shape");
      }
      epilogue.residual = r.data;
    }
    if (vectors == 0 || outputs == 0) return;  // an empty output
    std::vector<PackedTile> fresh;
    analog_tile(context, src, packed(w, static_cast<size_t>(outputs), src.k, fresh), static_cast<size_t>(outputs),
                static_cast<size_t>(vectors), settings_, scale, run_seed, epilogue_ ? &epilogue : nullptr, out);
  }

 private:
  // Output positions along one axis: (size + padding - dilation (kernel - 1) - 1) / stride + 1, at
  // least 1 (the attributes are bounded, the tensor sizes are not: checked arithmetic).
  int64_t output_size(int64_t size, int64_t padding, int64_t kernel, int64_t dilation, int64_t stride) const {
    const int64_t reach = kernel == 0 ? 0 : checked_product(dilation, kernel - 1, "the dilated kernel");
    int64_t span = 0;
    if (__builtin_add_overflow(size, padding, &span)) fail("the padded input does not fit in 64 bits");
    if (kernel == 0 || reach >= span) fail("the kernel does not fit the padded input");
    return (span - reach - 1) / stride + 1;
  }

  std::vector<int64_t> pads_, strides_, dilations_;
  bool residual_;
};

// StoredWeights (native sessions only): a weight read from the model's data file at each run, so
// onnxruntime never holds it (native_graph.read_weights_from_file). Input 0, never read, is the data
// its layer multiplies: onnxruntime then reads it when that layer is reached, not all at the start.
class StoredWeightsKernel : public Kernel {
 public:
  explicit StoredWeightsKernel(const OrtKernelInfo* info)
      : Kernel(info, "StoredWeights", {}), stored_(stored_weights(attributes(info))) {}

  void compute(OrtKernelContext* context) const override { stored_.read(output_tensor(context, 0, stored_.dims)); }

 private:
  StoredWeights stored_;
};

template <typename K>
KernelEntry entry(const char* name, std::vector<ONNXTensorElementDataType> inputs,
                  std::vector<ONNXTensorElementDataType> outputs, OutputShape shape = OutputShape::kOfFirstInput,
                  std::initializer_list<size_t> optional = {}) {
  std::vector<bool> may_leave_out(inputs.size(), false);
  for (size_t index : optional) may_leave_out.at(index) = true;
  return {name, std::move(inputs), std::move(outputs), std::move(may_leave_out), shape,
          [](const OrtKernelInfo* info) -> OpKernel* { return new K(info); }};
}

// Tensor inputs and outputs are declared of any type: onnxruntime then gives each output the type
// of the op's last such input (MvmOutput needs its shape function for that), so a float16 model
// gets through type inference to the kernel's own clear refusal instead of a "no kernel found" or
// type-mismatch error.
constexpr auto kAny = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
constexpr auto kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr auto kInt64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;

}  // namespace

const std::vector<KernelEntry>& kernel_entries() {
  static const std::vector<KernelEntry> entries = {
      entry<NoiseKernel>("Noise", {kAny, kFloat, kInt64}, {kAny}),
      entry<QuantizeKernel>("Quantize", {kAny}, {kAny}),
      entry<MvmInputKernel>("MvmInput", {kAny}, {kAny, kAny}),
      entry<MvmOutputKernel>("MvmOutput", {kAny, kAny, kFloat, kInt64}, {kAny}),
      // input 5, never read: the data its layer multiplies, so that onnxruntime runs it when its
      // layer is reached (native_graph's order_device_weights)
      entry<DeviceWeightsKernel>("DeviceWeights", {kAny, kFloat, kInt64, kInt64, kFloat, kAny}, {kAny, kFloat},
                                 OutputShape::kOfFirstInputAndScalar, {5}),
      entry<MvmOutputEpilogueKernel>("MvmOutputEpilogue", {kAny, kAny, kFloat, kInt64, kFloat, kFloat}, {kAny}),
      entry<NoiseChainKernel>("NoiseChain", {kAny, kFloat, kInt64, kFloat, kFloat, kAny}, {kAny},
                              OutputShape::kOfFirstInput, {3, 4, 5}),
      entry<AnalogTileKernel>("AnalogTile", {kAny, kFloat, kFloat, kInt64}, {kAny}, OutputShape::kTile),
      // W is left out when the kernel reads it from the data file; scale and shift without an epilogue
      entry<AnalogTileEpilogueKernel>("AnalogTileEpilogue", {kAny, kFloat, kFloat, kInt64, kFloat, kFloat}, {kAny},
                                      OutputShape::kTile, {1, 4, 5}),
      entry<AnalogTileConvKernel>("AnalogTileConv", {kAny, kFloat, kFloat, kInt64, kFloat, kFloat, kFloat}, {kAny},
                                  OutputShape::kTile, {6}),
      entry<StoredWeightsKernel>("StoredWeights", {kAny}, {kFloat}, OutputShape::kStored, {0}),
  };
  return entries;
}

}  // namespace analog
