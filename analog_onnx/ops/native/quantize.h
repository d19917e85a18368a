// Clip-and-round and abs-max, operation for operation as reference.clip_and_round and
// reference.row_absmax, so quantized values are bit-identical to numpy. The library is compiled
// with -ffp-contract=off: x / step is a real division and nothing is fused into an FMA.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "fast_math.h"

namespace analog {

// Largest integer level: 2^(bits-1)-1 signed, 2^bits-1 unsigned; 0 means no rounding grid.
inline int64_t levels(int64_t bits, bool is_signed) {
  if (bits <= 0) return 0;
  return is_signed ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1;
}

// Clip to [-bound, bound] ([0, bound] unsigned), then round half-to-even to the grid bound / levels.
struct ClipRound {
  float low, high, step;
  bool rounds;

  ClipRound(int64_t bits, float bound, bool is_signed)
      : low(is_signed ? -bound : 0.0f), high(bound), step(0.0f), rounds(levels(bits, is_signed) > 0) {
    if (rounds) step = bound / static_cast<float>(levels(bits, is_signed));
  }

  float clip(float x) const { return std::min(std::max(x, low), high); }
  float round(float clipped) const { return __builtin_rintf(clipped / step) * step; }
};

// Abs-max of n floats; an all-zero (or empty) row gives 1, so dividing by it is safe. The maximum is
// taken over the bit patterns of |x|, which order like the values (a NaN wins, as in numpy) and
// vectorize as an integer reduction.
inline float abs_max(const float* __restrict x, size_t n) {
  int32_t m = 0;
  for (size_t i = 0; i < n; ++i) m = std::max(m, float_bits(x[i]) & 0x7fffffff);
  return bits_float(m);
}

// The scale of a row from its abs-max: 1 below the smallest normal float (a zero, subnormal or
// empty row; also NaN), so that 1 / scale is finite (reference.row_absmax).
inline float scale_from_abs_max(float m) { return m >= std::numeric_limits<float>::min() ? m : 1.0f; }

}  // namespace analog
