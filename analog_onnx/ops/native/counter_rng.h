// The counter-based Gaussian generator of analog_onnx/ops/rng.py (Widynski's "Squares"), normal
// for normal: each normal is a pure function of (key, its index in the stream), so any split of
// the work over threads gives the same numbers, and they match the numpy reference and the
// function bodies.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>

#include "fast_math.h"
#include "simd.h"

#if !defined(ANALOG_SIMD)
#error "the generator's transform needs AVX2 and FMA (or AVX-512)"
#endif

namespace analog {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kKeyHigh = 0xC8E4FD154CE32F6Dull;
constexpr uint64_t kKeyLow = 0xB5AD4ECEDA1CE2A9ull;
constexpr float kInv2Pow24 = 1.0f / 16777216.0f;

// Elements per generation block: small enough for the stack and L1, large enough to vectorize.
constexpr size_t kBlock = 256;

// Squares mod 2^64 from 32-bit halves: two widening 32x32 products, which vectorize without
// AVX-512. square_swapped(w) is square(swap_halves(w)) without the rotation.
inline uint64_t widening_mul(uint32_t a, uint32_t b) { return uint64_t{a} * b; }
inline uint64_t square_of_halves(uint32_t low, uint32_t high) {
  return widening_mul(low, low) + (widening_mul(low, high) << 33);
}
inline uint64_t square(uint64_t x) { return square_of_halves(static_cast<uint32_t>(x), static_cast<uint32_t>(x >> 32)); }
inline uint64_t square_swapped(uint64_t w) {
  return square_of_halves(static_cast<uint32_t>(w >> 32), static_cast<uint32_t>(w));
}

// The two 32-bit draws of counter product y = counter * key (rng.squares_pair): the high halves
// of round four and of a fifth round.
struct Draws {
  uint32_t first, second;
};
inline Draws squares_pair_of_product(uint64_t y, uint64_t key) {
  const uint64_t z = y + key;
  const uint64_t w1 = square(y) + y;
  const uint64_t w2 = square_swapped(w1) + z;
  const uint64_t w3 = square_swapped(w2) + y;
  const uint64_t t = square_swapped(w3) + z;
  return {static_cast<uint32_t>(t >> 32), static_cast<uint32_t>((square_swapped(t) + y) >> 32)};
}

// 32 random bits for one counter (rng.squares32): the first draw of its pair.
inline uint32_t squares32(uint64_t counter, uint64_t key) { return squares_pair_of_product(counter * key, key).first; }

// A fresh base seed in [0, 2^52) for runs with a negative seed: distinct on every call.
inline uint64_t fresh_seed() {
  static std::atomic<uint64_t> state{std::random_device{}() ^
                                     static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count())};
  const uint64_t counter = state.fetch_add(kGamma, std::memory_order_relaxed);
  return ((uint64_t{squares32(counter, kKeyHigh)} << 32) | squares32(counter, kKeyLow)) >> 12;
}

// The odd key of one op's stream for one run (rng.stream_key).
inline uint64_t stream_key(int64_t seed, int64_t stream) {
  const uint64_t base = seed < 0 ? fresh_seed() : static_cast<uint64_t>(seed);
  const uint64_t counter = base + kGamma * static_cast<uint64_t>(stream + 1);
  return ((uint64_t{squares32(counter, kKeyHigh)} << 32) | squares32(counter, kKeyLow)) | 1u;
}

// -- kLanes Box-Muller pairs at once --------------------------------------------------------------
// Lane i of a vector of pairs computes counter c_i from its product y_i = c_i * key (mod 2^64): the
// Squares rounds in 64-bit lanes (8 per vector with AVX-512's 64-bit multiply; with AVX2 4, each
// square from two 32x32 products), 24 bits of each draw, then the transform on kLanes floats.
#if ANALOG_SIMD == 512
struct Products {
  __m512i low, high;  // y of lanes 0-7 and 8-15
};

// lanes i: y0 + i * dy
inline Products products(uint64_t y0, uint64_t dy) {
  const __m512i step = _mm512_set1_epi64(static_cast<int64_t>(dy));
  const __m512i low = _mm512_add_epi64(_mm512_set1_epi64(static_cast<int64_t>(y0)),
                                       _mm512_mullo_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), step));
  return {low, _mm512_add_epi64(low, _mm512_mullo_epi64(step, _mm512_set1_epi64(8)))};
}
inline Products products(const uint64_t* y) {
  return {_mm512_loadu_si512(y), _mm512_loadu_si512(y + 8)};
}
// every lane's y plus d (the counters plus d / key)
inline Products products_plus(const Products& y, uint64_t d) {
  const __m512i step = _mm512_set1_epi64(static_cast<int64_t>(d));
  return {_mm512_add_epi64(y.low, step), _mm512_add_epi64(y.high, step)};
}

