// The analog tile (reference.analog_tile): an analog layer computed on tiles, per input vector.
//
// A thread-pool task takes a block of input vectors (rows of a dense input, or im2col patches read
// through a zero-padded slab of an NCHW image's rows, tile_source.h) and runs the steps of
// TileBlock for each input tile: read the tile's slice of every vector with each vector's abs-max;
// quantize it by the DAC at the vector's scale while packing a k-major panel (one vector per SIMD
// lane); then per output tile multiply the mapped weights by the panel (tile_gemm.h), add the
// output noise, convert by the ADC, and add the results of the vectors that did not saturate the
// ADC to the sums. Vectors that saturated are read
// again at half the scale and only they are recomputed (iterative bound management, per vector and
// output tile). Last, the layer's per-channel epilogue, and the block is written out (NCHW for a
// convolution). Outputs are rows and vectors lanes throughout, so every per-vector step is
// lane-parallel and a convolution's block goes to NCHW by row copies.
//
// Every noise value is normal ((r*T + t)*N + n)*M + m of the op's stream, as in the reference.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "counter_rng.h"
#include "ort_glue.h"
#include "quantize.h"
#include "simd.h"
#include "step_clock.h"
#include "tile_gemm.h"
#include "tile_source.h"

namespace analog {

// -- the op's settings and geometry --------------------------------------------------------------
struct TileSettings {
  int64_t inp_bits, noise_management, out_bits, bm_rounds, max_input_size, max_output_size, columnwise, stream;
  float inp_bound, out_noise, out_bound, omega, w_noise;
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

// A DAC/ADC (reference.converter): values clipped to the bound and rounded to its grid.
struct Converter {
  float bound, step, levels;
  bool grid;
  Converter(int64_t bits, float bound_) : bound(bound_) {
    const int64_t n = bits > 0 ? (int64_t{1} << (bits - 1)) - 1 : 0;
    grid = n > 0, levels = static_cast<float>(n), step = grid ? bound / levels : 0.0f;
  }
  // Whether every value passes unchanged (no grid, no bound).
  bool identity() const { return !grid && bound == std::numeric_limits<float>::infinity(); }

  // The converter's constants in SIMD registers (loops copy them: a store through a float pointer
  // could otherwise change the members, and the compiler would reload and divide on every vector).
  struct Lanes {
    VecF inverse, step, near, high, low;
    // The level nearbyint(a / step) of a: the product a * (1 / step) is at most 3 ulp from the
    // quotient, so it rounds to the same integer unless a half-integer lies between them: a vector
    // where any lane's product lies within (levels + 2) 2^-20 (16 ulp of levels + 2) of a
    // half-integer, or is not finite, is divided instead. Beyond levels + 2 the product may round
    // one level off, which |k| > levels and the clip do not see. So the converter's values and its
    // saturation are bit for bit the division's.
    VecF level(VecF a) const {
      const VecF q = vec_mul(a, inverse), r = vec_round(q);
      return vec_all_greater(near, vec_abs(vec_sub(q, r))) ? r : vec_round(vec_div(a, step));
    }
    // std::min(std::max(level, -levels), levels) * step, a NaN kept (vec_max and vec_min return their second)
    VecF clip_level(VecF level) const { return vec_mul(vec_min(high, vec_max(low, level)), step); }
  };
  Lanes lanes() const {
    return {vec_broadcast(1.0f / step), vec_broadcast(step), vec_broadcast(0.5f - (levels + 2.0f) * 0x1p-20f),
            vec_broadcast(levels), vec_broadcast(-levels)};
  }

