// The analog tile (reference.analog_tile): an analog layer computed on tiles, per input vector.
//
// For a block of input vectors (rows of a dense input, or im2col patches of an NCHW image read
// straight from the image), each input tile's slice is scaled by its abs-max and quantized by the
// DAC while it is packed into a k-major panel (one vector per SIMD lane); the tile's mapped weights
// times the panel run on a register-blocked micro-kernel (AVX-512 or AVX2/FMA, whichever
// -march=native enables) that leaves each output's results for the block's vectors side by side,
// so that output noise, the ADC, the sums and the epilogue work lane-parallel on the partial sums
// while they are in cache and a convolution's block goes to NCHW by row copies; vectors whose tile
// saturates the ADC are packed again at half the scale and only they are recomputed (iterative
// bound management, per vector); the tiles' results are rescaled, multiplied by the mapping
// scales and summed in tile order, and written to the output (NCHW for a convolution).
//
// Every noise value is normal ((r*T + t)*N + n)*M + m of the op's stream, as in the reference.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "counter_rng.h"
#include "ort_glue.h"
#include "quantize.h"

namespace analog {

// -- the micro-kernel ----------------------------------------------------------------------------
#if defined(__AVX512F__)
using VecF = __m512;
constexpr size_t kLanes = 16;
constexpr size_t kRegisters = 32;
inline VecF vec_zero() { return _mm512_setzero_ps(); }
inline VecF vec_load(const float* p) { return _mm512_loadu_ps(p); }
inline void vec_store(float* p, VecF v) { _mm512_storeu_ps(p, v); }
inline VecF vec_broadcast(float x) { return _mm512_set1_ps(x); }
inline VecF vec_fma(VecF a, VecF b, VecF c) { return _mm512_fmadd_ps(a, b, c); }
inline VecF vec_mul(VecF a, VecF b) { return _mm512_mul_ps(a, b); }
inline VecF vec_sub(VecF a, VecF b) { return _mm512_sub_ps(a, b); }
inline VecF vec_div(VecF a, VecF b) { return _mm512_div_ps(a, b); }
inline VecF vec_abs(VecF a) { return _mm512_abs_ps(a); }
// (the masked forms with every lane set: the plain ones pass GCC 12 an undefined source, which it
// then reports as maybe uninitialized)
inline VecF vec_max(VecF a, VecF b) { return _mm512_mask_max_ps(a, 0xffff, a, b); }  // b where either is a NaN
inline VecF vec_min(VecF a, VecF b) { return _mm512_mask_min_ps(a, 0xffff, a, b); }  // b where either is a NaN
inline VecF vec_round(VecF a) {
  return _mm512_mask_roundscale_ps(a, 0xffff, a, _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC);
}
inline bool vec_all_greater(VecF a, VecF b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ) == 0xffff; }
inline VecF vec_add(VecF a, VecF b) { return _mm512_add_ps(a, b); }
// p[lane * stride], stride * kLanes < 2^31
inline VecF vec_gather(const float* p, size_t stride) {
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i index = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(static_cast<int>(stride)));
  return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), 0xffff, index, p, 4);
}
// lanes [low, high) of v (0 <= low <= high <= kLanes), zeros elsewhere
inline VecF vec_window(VecF v, int low, int high) {
  return _mm512_maskz_mov_ps(static_cast<__mmask16>(((1u << high) - 1u) & ~((1u << low) - 1u)), v);
}
// lanes [low, high) of p, zeros elsewhere; other lanes are not read (slower than vec_load)
inline VecF vec_load_window(const float* p, int low, int high) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>(((1u << high) - 1u) & ~((1u << low) - 1u)), p);
}
#elif defined(__AVX2__) && defined(__FMA__)
using VecF = __m256;
constexpr size_t kLanes = 8;
constexpr size_t kRegisters = 16;
inline VecF vec_zero() { return _mm256_setzero_ps(); }
inline VecF vec_load(const float* p) { return _mm256_loadu_ps(p); }
inline void vec_store(float* p, VecF v) { _mm256_storeu_ps(p, v); }
inline VecF vec_broadcast(float x) { return _mm256_set1_ps(x); }
inline VecF vec_fma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
inline VecF vec_mul(VecF a, VecF b) { return _mm256_mul_ps(a, b); }
inline VecF vec_sub(VecF a, VecF b) { return _mm256_sub_ps(a, b); }
inline VecF vec_div(VecF a, VecF b) { return _mm256_div_ps(a, b); }
inline VecF vec_abs(VecF a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
inline VecF vec_max(VecF a, VecF b) { return _mm256_max_ps(a, b); }  // b where either is a NaN
inline VecF vec_min(VecF a, VecF b) { return _mm256_min_ps(a, b); }  // b where either is a NaN
inline VecF vec_round(VecF a) { return _mm256_round_ps(a, _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC); }
inline bool vec_all_greater(VecF a, VecF b) { return _mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ)) == 0xff; }
inline VecF vec_add(VecF a, VecF b) { return _mm256_add_ps(a, b); }
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
inline VecF vec_load_window(const float* p, int low, int high) { return _mm256_maskload_ps(p, window_mask(low, high)); }
#else
#error "the analog tile kernel needs AVX2 and FMA (or AVX-512)"
#endif