// the halves of every lane swapped (the masked form: the plain one passes GCC 12 an undefined source)
inline __m512i swap_halves8(__m512i x) { return _mm512_mask_ror_epi64(x, 0xff, x, 32); }

// squares_pair_of_product on 8 lanes: t and the fifth round, the draws in their high halves
inline void squares_pair8(__m512i y, __m512i key, __m512i& t, __m512i& fifth) {
  const __m512i z = _mm512_add_epi64(y, key);
  __m512i x = swap_halves8(_mm512_add_epi64(_mm512_mullo_epi64(y, y), y));
  x = swap_halves8(_mm512_add_epi64(_mm512_mullo_epi64(x, x), z));
  x = swap_halves8(_mm512_add_epi64(_mm512_mullo_epi64(x, x), y));
  t = _mm512_add_epi64(_mm512_mullo_epi64(x, x), z);
  x = swap_halves8(t);
  fifth = _mm512_add_epi64(_mm512_mullo_epi64(x, x), y);
}

// The top 24 bits of both draws of every lane, in lane order.
inline void draw_bits(const Products& y, uint64_t key, VecI& first, VecI& second) {
  const __m512i k = _mm512_set1_epi64(static_cast<int64_t>(key));
  __m512i t_low, t_high, f_low, f_high;
  squares_pair8(y.low, k, t_low, f_low);
  squares_pair8(y.high, k, t_high, f_high);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  first = veci_shift_right<8>(_mm512_permutex2var_epi32(t_low, odd, t_high));
  second = veci_shift_right<8>(_mm512_permutex2var_epi32(f_low, odd, f_high));
}
#elif ANALOG_SIMD == 256
struct Products {
  __m256i even, odd;  // y of lanes 0, 2, 4, 6 and 1, 3, 5, 7
};

inline Products products(uint64_t y0, uint64_t dy) {
  const __m256i even = _mm256_setr_epi64x(static_cast<int64_t>(y0), static_cast<int64_t>(y0 + 2 * dy),
                                          static_cast<int64_t>(y0 + 4 * dy), static_cast<int64_t>(y0 + 6 * dy));
  return {even, _mm256_add_epi64(even, _mm256_set1_epi64x(static_cast<int64_t>(dy)))};
}
inline Products products(const uint64_t* y) {
  const auto at = [&](int i) { return static_cast<int64_t>(y[i]); };
  return {_mm256_setr_epi64x(at(0), at(2), at(4), at(6)), _mm256_setr_epi64x(at(1), at(3), at(5), at(7))};
}
inline Products products_plus(const Products& y, uint64_t d) {
  const __m256i step = _mm256_set1_epi64x(static_cast<int64_t>(d));
  return {_mm256_add_epi64(y.even, step), _mm256_add_epi64(y.odd, step)};
}

// _mm256_mul_epu32 reads only the low 32 bits of each lane, so the halves need no masking.
inline __m256i square_of_halves4(__m256i low, __m256i high) {
  return _mm256_add_epi64(_mm256_mul_epu32(low, low), _mm256_slli_epi64(_mm256_mul_epu32(low, high), 33));
}

// squares_pair_of_product on 4 lanes: t and the fifth round, the draws in their high halves
inline void squares_pair4(__m256i y, __m256i key, __m256i& t, __m256i& fifth) {
  const __m256i z = _mm256_add_epi64(y, key);
  const __m256i w1 = _mm256_add_epi64(square_of_halves4(y, _mm256_srli_epi64(y, 32)), y);
  const __m256i w2 = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(w1, 32), w1), z);
  const __m256i w3 = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(w2, 32), w2), y);
  t = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(w3, 32), w3), z);
  fifth = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(t, 32), t), y);
}

// the high halves of even's and odd's lanes, in lane order, shifted down by 8
inline __m256i merge24(__m256i even, __m256i odd) {
  return _mm256_srli_epi32(_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA), 8);
}

inline void draw_bits(const Products& y, uint64_t key, VecI& first, VecI& second) {
  const __m256i k = _mm256_set1_epi64x(static_cast<int64_t>(key));
  __m256i t_even, t_odd, f_even, f_odd;
  squares_pair4(y.even, k, t_even, f_even);
  squares_pair4(y.odd, k, t_odd, f_odd);
  first = merge24(t_even, t_odd);
  second = merge24(f_even, f_odd);
}
#endif