  // out[i] = the converter's value of x[i] * scale[i] (the DAC packing a panel row), i < n.
  void scaled(const float* x, const float* scale, float* out, size_t n) const {
    const float b = bound, s = step, l = levels;
    if (!grid) {
      for (size_t i = 0; i < n; ++i) out[i] = std::min(std::max(x[i] * scale[i], -b), b);
      return;
    }
    const Lanes v = lanes();
    size_t i = 0;
    for (; i + kLanes <= n; i += kLanes) vec_store(out + i, v.clip_level(v.level(vec_mul(vec_load(x + i), vec_load(scale + i)))));
    for (; i < n; ++i) out[i] = std::min(std::max(std::nearbyint(x[i] * scale[i] / s), -l), l) * s;
  }

  // v[i] = the converter's value of v[i] for whole SIMD vectors (n a multiple of kLanes), and the
  // lanes of beyond[i / kLanes] set where v[i] lay beyond the bound (the ADC).
  void convert(float* v, size_t n, VecI* beyond) const {
    const Lanes c = lanes();
    const VecF high = vec_broadcast(grid ? levels : bound), low = vec_broadcast(grid ? -levels : -bound);
    const bool rounds = grid;
    for (size_t i = 0; i < n; i += kLanes) {
      VecF k = vec_load(v + i);
      if (rounds) k = c.level(k);
      beyond[i / kLanes] = veci_or(beyond[i / kLanes], vec_greater(vec_abs(k), high));
      k = vec_min(high, vec_max(low, k));
      vec_store(v + i, rounds ? vec_mul(k, c.step) : k);
    }
  }
};

// Whether an output of `bytes` goes out with streaming stores: a large output is mostly out of the
// caches by the time the next layer reads it (the layer's input, output and residual stream
// through them), so a store need not read each line first. On ResNet-20 (a 32 MiB L3) streaming
// made the network 2% to 4% faster at 8 and 16 MiB per output, 3% slower pass-through at 4 MiB.
// (The threshold is fixed: sysconf's cache sizes are those of the host in a virtual machine.)
inline bool streams_output(size_t bytes) { return bytes >= (size_t{8} << 20); }

// The layer's digital epilogue per output channel (native_graph.fuse_epilogues): y*scale + shift,
// then a residual input of the output's shape added (native_graph.fuse_residuals), then ReLU.
struct ChannelEpilogue {
  const float* scale;
  const float* shift;
  bool relu;
  const float* residual = nullptr;  // laid out as the output, or nullptr

};

// -- the weights ---------------------------------------------------------------------------------
// Packed weights of one input tile, mapped (divided by the mapping scales): per register block of
// block_rows(outputs) outputs, k-major ([block][e - begin][row]), outputs past the last zero; and
// the mapping scales per output.
struct PackedTile {
  size_t begin, end;
  std::vector<float> weights;  // rows x (end - begin), rows = outputs padded to a whole block
  std::vector<float> alpha;    // per output
};

inline std::vector<PackedTile> pack_weights(const float* w, size_t outputs, size_t k, const TileSettings& s) {
  const size_t block = block_rows(outputs), rows = padded_rows(outputs, block);
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
      float* packed = tile.weights.data() + (m / block) * block * width + m % block;
      for (size_t e = k0; e < k1; ++e) packed[(e - k0) * block] = w[m * k + e] / tile.alpha[m];
    }
    tiles.push_back(std::move(tile));
  }
  return tiles;
}

// -- one call ------------------------------------------------------------------------------------
// What every block of one call shares.
struct TileLayer {
  const VectorSource& src;
  const std::vector<PackedTile>& tiles;
  size_t outputs, vectors;
  const TileSettings& s;
  float sigma;    // noise_scale * out_noise
  float sigma_w;  // noise_scale * w_noise: the weight read noise, output noise of std sigma_w |x| per vector
  uint64_t key;
  const ChannelEpilogue* epilogue;
  Converter dac, adc;
  std::vector<std::pair<size_t, size_t>> out_ranges;
  size_t block;   // outputs per register block (block_rows)
  size_t widest;  // the longest input tile
  bool stream;    // write a convolution's output with streaming stores (streams_output)