// C[Rows][Cols vectors of positions] (+)= A * P over k: A holds the weights of Rows outputs k-major
// (a[q * Rows + i]), P the input vectors k-major, one per lane (rows `ldp` apart); C rows are `ldc`
// apart. Rows x Cols accumulators stay in registers; each step loads Cols input vectors and
// broadcasts Rows weights. Every output is one chain of FMAs in k order, whether or not a call
// starts from the partial sums in C (`accumulate`), so splitting k changes no bit.
template <size_t Rows, size_t Cols>
inline void micro_kernel(size_t k, const float* a, const float* p, size_t ldp, float* c, size_t ldc, bool accumulate) {
  VecF acc[Rows][Cols];
#pragma GCC unroll 8
  for (size_t i = 0; i < Rows; ++i)
#pragma GCC unroll 8
    for (size_t j = 0; j < Cols; ++j) acc[i][j] = accumulate ? vec_load(c + i * ldc + j * kLanes) : vec_zero();
  for (size_t q = 0; q < k; ++q) {
    VecF x[Cols];
#pragma GCC unroll 8
    for (size_t j = 0; j < Cols; ++j) x[j] = vec_load(p + q * ldp + j * kLanes);
    const float* w = a + q * Rows;
#pragma GCC unroll 8
    for (size_t i = 0; i < Rows; ++i) {
      const VecF b = vec_broadcast(w[i]);
#pragma GCC unroll 8
      for (size_t j = 0; j < Cols; ++j) acc[i][j] = vec_fma(b, x[j], acc[i][j]);
    }
  }
#pragma GCC unroll 8
  for (size_t i = 0; i < Rows; ++i)
#pragma GCC unroll 8
    for (size_t j = 0; j < Cols; ++j) vec_store(c + i * ldc + j * kLanes, acc[i][j]);
}

// Outputs per register block (the packed weights pad the outputs to a multiple), and input vectors
// per register block in SIMD registers: 8 x 3 of 16 lanes with AVX-512, 6 x 2 of 8 with AVX2. Each
// step loads kBlockCols vectors and broadcasts kBlockRows weights for kBlockRows x kBlockCols FMAs;
// wider blocks run out of registers, and the compiler then folds a load into every FMA.
constexpr size_t kBlockRows = kRegisters == 32 ? 8 : 6;
constexpr size_t kBlockCols = kRegisters == 32 ? 3 : 2;
// Input vectors per block of work: a whole number of register blocks on either path.
constexpr size_t kBlockVectors = 96;
static_assert(kBlockVectors % (kBlockCols * kLanes) == 0);
// Input elements per pass over the panel: a pass reads at most 96 KiB of it for every block of
// outputs, which stays in L2 however long the layer's tiles are (no gain measured at ResNet-20's
// sizes, at most 576 inputs).
constexpr size_t kDepth = 256;

