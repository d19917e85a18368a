// Branch-free float32 -2 ln x and sincos for the Box-Muller transform on every lane of a SIMD
// vector, and the float bits of scalars.
//
// Both reduce their argument to a short interval around one of 16 table points, then sum a short
// Taylor series: a 16-float table is one register, read per lane by one permute (two and a blend
// with AVX2), so there is no division, and the series are short (to r^5 and t^6, where a reduction
// to [sqrt(1/2), sqrt(2)) and to quadrants needed a division and series to s^11 and t^10). Accuracy is about one ulp on the ranges used here (x a uniform draw in
// (0, 1], the angle a whole number of 2^-24 turns), so the native normals match the numpy
// reference and the ONNX function bodies to float tolerance. The series are truncated where the
// remainder is below a third of an ulp on the reduced ranges.
#pragma once

#include <cstdint>
#include <cstring>

#include "simd.h"

namespace analog {

inline int32_t float_bits(float x) {
  int32_t i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}

inline float bits_float(int32_t i) {
  float x;
  std::memcpy(&x, &i, sizeof x);
  return x;
}

// -- -2 ln x ---------------------------------------------------------------------------------------
// x = 2^e m with m in [3/4, 3/2), then m = c (1 + r) with c = j / 16 the nearest sixteenth (j = 12
// ... 24, so |r| < 1/24): m - c is exact, and near x = 1 (c = 1) so is r, which keeps the result's
// relative accuracy where it is small. -2 ln x = -2 e ln 2 - 2 ln c - 2 ln(1 + r), the last a
// series to r^5. The tables hold 1 / c and -2 ln c at j mod 16 (the entries 9 to 11 are unused).
alignas(64) constexpr float kLogInverse[16] = {
    1.000000000e+00f, 9.411764741e-01f, 8.888888955e-01f, 8.421052694e-01f,
    8.000000119e-01f, 7.619047761e-01f, 7.272727489e-01f, 6.956521869e-01f,
    6.666666865e-01f, 0.0f, 0.0f, 0.0f,
    1.333333373e+00f, 1.230769277e+00f, 1.142857194e+00f, 1.066666722e+00f};
alignas(64) constexpr float kLogCenter[16] = {
    0.0f, -1.212492436e-01f, -2.355660647e-01f, -3.437005281e-01f,
    -4.462870955e-01f, -5.438674092e-01f, -6.369074583e-01f, -7.258110046e-01f,
    -8.109301925e-01f, 0.0f, 0.0f, 0.0f,
    5.753641725e-01f, 4.152787328e-01f, 2.670627832e-01f, 1.290770471e-01f};
// -2 ln 2 split so that e * kMinusTwoLn2High is exact for |e| < 2^8
constexpr float kMinusTwoLn2High = -1.38629150390625f;
constexpr float kMinusTwoLn2Low = -2.857213531e-06f;
constexpr int32_t kThreeQuartersBits = 0x3f400000;

// -- cos and sin of 2 pi k / 2^24 ----------------------------------------------------------------
// k's top 4 bits pick one of 16 sectors of the turn, its low 20 the angle t from the sector's
// middle (|t| <= pi / 16); cos and sin of the sum from the middle's (tables) and t's (series to
// t^6 and t^5). The angle is exact in k, so unlike cos(2 pi u) in float32 there is no rounding of
// 2 pi u to carry.
alignas(64) constexpr float kSectorCos[16] = {
    9.807852507e-01f, 8.314695954e-01f, 5.555702448e-01f, 1.950903237e-01f,
    -1.950903237e-01f, -5.555702448e-01f, -8.314695954e-01f, -9.807852507e-01f,
    -9.807852507e-01f, -8.314695954e-01f, -5.555702448e-01f, -1.950903237e-01f,
    1.950903237e-01f, 5.555702448e-01f, 8.314695954e-01f, 9.807852507e-01f};
alignas(64) constexpr float kSectorSin[16] = {
    1.950903237e-01f, 5.555702448e-01f, 8.314695954e-01f, 9.807852507e-01f,
    9.807852507e-01f, 8.314695954e-01f, 5.555702448e-01f, 1.950903237e-01f,
    -1.950903237e-01f, -5.555702448e-01f, -8.314695954e-01f, -9.807852507e-01f,
    -9.807852507e-01f, -8.314695954e-01f, -5.555702448e-01f, -1.950903237e-01f};
constexpr float kRadiansPerStep = 3.745070387e-07f;  // 2 pi / 2^24
constexpr int32_t kSectorSteps = 1 << 20, kHalfSector = 1 << 19;

// -2 ln x of a positive normal float x in every lane
inline VecF vec_minus_two_log(VecF x) {
  const VecI bits = vec_bits(x);
  const VecI e = veci_shift_right_arithmetic<23>(veci_sub(bits, veci_broadcast(kThreeQuartersBits)));
  const VecF m = vec_from_bits(veci_sub(bits, veci_shift_left<23>(e)));
  const VecF j = vec_round(vec_mul(m, vec_broadcast(16.0f)));
  const VecI at = vec_to_int_exact(j);
  const VecF r = vec_mul(vec_sub(m, vec_mul(j, vec_broadcast(0.0625f))), vec_lookup16(kLogInverse, at));
  VecF series = vec_fma(r, vec_broadcast(-0.4f), vec_broadcast(0.5f));
  series = vec_fma(r, series, vec_broadcast(-2.0f / 3));
  series = vec_fma(r, series, vec_broadcast(1.0f));
  series = vec_fma(r, series, vec_broadcast(-2.0f));
  const VecF ef = vec_from_int(e);
  return vec_fma(ef, vec_broadcast(kMinusTwoLn2High),
                 vec_fma(ef, vec_broadcast(kMinusTwoLn2Low), vec_fma(r, series, vec_lookup16(kLogCenter, at))));
}

// cos and sin of 2 pi k / 2^24 in every lane, 0 <= k < 2^24
inline void vec_sincos_steps(VecI k, VecF& cos_out, VecF& sin_out) {
  const VecI sector = veci_shift_right<20>(k);
  const VecI steps = veci_sub(veci_and(k, veci_broadcast(kSectorSteps - 1)), veci_broadcast(kHalfSector));
  const VecF t = vec_mul(vec_from_int(steps), vec_broadcast(kRadiansPerStep));
  const VecF t2 = vec_mul(t, t);
  const VecF sin_t = vec_fma(vec_mul(t, t2), vec_fma(t2, vec_broadcast(1.0f / 120), vec_broadcast(-1.0f / 6)), t);
  VecF cos_t = vec_fma(t2, vec_broadcast(-1.0f / 720), vec_broadcast(1.0f / 24));
  cos_t = vec_fma(t2, cos_t, vec_broadcast(-0.5f));
  cos_t = vec_fma(t2, cos_t, vec_broadcast(1.0f));
  const VecF c = vec_lookup16(kSectorCos, sector), s = vec_lookup16(kSectorSin, sector);
  cos_out = vec_fnma(s, sin_t, vec_mul(c, cos_t));
  sin_out = vec_fma(s, cos_t, vec_mul(c, sin_t));
}

}  // namespace analog