  TileLayer(const VectorSource& src_, const std::vector<PackedTile>& tiles_, size_t outputs_, size_t vectors_,
            const TileSettings& s_, float noise_scale, uint64_t key_, const ChannelEpilogue* epilogue_)
      : src(src_), tiles(tiles_), outputs(outputs_), vectors(vectors_), s(s_), sigma(noise_scale * s_.out_noise),
        sigma_w(noise_scale * s_.w_noise), key(key_),
        epilogue(epilogue_), dac(s_.inp_bits, s_.inp_bound), adc(s_.out_bits, s_.out_bound),
        out_ranges(split_ranges(outputs_, s_.max_output_size)), block(block_rows(outputs_)), widest(0),
        stream(streams_output(outputs_ * vectors_ * sizeof(float))) {
    for (const auto& t : tiles) widest = std::max(widest, t.end - t.begin);
  }
  // The panel is the raw input: no abs-max scaling and a DAC that changes nothing.
  bool raw_panel() const { return !s.noise_management && dac.identity(); }
};

// One block's working memory, kept per pool thread between blocks and calls. Every buffer is
// output-major or k-major, a row of TileBlock::ld floats (the block's vectors and a cache line
// more), one vector a column.
struct Scratch {
  BlockInput::Buffers input;
  LineFloats panel, rerun_panel, product, total, inverse, quotient, scale, back, noise, spread;
  std::vector<int32_t> saturated;
  std::vector<size_t> pending, again;
};

// The columns a bound-management round computes: every vector of the block (round 0), or the
// vectors still pending, packed into the first columns.
struct Columns {
  const size_t* pending;  // nullptr: column p is vector p of the block
  size_t used;
  size_t vector(size_t p) const { return pending == nullptr ? p : pending[p]; }
  size_t lanes() const { return (used + kLanes - 1) / kLanes * kLanes; }
};

// Computes vectors [first, last) (at most kBlockVectors) into out (per vector `outputs` values, or
// NCHW for a convolution), step by step.
class TileBlock {
 public:
  // The row of every buffer: the block's vectors and a cache line more, so that consecutive rows
  // do not fall into the same few cache sets (a row of 192 floats is 12 lines: 3% slower), and
  // every row starts a line (AVX2's vectors are half a line).
  const size_t ld;

  TileBlock(const TileLayer& layer, Scratch& b, size_t first, size_t last)
      : ld((layer.src.conv ? kBlockVectors : kDenseBlockVectors) + kLineFloats), l_(layer), b_(b), first_(first),
        count_(last - first), input_(layer.src, first, last - first, ld, b.input) {
    const size_t widest = l_.widest * ld + kLanes, rows = std::min(padded_rows(l_.outputs, l_.block), widest_output_tile());
    b_.panel.resize(widest), b_.rerun_panel.resize(widest);
    b_.product.resize(rows * ld), b_.total.resize(l_.outputs * ld + kLanes);
    b_.inverse.resize(ld + kLanes), b_.quotient.resize(ld + kLanes), b_.scale.resize(ld), b_.back.resize(ld);
    b_.saturated.resize(ld), b_.spread.resize(ld + kLanes);
    b_.noise.resize(kNormalsBuffer);
  }

  void run(float* out) {
    single_ = l_.tiles.size() == 1 && l_.out_ranges.size() == 1, direct_ = false;
    if (!single_) std::fill(b_.total.begin(), b_.total.end(), 0.0f);
    for (size_t t = 0; t < l_.tiles.size(); ++t) {
      const float* panel = read(l_.tiles[t]);
      for (const auto& [m0, m1] : l_.out_ranges) output_tile(t, m0, m1, panel);
    }
    timed(Step::kWrite, [&] { write(out); });
  }

 private:
  size_t widest_output_tile() const {
    size_t widest = 0;
    for (const auto& [m0, m1] : l_.out_ranges) widest = std::max(widest, padded_rows(m1 - m0, l_.block) + l_.block);
    return widest;
  }