// C[rows][columns] = A * P: rows a multiple of kBlockRows, A packed per block of kBlockRows rows
// ([rows / kBlockRows][k][kBlockRows]), columns the `vectors` SIMD vectors of P's rows. Short
// blocks of vectors (bound-management rounds) take the one-vector-wide kernel for the rest.
inline void gemm(size_t k, size_t rows, size_t vectors, const float* a, const float* p, size_t ldp, float* c,
                 size_t ldc) {
  if (k == 0)  // an empty sum (a tile of no inputs) is 0; the loop below would write nothing
    for (size_t i = 0; i < rows; ++i) std::fill(c + i * ldc, c + i * ldc + vectors * kLanes, 0.0f);
  for (size_t q = 0; q < k; q += kDepth) {
    const size_t depth = std::min(kDepth, k - q);
    for (size_t i = 0; i < rows; i += kBlockRows) {
      const float* ai = a + i * k + q * kBlockRows;
      const float* pq = p + q * ldp;
      float* ci = c + i * ldc;
      size_t j = 0;
      for (; j + kBlockCols <= vectors; j += kBlockCols)
        micro_kernel<kBlockRows, kBlockCols>(depth, ai, pq + j * kLanes, ldp, ci + j * kLanes, ldc, q > 0);
      for (; j < vectors; ++j) micro_kernel<kBlockRows, 1>(depth, ai, pq + j * kLanes, ldp, ci + j * kLanes, ldc, q > 0);
    }
  }
}

// -- the op's settings and geometry --------------------------------------------------------------
struct TileSettings {
  int64_t inp_bits, noise_management, out_bits, bm_rounds, max_input_size, max_output_size, columnwise, stream;
  float inp_bound, out_noise, out_bound, omega;
};

// aihwkit's split of `size` over tiles of at most `max_size` (reference.split_sizes): [begin, end).
inline std::vector<std::pair<size_t, size_t>> split_ranges(size_t size, int64_t max_size) {
  size_t count = 1;
  if (max_size > 0 && size > static_cast<size_t>(max_size)) count = (size + max_size - 1) / max_size;
  const size_t base = size / count, extra = size % count;
  std::vector<std::pair<size_t, size_t>> ranges;
  size_t begin = 0;
  for (size_t i = 0; i < count; ++i) {
    const size_t end = begin + base + (i < extra ? 1 : 0);
    ranges.emplace_back(begin, end);
    begin = end;
  }
  return ranges;
}

// Where the input vectors come from: rows of a [N, K] matrix, or im2col patches of an NCHW image.
struct VectorSource {
  const float* x;
  size_t k;  // vector length
  bool conv = false;
  size_t size = 0;  // elements of X (conv only)
  // convolution geometry (conv only)
  int64_t channels = 0, height = 0, width = 0, kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, pad_top = 0,
          pad_left = 0, out_h = 1, out_w = 1;
  std::vector<int64_t> channel_offset, dy, dx;  // per patch element k = (c, i, j), channel-major

  void prepare() {
    if (!conv) return;
    channel_offset.resize(k), dy.resize(k), dx.resize(k);
    for (size_t e = 0; e < k; ++e) {
      const int64_t c = e / (kh * kw), i = (e / kw) % kh, j = e % kw;
      channel_offset[e] = c * height * width, dy[e] = i * dh, dx[e] = j * dw;
    }
  }

  // Asks for the input rows that vectors [first, first + count) of a convolution read to be brought
  // into the L2 cache: they lie one channel plane (a page or more) apart, too far apart for the
  // hardware prefetchers to follow.
  void prefetch(size_t first, size_t count) const {
    if (!conv || count == 0) return;
    const size_t per_image = out_h * out_w, last = first + count - 1;
    for (size_t image = first / per_image; image <= last / per_image; ++image) {
      const size_t lo = std::max(first, image * per_image) % per_image;
      const size_t hi = std::min(last, image * per_image + per_image - 1) % per_image;
      const int64_t y0 = std::clamp<int64_t>(static_cast<int64_t>(lo / out_w) * sh - pad_top, 0, height);
      const int64_t y1 = std::clamp<int64_t>(static_cast<int64_t>(hi / out_w) * sh - pad_top + (kh - 1) * dh + 1, 0,
                                             height);
      const size_t bytes = static_cast<size_t>(y1 - y0) * width * sizeof(float);
      for (int64_t c = 0; c < channels; ++c) {
        const char* rows = reinterpret_cast<const char*>(x + ((image * channels + c) * height + y0) * width);
        for (size_t offset = 0; offset < bytes; offset += 64) _mm_prefetch(rows + offset, _MM_HINT_T1);
      }
    }
  }