// What the lanes' counters draw: u1 in (0, 1) from 24 bits of the first draw, and the angle in
// steps of 2^-24 turns (24 bits of the second). (k + 1/2) 2^-24 rounds once in either form.
inline void draw_lanes(const Products& y, uint64_t key, VecF& u1, VecI& steps) {
  VecI first;
  draw_bits(y, key, first, steps);
  u1 = vec_fma(vec_from_int(first), vec_broadcast(kInv2Pow24), vec_broadcast(0.5f * kInv2Pow24));
}

inline VecF box_muller_radius(VecF u1) { return vec_sqrt(vec_minus_two_log(u1)); }

inline void box_muller(VecF radius, VecI steps, VecF& even, VecF& odd) {
  VecF c, s;
  vec_sincos_steps(steps, c, s);
  even = vec_mul(radius, c);
  odd = vec_mul(radius, s);
}

// The Box-Muller pairs of the lanes' counters (rng.normal_pairs, to float tolerance): even is
// normal 2c of the stream, odd normal 2c + 1.
inline void normal_pair_lanes(const Products& y, uint64_t key, VecF& even, VecF& odd) {
  VecF u1;
  VecI steps;
  draw_lanes(y, key, u1, steps);
  box_muller(box_muller_radius(u1), steps, even, odd);
}

// body(j, even, odd) for the Box-Muller pairs of `count` vectors of lanes in order, vector j's
// counters those of y plus j steps (its products products_plus(y, j * step)). With 32 registers
// one pass does it all; with AVX2's 16 the draws, the radii and the angles each take a pass over
// up to kBlock / kLanes vectors (in one pass the constants do not fit the registers: 25% slower,
// measured).
template <typename Body>
inline void for_each_pair_vector(Products y, uint64_t key, uint64_t step, size_t count, Body body) {
#if ANALOG_SIMD == 512
  for (size_t j = 0; j < count; ++j, y = products_plus(y, step)) {
    VecF even, odd;
    normal_pair_lanes(y, key, even, odd);
    body(j, even, odd);
  }
#else
  constexpr size_t chunk = kBlock / kLanes;
  alignas(32) float radius[kBlock];
  alignas(32) int32_t steps[kBlock];
  for (size_t j0 = 0; j0 < count; j0 += chunk) {
    const size_t n = std::min(chunk, count - j0);
    for (size_t j = 0; j < n; ++j, y = products_plus(y, step)) {
      VecF u1;
      VecI angle;
      draw_lanes(y, key, u1, angle);
      vec_store(radius + j * kLanes, u1), veci_store(steps + j * kLanes, angle);
    }
    for (size_t j = 0; j < n; ++j) vec_store(radius + j * kLanes, box_muller_radius(vec_load(radius + j * kLanes)));
    for (size_t j = 0; j < n; ++j) {
      VecF even, odd;
      box_muller(vec_load(radius + j * kLanes), veci_load(steps + j * kLanes), even, odd);
      body(j0 + j, even, odd);
    }
  }
#endif
}

// The Box-Muller pairs of counters [first, first + n), n <= kBlock (rng.normal_pairs): even[k]
// is normal 2(first + k) of the stream and odd[k] normal 2(first + k) + 1.
inline void normal_pairs(uint64_t key, uint64_t first, size_t n, float* __restrict even, float* __restrict odd) {
  for_each_pair_vector(products(first * key, key), key, kLanes * key, (n + kLanes - 1) / kLanes,
                       [=](size_t j, VecF c, VecF s) {
                         const size_t i = j * kLanes;
                         if (i + kLanes <= n) {
                           vec_store(even + i, c), vec_store(odd + i, s);
                         } else {
                           vec_store_first(even + i, c, n - i), vec_store_first(odd + i, s, n - i);
                         }
                       });
}

// Room for the normals of one block: kBlock, one more where the block starts mid-pair, and whole
// vectors of pairs past the end.
constexpr size_t kNormalsBuffer = kBlock + 2 + 2 * 16;

// Normals [first, first + n) of the stream, n <= kBlock (rng.normals), written into `buffer`
// (kNormalsBuffer floats); returns where normal `first` is in it (the pair may start one earlier).
inline const float* normals(uint64_t key, uint64_t first, size_t n, float* __restrict buffer) {
  const size_t skip = first & 1;
  const size_t pairs = (skip + n + 1) / 2;
  for_each_pair_vector(products(first / 2 * key, key), key, kLanes * key, (pairs + kLanes - 1) / kLanes,
                       [=](size_t j, VecF c, VecF s) {
                         VecF low, high;
                         vec_interleave(c, s, low, high);
                         vec_store(buffer + 2 * j * kLanes, low);
                         vec_store(buffer + 2 * j * kLanes + kLanes, high);
                       });
  return buffer + skip;
}

}  // namespace analog