  // Step 1: the tile's slice of every vector (BlockInput), each vector's inverse abs-max scale,
  // and round 0's panel (the micro-kernel reads the raw vectors straight from the input, when no
  // DAC or scale changes them and the input allows it: panel nullptr).
  const float* read(const PackedTile& tile) {
    timed(Step::kRead, [&] { input_.read(tile.begin, tile.end); });
    float* inverse = b_.inverse.data();
    if (l_.s.noise_management) {
      timed(Step::kAbsMax, [&] {
        input_.abs_max(inverse);
        for (size_t i = 0; i < count_; ++i) inverse[i] = 1.0f / scale_from_abs_max(inverse[i]);
      });
    } else {
      std::fill(inverse, inverse + count_, 1.0f);
    }
    if (!l_.raw_panel()) return timed(Step::kPack, [&] { return pack_round0(); });
    if (input_.raw_panel() != nullptr) return input_.raw_panel();
    // the weight noise reads the panel (column_sigma), so there must be one
    if (l_.sigma_w == 0.0f && input_.slab_rows(slab_bases_, &slab_offsets_)) return nullptr;
    timed(Step::kPack, [&] { input_.pack(b_.panel.data(), [](size_t) { return [](VecF x) { return x; }; }); });
    return b_.panel.data();
  }

  // Step 2 (round 0): the DAC of every vector at its scale, while packing the panel.
  const float* pack_round0() {
    float* panel = b_.panel.data();
    const float* inverse = b_.inverse.data();
    if (!l_.dac.grid) {  // std::min(std::max(x * scale, -bound), bound), a NaN kept
      const VecF high = vec_broadcast(l_.dac.bound), low = vec_broadcast(-l_.dac.bound);
      input_.pack(panel, [=](size_t p) {
        const VecF scale = vec_load(inverse + p);
        return [=](VecF x) { return vec_min(high, vec_max(low, vec_mul(x, scale))); };
      });
      return panel;
    }
    const Converter::Lanes dac = l_.dac.lanes();
    if (l_.s.noise_management && l_.dac.bound >= 1.0f) {
      // With noise management |x * scale| <= 1 + 2^-23, so |level| <= levels when the bound is at
      // least 1: the clip changes nothing and is left out. The quotient a / step (a = x * scale)
      // needs no division and no check: q = a * (1 / step) corrected by q + (a - step q) * (1 /
      // step), the residual exact in an FMA, is the correctly rounded quotient (Markstein's
      // correction step; tools/check_dac_quotient.cc tries every float a in [-1.01, 1.01] for a
      // bound and a number of levels). Checking q instead sent 8% of ResNet-20's vectors, and
      // 18% under PCM weights, to the division, at a mispredicted branch each.
      input_.pack(panel, [=](size_t p) {
        const VecF scale = vec_load(inverse + p);
        return [=](VecF x) {
          const VecF a = vec_mul(x, scale), q = vec_mul(a, dac.inverse);
          return vec_mul(vec_round(vec_fma(vec_fnma(dac.step, q, a), dac.inverse, q)), dac.step);
        };
      });
      return panel;
    }
    // level(x * scale) from one product, x * (scale / step): it is at most 4 ulp from the quotient
    // (x * scale) / step, within the margin that Converter::level proves for its 3 ulp, so the
    // same check decides whether it rounds like the division (else the division runs); |x *
    // scale| may be anything here, where the correction above could overflow.
    float* quotient = b_.quotient.data();
    const float inverse_step = 1.0f / l_.dac.step;
    for (size_t p = 0; p < count_; ++p) quotient[p] = inverse[p] * inverse_step;
    input_.pack(panel, [=](size_t p) {
      const VecF quotient_p = vec_load(quotient + p), inverse_p = vec_load(inverse + p);
      return [=](VecF x) {
        const VecF q = vec_mul(x, quotient_p), r = vec_round(q);
        const VecF level = vec_all_greater(dac.near, vec_abs(vec_sub(q, r))) ? r : vec_round(vec_div(vec_mul(x, inverse_p), dac.step));
        return dac.clip_level(level);
      };
    });
    return panel;
  }

