// Branch-free float32 log and sincos for the Box-Muller transform, written so that GCC vectorizes
// the loops that call them (no libm calls, no branches, no lookup tables).
//
// Accuracy is about one ulp on the ranges used here (log on (0, 1], sincos on [0, 2*pi)), so the
// native noise matches the numpy reference and the ONNX function bodies to float tolerance. The
// polynomials are the plain Taylor series (log through atanh), truncated where the remainder is
// far below float32 resolution on the reduced ranges.
#pragma once

#include <cstdint>
#include <cstring>

#include "simd.h"

namespace analog {

#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
inline float madd(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
#else
inline float madd(float a, float b, float c) { return a * b + c; }
#endif

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

// ln 2 split so that e * kLn2High is exact for |e| < 2^8
constexpr float kLn2High = 0.693145751953125f;
constexpr float kLn2Low = 1.428606765330187e-06f;
constexpr float kSqrt2 = 1.41421356f;

// Natural log of a positive normal float: x = 2^e * m with m in [sqrt(1/2), sqrt(2)), and
// log(m) = 2 atanh(s) with s = (m - 1) / (m + 1), |s| < 0.172.
inline float log_positive(float x) {
  const int32_t bits = float_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 127;
  float m = bits_float((bits & 0x007fffff) | 0x3f800000);
  const bool high = m > kSqrt2;
  m = high ? m * 0.5f : m;
  e = high ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  const float series = madd(s2, madd(s2, madd(s2, madd(s2, 1.0f / 11, 1.0f / 9), 1.0f / 7), 1.0f / 5), 1.0f / 3);
  const float log_m = 2.0f * madd(s * s2, series, s);
  const float ef = static_cast<float>(e);
  return madd(ef, kLn2High, madd(ef, kLn2Low, log_m));
}

// cos and sin of a in [0, 2*pi): quadrant reduction by pi/2 (three-part Cody-Waite constants; the
// first two have 20 significant bits, so j * part is exact for j <= 4), then Taylor polynomials on [-pi/4, pi/4].
constexpr float kTwoOverPi = 0.636619772367581f;
constexpr float kPio2A = 1.5707950592041016f;
constexpr float kPio2B = 1.2675900507019833e-06f;
constexpr float kPio2C = 7.443547731314504e-13f;

inline void sincos_turn(float a, float& cos_out, float& sin_out) {
  const float j = __builtin_rintf(a * kTwoOverPi);
  const float r = ((a - j * kPio2A) - j * kPio2B) - j * kPio2C;
  const float r2 = r * r;
  const float sin_poly = madd(r2, madd(r2, madd(r2, 1.0f / 362880, -1.0f / 5040), 1.0f / 120), -1.0f / 6);
  const float s = madd(r * r2, sin_poly, r);
  const float cos_poly = madd(r2, madd(r2, madd(r2, -1.0f / 3628800, 1.0f / 40320), -1.0f / 720), 1.0f / 24);
  const float c = madd(r2 * r2, cos_poly, madd(r2, -0.5f, 1.0f));
  const int32_t q = static_cast<int32_t>(j);
  const bool swap = (q & 1) != 0;
  const int32_t cos_sign = ((q + 1) & 2) << 30;  // negative in quadrants 1 and 2
  const int32_t sin_sign = (q & 2) << 30;         // negative in quadrants 2 and 3
  cos_out = bits_float(float_bits(swap ? s : c) ^ cos_sign);
  sin_out = bits_float(float_bits(swap ? c : s) ^ sin_sign);
}

#if defined(ANALOG_SIMD)
// log_positive and sincos_turn on every lane, operation for operation (so bit for bit) as above.
inline VecF vec_log_positive(VecF x) {
  const VecI bits = vec_bits(x);
  VecI e = veci_sub(veci_and(veci_shift_right<23>(bits), veci_broadcast(0xff)), veci_broadcast(127));
  VecF m = vec_from_bits(veci_or(veci_and(bits, veci_broadcast(0x007fffff)), veci_broadcast(0x3f800000)));
  const VecI high = vec_greater(m, vec_broadcast(kSqrt2));
  m = vec_select_nonzero(high, vec_mul(m, vec_broadcast(0.5f)), m);
  e = veci_sub(e, high);  // high is -1 where set
  const VecF one = vec_broadcast(1.0f);
  const VecF s = vec_div(vec_sub(m, one), vec_add(m, one));
  const VecF s2 = vec_mul(s, s);
  VecF series = vec_fma(s2, vec_broadcast(1.0f / 11), vec_broadcast(1.0f / 9));
  series = vec_fma(s2, series, vec_broadcast(1.0f / 7));
  series = vec_fma(s2, series, vec_broadcast(1.0f / 5));
  series = vec_fma(s2, series, vec_broadcast(1.0f / 3));
  const VecF log_m = vec_mul(vec_broadcast(2.0f), vec_fma(vec_mul(s, s2), series, s));
  const VecF ef = vec_from_int(e);
  return vec_fma(ef, vec_broadcast(kLn2High), vec_fma(ef, vec_broadcast(kLn2Low), log_m));
}

inline void vec_sincos_turn(VecF a, VecF& cos_out, VecF& sin_out) {
  const VecF j = vec_round(vec_mul(a, vec_broadcast(kTwoOverPi)));
  const VecF r = vec_sub(vec_sub(vec_sub(a, vec_mul(j, vec_broadcast(kPio2A))), vec_mul(j, vec_broadcast(kPio2B))),
                         vec_mul(j, vec_broadcast(kPio2C)));
  const VecF r2 = vec_mul(r, r);
  VecF sin_poly = vec_fma(r2, vec_broadcast(1.0f / 362880), vec_broadcast(-1.0f / 5040));
  sin_poly = vec_fma(r2, sin_poly, vec_broadcast(1.0f / 120));
  sin_poly = vec_fma(r2, sin_poly, vec_broadcast(-1.0f / 6));
  const VecF s = vec_fma(vec_mul(r, r2), sin_poly, r);
  VecF cos_poly = vec_fma(r2, vec_broadcast(-1.0f / 3628800), vec_broadcast(1.0f / 40320));
  cos_poly = vec_fma(r2, cos_poly, vec_broadcast(-1.0f / 720));
  cos_poly = vec_fma(r2, cos_poly, vec_broadcast(1.0f / 24));
  const VecF c = vec_fma(vec_mul(r2, r2), cos_poly, vec_fma(r2, vec_broadcast(-0.5f), vec_broadcast(1.0f)));
  const VecI q = vec_to_int_exact(j);
  const VecI swap = veci_and(q, veci_broadcast(1));
  const VecI cos_sign = veci_shift_left<30>(veci_and(veci_add(q, veci_broadcast(1)), veci_broadcast(2)));
  const VecI sin_sign = veci_shift_left<30>(veci_and(q, veci_broadcast(2)));
  cos_out = vec_from_bits(veci_xor(vec_bits(vec_select_nonzero(swap, s, c)), cos_sign));
  sin_out = vec_from_bits(veci_xor(vec_bits(vec_select_nonzero(swap, c, s)), sin_sign));
}
#endif

}  // namespace analog
