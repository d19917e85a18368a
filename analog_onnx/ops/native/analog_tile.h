// The analog tile (reference.analog_tile): an analog layer computed on tiles, per input vector.
//
// For a block of input vectors (rows of a dense input, or im2col patches of an NCHW image read
// straight from the image), each input tile's slice is scaled by its abs-max and quantized by the
// DAC while it is packed into a panel; the panel times the tile's mapped weights runs on a
// register-blocked micro-kernel (AVX-512 or AVX2/FMA, whichever -march=native enables); output
// noise and the ADC act on each tile's partial sums while they are in cache; vectors whose tile
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
#elif defined(__AVX2__) && defined(__FMA__)
using VecF = __m256;
constexpr size_t kLanes = 8;
constexpr size_t kRegisters = 16;
inline VecF vec_zero() { return _mm256_setzero_ps(); }
inline VecF vec_load(const float* p) { return _mm256_loadu_ps(p); }
inline void vec_store(float* p, VecF v) { _mm256_storeu_ps(p, v); }
inline VecF vec_broadcast(float x) { return _mm256_set1_ps(x); }
inline VecF vec_fma(VecF a, VecF b, VecF c) { return _mm256_fmadd_ps(a, b, c); }
#else
#error "the analog tile kernel needs AVX2 and FMA (or AVX-512)"
#endif

constexpr size_t kRowAlign = 24;  // panel rows are padded to a multiple of every row block below

