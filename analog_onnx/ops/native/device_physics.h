// The device physics of analog_onnx/devices (mapping, programming, stuck devices, drift, drift
// compensation, read noise) for the DeviceWeights kernel: the per-chip part is computed once per
// (chip_seed, t_inference, noise_scale, weights) and kept; only the read noise is drawn per run.
//
// The steps every device shares (chip.py) are program_chip; the formulas of each device model are
// a Physics<> specialization, over the constants analog_generated.h writes from its Python class
// (devices/<model>.py), operation for operation as there (the conformance test holds them to the
// numpy reference). A device model registered in devices/registry.py without its specialization
// here does not compile.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include "analog_generated.h"
#include "counter_rng.h"

namespace analog {

// devices/streams.py: the draws of one layer and their stream numbers (kDeviceStreamBase and the
// DeviceDraw codes come from there through analog_generated.h).
inline uint64_t draw_key(int64_t seed, int64_t layer_stream, DeviceDraw draw) {
  return stream_key(seed, kDeviceStreamBase + layer_stream * kDraws + draw);
}

// The first n normals of a stream.
inline std::vector<float> stream_normals(uint64_t key, size_t n) {
  std::vector<float> out(n);
  alignas(64) float buffer[kNormalsBuffer];
  for (size_t first = 0; first < n; first += kBlock) {
    const size_t count = std::min(kBlock, n - first);
    const float* z = normals(key, first, count, buffer);
    std::copy(z, z + count, out.begin() + first);
  }
  return out;
}

// The first n U(0, 1) numbers of a stream (devices/streams.uniforms).
inline std::vector<float> stream_uniforms(uint64_t key, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = (static_cast<float>(squares32(i, key) >> 8) + 0.5f) * kInv2Pow24;
  }
  return out;
}

// sum c[i] x^i by Horner's rule, as devices/base.polynomial.
template <size_t N>
float horner(const float (&c)[N], float x) {
  float y = c[N - 1];
  for (size_t i = N - 1; i-- > 0;) y = y * x + c[i];
  return y;
}

// clip(line[0] x + line[1], line[2], line[3]) (pcm.py's _clipped_line)
inline float clipped_line(const float (&line)[4], float x) { return std::clamp(line[0] * x + line[1], line[2], line[3]); }

struct DeviceSettings {
  std::string device;
  float g_max, prog_noise_scale, drift_scale, read_noise_scale, stuck_at_zero, stuck_at_gmax;
  bool drift, read_noise, drift_compensation;
  float prog_noise_add, prog_noise_rel, drift_nu, drift_nu_std, read_noise_rel;
  int64_t bits;
  bool per_channel;
  int64_t stream;
};

// One layer on one chip at one time: what a read needs. Pairs are [g+ of every weight, g- ...].
struct ProgrammedChip {
  std::vector<float> now;          // conductances at t_inference, uS
  std::vector<float> read_sigma;   // read-noise sigma of each device (noise_scale included), uS
  std::vector<float> scale;        // uS per weight unit, one per row
  size_t columns = 0;
  float alpha = 1.0f;
};

// -- the device models: programming sigma, drift to t and read-noise sigma per device, at time t ----
template <class Constants>
struct Physics;  // a device model registered in Python needs its formulas here

template <>
struct Physics<devices::PCMDevice> {  // devices/pcm.py
  using C = devices::PCMDevice;
  const DeviceSettings& s;
  const float drift_base, growth;  // ((t + t0) / t0); sqrt(ln((t + t0 + t_read) / (2 t_read)))
  Physics(const DeviceSettings& settings, float t)
      : s(settings), drift_base((t + C::t0) / C::t0), growth(std::sqrt(std::log((t + C::t0 + C::t_read) / (2.0f * C::t_read)))) {}

  float programming_sigma(float g) const { return horner(C::prog_coeff, g / s.g_max) * (s.g_max / C::prog_coeff_g_max); }

  float drift(float target, float programmed, float z, float) const {
    const float ln_x = std::log(std::max(std::fabs(target) / s.g_max, C::g_relative_floor));
    const float nu = std::fabs(clipped_line(C::nu_mean, ln_x) + clipped_line(C::nu_std, ln_x) * z) * s.drift_scale;
    return programmed * std::pow(drift_base, -nu);
  }

  float read_sigma(float programmed, float now) const {
    const float ratio = std::pow(std::fabs(programmed) / s.g_max, C::read_q_exponent);
    const float q_s = std::min(C::read_q / std::max(ratio, C::read_q_range[0]), C::read_q_range[1]);
    return std::fabs(now) * q_s * growth;
  }
};