  // Step 2 (bound-management round r > 0): the DAC at the round's scale (the inverse abs-max / 2^r)
  // while packing the pending vectors into the first columns of `panel`; columns past them are zero.
  void pack(size_t width, int64_t r, Columns columns, float* panel) {
    const float reduction = static_cast<float>(int64_t{1} << r);
    float* scale = b_.scale.data();
    for (size_t p = 0; p < columns.used; ++p) scale[p] = b_.inverse[columns.vector(p)] / reduction;
    for (size_t e = 0; e < width; ++e) {
      float* row = panel + e * ld;
      for (size_t p = 0; p < columns.used; ++p) row[p] = input_.element(e, columns.vector(p));
      l_.dac.scaled(row, scale, row, columns.used);
      std::fill(row + columns.used, row + columns.lanes(), 0.0f);
    }
  }

  // Steps 3 to 6 for outputs [m0, m1) of input tile t: the bound-management rounds (round 0 from
  // `panel`, nullptr: from the input slab).
  void output_tile(size_t t, size_t m0, size_t m1, const float* panel) {
    const PackedTile& tile = l_.tiles[t];
    Columns columns{nullptr, count_};
    for (int64_t r = 0; r < l_.s.bm_rounds && columns.used > 0; ++r) {
      if (r > 0) {
        timed(Step::kRerunPack, [&] { pack(tile.end - tile.begin, r, columns, b_.rerun_panel.data()); });
        panel = b_.rerun_panel.data();
      } else {  // round 0's scales (an earlier output tile's reruns may have overwritten them)
        std::copy(b_.inverse.begin(), b_.inverse.begin() + count_, b_.scale.begin());
      }
      for (size_t p = 0; p < columns.used; ++p) b_.back[p] = 1.0f / b_.scale[p];
      const size_t row0 = m0 / l_.block * l_.block;
      timed(Step::kProduct, [&] { multiply(tile, panel, row0, m1, columns); });
      if (l_.sigma != 0.0f || l_.sigma_w != 0.0f)
        timed(Step::kNoise, [&] { add_noise(r, t, m0, m1, row0, columns, column_sigma(panel, tile, columns)); });
      const bool last_round = r == l_.s.bm_rounds - 1;
      const bool any_saturated = timed(Step::kConvert, [&] { return convert(m0, m1, row0, columns); }) && !last_round;
      if (single_ && r == 0) {  // one tile each way: round 0's product is the sums, unless a vector reruns
        if (!any_saturated) {
          direct_ = true;
          break;
        }
        std::fill(b_.total.begin(), b_.total.end(), 0.0f);
      }
      timed(Step::kConvert, [&] { accumulate(tile, m0, m1, row0, columns, any_saturated); });
      if (!any_saturated) break;
      b_.again.clear();
      for (size_t p = 0; p < columns.used; ++p)
        if (b_.saturated[p]) b_.again.push_back(columns.vector(p));
      b_.pending.swap(b_.again);
      columns = {b_.pending.data(), b_.pending.size()};
    }
  }

  // Step 3: product rows [row0, m1) (whole register blocks) for the columns, from the panel (or
  // straight from the input slab: panel nullptr).
  void multiply(const PackedTile& tile, const float* panel, size_t row0, size_t m1, Columns columns) {
    const size_t width = tile.end - tile.begin, rows = padded_rows(m1, l_.block) - row0, vectors = columns.lanes() / kLanes;
    const float* weights = tile.weights.data() + row0 * width;
    if (panel == nullptr) {
      gemm(l_.block, width, rows, vectors, weights, SlabRows{slab_bases_, slab_offsets_}, b_.product.data(), ld);
    } else {
      gemm(l_.block, width, rows, vectors, weights, PanelRows{panel, ld}, b_.product.data(), ld);
    }
  }