  // Elements [begin, end) of vectors [first, first + count) into a k-major panel:
  // panel[(e - begin) * ld + i] is element e of vector first + i. A convolution's panel rows may
  // be written up to kLanes - 1 columns past `count` (the panel's row `end - begin` included): a
  // row is written run by run with whole SIMD vectors, each run overwriting the previous one's tail.
  void read_panel(size_t first, size_t count, size_t begin, size_t end, float* panel, size_t ld) const {
    if (!conv) {
      for (size_t i = 0; i < count; ++i) {
        const float* row = x + (first + i) * k;
        for (size_t e = begin; e < end; ++e) panel[(e - begin) * ld + i] = row[e];
      }
      return;
    }
    // runs of consecutive output columns of one output row of one image
    struct Run {
      size_t column;  // in the panel
      int64_t length, image_offset, y0, x0;  // y0, x0: input row and column of the kernel's corner
    };
    Run runs[kBlockVectors];  // at most one per vector
    size_t run_count = 0;
    const size_t per_image = out_h * out_w;
    for (size_t i = 0; i < count;) {
      const size_t n = first + i, image = n / per_image, oh = (n % per_image) / out_w, ow = n % out_w;
      const size_t length = std::min<size_t>(count - i, out_w - ow);
      runs[run_count++] = {i, static_cast<int64_t>(length), static_cast<int64_t>(image * channels * height * width),
                           static_cast<int64_t>(oh) * sh - pad_top, static_cast<int64_t>(ow) * sw - pad_left};
      i += length;
    }
    const uintptr_t first_byte = reinterpret_cast<uintptr_t>(x), end_byte = first_byte + size * sizeof(float);
    for (size_t e = begin; e < end; ++e) {
      float* row_out = panel + (e - begin) * ld;
      for (size_t r = 0; r < run_count; ++r) {
        const Run& run = runs[r];
        float* out = row_out + run.column;
        const int64_t y = run.y0 + dy[e], x0 = run.x0 + dx[e];
        if (y < 0 || y >= height) {
          for (int64_t q = 0; q < run.length; q += kLanes) vec_store(out + q, vec_zero());
          continue;
        }
        const float* row = x + run.image_offset + channel_offset[e] + y * width;
        if (sw != 1) {
          for (int64_t q = 0; q < run.length; ++q) {
            const int64_t column = x0 + q * sw;
            out[q] = column >= 0 && column < width ? row[column] : 0.0f;
          }
          continue;
        }
        // input columns x0 + q for q in [0, length): those in [0, width) are read, the rest are padding
        for (int64_t q = 0; q < run.length; q += kLanes) {
          const int64_t low = std::clamp<int64_t>(-(x0 + q), 0, kLanes);
          const int64_t high = std::clamp<int64_t>(width - (x0 + q), 0, kLanes);
          // a whole vector load where it stays inside X (masked loads are slow), masking the lanes after
          const uintptr_t from = reinterpret_cast<uintptr_t>(row) + (x0 + q) * static_cast<int64_t>(sizeof(float));
          const int l = static_cast<int>(low), h = static_cast<int>(high);
          if (from >= first_byte && from + sizeof(float) * kLanes <= end_byte) {
            VecF v = vec_load(reinterpret_cast<const float*>(from));
            asm("" : "+v"(v));  // or the compiler folds load and mask into the masked load again
            vec_store(out + q, vec_window(v, l, h));
          } else {
            vec_store(out + q, h > l ? vec_load_window(reinterpret_cast<const float*>(from), l, h) : vec_zero());
          }
        }
      }
    }
  }
};