template <>
struct Physics<devices::ReRAMDevice> {  // devices/reram.py
  using C = devices::ReRAMDevice;
  static constexpr size_t kFits = std::size(C::fits_t);
  const DeviceSettings& s;
  const float t;
  Physics(const DeviceSettings& settings, float time) : s(settings), t(time) {}

  // sigma at time `at`: between fits i and i + 1, the first whose time is not before it, linear in ln t
  float sigma_at(float x, float at) const {
    const float clamped = std::clamp(at, C::fits_t[0], C::fits_t[kFits - 1]);
    float sigma = horner(C::fits_coefficients[kFits - 1], x);
    if (kFits > 1) {
      size_t i = 0;
      while (i + 2 < kFits && clamped > C::fits_t[i + 1]) ++i;
      const float weight = std::log(clamped / C::fits_t[i]) / std::log(C::fits_t[i + 1] / C::fits_t[i]);
      sigma = (1.0f - weight) * horner(C::fits_coefficients[i], x) + weight * horner(C::fits_coefficients[i + 1], x);
    }
    return sigma * (s.g_max / C::fit_g_max);
  }

  float programming_sigma(float g) const { return sigma_at(g / s.g_max, C::fits_t[0]); }

  float drift(float target, float, float z, float prog_scale) const {
    return std::max(target + prog_scale * sigma_at(target / s.g_max, t) * z, 0.0f);
  }

  float read_sigma(float, float) const { return 0.0f; }
};

template <>
struct Physics<devices::GenericDevice> {  // devices/generic.py
  using C = devices::GenericDevice;
  const DeviceSettings& s;
  const float drift_base;
  Physics(const DeviceSettings& settings, float t) : s(settings), drift_base((t + C::t0) / C::t0) {}

  float programming_sigma(float g) const { return s.prog_noise_add * s.g_max + s.prog_noise_rel * g; }

  float drift(float, float programmed, float z, float) const {
    const float nu = std::max(s.drift_nu + s.drift_nu_std * z, 0.0f) * s.drift_scale;
    return programmed * std::pow(drift_base, -nu);
  }

  float read_sigma(float, float now) const { return s.read_noise_rel * std::fabs(now); }
};

template <>
struct Physics<devices::HermesPCMDevice> {  // devices/hermes.py
  using C = devices::HermesPCMDevice;
  const DeviceSettings& s;
  const float drift_base, growth;
  Physics(const DeviceSettings& settings, float t)
      : s(settings), drift_base((t + C::t0) / C::t0), growth(std::sqrt(std::log((t + C::t0 + C::t_read) / (2.0f * C::t_read)))) {}

  // hermes.Branches: below the threshold a clipped line in ln x, from it on a polynomial in x
  template <size_t N>
  static float branches(float x, float threshold, const float (&line)[4], const float (&polynomial)[N]) {
    return x < threshold ? clipped_line(line, std::log(std::max(x, C::g_relative_floor))) : horner(polynomial, x);
  }

  float programming_sigma(float g) const { return horner(C::prog_coeff, g / s.g_max) * (s.g_max / C::prog_coeff_g_max); }

  float drift(float target, float programmed, float z, float) const {
    const float x = std::max(std::fabs(target) / s.g_max, C::g_relative_floor);
    const float mean = branches(x, C::nu_mean_threshold, C::nu_mean_line, C::nu_mean_polynomial);
    const float spread = branches(x, C::nu_std_threshold, C::nu_std_line, C::nu_std_polynomial);
    return programmed * std::pow(drift_base, -(std::fabs(mean + spread * z) * s.drift_scale));
  }

  float read_sigma(float programmed, float now) const {
    const float q_s = branches(std::fabs(programmed) / s.g_max, C::read_q_threshold, C::read_q_line, C::read_q_polynomial);
    return std::fabs(now) * q_s * growth;
  }
};

// -- the steps every device shares (devices/chip.py) ------------------------------------------------
inline float stick(const DeviceSettings& s, float g, float u) {
  if (u < s.stuck_at_zero) return 0.0f;
  if (u < s.stuck_at_zero + s.stuck_at_gmax) return s.g_max;
  return g;
}

