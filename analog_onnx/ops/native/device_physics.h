// The device physics of analog_onnx/devices (mapping, programming, stuck devices, drift, drift
// compensation, read noise) for the DeviceWeights kernel: the per-chip part is computed once per
// (chip_seed, t_inference, noise_scale, weights) and kept; only the read noise is drawn per run.
// The constants are those of analog_onnx/devices/pcm.py and reram.py (the conformance test holds
// this file to the numpy reference).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "analog_generated.h"
#include "counter_rng.h"

namespace analog {

enum DeviceKind : int64_t { kPcm = 1, kReram = 2, kGeneric = 3 };

// devices/streams.py: the draws of one layer and their stream numbers (kDeviceStreamBase and the
// DeviceDraw codes come from there through analog_generated.h).
inline uint64_t draw_key(int64_t seed, int64_t layer_stream, DeviceDraw draw) {
  return stream_key(seed, kDeviceStreamBase + layer_stream * kDraws + draw);
}

// The first n normals of a stream.
inline std::vector<float> stream_normals(uint64_t key, size_t n) {
  std::vector<float> out(n);
  alignas(64) float buffer[kBlock + 2];
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

inline float horner(const float* c, size_t n, float x) {
  float y = c[n - 1];
  for (size_t i = n - 1; i-- > 0;) y = y * x + c[i];
  return y;
}

struct DeviceSettings {
  int64_t device;
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

class DevicePhysics {
 public:
  explicit DevicePhysics(const DeviceSettings& s) : s_(s) {}

  ProgrammedChip program(const float* w, size_t rows, size_t columns, float noise_scale, int64_t chip_seed,
                         float t) const {
    const size_t size = rows * columns, pairs = 2 * size;
    ProgrammedChip chip;
    chip.columns = columns;
    chip.scale.resize(rows);
    for (size_t r = 0; r < rows; ++r) {
      float peak = 0.0f;
      for (size_t c = 0; c < columns; ++c) peak = std::max(peak, std::fabs(w[r * columns + c]));
      chip.scale[r] = s_.g_max / std::max(peak, kZeroWeight);
    }
    // 1. map to target pairs, levels when bits > 0
    std::vector<float> target(pairs);
    const int64_t levels = s_.bits > 0 ? (int64_t{1} << (s_.bits - 1)) - 1 : 0;
    const float step = levels > 0 ? s_.g_max / static_cast<float>(levels) : 0.0f;
    for (size_t i = 0; i < size; ++i) {
      const float scaled = w[i] * chip.scale[i / columns];
      target[i] = std::clamp(scaled, 0.0f, s_.g_max);
      target[size + i] = std::clamp(-scaled, 0.0f, s_.g_max);
    }
    if (levels > 0) {
      for (float& g : target) g = std::nearbyint(g / step) * step;
    }
    // 2. program, 3. stick, 4. drift
    const float prog_scale = s_.prog_noise_scale * noise_scale;
    const std::vector<float> z_prog = stream_normals(draw_key(chip_seed, s_.stream, kProgram), pairs);
    const std::vector<float> u = stream_uniforms(draw_key(chip_seed, s_.stream, kStuck), pairs);
    const std::vector<float> z_drift = stream_normals(draw_key(chip_seed, s_.stream, kDrift), pairs);
    std::vector<float> programmed(pairs);
    chip.now.resize(pairs);
    const float drift_base = (t + kT0) / kT0;
    for (size_t i = 0; i < pairs; ++i) {
      const float x = target[i] / s_.g_max;
      programmed[i] = stick(std::max(target[i] + prog_scale * programming_sigma(target[i], x) * z_prog[i], 0.0f), u[i]);
      float g = programmed[i];
      if (s_.drift) {
        if (s_.device == kReram) {
          g = std::max(target[i] + prog_scale * reram_sigma(x, t) * z_drift[i], 0.0f);
        } else {
          g = programmed[i] * std::pow(drift_base, -drift_exponent(target[i], z_drift[i]));
        }
        g = stick(g, u[i]);
      }
      chip.now[i] = g;
    }
    // 5. read-noise sigmas and the compensation's reference read
    const float read_scale = s_.read_noise_scale * noise_scale;
    chip.read_sigma.assign(pairs, 0.0f);
    if (s_.read_noise) {
      const float growth = std::sqrt(std::log((t + kT0 + kTRead) / (2.0f * kTRead)));
      for (size_t i = 0; i < pairs; ++i) {
        chip.read_sigma[i] = read_scale * read_noise_sigma(programmed[i], chip.now[i], growth);
      }
    }
    if (s_.drift_compensation) {
      const std::vector<float> z_ref = s_.read_noise ? stream_normals(draw_key(chip_seed, s_.stream, kReferenceRead), pairs)
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

 private:
  static constexpr float kT0 = 20.0f;        // s, PCMDevice.t0 (GenericDevice.t0)
  static constexpr float kTRead = 250e-9f;   // s, PCMDevice.t_read

  float stick(float g, float u) const {
    if (u < s_.stuck_at_zero) return 0.0f;
    if (u < s_.stuck_at_zero + s_.stuck_at_gmax) return s_.g_max;
    return g;
  }

  float programming_sigma(float g, float x) const {
    static constexpr float kPcmProgramming[] = {0.26348f, 1.9650f, -1.1731f};
    if (s_.device == kPcm) return horner(kPcmProgramming, 3, x) * (s_.g_max / 25.0f);
    if (s_.device == kReram) return reram_sigma(x, 1.0f);
    return s_.prog_noise_add * s_.g_max + s_.prog_noise_rel * g;
  }

  float reram_sigma(float x, float t) const {
    static constexpr float kFits[3][5] = {{0.348f, 16.030f, -43.853f, 45.393f, -16.815f},
                                          {0.701f, 22.086f, -50.773f, 47.095f, -16.458f},
                                          {0.782f, 20.274f, -43.507f, 37.062f, -11.934f}};
    constexpr float kDay = 86400.0f;
    const float clamped = std::clamp(t, 1.0f, 2 * kDay);
    float sigma;
    if (clamped <= kDay) {
      const float weight = std::log(clamped) / std::log(kDay);
      sigma = (1.0f - weight) * horner(kFits[0], 5, x) + weight * horner(kFits[1], 5, x);
    } else {
      const float weight = std::log(clamped / kDay) / std::log(2.0f);
      sigma = (1.0f - weight) * horner(kFits[1], 5, x) + weight * horner(kFits[2], 5, x);
    }
    return sigma * (s_.g_max / 40.0f);
  }

  float drift_exponent(float target, float z) const {
    if (s_.device == kPcm) {
      const float ln_x = std::log(std::max(std::fabs(target) / s_.g_max, 1e-7f));
      const float mean = std::clamp(-0.0155f * ln_x + 0.0244f, 0.049f, 0.1f);
      const float spread = std::clamp(-0.0125f * ln_x - 0.0059f, 0.008f, 0.045f);
      return std::fabs(mean + spread * z) * s_.drift_scale;
    }
    return std::max(s_.drift_nu + s_.drift_nu_std * z, 0.0f) * s_.drift_scale;
  }

  float read_noise_sigma(float programmed, float now, float growth) const {
    if (s_.device == kPcm) {
      const float ratio = std::pow(std::fabs(programmed) / s_.g_max, 0.65f);
      const float q_s = std::min(0.0088f / std::max(ratio, 1e-3f), 0.2f);
      return std::fabs(now) * q_s * growth;
    }
    if (s_.device == kReram) return 0.0f;
    return s_.read_noise_rel * std::fabs(now);
  }

  DeviceSettings s_;
};

}  // namespace analog