// A DAC/ADC (reference.converter): values clipped to the bound and rounded to its grid.
struct Converter {
  float bound, step, levels;
  bool grid;
  Converter(int64_t bits, float bound_) : bound(bound_) {
    const int64_t n = bits > 0 ? (int64_t{1} << (bits - 1)) - 1 : 0;
    grid = n > 0, levels = static_cast<float>(n), step = grid ? bound / levels : 0.0f;
  }
  // k[i] = nearbyint(a[i] / step) with a[i] = x[i] * scale[i] (or x[i] without scales), or with
  // `clip` the converter's value min(max(k, -levels), levels) * step. The product a * (1 / step) is
  // at most 3 ulp from the quotient, so it rounds to the same integer unless a half-integer lies
  // between them: a vector where any lane's product lies within (levels + 2) 2^-20 (16 ulp of
  // levels + 2) of a half-integer, or is not finite, is divided instead. Beyond levels + 2 the
  // product may round one level off, which |k| > levels and the clip do not see. So the converter's
  // values and its saturation are bit for bit the division's.
  void levels_of(const float* x, const float* scale, float* k, size_t n, bool clip) const {
    const VecF inverse = vec_broadcast(1.0f / step), divisor = vec_broadcast(step);
    const VecF near = vec_broadcast(0.5f - (levels + 2.0f) * 0x1p-20f);
    const VecF high = vec_broadcast(levels), low = vec_broadcast(-levels);
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
      VecF a = vec_load(x + i);
      if (scale != nullptr) a = vec_mul(a, vec_load(scale + i));
      const VecF q = vec_mul(a, inverse), r = vec_round(q);
      VecF level = vec_all_greater(near, vec_abs(vec_sub(q, r))) ? r : vec_round(vec_div(a, divisor));
      // std::min(std::max(level, -levels), levels), a NaN kept: vec_max and vec_min return their second
      if (clip) level = vec_mul(vec_min(high, vec_max(low, level)), divisor);
      vec_store(k + i, level);
    }
    for (; i < n; ++i) {
      const float level = std::nearbyint((scale != nullptr ? x[i] * scale[i] : x[i]) / step);
      k[i] = clip ? std::min(std::max(level, -levels), levels) * step : level;
    }
  }
  // out[i] = the converter's value of x[i] * scale[i] (the DAC packing a panel row).
  void scaled(const float* x, const float* scale, float* out, size_t n) const {
    if (!grid) {
      for (size_t i = 0; i < n; ++i) out[i] = std::min(std::max(x[i] * scale[i], -bound), bound);
      return;
    }
    levels_of(x, scale, out, n, true);
  }
  // v[i] = the converter's value of v[i]; beyond[i] set where v[i] lay beyond the bound (the ADC).
  void convert(float* v, size_t n, int32_t* beyond) const {
    if (!grid) {
      for (size_t i = 0; i < n; ++i) {
        beyond[i] |= std::fabs(v[i]) > bound;
        v[i] = std::min(std::max(v[i], -bound), bound);
      }
      return;
    }
    levels_of(v, nullptr, v, n, false);
    for (size_t i = 0; i < n; ++i) {
      const float k = v[i];
      beyond[i] |= std::fabs(k) > levels;
      v[i] = std::min(std::max(k, -levels), levels) * step;
    }
  }
};

// The layer's digital epilogue per output channel (native_graph.fuse_epilogues): y*scale + shift, ReLU.
struct ChannelEpilogue {
  const float* scale;
  const float* shift;
  bool relu;
  float operator()(float y, size_t m) const {
    const float v = y * scale[m] + shift[m];
    return relu ? std::max(v, 0.0f) : v;
  }
};

// -- the computation -----------------------------------------------------------------------------
// Packed weights of one input tile, mapped (divided by the mapping scales): per block of
// kBlockRows outputs, k-major ([block][e - begin][row]), outputs past the last zero; and the
// mapping scales per output.
struct PackedTile {
  size_t begin, end;
  std::vector<float> weights;  // rows x (end - begin), rows = outputs padded to a whole block
  std::vector<float> alpha;    // per output
};

