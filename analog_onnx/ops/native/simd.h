// The SIMD vector of the widest instruction set the build enables (-march=native picks it): 16
// float lanes with AVX-512 (F, DQ), 8 with AVX2 and FMA. The tile, the generator's transform and
// the elementwise kernels are written once against these names.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define ANALOG_SIMD 512
#elif defined(__AVX2__) && defined(__FMA__)
#define ANALOG_SIMD 256
#endif

namespace analog {

// Storage that starts a cache line (malloc only promises 16 bytes): buffers whose rows are whole
// lines apart then have every row, and every vector load and store of one, within lines.
template <typename T>
struct LineAllocator {
  using value_type = T;
  LineAllocator() = default;
  template <typename U>
  LineAllocator(const LineAllocator<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{64})); }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t{64}); }
  template <typename U>
  bool operator==(const LineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const LineAllocator<U>&) const { return false; }
};
using LineFloats = std::vector<float, LineAllocator<float>>;

#if ANALOG_SIMD == 512
using VecF = __m512;
using VecI = __m512i;  // 32-bit integer lanes
constexpr size_t kLanes = 16;
constexpr size_t kRegisters = 32;
inline VecF vec_zero() { return _mm512_setzero_ps(); }
inline VecF vec_load(const float* p) { return _mm512_loadu_ps(p); }
inline void vec_store(float* p, VecF v) { _mm512_storeu_ps(p, v); }
inline void vec_stream(float* p, VecF v) { _mm512_stream_ps(p, v); }  // p aligned to the vector
inline VecF vec_broadcast(float x) { return _mm512_set1_ps(x); }
inline VecF vec_fma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline VecF vec_fnma(VecF a, VecF b, VecF c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a b
inline VecF vec_mul(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
inline VecF vec_add(VecF a, VecF b) { return _mm512_add_ps(a, b); }
inline VecF vec_sub(VecF a, VecF b) { return _mm512_sub_ps(a, b); }
inline VecF vec_div(VecF a, VecF b) { return _mm512_div_ps(a, b); }
inline VecF vec_sqrt(VecF a) { return _mm512_maskz_sqrt_ps(0xffff, a); }
inline VecF vec_abs(VecF a) { return _mm512_abs_ps(a); }
inline VecF vec_and(VecF a, VecF b) { return _mm512_and_ps(a, b); }
// (here and below the masked forms with every lane set: the plain ones pass GCC 12 an undefined
// source, which it then reports as maybe uninitialized)
inline VecF vec_max(VecF a, VecF b) { return _mm512_mask_max_ps(a, 0xffff, a, b); }  // b where either is a NaN
inline VecF vec_min(VecF a, VecF b) { return _mm512_mask_min_ps(a, 0xffff, a, b); }  // b where either is a NaN
inline VecF vec_round(VecF a) {
  return _mm512_mask_roundscale_ps(a, 0xffff, a, _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC);
}
inline bool vec_all_greater(VecF a, VecF b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) == 0xffff; }
// p[lane * stride], stride * kLanes < 2^31
inline VecF vec_gather(const float* p, size_t stride) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i index = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(static_cast<int>(stride)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xffff, index, p, 4);
}
inline __mmask16 window_mask(int low, int high) {
  return static_cast<__mmask16>(((1u << high) - 1u) & ~((1u << low) - 1u));
}
// lanes [low, high) of v (0 <= low <= high <= kLanes), zeros elsewhere
inline VecF vec_window(VecF v, int low, int high) { return _mm512_maskz_mov_ps(window_mask(low, high), v); }
// all bits set in lanes [low, high), zeros elsewhere (vec_and with it is vec_window)
inline VecF vec_window_bits(int low, int high) {
  return _mm512_castsi512_ps(_mm512_maskz_set1_epi32(window_mask(low, high), -1));
}
// lanes [low, high) of p, zeros elsewhere; other lanes are not read (slower than vec_load)
inline VecF vec_load_window(const float* p, int low, int high) {
  return _mm512_maskz_loadu_ps(window_mask(low, high), p);
}
// the lanes of p where `bits` has every bit set (0 elsewhere: lanes 0 or all ones), zeros
// elsewhere; other lanes are not read
inline VecF vec_load_masked(const float* p, VecF bits) {
  return _mm512_maskz_loadu_ps(_mm512_movepi32_mask(_mm512_castps_si512(bits)), p);
}
// the first n lanes of p (n <= kLanes), zeros elsewhere
inline VecF vec_load_first(const float* p, size_t n) { return vec_load_window(p, 0, static_cast<int>(n)); }
inline void vec_store_first(float* p, VecF v, size_t n) {
  _mm512_mask_storeu_ps(p, window_mask(0, static_cast<int>(n)), v);
}
// p[0], p[2], ..., p[2 (kLanes - 1)] (reads 2 kLanes floats)
inline VecF vec_load_stride2(const float* p) {
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  return _mm512_permutex2var_ps(_mm512_loadu_ps(p), even, _mm512_loadu_ps(p + 16));
}
// integer lanes and float bits
inline VecI vec_bits(VecF a) { return _mm512_castps_si512(a); }
inline VecF vec_from_bits(VecI a) { return _mm512_castsi512_ps(a); }
inline VecI veci_broadcast(int32_t x) { return _mm512_set1_epi32(x); }
inline VecI veci_load(const int32_t* p) { return _mm512_loadu_si512(p); }
inline void veci_store(int32_t* p, VecI v) { _mm512_storeu_si512(p, v); }
inline VecI veci_add(VecI a, VecI b) { return _mm512_add_epi32(a, b); }
inline VecI veci_and(VecI a, VecI b) { return _mm512_and_si512(a, b); }
inline VecI veci_or(VecI a, VecI b) { return _mm512_or_si512(a, b); }
inline VecI veci_xor(VecI a, VecI b) { return _mm512_xor_si512(a, b); }
inline VecI veci_sub(VecI a, VecI b) { return _mm512_sub_epi32(a, b); }
template <int n> VecI veci_shift_left(VecI a) { return _mm512_maskz_slli_epi32(0xffff, a, n); }
template <int n> VecI veci_shift_right(VecI a) { return _mm512_maskz_srli_epi32(0xffff, a, n); }  // logical
template <int n> VecI veci_shift_right_arithmetic(VecI a) { return _mm512_maskz_srai_epi32(0xffff, a, n); }
inline VecF vec_from_int(VecI a) { return _mm512_maskz_cvtepi32_ps(0xffff, a); }
// table[index & 15] in every lane, from 16 floats on a 64-byte boundary
inline VecF vec_lookup16(const float* table, VecI index) { return _mm512_permutexvar_ps(index, _mm512_load_ps(table)); }
inline VecI vec_to_int_exact(VecF a) { return _mm512_maskz_cvtps_epi32(0xffff, a); }  // a holds an integer
// a where the lane of `flag` is not zero, else b
inline VecF vec_select_nonzero(VecI flag, VecF a, VecF b) {
  return _mm512_mask_blend_ps(_mm512_test_epi32_mask(flag, flag), b, a);
}
// -1 in the lanes where a > b, else 0
inline VecI vec_greater(VecF a, VecF b) { return _mm512_movm_epi32(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)); }
// (even[0], odd[0], even[1], odd[1], ...): the first kLanes of the interleave, and the rest
inline void vec_interleave(VecF even, VecF odd, VecF& low, VecF& high) {
  const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  low = _mm512_permutex2var_ps(even, first, odd);
  high = _mm512_permutex2var_ps(even, second, odd);
}
#elif ANALOG_SIMD == 256
using VecF = __m256;
using VecI = __m256i;
constexpr size_t kLanes = 8;
constexpr size_t kRegisters = 16;
inline VecF vec_zero() { return _mm256_setzero_ps(); }
inline VecF vec_load(const float* p) { return _mm256_loadu_ps(p); }
inline void vec_store(float* p, VecF v) { _mm256_storeu_ps(p, v); }
inline void vec_stream(float* p, VecF v) { _mm256_stream_ps(p, v); }  // p aligned to the vector
inline VecF vec_broadcast(float x) { return _mm256_set1_ps(x); }
inline VecF vec_fma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
inline VecF vec_fnma(VecF a, VecF b, VecF c) { return _mm256_fnmadd_ps(a, b, c); }
inline VecF vec_mul(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
inline VecF vec_add(VecF a, VecF b) { return _mm256_add_ps(a, b); }
inline VecF vec_sub(VecF a, VecF b) { return _mm256_sub_ps(a, b); }
inline VecF vec_div(VecF a, VecF b) { return _mm256_div_ps(a, b); }
inline VecF vec_sqrt(VecF a) { return _mm256_sqrt_ps(a); }
inline VecF vec_abs(VecF a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
inline VecF vec_and(VecF a, VecF b) { return _mm256_and_ps(a, b); }
inline VecF vec_max(VecF a, VecF b) { return _mm256_max_ps(a, b); }  // b where either is a NaN
inline VecF vec_min(VecF a, VecF b) { return _mm256_min_ps(a, b); }  // b where either is a NaN
inline VecF vec_round(VecF a) { return _mm256_round_ps(a, _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC); }
inline bool vec_all_greater(VecF a, VecF b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) == 0xff; }
inline VecF vec_gather(const float* p, size_t stride) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_i32gather_ps(p, _mm256_mullo_epi32(lanes, _mm256_set1_epi32(static_cast<int>(stride))), 4);
}
inline __m256i window_mask(int low, int high) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(low), lane),
                             _mm256_cmpgt_epi32(_mm256_set1_epi32(high), lane));
}
inline VecF vec_window(VecF v, int low, int high) { return _mm256_and_ps(v, _mm256_castsi256_ps(window_mask(low, high))); }
inline VecF vec_window_bits(int low, int high) { return _mm256_castsi256_ps(window_mask(low, high)); }
inline VecF vec_load_window(const float* p, int low, int high) { return _mm256_maskload_ps(p, window_mask(low, high)); }
inline VecF vec_load_masked(const float* p, VecF bits) { return _mm256_maskload_ps(p, _mm256_castps_si256(bits)); }
inline VecF vec_load_first(const float* p, size_t n) { return vec_load_window(p, 0, static_cast<int>(n)); }
inline void vec_store_first(float* p, VecF v, size_t n) {
  _mm256_maskstore_ps(p, window_mask(0, static_cast<int>(n)), v);
}
inline VecF vec_load_stride2(const float* p) {
  const VecF pairs = _mm256_shuffle_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8), 0x88);  // 0 2 8 10 | 4 6 12 14
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(pairs), 0xD8));
}
inline VecI vec_bits(VecF a) { return _mm256_castps_si256(a); }
inline VecF vec_from_bits(VecI a) { return _mm256_castsi256_ps(a); }
inline VecI veci_broadcast(int32_t x) { return _mm256_set1_epi32(x); }
inline VecI veci_load(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void veci_store(int32_t* p, VecI v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline VecI veci_add(VecI a, VecI b) { return _mm256_add_epi32(a, b); }
inline VecI veci_and(VecI a, VecI b) { return _mm256_and_si256(a, b); }
inline VecI veci_or(VecI a, VecI b) { return _mm256_or_si256(a, b); }
inline VecI veci_xor(VecI a, VecI b) { return _mm256_xor_si256(a, b); }
inline VecI veci_sub(VecI a, VecI b) { return _mm256_sub_epi32(a, b); }
template <int n> VecI veci_shift_left(VecI a) { return _mm256_slli_epi32(a, n); }
template <int n> VecI veci_shift_right(VecI a) { return _mm256_srli_epi32(a, n); }
template <int n> VecI veci_shift_right_arithmetic(VecI a) { return _mm256_srai_epi32(a, n); }
inline VecF vec_from_int(VecI a) { return _mm256_cvtepi32_ps(a); }
inline VecF vec_lookup16(const float* table, VecI index) {  // a permute per half, then bit 3 picks
  const VecF low = _mm256_permutevar8x32_ps(_mm256_load_ps(table), index);
  const VecF high = _mm256_permutevar8x32_ps(_mm256_load_ps(table + 8), index);
  return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(index, 28)));
}
inline VecI vec_to_int_exact(VecF a) { return _mm256_cvtps_epi32(a); }
inline VecF vec_select_nonzero(VecI flag, VecF a, VecF b) {
  const VecI zero = _mm256_cmpeq_epi32(flag, _mm256_setzero_si256());
  return _mm256_blendv_ps(a, b, _mm256_castsi256_ps(zero));
}
inline VecI vec_greater(VecF a, VecF b) { return _mm256_castps_si256(_mm256_cmp_ps(a, b, _CMP_GT_OQ)); }
inline void vec_interleave(VecF even, VecF odd, VecF& low, VecF& high) {
  const VecF a = _mm256_unpacklo_ps(even, odd), b = _mm256_unpackhi_ps(even, odd);  // per 128-bit half
  low = _mm256_permute2f128_ps(a, b, 0x20);
  high = _mm256_permute2f128_ps(a, b, 0x31);
}
#endif

// vec_stream stores bypass the caches (no read of the line before it is written) and are not
// ordered with other stores: a kernel that streams ends with this fence.
inline void vec_stream_fence() { _mm_sfence(); }

}  // namespace analog