  // Step 4a: the noise's std per column (reference.tile_sigma): sqrt(sigma^2 + sigma_w^2 sum(u^2)), u the
  // column of the panel the round multiplied, its squares summed in element order; nullptr when
  // there is no weight noise (std sigma for every column).
  const float* column_sigma(const float* panel, const PackedTile& tile, Columns columns) {
    if (l_.sigma_w == 0.0f) return nullptr;
    float* sigma = b_.spread.data();
    std::fill(sigma, sigma + columns.lanes(), 0.0f);
    for (size_t e = 0; e < tile.end - tile.begin; ++e) {
      const float* row = panel + e * ld;
      for (size_t p = 0; p < columns.used; ++p) sigma[p] += row[p] * row[p];
    }
    const float variance = l_.sigma * l_.sigma, weight_variance = l_.sigma_w * l_.sigma_w;
    for (size_t p = 0; p < columns.lanes(); ++p) sigma[p] = std::sqrt(variance + weight_variance * sigma[p]);
    return sigma;
  }

  // Step 4: product[m - row0][p] += sigma_p * normal(((r T + t) N + n) M + m), n the column's
  // vector, sigma_p its std (spread, nullptr: sigma).
  // With M even, normals 2j and 2j + 1 of a vector are outputs 2j and 2j + 1, one Box-Muller pair:
  // a SIMD vector of columns computes its pairs for two rows at once, the columns' counters
  // (M / 2 apart for consecutive vectors) in the lanes. With M odd a pair may span two vectors, and
  // each column takes its stretch of the stream.
  void add_noise(int64_t r, size_t t, size_t m0, size_t m1, size_t row0, Columns columns, const float* spread) {
    const uint64_t outputs = l_.outputs, key = l_.key;
    const uint64_t start = (static_cast<uint64_t>(r) * l_.tiles.size() + t) * l_.vectors * outputs;
    float* product = b_.product.data() - row0 * ld;  // indexed by output
    if (outputs % 2 != 0) {
      for (size_t p = 0; p < columns.used; ++p) {
        const uint64_t from = start + (first_ + columns.vector(p)) * outputs;
        for (size_t m = m0; m < m1; m += kBlock) {
          const size_t n = std::min(kBlock, m1 - m);
          const float* z = normals(key, from + m, n, b_.noise.data());
          const float sigma = spread != nullptr ? spread[p] : l_.sigma;
          for (size_t i = 0; i < n; ++i) product[(m + i) * ld + p] += sigma * z[i];
        }
      }
      return;
    }
    alignas(64) uint64_t y[kLanes];
    for (size_t p0 = 0; p0 < columns.used; p0 += kLanes) {
      Products base;  // the lanes' counter products for outputs 0 and 1
      if (columns.pending == nullptr) {
        base = products((start / 2 + (first_ + p0) * (outputs / 2)) * key, outputs / 2 * key);
      } else {
        for (size_t i = 0; i < kLanes; ++i) {
          const size_t p = std::min(p0 + i, columns.used - 1);
          y[i] = (start / 2 + (first_ + columns.vector(p)) * (outputs / 2)) * key;
        }
        base = products(y);
      }
      const VecF sigma = spread != nullptr ? vec_load(spread + p0) : vec_broadcast(l_.sigma);
      const size_t pair0 = m0 / 2, stride = ld;
      for_each_pair_vector(products_plus(base, pair0 * key), key, key, (m1 + 1) / 2 - pair0,
                           [=](size_t j, VecF even, VecF odd) {
                             const size_t m = 2 * (pair0 + j);
                             float* row = product + m * stride + p0;
                             if (m >= m0) vec_store(row, vec_add(vec_load(row), vec_mul(sigma, even)));
                             if (m + 1 < m1) vec_store(row + stride, vec_add(vec_load(row + stride), vec_mul(sigma, odd)));
                           });
    }
  }