inline size_t padded_rows(size_t outputs) { return (outputs + kBlockRows - 1) / kBlockRows * kBlockRows; }

inline std::vector<PackedTile> pack_weights(const float* w, size_t outputs, size_t k, const TileSettings& s) {
  const size_t rows = padded_rows(outputs);
  std::vector<PackedTile> tiles;
  const auto out_ranges = split_ranges(outputs, s.max_output_size);
  for (auto [k0, k1] : split_ranges(k, s.max_input_size)) {
    const size_t width = k1 - k0;
    PackedTile tile{k0, k1, std::vector<float>(rows * width, 0.0f), std::vector<float>(outputs, 1.0f)};
    if (s.omega > 0) {
      for (auto [m0, m1] : out_ranges) {
        float block = 0.0f;
        for (size_t m = m0; m < m1; ++m) {
          float peak = 0.0f;
          for (size_t e = k0; e < k1; ++e) peak = std::max(peak, std::fabs(w[m * k + e]));
          tile.alpha[m] = peak;
          block = std::max(block, peak);
        }
        for (size_t m = m0; m < m1; ++m) {
          const float alpha = (s.columnwise ? tile.alpha[m] : block) / s.omega;
          tile.alpha[m] = alpha == 0.0f ? 1.0f : alpha;
        }
      }
    }
    for (size_t m = 0; m < outputs; ++m) {
      float* packed = tile.weights.data() + (m / kBlockRows) * kBlockRows * width + m % kBlockRows;
      for (size_t e = k0; e < k1; ++e) packed[(e - k0) * kBlockRows] = w[m * k + e] / tile.alpha[m];
    }
    tiles.push_back(std::move(tile));
  }
  return tiles;
}

// y[m * ld + p] += sigma * normal (start + p * outputs + m) for p < count, m < outputs: the stream
// runs vector-major (into z, kBlockVectors * outputs floats), the block is output-major (gathered
// from z a SIMD vector of vectors at a time; lanes past `count` add whatever z holds there).
inline void add_noise(uint64_t key, uint64_t start, size_t count, size_t outputs, float sigma, float* y, size_t ld,
                      float* z, float* buffer) {
  const size_t total = count * outputs;
  for (size_t done = 0; done < total; done += kBlock) {
    const size_t len = std::min(kBlock, total - done);
    const float* normal = normals(key, start + done, len, buffer);
    std::copy(normal, normal + len, z + done);
  }
  const VecF scale = vec_broadcast(sigma);
  for (size_t m = 0; m < outputs; ++m)
    for (size_t p = 0; p < count; p += kLanes) {
      float* row = y + m * ld + p;
      vec_store(row, vec_add(vec_load(row), vec_mul(scale, vec_gather(z + p * outputs + m, outputs))));
    }
}

// peak[i] = max over rows e < rows of |panel[e * kBlockVectors + i]| (0 for no rows), i < kBlockVectors,
// as std::max(peak, |x|) in row order would (a NaN never wins); the row in registers.
inline void block_abs_max(const float* panel, size_t rows, float* peak) {
  constexpr size_t columns = kBlockVectors / kLanes;
  VecF m[columns];
  for (size_t j = 0; j < columns; ++j) m[j] = vec_zero();
  for (size_t e = 0; e < rows; ++e)
#pragma GCC unroll 12
    for (size_t j = 0; j < columns; ++j) m[j] = vec_max(vec_abs(vec_load(panel + e * kBlockVectors + j * kLanes)), m[j]);
  for (size_t j = 0; j < columns; ++j) vec_store(peak + j * kLanes, m[j]);
}

// One block's working memory, kept per pool thread between blocks and calls. Every buffer is
// output-major or k-major with kBlockVectors vectors a row, one vector a column.
struct Scratch {
  std::vector<float> raw, panel, product, total, inverse, peak, scale, back, normals, noise;
  std::vector<int32_t> saturated, accepted;
  std::vector<char> done, rerun;
  std::vector<size_t> pending, again;
};

