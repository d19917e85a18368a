// The counter-based Gaussian generator of analog_onnx/ops/rng.py (Widynski's "Squares"), normal
// for normal: each normal is a pure function of (key, its index in the stream), so any split of
// the work over threads gives the same numbers, and they match the numpy reference and the
// function bodies.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <random>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "fast_math.h"

namespace analog {

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kKeyHigh = 0xC8E4FD154CE32F6Dull;
constexpr uint64_t kKeyLow = 0xB5AD4ECEDA1CE2A9ull;
constexpr float kTwoPi = 6.283185307179586f;
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

#if defined(__AVX2__)
// Four lanes of squares_pair_of_product. _mm256_mul_epu32 reads only the low 32 bits of each
// lane, so the halves need no masking; the draws are left in the HIGH half of each lane.
inline __m256i square_of_halves4(__m256i low, __m256i high) {
  return _mm256_add_epi64(_mm256_mul_epu32(low, low), _mm256_slli_epi64(_mm256_mul_epu32(low, high), 33));
}

inline void squares_pair_high4(__m256i y, __m256i key, __m256i& first, __m256i& second) {
  const __m256i z = _mm256_add_epi64(y, key);
  const __m256i w1 = _mm256_add_epi64(square_of_halves4(y, _mm256_srli_epi64(y, 32)), y);
  const __m256i w2 = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(w1, 32), w1), z);
  const __m256i w3 = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(w2, 32), w2), y);
  first = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(w3, 32), w3), z);
  second = _mm256_add_epi64(square_of_halves4(_mm256_srli_epi64(first, 32), first), y);
}

// 24 of the 32 bits of 8 consecutive counters' draws, in order: lanes of `even` hold counters
// 0, 2, 4, 6 and lanes of `odd` counters 1, 3, 5, 7, so merging the 32-bit halves orders them.
inline __m256i merge24(__m256i even, __m256i odd) {
  return _mm256_srli_epi32(_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA), 8);
}
#endif

// The uniforms of counters [first, first + n): 24 bits of each draw make u1 in (0, 1) and u2 in
// [0, 1) (rng.normal_pairs).
inline void uniform_block(uint64_t key, uint64_t first, size_t n, float* __restrict u1, float* __restrict u2) {
  size_t i = 0;
#if defined(__AVX2__)
  const __m256i vkey = _mm256_set1_epi64x(static_cast<int64_t>(key));
  const __m256i step = _mm256_set1_epi64x(static_cast<int64_t>(8 * key));
  const uint64_t base = first * key;
  __m256i even = _mm256_setr_epi64x(static_cast<int64_t>(base), static_cast<int64_t>(base + 2 * key),
                                    static_cast<int64_t>(base + 4 * key), static_cast<int64_t>(base + 6 * key));
  const __m256 half = _mm256_set1_ps(0.5f), scale = _mm256_set1_ps(kInv2Pow24);
  for (const size_t whole = n - n % 8; i < whole; i += 8, even = _mm256_add_epi64(even, step)) {
    __m256i even1, even2, odd1, odd2;
    squares_pair_high4(even, vkey, even1, even2);
    squares_pair_high4(_mm256_add_epi64(even, vkey), vkey, odd1, odd2);
    const __m256i bits1 = merge24(even1, odd1);
    const __m256i bits2 = merge24(even2, odd2);
    _mm256_storeu_ps(u1 + i, _mm256_mul_ps(_mm256_add_ps(_mm256_cvtepi32_ps(bits1), half), scale));
    _mm256_storeu_ps(u2 + i, _mm256_mul_ps(_mm256_cvtepi32_ps(bits2), scale));
  }
#endif
  for (; i < n; ++i) {
    const Draws bits = squares_pair_of_product((first + i) * key, key);
    u1[i] = (static_cast<float>(static_cast<int32_t>(bits.first >> 8)) + 0.5f) * kInv2Pow24;
    u2[i] = static_cast<float>(static_cast<int32_t>(bits.second >> 8)) * kInv2Pow24;
  }
}

// The Box-Muller pairs of counters [first, first + n), n <= kBlock (rng.normal_pairs):
// even[k] is normal 2(first + k) of the stream and odd[k] normal 2(first + k) + 1.
inline void normal_pairs(uint64_t key, uint64_t first, size_t n, float* __restrict even, float* __restrict odd) {
  alignas(64) float radius[kBlock];
  alignas(64) float angle[kBlock];
  uniform_block(key, first, n, radius, angle);
  for (size_t i = 0; i < n; ++i) {
    radius[i] = __builtin_sqrtf(-2.0f * log_positive(radius[i]));
  }
  for (size_t i = 0; i < n; ++i) {
    float c, s;
    sincos_turn(kTwoPi * angle[i], c, s);
    even[i] = radius[i] * c;
    odd[i] = radius[i] * s;
  }
}

// Normals [first, first + n) of the stream, n <= kBlock (rng.normals), written into `buffer`
// (kBlock + 2 floats); returns where normal `first` is in it (the pair may start one earlier).
inline const float* normals(uint64_t key, uint64_t first, size_t n, float* __restrict buffer) {
  alignas(64) float even[kBlock / 2 + 1];
  alignas(64) float odd[kBlock / 2 + 1];
  const size_t skip = first & 1;
  const size_t pairs = (skip + n + 1) / 2;
  normal_pairs(key, first / 2, pairs, even, odd);
  for (size_t k = 0; k < pairs; ++k) {
    buffer[2 * k] = even[k];
    buffer[2 * k + 1] = odd[k];
  }
  return buffer + skip;
}

}  // namespace analog