  // Step 5: the ADC on rows [m0, m1), and which columns saturated it (b_.saturated); whether any did.
  bool convert(size_t m0, size_t m1, size_t row0, Columns columns) {
    int32_t* saturated = b_.saturated.data();
    if (l_.adc.identity()) {
      std::fill(saturated, saturated + columns.used, 0);
      return false;
    }
    const size_t lanes = columns.lanes();
    VecI beyond[kBlockVectors / kLanes];
    for (size_t g = 0; g < lanes / kLanes; ++g) beyond[g] = veci_broadcast(0);
    for (size_t m = m0; m < m1; ++m) l_.adc.convert(b_.product.data() + (m - row0) * ld, lanes, beyond);
    for (size_t g = 0; g < lanes / kLanes; ++g) vec_store(reinterpret_cast<float*>(saturated) + g * kLanes, vec_from_bits(beyond[g]));
    bool any = false;
    for (size_t p = 0; p < columns.used; ++p) any |= saturated[p] != 0;
    return any;
  }

  // Step 6: the sums of the accepted columns (all but those saturated, unless it is the last
  // round): total[m][vector] += (y * back) * alpha[m], in input tile order.
  void accumulate(const PackedTile& tile, size_t m0, size_t m1, size_t row0, Columns columns, bool any_saturated) {
    const float* back = b_.back.data();
    const int32_t* saturated = b_.saturated.data();
    for (size_t m = m0; m < m1; ++m) {
      const float* y = b_.product.data() + (m - row0) * ld;
      float* sum = b_.total.data() + m * ld;
      const float alpha = tile.alpha[m];
      if (columns.pending == nullptr && !any_saturated) {
        const VecF a = vec_broadcast(alpha);
        for (size_t p = 0; p < columns.used; p += kLanes)
          vec_store(sum + p, vec_add(vec_load(sum + p), vec_mul(vec_mul(vec_load(y + p), vec_load(back + p)), a)));
      } else {
        for (size_t p = 0; p < columns.used; ++p)
          if (!any_saturated || !saturated[p]) sum[columns.vector(p)] += (y[p] * back[p]) * alpha;
      }
    }
  }