// Computes vectors [first, last) (at most kBlockVectors) into out (per vector `outputs` values, or
// NCHW for a convolution).
inline void tile_block(const VectorSource& src, const std::vector<PackedTile>& tiles, size_t outputs,
                       size_t vectors, size_t first, size_t last, const TileSettings& s, float sigma, uint64_t key,
                       const ChannelEpilogue* epilogue, float* out, Scratch& b) {
  constexpr size_t ld = kBlockVectors;
  const size_t count = last - first, rows = padded_rows(outputs);
  const auto out_ranges = split_ranges(outputs, s.max_output_size);
  const size_t ranges = out_ranges.size();
  const Converter dac(s.inp_bits, s.inp_bound), adc(s.out_bits, s.out_bound);
  size_t widest = 0;
  for (const auto& t : tiles) widest = std::max(widest, t.end - t.begin);
  b.raw.resize(widest * ld + kLanes), b.panel.resize(widest * ld), b.product.resize(rows * ld), b.total.resize(outputs * ld);
  b.inverse.resize(ld), b.peak.resize(ld), b.scale.resize(ld), b.back.resize(ld), b.noise.resize(kBlock + 2);
  if (sigma != 0.0f) b.normals.resize(ld * outputs);
  b.saturated.resize(ld), b.accepted.resize(ld), b.done.resize(ranges * ld), b.rerun.resize(ld);
  float* total = b.total.data();
  for (size_t m = 0; m < outputs; ++m) std::fill(total + m * ld, total + m * ld + count, 0.0f);
  src.prefetch(last, std::min(kBlockVectors, vectors - last));  // the next block, while this one computes
  for (size_t t = 0; t < tiles.size(); ++t) {
    const PackedTile& tile = tiles[t];
    const size_t width = tile.end - tile.begin;
    const float* raw = b.raw.data();
    float* peak = b.peak.data();
    src.read_panel(first, count, tile.begin, tile.end, b.raw.data(), ld);
    block_abs_max(raw, s.noise_management ? width : 0, peak);
    for (size_t i = 0; i < count; ++i) b.inverse[i] = 1.0f / scale_from_abs_max(peak[i]);
    std::fill(b.done.begin(), b.done.end(), 0);
    b.pending.resize(count);
    for (size_t i = 0; i < count; ++i) b.pending[i] = i;
    for (int64_t r = 0; r < s.bm_rounds && !b.pending.empty(); ++r) {
      const bool last_round = r == s.bm_rounds - 1;
      const float reduction = static_cast<float>(int64_t{1} << r);
      const size_t used = b.pending.size(), lanes = (used + kLanes - 1) / kLanes, columns = lanes * kLanes;
      const bool all = used == count;  // every vector of the block: pending[p] == p
      const size_t* pending = b.pending.data();
      float* scale = b.scale.data();
      // the DAC while packing the pending vectors into the panel (all of them in round 0)
      for (size_t p = 0; p < used; ++p) scale[p] = b.inverse[pending[p]] / reduction;
      for (size_t e = 0; e < width; ++e) {
        const float* source = raw + e * ld;
        float* row = b.panel.data() + e * ld;
        if (!all)
          for (size_t p = 0; p < used; ++p) row[p] = source[pending[p]];
        dac.scaled(all ? source : row, scale, row, used);
        std::fill(row + used, row + columns, 0.0f);
      }
      gemm(width, rows, lanes, tile.weights.data(), b.panel.data(), ld, b.product.data(), ld);
      // noise (one stretch of the stream when every vector of the block is computed)
      float* product = b.product.data();
      const uint64_t round_start = (static_cast<uint64_t>(r) * tiles.size() + t) * vectors * outputs;
      if (sigma != 0.0f && all) add_noise(key, round_start + first * outputs, count, outputs, sigma, product, ld,
                                          b.normals.data(), b.noise.data());
      if (sigma != 0.0f && !all)
        for (size_t p = 0; p < used; ++p) {
          const uint64_t start = ((static_cast<uint64_t>(r) * tiles.size() + t) * vectors + first + pending[p]) * outputs;
          for (size_t m0 = 0; m0 < outputs; m0 += kBlock) {
            const size_t len = std::min(kBlock, outputs - m0);
            const float* z = normals(key, start + m0, len, b.noise.data());
            for (size_t m = 0; m < len; ++m) product[(m0 + m) * ld + p] += sigma * z[m];
          }
        }
      // per output tile: the ADC, which vectors saturated it, and the sum of those accepted
      int32_t* saturated = b.saturated.data();
      int32_t* accepted = b.accepted.data();
      float* back = b.back.data();
      for (size_t p = 0; p < used; ++p) back[p] = 1.0f / scale[p];
      std::fill(b.rerun.begin(), b.rerun.begin() + used, 0);
      for (size_t u = 0; u < ranges; ++u) {
        const auto [m0, m1] = out_ranges[u];
        char* done = b.done.data() + u * ld;
        std::fill(saturated, saturated + used, 0);
        for (size_t m = m0; m < m1; ++m) adc.convert(product + m * ld, used, saturated);
        for (size_t p = 0; p < used; ++p) {
          const size_t i = pending[p];
          accepted[p] = !done[i] && (!saturated[p] || last_round);
          b.rerun[p] |= !done[i] && !accepted[p];
          done[i] |= accepted[p];
        }
        for (size_t m = m0; m < m1; ++m) {
          const float* y = product + m * ld;
          float* sum = total + m * ld;
          const float alpha = tile.alpha[m];
          if (all) {
            for (size_t p = 0; p < used; ++p) sum[p] = accepted[p] ? sum[p] + (y[p] * back[p]) * alpha : sum[p];
          } else {
            for (size_t p = 0; p < used; ++p)
              if (accepted[p]) sum[pending[p]] += (y[p] * back[p]) * alpha;
          }
        }
      }
      b.again.clear();
      for (size_t p = 0; p < used; ++p)
        if (b.rerun[p]) b.again.push_back(pending[p]);
      b.pending.swap(b.again);
    }
  }
  // epilogue, then write out
  if (epilogue != nullptr)
    for (size_t m = 0; m < outputs; ++m) {
      float* row = total + m * ld;
      const float a = epilogue->scale[m], c = epilogue->shift[m];
      if (epilogue->relu) {
        for (size_t i = 0; i < count; ++i) row[i] = std::max(row[i] * a + c, 0.0f);
      } else {
        for (size_t i = 0; i < count; ++i) row[i] = row[i] * a + c;
      }
    }
  if (!src.conv) {
    for (size_t i = 0; i < count; ++i)
      for (size_t m = 0; m < outputs; ++m) out[(first + i) * outputs + m] = total[m * ld + i];
    return;
  }
  // NCHW: per run of vectors within one image, each channel's values are contiguous
  const size_t per_image = src.out_h * src.out_w;
  for (size_t i = 0; i < count;) {
    const size_t n = first + i, image = n / per_image, position = n % per_image;
    const size_t length = std::min(count - i, per_image - position);
    float* base = out + image * outputs * per_image + position;
    for (size_t m = 0; m < outputs; ++m) std::copy(total + m * ld + i, total + m * ld + i + length, base + m * per_image);
    i += length;
  }
}

// The whole op: vectors [0, vectors) split over ORT's thread pool in blocks.
inline void analog_tile(OrtKernelContext* context, const VectorSource& src, const float* w, size_t outputs,
                        size_t vectors, const TileSettings& s, float noise_scale, int64_t seed,
                        const ChannelEpilogue* epilogue, float* out) {
  if (vectors == 0 || outputs == 0) return;
  const auto tiles = pack_weights(w, outputs, src.k, s);
  const float sigma = noise_scale * s.out_noise;
  const uint64_t key = stream_key(seed, s.stream);
  const size_t tasks = (vectors + kBlockVectors - 1) / kBlockVectors;
  auto body = [&](size_t task) {
    thread_local Scratch scratch;
    const size_t first = task * kBlockVectors, last = std::min(vectors, first + kBlockVectors);
    tile_block(src, tiles, outputs, vectors, first, last, s, sigma, key, epilogue, out, scratch);
  };
  parallel_for(context, tasks, body);
}

}  // namespace analog