// C[Rows][Cols vectors] = A * B over k: A is k-major (a[p * lda + i]), B rows `ldb` apart, C rows
// `ldc` apart. Rows x Cols accumulators stay in registers; each step loads Cols weight vectors once
// and broadcasts Rows inputs.
template <size_t Rows, size_t Cols>
inline void micro_kernel(size_t k, const float* a, size_t lda, const float* b, size_t ldb, float* c, size_t ldc) {
  VecF acc[Rows][Cols];
#pragma GCC unroll 16
  for (size_t i = 0; i < Rows; ++i)
#pragma GCC unroll 4
    for (size_t j = 0; j < Cols; ++j) acc[i][j] = vec_zero();
  for (size_t p = 0; p < k; ++p) {
    VecF w[Cols];
#pragma GCC unroll 4
    for (size_t j = 0; j < Cols; ++j) w[j] = vec_load(b + p * ldb + j * kLanes);
    const float* ap = a + p * lda;
#pragma GCC unroll 16
    for (size_t i = 0; i < Rows; ++i) {
      const VecF x = vec_broadcast(ap[i]);
#pragma GCC unroll 4
      for (size_t j = 0; j < Cols; ++j) acc[i][j] = vec_fma(x, w[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (size_t i = 0; i < Rows; ++i)
#pragma GCC unroll 4
    for (size_t j = 0; j < Cols; ++j) vec_store(c + i * ldc + j * kLanes, acc[i][j]);
}

// C[rows][columns] = A * B with A k-major [k][lda >= rows], rows a multiple of kRowAlign, columns
// a multiple of kLanes: the widest register block that fits the outputs, rows blocked to match.
template <size_t Rows, size_t Cols>
inline void gemm_block(size_t k, size_t rows, size_t columns, const float* a, size_t lda, const float* b, size_t ldb,
                       float* c, size_t ldc) {
  for (size_t j = 0; j < columns; j += Cols * kLanes)
    for (size_t i = 0; i < rows; i += Rows) micro_kernel<Rows, Cols>(k, a + i, lda, b + j, ldb, c + i * ldc + j, ldc);
}

inline void gemm(size_t k, size_t rows, size_t columns, const float* a, size_t lda, const float* b, size_t ldb,
                 float* c, size_t ldc) {
  const size_t vectors = columns / kLanes;
  if constexpr (kRegisters == 32) {  // AVX-512: up to 24 accumulators
    if (vectors % 4 == 0) return gemm_block<6, 4>(k, rows, columns, a, lda, b, ldb, c, ldc);
    if (vectors % 3 == 0) return gemm_block<8, 3>(k, rows, columns, a, lda, b, ldb, c, ldc);
    if (vectors % 2 == 0) return gemm_block<12, 2>(k, rows, columns, a, lda, b, ldb, c, ldc);
    return gemm_block<12, 1>(k, rows, columns, a, lda, b, ldb, c, ldc);
  } else {  // AVX2: up to 12 accumulators
    if (vectors % 3 == 0) return gemm_block<4, 3>(k, rows, columns, a, lda, b, ldb, c, ldc);
    if (vectors % 2 == 0) return gemm_block<6, 2>(k, rows, columns, a, lda, b, ldb, c, ldc);
    return gemm_block<8, 1>(k, rows, columns, a, lda, b, ldb, c, ldc);
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

  // Elements [begin, end) of vectors [first, first + count) into a k-major panel:
  // panel[(e - begin) * ld + i] is element e of vector first + i.
  void read_panel(size_t first, size_t count, size_t begin, size_t end, float* panel, size_t ld) const {
    if (!conv) {
      for (size_t i = 0; i < count; ++i) {
        const float* row = x + (first + i) * k;
        for (size_t e = begin; e < end; ++e) panel[(e - begin) * ld + i] = row[e];
      }
      return;
    }
    // runs of consecutive output columns of one output row of one image
    const size_t per_image = out_h * out_w;
    for (size_t i = 0; i < count;) {
      const size_t n = first + i, image = n / per_image, oh = (n % per_image) / out_w, ow = n % out_w;
      const size_t length = std::min<size_t>(count - i, out_w - ow);
      const float* base = x + image * channels * height * width;
      for (size_t e = begin; e < end; ++e) {
        float* out = panel + (e - begin) * ld + i;
        const int64_t y = static_cast<int64_t>(oh) * sh - pad_top + dy[e];
        if (y < 0 || y >= height) {
          std::fill(out, out + length, 0.0f);
          continue;
        }
        const float* row = base + channel_offset[e] + y * width;
        const int64_t x0 = static_cast<int64_t>(ow) * sw - pad_left + dx[e];
        // columns q with 0 <= x0 + q*sw < width: [low, high); zeros (padding) outside
        const int64_t len = static_cast<int64_t>(length);
        const int64_t low = std::min(len, x0 >= 0 ? int64_t{0} : (-x0 + sw - 1) / sw);
        const int64_t high = std::max(low, std::min(len, x0 >= width ? int64_t{0} : (width - x0 + sw - 1) / sw));
        std::fill(out, out + low, 0.0f);
        if (sw == 1) {
          std::copy(row + x0 + low, row + x0 + high, out + low);
        } else {
          for (int64_t q = low; q < high; ++q) out[q] = row[x0 + q * sw];
        }
        std::fill(out + high, out + len, 0.0f);
      }
      i += length;
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
  // out[i] = the converter's value of x[i] * scale[i] (the DAC packing a panel row).
  void scaled(const float* x, const float* scale, float* out, size_t n) const {
    if (!grid) {
      for (size_t i = 0; i < n; ++i) out[i] = std::min(std::max(x[i] * scale[i], -bound), bound);
      return;
    }
    for (size_t i = 0; i < n; ++i) out[i] = std::min(std::max(std::nearbyint((x[i] * scale[i]) / step), -levels), levels) * step;
  }
  // v[i] = the converter's value of v[i]; whether any lay beyond the bound (the ADC).
  bool convert(float* v, size_t n) const {
    int beyond = 0;
    if (!grid) {
      for (size_t i = 0; i < n; ++i) {
        beyond |= std::fabs(v[i]) > bound;
        v[i] = std::min(std::max(v[i], -bound), bound);
      }
      return beyond != 0;
    }
    for (size_t i = 0; i < n; ++i) {
      const float k = std::nearbyint(v[i] / step);
      beyond |= std::fabs(k) > levels;
      v[i] = std::min(std::max(k, -levels), levels) * step;
    }
    return beyond != 0;
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
// Packed weights of one input tile: [rows of the tile][outputs padded to whole vectors], mapped
// (divided by the mapping scales), and the mapping scales per output.
struct PackedTile {
  size_t begin, end, stride;
  std::vector<float> weights;  // (end - begin) x stride
  std::vector<float> alpha;    // per output
};

inline std::vector<PackedTile> pack_weights(const float* w, size_t outputs, size_t k, const TileSettings& s) {
  const size_t stride = (outputs + kLanes - 1) / kLanes * kLanes;
  std::vector<PackedTile> tiles;
  const auto out_ranges = split_ranges(outputs, s.max_output_size);
  for (auto [k0, k1] : split_ranges(k, s.max_input_size)) {
    PackedTile tile{k0, k1, stride, std::vector<float>((k1 - k0) * stride, 0.0f), std::vector<float>(outputs, 1.0f)};
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
    for (size_t m = 0; m < outputs; ++m)
      for (size_t e = k0; e < k1; ++e) tile.weights[(e - k0) * stride + m] = w[m * k + e] / tile.alpha[m];
    tiles.push_back(std::move(tile));
  }
  return tiles;
}

// y[p * stride + m] += sigma * normal (start + p * outputs + m) for p < count, m < outputs.
inline void add_noise(uint64_t key, uint64_t start, size_t count, size_t outputs, float sigma, float* y, size_t stride,
                      float* buffer) {
  const size_t total = count * outputs;
  size_t p = 0, m = 0;
  for (size_t done = 0; done < total; done += kBlock) {
    const size_t len = std::min(kBlock, total - done);
    const float* z = normals(key, start + done, len, buffer);
    for (size_t e = 0; e < len; ++e) {
      y[p * stride + m] += sigma * z[e];
      if (++m == outputs) m = 0, ++p;
    }
  }
}

// Computes vectors [first, last) into out (per vector `outputs` values, or NCHW for a convolution).
inline void tile_block(const VectorSource& src, const std::vector<PackedTile>& tiles, size_t outputs,
                       size_t vectors, size_t first, size_t last, const TileSettings& s, float sigma, uint64_t key,
                       const ChannelEpilogue* epilogue, float* out) {
  const size_t count = last - first, rows = (count + kRowAlign - 1) / kRowAlign * kRowAlign;
  const size_t stride = tiles[0].stride;
  const auto out_ranges = split_ranges(outputs, s.max_output_size);
  const Converter dac(s.inp_bits, s.inp_bound), adc(s.out_bits, s.out_bound);
  size_t widest = 0;
  for (const auto& t : tiles) widest = std::max(widest, t.end - t.begin);
  // k-major panels: raw inputs, and the DAC values of the vectors of one round
  std::vector<float> raw(widest * rows, 0.0f), panel(widest * rows, 0.0f), product(rows * stride);
  std::vector<float> total(count * outputs, 0.0f), inverse(count), peak(count), scale(rows), noise(kBlock + 2);
  std::vector<float> gathered(rows);
  std::vector<size_t> pending, again;
  std::vector<char> done(count * out_ranges.size());
  for (size_t t = 0; t < tiles.size(); ++t) {
    const PackedTile& tile = tiles[t];
    const size_t width = tile.end - tile.begin;
    src.read_panel(first, count, tile.begin, tile.end, raw.data(), rows);
    std::fill(peak.begin(), peak.end(), 0.0f);
    if (s.noise_management)
      for (size_t e = 0; e < width; ++e)
        for (size_t i = 0; i < count; ++i) peak[i] = std::max(peak[i], std::fabs(raw[e * rows + i]));
    for (size_t i = 0; i < count; ++i) inverse[i] = 1.0f / (peak[i] > 0.0f ? peak[i] : 1.0f);
    std::fill(done.begin(), done.end(), 0);
    pending.resize(count);
    for (size_t i = 0; i < count; ++i) pending[i] = i;
    for (int64_t r = 0; r < s.bm_rounds && !pending.empty(); ++r) {
      const bool last_round = r == s.bm_rounds - 1;
      const float reduction = static_cast<float>(int64_t{1} << r);
      const size_t used = pending.size(), panel_rows = (used + kRowAlign - 1) / kRowAlign * kRowAlign;
      // the DAC while packing the pending vectors into the panel (all of them in round 0)
      for (size_t p = 0; p < used; ++p) scale[p] = inverse[pending[p]] / reduction;
      std::fill(scale.begin() + used, scale.begin() + panel_rows, 0.0f);
      for (size_t e = 0; e < width; ++e) {
        const float* source = raw.data() + e * rows;
        if (used != count)
          for (size_t p = 0; p < used; ++p) gathered[p] = source[pending[p]];
        dac.scaled(used == count ? source : gathered.data(), scale.data(), panel.data() + e * panel_rows, used);
        std::fill(panel.begin() + e * panel_rows + used, panel.begin() + (e + 1) * panel_rows, 0.0f);
      }
      gemm(width, panel_rows, stride, panel.data(), panel_rows, tile.weights.data(), stride, product.data(), stride);
      // noise (one stretch of the stream when every vector of the block is computed), ADC, and
      // which (vector, output tile) saturated
      const uint64_t round_start = (static_cast<uint64_t>(r) * tiles.size() + t) * vectors * outputs;
      if (sigma != 0.0f && used == count) add_noise(key, round_start + first * outputs, count, outputs, sigma,
                                                    product.data(), stride, noise.data());
      again.clear();
      for (size_t p = 0; p < used; ++p) {
        const size_t i = pending[p], n = first + i;
        float* y = product.data() + p * stride;
        if (sigma != 0.0f && used != count) {
          const uint64_t start = ((static_cast<uint64_t>(r) * tiles.size() + t) * vectors + n) * outputs;
          for (size_t m0 = 0; m0 < outputs; m0 += kBlock) {
            const size_t len = std::min(kBlock, outputs - m0);
            const float* z = normals(key, start + m0, len, noise.data());
            for (size_t m = 0; m < len; ++m) y[m0 + m] += sigma * z[m];
          }
        }
        const float back = 1.0f / scale[p];
        bool rerun = false;
        for (size_t u = 0; u < out_ranges.size(); ++u) {
          if (done[i * out_ranges.size() + u]) continue;
          const bool saturated = adc.convert(y + out_ranges[u].first, out_ranges[u].second - out_ranges[u].first);
          if (saturated && !last_round) {
            rerun = true;
            continue;
          }
          done[i * out_ranges.size() + u] = 1;
          float* sum = total.data() + i * outputs;
          for (size_t m = out_ranges[u].first; m < out_ranges[u].second; ++m) sum[m] += (y[m] * back) * tile.alpha[m];
        }
        if (rerun) again.push_back(i);
      }
      pending.swap(again);
    }
  }
  // write out
  if (epilogue != nullptr)
    for (size_t i = 0; i < count; ++i)
      for (size_t m = 0; m < outputs; ++m) total[i * outputs + m] = (*epilogue)(total[i * outputs + m], m);
  if (!src.conv) {
    std::copy(total.begin(), total.end(), out + first * outputs);
    return;
  }
  // NCHW: per run of vectors within one image, each channel's values are contiguous
  const size_t per_image = src.out_h * src.out_w;
  for (size_t i = 0; i < count;) {
    const size_t n = first + i, image = n / per_image, position = n % per_image;
    const size_t length = std::min(count - i, per_image - position);
    float* base = out + image * outputs * per_image + position;
    for (size_t m = 0; m < outputs; ++m)
      for (size_t q = 0; q < length; ++q) base[m * per_image + q] = total[(i + q) * outputs + m];
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
  constexpr size_t kVectorsPerTask = 4 * kRowAlign;
  const size_t tasks = (vectors + kVectorsPerTask - 1) / kVectorsPerTask;
  auto body = [&](size_t task) {
    const size_t first = task * kVectorsPerTask, last = std::min(vectors, first + kVectorsPerTask);
    tile_block(src, tiles, outputs, vectors, first, last, s, sigma, key, epilogue, out);
  };
  parallel_for(context, tasks, body);
}

}  // namespace analog