  // Step 7: the epilogue, and the block into out.
  void write(float* out) const {
    const size_t outputs = l_.outputs;
    // (everything in locals, per output row in registers: the stores may alias any memory, and
    // what a loop reads through a pointer or a copied closure would be read again per vector)
    const ChannelEpilogue* epilogue = l_.epilogue;
    const bool fused = epilogue != nullptr, relu = fused && epilogue->relu, direct = direct_;
    const float* residual = fused ? epilogue->residual : nullptr;
    const float* sums = direct ? b_.product.data() : b_.total.data();
    const float* back = b_.back.data();
    const size_t stride = ld;  // between output rows of the sums
    const bool stream = l_.stream;
    // output m's lanes from column p, written at `at` (`lanes` of them): its sum (direct: round
    // 0's product as accumulate would have added it to zeros, 0 + (y * back) * alpha), then
    // std::max(y * scale + shift (+ residual), 0.0f) (or without the ReLU), unless no epilogue is fused
    auto value = [&](size_t m, VecF alpha, VecF scale, VecF shift, size_t p, size_t at, size_t lanes) {
      VecF v = vec_load(sums + m * stride + p);
      if (direct) v = vec_add(vec_mul(vec_mul(v, vec_load(back + p)), alpha), vec_zero());
      if (!fused) return v;
      v = vec_add(vec_mul(v, scale), shift);
      if (residual != nullptr) v = vec_add(v, lanes == kLanes ? vec_load(residual + at) : vec_load_first(residual + at, lanes));
      return relu ? vec_max(vec_zero(), v) : v;
    };
    auto alpha = [&](size_t m) { return vec_broadcast(direct ? l_.tiles[0].alpha[m] : 1.0f); };
    auto scale = [&](size_t m) { return vec_broadcast(fused ? epilogue->scale[m] : 1.0f); };
    auto shift = [&](size_t m) { return vec_broadcast(fused ? epilogue->shift[m] : 0.0f); };
    if (!l_.src.conv) {  // rows of outputs (no residual: only a convolution takes one)
      // kLanes outputs of kLanes vectors at a time, turned in L1 ([vector][output]) so that each
      // vector's outputs go out as one contiguous store, not kLanes stores a row apart
      alignas(64) float turned[kLanes][kLanes];
      alignas(64) float lane[kLanes];
      const size_t count = count_, first = first_;
      for (size_t m0 = 0; m0 < outputs; m0 += kLanes) {
        const size_t width = std::min(kLanes, outputs - m0);
        for (size_t p = 0; p < count; p += kLanes) {
          for (size_t j = 0; j < width; ++j) {
            const size_t m = m0 + j;
            vec_store(lane, value(m, alpha(m), scale(m), shift(m), p, 0, kLanes));
            for (size_t i = 0; i < kLanes; ++i) turned[i][j] = lane[i];
          }
          for (size_t i = 0; i < std::min(kLanes, count - p); ++i) {
            float* row = out + (first + p + i) * outputs + m0;
            if (width == kLanes) {
              vec_store(row, vec_load(turned[i]));
            } else {
              vec_store_first(row, vec_load(turned[i]), width);
            }
          }
        }
      }
      return;
    }
    // NCHW: per run of vectors within one image, each channel's values are contiguous
    const size_t per_image = l_.src.out_h * l_.src.out_w;
    for (size_t i = 0; i < count_;) {
      const size_t n = first_ + i, image = n / per_image, position = n % per_image;
      const size_t length = std::min(count_ - i, per_image - position);
      const size_t base = image * outputs * per_image + position;
      for (size_t m = 0; m < outputs; ++m) {
        const VecF a = alpha(m), c = scale(m), d = shift(m);
        const size_t to = base + m * per_image;
        size_t q = 0;
        if (stream && reinterpret_cast<uintptr_t>(out + to) % sizeof(VecF) == 0) {
          for (; q + kLanes <= length; q += kLanes) vec_stream(out + to + q, value(m, a, c, d, i + q, to + q, kLanes));
        }
        for (; q + kLanes <= length; q += kLanes) vec_store(out + to + q, value(m, a, c, d, i + q, to + q, kLanes));
        if (q < length) vec_store_first(out + to + q, value(m, a, c, d, i + q, to + q, length - q), length - q);
      }
      i += length;
    }
    if (stream) vec_stream_fence();
  }

  const TileLayer& l_;
  Scratch& b_;
  bool single_ = false;  // one input tile and one output tile
  bool direct_ = false;  // the sums are round 0's product (write applies accumulate's step to it)
  size_t first_, count_;
  BlockInput input_;
  const float* slab_bases_[kBlockVectors / kLanes] = {};  // where round 0 reads the patch rows (panel nullptr)
  const int64_t* slab_offsets_ = nullptr;
};

// The whole op: vectors [0, vectors) split over ORT's thread pool in blocks.
inline void analog_tile(OrtKernelContext* context, const VectorSource& src, const std::vector<PackedTile>& tiles,
                        size_t outputs, size_t vectors, const TileSettings& s, float noise_scale, int64_t seed,
                        const ChannelEpilogue* epilogue, float* out) {
  if (vectors == 0 || outputs == 0) return;
  const TileLayer layer(src, tiles, outputs, vectors, s, noise_scale, stream_key(seed, s.stream), epilogue);
  const size_t block = src.conv ? kBlockVectors : kDenseBlockVectors;
  const size_t tasks = (vectors + block - 1) / block;
  auto body = [&](size_t task) {
    thread_local Scratch scratch;
    const size_t first = task * block, last = std::min(vectors, first + block);
    TileBlock(layer, scratch, first, last).run(out);
  };
  parallel_for(context, tasks, body);
}

}  // namespace analog
