// Native onnxruntime kernels of the analog op set (see analog_onnx/ops/reference.py for the
// definitions). Each op is one fused pass over its tensor: noise generation, clipping, rounding
// and rescaling happen per element in registers, rows' abs-max scales are taken while the row is
// in cache, and the work is split over ORT's intra-op thread pool so its thread setting applies.
//
// build.py compiles this file with ANALOG_ONNX_DOMAIN and ANALOG_ONNX_OPSET defined from the
// Python package, so the domain and version have one source of truth.

#include <algorithm>
#include <atomic>
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
#include "ort_glue.h"
#include "quantize.h"
#include "row_schedule.h"

#if !defined(ANALOG_ONNX_DOMAIN) || !defined(ANALOG_ONNX_OPSET)
#error "build with analog_onnx/ops/native/build.py, which defines ANALOG_ONNX_DOMAIN and ANALOG_ONNX_OPSET"
#endif

#define ANALOG_EXPORT extern "C" __attribute__((visibility("default")))

namespace analog {
namespace {

// The C API version whose functions the kernels call (KernelContext_ParallelFor arrived in 17);
// asking for no more lets one build load in any onnxruntime from 1.17 on.
constexpr uint32_t kRequiredApi = 17;

const char* type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    default: return "not float32";
  }
}

// Common to all kernels: a label for error messages and the float32-only input check.
class Kernel {
 protected:
  Kernel(const OrtKernelInfo* info, const char* op, std::initializer_list<std::pair<size_t, const char*>> tensors)
      : label_(std::string(ANALOG_ONNX_DOMAIN ".") + op + " node '" + node_name(info) + "'") {
    for (const auto& [index, name] : tensors) {
      const ONNXTensorElementDataType type = input_element_type(info, index);
      if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
        fail(std::string("input ") + name + " is " + type_name(type) +
             "; the native analog kernels compute in float32 only (export or cast the model to float32)");
      }
    }
  }

  [[noreturn]] void fail(const std::string& what) const { throw KernelError(label_ + ": " + what); }

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

  std::string label_;
};

// clip_and_round(x / scale) * back over n elements (back is the scale or 1, both exact).
void scaled_clip_round(const float* x, float* out, size_t n, float scale, float back,
                       const ClipRound& grid) {
  if (grid.rounds) {
    for (size_t i = 0; i < n; ++i) out[i] = grid.round(grid.clip(x[i] / scale)) * back;
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = grid.clip(x[i] / scale) * back;
  }
}

class QuantizeKernel : Kernel {
 public:
  explicit QuantizeKernel(const OrtKernelInfo* info)
      : Kernel(info, "Quantize", {{0, "X"}}),
        grid_(required_bits(info), attribute(info, "bound", 1.0f), attribute(info, "signed", int64_t{1}) != 0),
        dynamic_(attribute(info, "dynamic", int64_t{0}) != 0),
        axis_(attribute(info, "axis", int64_t{0})) {}

  void compute(OrtKernelContext* context) const {
    const InputTensor x = input_tensor(context, 0);
    float* out = output_tensor(context, 0, x.shape.dims);
    const RowLayout layout = dynamic_ ? flatten(x.shape, axis_) : RowLayout{1, x.shape.size};
    std::vector<float> scales(layout.rows, 1.0f);
    for_each_row_range(context, x.data, layout, dynamic_, scales.data(), scales.size(),
                       [&](size_t begin, size_t end, size_t, float scale) {
                         scaled_clip_round(x.data + begin, out + begin, end - begin, scale, scale, grid_);
                       });
  }

 private:
  int64_t required_bits(const OrtKernelInfo* info) const {
    if (!has_int_attribute(info, "bits")) fail("attribute bits is required");
    return attribute(info, "bits", int64_t{0});
  }

  ClipRound grid_;
  bool dynamic_;
  int64_t axis_;
};

class MvmInputKernel : Kernel {
 public:
  explicit MvmInputKernel(const OrtKernelInfo* info)
      : Kernel(info, "MvmInput", {{0, "X"}}),
        dac_(attribute(info, "inp_bits", int64_t{0}), attribute(info, "inp_bound", 1.0f), true),
        manage_(attribute(info, "noise_management", int64_t{1}) != 0),
        axis_(attribute(info, "axis", int64_t{1})) {}