template <class Model>
ProgrammedChip program_chip(const DeviceSettings& s, const float* w, size_t rows, size_t columns, float noise_scale,
                            int64_t chip_seed, float t) {
  const Model model(s, t);
  const size_t size = rows * columns, pairs = 2 * size;
  ProgrammedChip chip;
  chip.columns = columns;
  chip.scale.resize(rows);
  for (size_t r = 0; r < rows; ++r) {
    float peak = 0.0f;
    for (size_t c = 0; c < columns; ++c) peak = std::max(peak, std::fabs(w[r * columns + c]));
    chip.scale[r] = s.g_max / std::max(peak, kZeroWeight);
  }
  // 1. map to target pairs, levels when bits > 0
  std::vector<float> target(pairs);
  const int64_t levels = s.bits > 0 ? (int64_t{1} << (s.bits - 1)) - 1 : 0;
  const float step = levels > 0 ? s.g_max / static_cast<float>(levels) : 0.0f;
  for (size_t i = 0; i < size; ++i) {
    const float scaled = w[i] * chip.scale[i / columns];
    target[i] = std::clamp(scaled, 0.0f, s.g_max);
    target[size + i] = std::clamp(-scaled, 0.0f, s.g_max);
  }
  if (levels > 0) {
    for (float& g : target) g = std::nearbyint(g / step) * step;
  }
  // 2. program, 3. stick, 4. drift
  const float prog_scale = s.prog_noise_scale * noise_scale;
  const std::vector<float> z_prog = stream_normals(draw_key(chip_seed, s.stream, kProgram), pairs);
  const std::vector<float> u = stream_uniforms(draw_key(chip_seed, s.stream, kStuck), pairs);
  const std::vector<float> z_drift = stream_normals(draw_key(chip_seed, s.stream, kDrift), pairs);
  std::vector<float> programmed(pairs);
  chip.now.resize(pairs);
  for (size_t i = 0; i < pairs; ++i) {
    programmed[i] = stick(s, std::max(target[i] + prog_scale * model.programming_sigma(target[i]) * z_prog[i], 0.0f), u[i]);
    chip.now[i] = s.drift ? stick(s, model.drift(target[i], programmed[i], z_drift[i], prog_scale), u[i]) : programmed[i];
  }
  // 5. read-noise sigmas and the compensation's reference read
  const float read_scale = s.read_noise_scale * noise_scale;
  chip.read_sigma.assign(pairs, 0.0f);
  if (s.read_noise) {
    for (size_t i = 0; i < pairs; ++i) chip.read_sigma[i] = read_scale * model.read_sigma(programmed[i], chip.now[i]);
  }
  if (s.drift_compensation) {
    const std::vector<float> z_ref = s.read_noise ? stream_normals(draw_key(chip_seed, s.stream, kReferenceRead), pairs)
                                                  : std::vector<float>(pairs, 0.0f);
    double programmed_sum = 0.0, read_sum = 0.0;
    for (size_t i = 0; i < size; ++i) {
      const float inverse = chip.scale[i / columns];
      const float plus = std::max(chip.now[i] + chip.read_sigma[i] * z_ref[i], 0.0f);
      const float minus = std::max(chip.now[size + i] + chip.read_sigma[size + i] * z_ref[size + i], 0.0f);
      programmed_sum += std::fabs((programmed[i] - programmed[size + i]) / inverse);
      read_sum += std::fabs((plus - minus) / inverse);
    }
    const float n = static_cast<float>(size);
    chip.alpha = std::max(static_cast<float>(programmed_sum) / n, kMinReadout) /
                 std::max(static_cast<float>(read_sum) / n, kMinReadout);
  }
  return chip;
}

// A device model's program_chip, by its registry name (nullptr for a name not registered).
using ProgramChip = ProgrammedChip (*)(const DeviceSettings&, const float*, size_t, size_t, float, int64_t, float);

inline ProgramChip device_model(const std::string& name) {
#define ANALOG_DEVICE_MODEL(text, Class) \
  if (name == text) return &program_chip<Physics<devices::Class>>;
  ANALOG_DEVICE_MODELS(ANALOG_DEVICE_MODEL)
#undef ANALOG_DEVICE_MODEL
  return nullptr;
}

// "pcm, reram, ...": the registered names, for an error.
inline std::string device_model_names() {
  std::string names;
#define ANALOG_DEVICE_NAME(text, Class) names += (names.empty() ? "" : ", ") + std::string(text);
  ANALOG_DEVICE_MODELS(ANALOG_DEVICE_NAME)
#undef ANALOG_DEVICE_NAME
  return names;
}

}  // namespace analog