  void compute(OrtKernelContext* context) const {
    const InputTensor x = input_tensor(context, 0);
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
  alignas(64) float z1[kBlock + 2];
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

class NoiseKernel : Kernel {
 public:
  explicit NoiseKernel(const OrtKernelInfo* info)
      : Kernel(info, "Noise", {{0, "X"}}),
        sigma_add_(attribute(info, "sigma_add", 0.0f)),
        sigma_mul_(attribute(info, "sigma_mul", 0.0f)),
        relative_(attribute(info, "relative", int64_t{0}) != 0),
        stream_(attribute(info, "stream", int64_t{0})),
        both_(sigma_add_ != 0.0f && sigma_mul_ != 0.0f) {}

  void compute(OrtKernelContext* context) const {
    const InputTensor x = input_tensor(context, 0);
    const float noise_scale = input_scalar<float>(context, 1, label_ + ": noise_scale");
    const int64_t seed = input_scalar<int64_t>(context, 2, label_ + ": seed");
    float* y = output_tensor(context, 0, x.shape.dims);
    const uint64_t key = stream_key(seed, stream_);
    const float mul = noise_scale * sigma_mul_;
    const float add = noise_scale * sigma_add_;
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
  alignas(64) float buffer[kBlock + 2];
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

class MvmOutputKernel : protected Kernel {
 public:
  explicit MvmOutputKernel(const OrtKernelInfo* info, const char* op = "MvmOutput")
      : Kernel(info, op, {{0, "Y"}, {1, "S"}}),
        weight_scale_(attribute(info, "weight_scale", 1.0f)),
        out_noise_(attribute(info, "out_noise", 0.0f)),
        adc_(attribute(info, "out_bits", int64_t{0}),
             attribute(info, "out_bound", std::numeric_limits<float>::infinity()), true),
        axis_(attribute(info, "axis", int64_t{1})),
        stream_(attribute(info, "stream", int64_t{0})) {}

  void compute(OrtKernelContext* context) const { run(context, nullptr); }

 protected:
  void run(OrtKernelContext* context, const Epilogue* epilogue) const {
    const InputTensor y = input_tensor(context, 0);
    const InputTensor scales = input_tensor(context, 1);
    const float noise_scale = input_scalar<float>(context, 2, label_ + ": noise_scale");
    const int64_t seed = input_scalar<int64_t>(context, 3, label_ + ": seed");
    const RowLayout layout = flatten(y.shape, axis_);
    if (scales.shape.size != layout.rows && scales.shape.size != 1) {
      fail("S has " + std::to_string(scales.shape.size) + " values but Flatten(Y, axis) has " +
           std::to_string(layout.rows) + " rows");
    }
    float* out = output_tensor(context, 0, y.shape.dims);
    const uint64_t key = stream_key(seed, stream_);
    const float noise = noise_scale * out_noise_;
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
class MvmOutputEpilogueKernel : MvmOutputKernel {
 public:
  explicit MvmOutputEpilogueKernel(const OrtKernelInfo* info)
      : MvmOutputKernel(info, "MvmOutputEpilogue"), relu_(attribute(info, "relu", int64_t{0}) != 0) {}

  void compute(OrtKernelContext* context) const {
    const Shape shape = input_tensor(context, 0).shape;
    const InputTensor scale = input_tensor(context, 4);
    const InputTensor shift = input_tensor(context, 5);
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
class NoiseChainKernel : Kernel {
 public:
  enum Step : int64_t { kNoise = 0, kAffine = 1, kResidual = 2, kRelu = 3 };

  explicit NoiseChainKernel(const OrtKernelInfo* info)
      : Kernel(info, "NoiseChain", {{0, "X"}}),
        steps_(attribute_list<int64_t>(info, "steps")),
        sigma_add_(attribute_list<float>(info, "sigma_add")),
        sigma_mul_(attribute_list<float>(info, "sigma_mul")),
        streams_(attribute_list<int64_t>(info, "streams")) {
    const auto noises = static_cast<size_t>(std::count(steps_.begin(), steps_.end(), kNoise));
    if (sigma_add_.size() != noises || sigma_mul_.size() != noises || streams_.size() != noises) {
      fail("sigma_add, sigma_mul and streams need one value per noise step");
    }
    for (const int64_t step : steps_) {
      if (step < kNoise || step > kRelu) fail("unknown step " + std::to_string(step));
    }
    affines_ = static_cast<size_t>(std::count(steps_.begin(), steps_.end(), kAffine));
  }

  void compute(OrtKernelContext* context) const {
    const InputTensor x = input_tensor(context, 0);
    const float noise_scale = input_scalar<float>(context, 1, label_ + ": noise_scale");
    const int64_t seed = input_scalar<int64_t>(context, 2, label_ + ": seed");
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
      const InputTensor r = optional_input(context, 5, "R");
      if (r.shape.dims != x.shape.dims) fail("R must have X's shape");
      residual = r.data;
    }
    if (x.shape.size == 0) return;
    std::vector<NoiseStage> noises;
    for (size_t k = 0; k < streams_.size(); ++k) {
      noises.push_back({stream_key(seed, streams_[k]), sigma_add_[k] != 0.0f && sigma_mul_[k] != 0.0f,
                        noise_scale * sigma_mul_[k], noise_scale * sigma_add_[k]});
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
    if (input_value(context, index) == nullptr) fail(std::string("input ") + name + " is not given");
    return input_tensor(context, index);
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
class DeviceWeightsKernel : Kernel {
 public:
  explicit DeviceWeightsKernel(const OrtKernelInfo* info)
      : Kernel(info, "DeviceWeights", {{0, "W"}}),
        settings_{attribute(info, "device", int64_t{1}),
                  attribute(info, "g_max", 25.0f),
                  attribute(info, "prog_noise_scale", 1.0f),
                  attribute(info, "drift_scale", 1.0f),
                  attribute(info, "read_noise_scale", 1.0f),
                  attribute(info, "stuck_at_zero", 0.0f),
                  attribute(info, "stuck_at_gmax", 0.0f),
                  attribute(info, "drift", int64_t{1}) != 0,
                  attribute(info, "read_noise", int64_t{1}) != 0,
                  attribute(info, "drift_compensation", int64_t{1}) != 0,
                  attribute(info, "prog_noise_add", 0.0f),
                  attribute(info, "prog_noise_rel", 0.0f),
                  attribute(info, "drift_nu", 0.0f),
                  attribute(info, "drift_nu_std", 0.0f),
                  attribute(info, "read_noise_rel", 0.0f),
                  attribute(info, "bits", int64_t{0}),
                  attribute(info, "per_channel", int64_t{0}) != 0,
                  attribute(info, "stream", int64_t{0})},
        physics_(settings_) {
    if (settings_.device < kPcm || settings_.device > kGeneric) fail("attribute device must be 1, 2 or 3");
  }

  void compute(OrtKernelContext* context) const {
    const InputTensor w = input_tensor(context, 0);
    const float noise_scale = input_scalar<float>(context, 1, label_ + ": noise_scale");
    const int64_t seed = input_scalar<int64_t>(context, 2, label_ + ": seed");
    const int64_t chip_seed = input_scalar<int64_t>(context, 3, label_ + ": chip_seed");
    const float t = input_scalar<float>(context, 4, label_ + ": t_inference");
    const RowLayout layout = settings_.per_channel ? flatten(w.shape, 1) : RowLayout{1, w.shape.size};
    const std::shared_ptr<const Entry> entry = chip(w, layout, noise_scale, chip_seed, t);
    const ProgrammedChip& programmed = entry->chip;
    const size_t size = w.shape.size;
    float* out = output_tensor(context, 0, w.shape.dims);  // may share W's buffer: W was read above
    *output_tensor(context, 1, {}) = programmed.alpha;
    const bool reads = settings_.read_noise;
    const uint64_t key = reads ? draw_key(seed, settings_.stream, kRead) : 0;
    const float* now = programmed.now.data();
    const float* sigma = programmed.read_sigma.data();
    constexpr size_t kChunk = 16 * kBlock;  // elements per task
    auto body = [&](size_t task) {
      alignas(64) float plus_buffer[kBlock + 2];
      alignas(64) float minus_buffer[kBlock + 2];
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
    auto entry = std::make_shared<Entry>(Entry{chip_seed, t, noise_scale, std::vector<float>(w.data, w.data + w.shape.size),
                                               physics_.program(w.data, layout.rows, layout.length, noise_scale,
                                                                chip_seed, t)});
    if (chip_seed >= 0) cached_ = entry;
    return entry;
  }

  DeviceSettings settings_;
  DevicePhysics physics_;
  mutable std::mutex mutex_;
  mutable std::shared_ptr<const Entry> cached_;
};

TileSettings tile_settings(const OrtKernelInfo* info) {
  TileSettings s{};
  s.inp_bits = attribute(info, "inp_bits", int64_t{0});
  s.noise_management = attribute(info, "noise_management", int64_t{1});
  s.out_bits = attribute(info, "out_bits", int64_t{0});
  s.bm_rounds = std::max<int64_t>(1, attribute(info, "bm_rounds", int64_t{1}));
  s.max_input_size = attribute(info, "max_input_size", int64_t{0});
  s.max_output_size = attribute(info, "max_output_size", int64_t{0});
  s.columnwise = attribute(info, "weight_scaling_columnwise", int64_t{0});
  s.stream = attribute(info, "stream", int64_t{0});
  s.inp_bound = attribute(info, "inp_bound", 1.0f);
  s.out_noise = attribute(info, "out_noise", 0.0f);
  s.out_bound = attribute(info, "out_bound", std::numeric_limits<float>::infinity());
  s.omega = attribute(info, "weight_scaling_omega", 0.0f);
  return s;
}

// AnalogTile: Y[..., M] = X[..., K] W^T on tiles (analog_tile.h); AnalogTileEpilogue (native
// sessions only) adds the per-channel epilogue of its inputs 4 and 5.
class AnalogTileKernel : protected Kernel {
 public:
  explicit AnalogTileKernel(const OrtKernelInfo* info, const char* op = "AnalogTile")
      : Kernel(info, op, {{0, "X"}, {1, "W"}}), settings_(tile_settings(info)),
        relu_(attribute(info, "relu", int64_t{0}) != 0), epilogue_(std::string(op) != "AnalogTile") {}

  void compute(OrtKernelContext* context) const {
    const InputTensor x = input_tensor(context, 0), w = input_tensor(context, 1);
    const float noise_scale = input_scalar<float>(context, 2, label_ + ": noise_scale");
    const int64_t seed = input_scalar<int64_t>(context, 3, label_ + ": seed");
    if (w.shape.dims.size() != 2 || x.shape.dims.empty() || x.shape.dims.back() != w.shape.dims[1]) {
      fail("W must be [outputs, inputs] with inputs the last dimension of X");
    }
    std::vector<int64_t> dims = x.shape.dims;
    dims.back() = w.shape.dims[0];
    float* out = output_tensor(context, 0, dims);
    const size_t k = static_cast<size_t>(w.shape.dims[1]);
    VectorSource source{x.data, k};
    const ChannelEpilogue epilogue = channel_epilogue(context, w.shape.dims[0]);
    size_t vectors = 1;  // every dimension of X but the last (not size / k: K may be 0)
    for (size_t i = 0; i + 1 < x.shape.dims.size(); ++i) vectors *= static_cast<size_t>(x.shape.dims[i]);
    analog_tile(context, source, w.data, static_cast<size_t>(w.shape.dims[0]), vectors, settings_, noise_scale, seed,
                epilogue_ ? &epilogue : nullptr, out);
  }

 protected:
  ChannelEpilogue channel_epilogue(const OrtKernelContext* context, int64_t channels) const {
    if (!epilogue_) return {nullptr, nullptr, false};
    const InputTensor scale = input_tensor(context, 4), shift = input_tensor(context, 5);
    if (scale.shape.size != static_cast<size_t>(channels) || shift.shape.size != static_cast<size_t>(channels)) {
      fail("the epilogue's scale and shift must have one value per output channel");
    }
    return {scale.data, shift.data, relu_};
  }

  TileSettings settings_;
  bool relu_, epilogue_;
};

class AnalogTileEpilogueKernel : public AnalogTileKernel {
 public:
  explicit AnalogTileEpilogueKernel(const OrtKernelInfo* info) : AnalogTileKernel(info, "AnalogTileEpilogue") {}
};

// AnalogTileConv (native sessions only): a 2-D Conv (group 1) as AnalogTile on its im2col patches,
// read from the NCHW input and written to the NCHW output, with the per-channel epilogue of
// inputs 4 and 5 (native_graph.fuse_tile_convolutions).
class AnalogTileConvKernel : AnalogTileKernel {
 public:
  explicit AnalogTileConvKernel(const OrtKernelInfo* info)
      : AnalogTileKernel(info, "AnalogTileConv"),
        pads_(attribute_list<int64_t>(info, "pads", {0, 0, 0, 0})),
        strides_(attribute_list<int64_t>(info, "strides", {1, 1})),
        dilations_(attribute_list<int64_t>(info, "dilations", {1, 1})) {
    if (pads_.size() != 4 || strides_.size() != 2 || dilations_.size() != 2) fail("needs 2-D pads, strides, dilations");
  }

  void compute(OrtKernelContext* context) const {
    const InputTensor x = input_tensor(context, 0), w = input_tensor(context, 1);
    const float noise_scale = input_scalar<float>(context, 2, label_ + ": noise_scale");
    const int64_t seed = input_scalar<int64_t>(context, 3, label_ + ": seed");
    if (x.shape.dims.size() != 4 || w.shape.dims.size() != 4 || x.shape.dims[1] != w.shape.dims[1]) {
      fail("X must be NCHW and W [M, C, kh, kw] with the same C");
    }
    VectorSource src{x.data, static_cast<size_t>(w.shape.dims[1] * w.shape.dims[2] * w.shape.dims[3]), true, x.shape.size};
    src.channels = x.shape.dims[1], src.height = x.shape.dims[2], src.width = x.shape.dims[3];
    src.kh = w.shape.dims[2], src.kw = w.shape.dims[3];
    src.sh = strides_[0], src.sw = strides_[1], src.dh = dilations_[0], src.dw = dilations_[1];
    src.pad_top = pads_[0], src.pad_left = pads_[1];
    src.out_h = (src.height + pads_[0] + pads_[2] - src.dh * (src.kh - 1) - 1) / src.sh + 1;
    src.out_w = (src.width + pads_[1] + pads_[3] - src.dw * (src.kw - 1) - 1) / src.sw + 1;
    if (src.out_h <= 0 || src.out_w <= 0) fail("the kernel does not fit the padded input");
    src.prepare();
    const int64_t outputs = w.shape.dims[0];
    float* out = output_tensor(context, 0, {x.shape.dims[0], outputs, src.out_h, src.out_w});
    const ChannelEpilogue epilogue = channel_epilogue(context, outputs);
    analog_tile(context, src, w.data, static_cast<size_t>(outputs),
                static_cast<size_t>(x.shape.dims[0] * src.out_h * src.out_w), settings_, noise_scale, seed, &epilogue,
                out);
  }

 private:
  std::vector<int64_t> pads_, strides_, dilations_;
};

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

// The tiles' output type and shape: AnalogTile X[..., K] -> [..., M]; AnalogTileConv [N, C, H, W]
// -> [N, M, OH, OW]. A size not known here gets a symbolic name of its own (a bare -1 would read
// as a size).
void tile_output_shape(OrtShapeInferContext* context) {
  static std::atomic<uint64_t> unknowns{0};
  DimsInfo x = dims_info(context, 0), w = dims_info(context, 1);
  if (x.dims.empty() || w.dims.empty()) throw KernelError("AnalogTile: X and W must have a known rank");
  const bool conv = w.dims.size() == 4;
  if (conv) x.dims.resize(4, -1), x.names.resize(4, "");
  x.dims[conv ? 1 : x.dims.size() - 1] = w.dims[0];
  x.names[conv ? 1 : x.names.size() - 1] = w.names[0];
  if (conv) x.dims[2] = x.dims[3] = -1;
  for (size_t i = 0; i < x.dims.size(); ++i)
    if (x.dims[i] < 0 && (x.names[i].empty() || (conv && i >= 2))) x.names[i] = "analog_tile_" + std::to_string(unknowns++);
  std::vector<const char*> names;
  for (const auto& name : x.names) names.push_back(name.c_str());
  OrtTensorTypeAndShapeInfo* output = nullptr;
  check(g_api->CreateTensorTypeAndShapeInfo(&output));
  OrtStatus* status = g_api->SetTensorElementType(output, x.type);
  if (status == nullptr) status = g_api->SetDimensions(output, x.dims.data(), x.dims.size());
  if (status == nullptr) status = g_api->SetSymbolicDimensions(output, names.data(), names.size());
  if (status == nullptr) status = g_api->ShapeInferContext_SetOutputTypeShape(context, 0, output);
  g_api->ReleaseTensorTypeAndShapeInfo(output);
  check(status);
}

// Runs f, turning a C++ exception into an OrtStatus for onnxruntime.
template <typename F>
OrtStatus* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& error) {
    return g_api->CreateStatus(ORT_INVALID_ARGUMENT, error.what());
  }
}

// Declares output `index` a float32 scalar (DeviceWeights' alpha), so the layer output it scales
// keeps its inferred shape.
void set_scalar_output(OrtShapeInferContext* context, size_t index) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(g_api->CreateTensorTypeAndShapeInfo(&info));
  OrtStatus* status = g_api->SetTensorElementType(info, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (status == nullptr) status = g_api->SetDimensions(info, nullptr, 0);
  if (status == nullptr) status = g_api->ShapeInferContext_SetOutputTypeShape(context, index, info);
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  check(status);
}

// One op of the domain: the OrtCustomOp table onnxruntime reads, plus our names and types.
struct OpSpec : OrtCustomOp {
  const char* op_name;
  std::vector<ONNXTensorElementDataType> input_types, output_types;
  size_t required_inputs = 0;  // with_optional_inputs: inputs from here on are optional
};

const OpSpec& spec_of(const OrtCustomOp* op) { return *static_cast<const OpSpec*>(op); }

template <typename K>
OpSpec make_op(const char* name, std::vector<ONNXTensorElementDataType> inputs,
               std::vector<ONNXTensorElementDataType> outputs, bool elementwise = true) {
  OpSpec spec{};
  spec.version = ORT_API_VERSION;
  spec.op_name = name;
  spec.input_types = std::move(inputs);
  spec.output_types = std::move(outputs);
  spec.GetName = [](const OrtCustomOp* op) { return spec_of(op).op_name; };
  spec.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* { return nullptr; };
  spec.GetInputType = [](const OrtCustomOp* op, size_t i) { return spec_of(op).input_types[i]; };
  spec.GetInputTypeCount = [](const OrtCustomOp* op) { return spec_of(op).input_types.size(); };
  spec.GetOutputType = [](const OrtCustomOp* op, size_t i) { return spec_of(op).output_types[i]; };
  spec.GetOutputTypeCount = [](const OrtCustomOp* op) { return spec_of(op).output_types.size(); };
  spec.GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  spec.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  spec.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  spec.CreateKernelV2 = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info, void** kernel) {
    return guarded([&] { *kernel = new K(info); });
  };
  spec.KernelComputeV2 = [](void* kernel, OrtKernelContext* context) {
    return guarded([&] { static_cast<const K*>(kernel)->compute(context); });
  };
  spec.KernelDestroy = [](void* kernel) { delete static_cast<K*>(kernel); };
  // The first output has the first input's shape; the type onnxruntime already takes from the inputs.
  spec.InferOutputShapeFn = [](const OrtCustomOp* op, OrtShapeInferContext* context) {
    return guarded([&] {
      OrtTensorTypeAndShapeInfo* input = nullptr;  // owned by the context
      check(g_api->ShapeInferContext_GetInputTypeShape(context, 0, &input));
      check(g_api->ShapeInferContext_SetOutputTypeShape(context, 0, input));
      if (std::string(spec_of(op).op_name) == "DeviceWeights") set_scalar_output(context, 1);
    });
  };
  // Every kernel reads an element (or its whole row) before writing the same element, so the
  // first output may reuse the first input's buffer: one memory stream instead of two.
  spec.GetMayInplace = [](int** input_index, int** output_index) -> size_t {
    *input_index = new int[1]{0};
    *output_index = new int[1]{0};
    return 1;
  };
  spec.ReleaseMayInplace = [](int* input_index, int* output_index) {
    delete[] input_index;
    delete[] output_index;
  };
  if (!elementwise) {  // the output has its own shape (tile_output_shape) and buffer
    spec.InferOutputShapeFn = [](const OrtCustomOp*, OrtShapeInferContext* context) {
      return guarded([&] { tile_output_shape(context); });
    };
    spec.GetMayInplace = nullptr;
    spec.ReleaseMayInplace = nullptr;
  }
  spec.GetStartVersion = [](const OrtCustomOp*) { return ANALOG_ONNX_OPSET; };
  spec.GetEndVersion = [](const OrtCustomOp*) { return ANALOG_ONNX_OPSET; };
  return spec;
}

// The op with its inputs from `required` on optional (an empty name in the graph: not given).
OpSpec with_optional_inputs(OpSpec spec, size_t required) {
  spec.required_inputs = required;
  spec.GetInputCharacteristic = [](const OrtCustomOp* op, size_t i) {
    return i < spec_of(op).required_inputs ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_OPTIONAL;
  };
  return spec;
}

// Tensor inputs and outputs are declared of any type: onnxruntime then gives each output the type
// of the op's last such input (MvmOutput needs InferOutputShapeFn for that), so a float16 model
// gets through type inference to the kernel's own clear refusal instead of a "no kernel found" or
// type-mismatch error.
constexpr auto kAny = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
constexpr auto kFloat = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
constexpr auto kInt64 = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;

std::vector<OpSpec>& op_table() {
  static std::vector<OpSpec> ops = {
      make_op<NoiseKernel>("Noise", {kAny, kFloat, kInt64}, {kAny}),
      make_op<QuantizeKernel>("Quantize", {kAny}, {kAny}),
      make_op<MvmInputKernel>("MvmInput", {kAny}, {kAny, kAny}),
      make_op<MvmOutputKernel>("MvmOutput", {kAny, kAny, kFloat, kInt64}, {kAny}),
      make_op<DeviceWeightsKernel>("DeviceWeights", {kAny, kFloat, kInt64, kInt64, kFloat}, {kAny, kFloat}),
      make_op<MvmOutputEpilogueKernel>("MvmOutputEpilogue", {kAny, kAny, kFloat, kInt64, kFloat, kFloat}, {kAny}),
      with_optional_inputs(
          make_op<NoiseChainKernel>("NoiseChain", {kAny, kFloat, kInt64, kFloat, kFloat, kAny}, {kAny}), 3),
      make_op<AnalogTileKernel>("AnalogTile", {kAny, kFloat, kFloat, kInt64}, {kAny}, false),
      make_op<AnalogTileEpilogueKernel>("AnalogTileEpilogue", {kAny, kFloat, kFloat, kInt64, kFloat, kFloat}, {kAny},
                                        false),
      make_op<AnalogTileConvKernel>("AnalogTileConv", {kAny, kFloat, kFloat, kInt64, kFloat, kFloat}, {kAny}, false),
  };
  return ops;
}

// Domains must outlive every session that uses them: keep them until the library unloads.
struct Domains {
  std::mutex mutex;
  std::vector<OrtCustomOpDomain*> owned;
  ~Domains() {
    for (OrtCustomOpDomain* domain : owned) g_api->ReleaseCustomOpDomain(domain);
  }
};

Domains& domains() {
  static Domains all;
  return all;
}

}  // namespace
}  // namespace analog

ANALOG_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  using namespace analog;
  const OrtApi* api = api_base->GetApi(kRequiredApi);
  if (api == nullptr) return nullptr;  // onnxruntime older than 1.17 has already printed why
  g_api = api;
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* status = api->CreateCustomOpDomain(ANALOG_ONNX_DOMAIN, &domain)) return status;
  {
    std::lock_guard<std::mutex> lock(domains().mutex);
    domains().owned.push_back(domain);
  }
  for (OpSpec& op : op_table()) {
    if (OrtStatus* status = api->CustomOpDomain_Add(domain, &op)) return status;
  }
  return api->AddCustomOpDomain(options, domain);
}

// For `analog-onnx kernels status`: what this library provides, readable without onnxruntime.
ANALOG_EXPORT int AnalogOnnxOrtApiVersion() { return ORT_API_VERSION; }

ANALOG_EXPORT const char* AnalogOnnxOps() {
  static const std::string names = [] {
    std::string joined;
    for (const analog::OpSpec& op : analog::op_table()) joined += (joined.empty() ? "" : ",") + std::string(op.op_name);
    return joined;
  }();
  return names.c_str();
}
