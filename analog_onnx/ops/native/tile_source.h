// Where the tile's input vectors come from: rows of a [N, K] matrix, or the im2col patches of an
// NCHW image read straight from the image (no im2col tensor exists in memory). A block of vectors
// is read into a k-major panel, one vector per SIMD lane, for the micro-kernel.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "simd.h"
#include "tile_gemm.h"

namespace analog {

// Channels ahead of the one a block copies into its slab whose input rows it asks the cache for.
constexpr size_t kAhead = 6;

struct VectorSource {
  const float* x;
  size_t k;  // vector length
  bool conv = false;
  size_t size = 0;  // elements of X (conv only)
  // convolution geometry (conv only)
  int64_t channels = 0, height = 0, width = 0, kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1, pad_top = 0,
          pad_left = 0, out_h = 1, out_w = 1;

  // Elements [begin, end) of the rows [first, first + count) of a dense X into a k-major panel:
  // panel[(e - begin) * ld + i] is element e of vector first + i.
  void read_rows(size_t first, size_t count, size_t begin, size_t end, float* panel, size_t ld) const {
    for (size_t i = 0; i < count; ++i) {
      const float* row = x + (first + i) * k;
      for (size_t e = begin; e < end; ++e) panel[(e - begin) * ld + i] = row[e];
    }
  }
};

// peak[i] = max over rows e < rows of |panel[e * ld + i]| (0 for no rows), i < kDenseBlockVectors
// (a dense block's raw panel), as std::max(peak, |x|) in row order would (a NaN never wins); the
// row in registers.
inline void block_abs_max(const float* panel, size_t rows, size_t ld, float* peak) {
  constexpr size_t columns = kDenseBlockVectors / kLanes;
  VecF m[columns];
  for (size_t j = 0; j < columns; ++j) m[j] = vec_zero();
  for (size_t e = 0; e < rows; ++e)
#pragma GCC unroll 12
    for (size_t j = 0; j < columns; ++j) m[j] = vec_max(vec_abs(vec_load(panel + e * ld + j * kLanes)), m[j]);
  for (size_t j = 0; j < columns; ++j) vec_store(peak + j * kLanes, m[j]);
}

// The input vectors of one block, read once per input tile and packed into panels as the tile's
// steps ask: a dense X's rows as a raw k-major panel; a convolution's input rows as a slab that
// holds the rows of every channel the block reads, zero-padded, so that each patch row of a run of
// vectors is a plain copy from the slab (no masks, no bounds), and the padding is written once.
class BlockInput {
 public:
  struct Run {
    size_t column;
    int64_t length, corner;  // corner: slab index of the first vector's patch corner
  };
  struct Buffers {
    LineFloats slab, raw;
    LineFloats inside;  // per column of a slab row, all bits set where it holds an input column
    std::vector<int64_t> offsets, corners;  // per element of the tile, per column
    std::vector<Run> runs;
    LineFloats peaks;           // per slab position, the abs-max over the tile's channels
    std::vector<int64_t> taps;  // per kernel tap, its offset in a plane of peaks
  };

  BlockInput(const VectorSource& src, size_t first, size_t count, size_t ld, Buffers& b)
      : src_(src), first_(first), count_(count), ld_(ld), b_(b) {}

  // Reads elements [begin, end) of every vector. A tile of no elements (K = 0) reads as an empty
  // dense panel: a convolution has no slab rows to read then.
  void read(size_t begin, size_t end) {
    begin_ = begin, end_ = end;
    slab_ = src_.conv && end > begin;
    if (!slab_) {
      b_.raw.resize((end - begin) * ld_ + kLanes);
      src_.read_rows(first_, count_, begin, end, b_.raw.data(), ld_);
    } else {
      read_slab();
    }
  }

  // The raw panel of a dense source (k-major, ld apart), nullptr for a convolution.
  const float* raw_panel() const { return slab_ ? nullptr : b_.raw.data(); }

  // peak[p] = max over the elements of column p of |x| (0 for none), as std::max(peak, |x|) in
  // element order would (a NaN never wins); columns up to the next whole vector may be written.
  // A tile of whole channels takes the max over the channels at each slab position first, then
  // over the kernel's taps: kh kw reads per vector instead of one per element (max is exact in any
  // order).
  void abs_max(float* peak) {
    if (!slab_) return block_abs_max(b_.raw.data(), end_ - begin_, ld_, peak);
    const size_t patch = static_cast<size_t>(src_.kh * src_.kw);
    const bool whole_channels = begin_ % patch == 0 && end_ % patch == 0;
    const float* base = whole_channels ? channel_peaks() : b_.slab.data();
    const int64_t* offsets = whole_channels ? b_.taps.data() : b_.offsets.data();
    const size_t reads = whole_channels ? patch : end_ - begin_;
    for_each_run(base, offsets, whole_channels, [=](const Run& run, int64_t vectors, auto read) {
      for (int64_t v = 0; v < vectors; ++v) {
        VecF m = vec_zero();
        for (size_t e = 0; e < reads; ++e) m = vec_max(vec_abs(read(e, v)), m);
        store(peak + run.column, run.column, v, m);
      }
    });
  }

  // panel[e][p] = column(p)(x[e][p..p + kLanes)) for every element e of the tile and every column,
  // a SIMD vector of columns at a time (p a column where a vector starts): column(p) makes the
  // function of one vector of columns, its constants in registers for all the elements. Where runs
  // of a convolution are shorter than a vector, the next run's vector overwrites the lanes past
  // the previous one's end. (Everything the loops use is captured by value: the vector stores may
  // alias any memory, so what they read through a reference would be loaded again for every vector.)
  template <typename Column>
  void pack(float* panel, Column column) const {
    const size_t elements = end_ - begin_, ld = ld_;
    if (!slab_) {
      const float* raw = b_.raw.data();
      for (size_t p = 0; p < count_; p += kLanes) {
        const auto f = column(p);
        for (size_t e = 0; e < elements; ++e) vec_store(panel + e * ld + p, f(vec_load(raw + e * ld + p)));
      }
      return;
    }
    for_each_run(b_.slab.data(), b_.offsets.data(), false, [=](const Run& run, int64_t vectors, auto read) {
      for (int64_t v = 0; v < vectors; ++v) {
        const size_t p = run.column + static_cast<size_t>(v) * kLanes;
        const auto f = column(p);
        float* to = panel + p;
        if (p + kLanes <= ld) {
          for (size_t e = 0; e < elements; ++e) vec_store(to + e * ld, f(read(e, v)));
        } else {  // the block's last vector: nothing is written past column ld
          for (size_t e = 0; e < elements; ++e) vec_store_first(to + e * ld, f(read(e, v)), ld - p);
        }
      }
    });
  }

  // Where a SIMD vector of columns starts in the slab for every vector of a block that the
  // micro-kernel can read straight from the slab (SlabRows: stride 1, each vector within one run),
  // with the tile's element offsets; false otherwise.
  bool slab_rows(const float** bases, const int64_t** offsets) const {
    if (!slab_ || src_.sw != 1) return false;
    for (size_t r = 0; r < b_.runs.size(); ++r) {
      const Run& run = b_.runs[r];
      const bool last = r + 1 == b_.runs.size();
      if (run.column % kLanes != 0 || (!last && run.length % static_cast<int64_t>(kLanes) != 0)) return false;
      for (int64_t q = 0; q < run.length; q += static_cast<int64_t>(kLanes))
        bases[(run.column + q) / kLanes] = b_.slab.data() + run.corner + q;
    }
    *offsets = b_.offsets.data();
    return true;
  }

  // Element e (of the tile) of column p's vector.
  float element(size_t e, size_t p) const {
    return slab_ ? b_.slab[b_.corners[p] + b_.offsets[e]] : b_.raw[e * ld_ + p];
  }

 private:
  // body(run, vectors, read) for every run of a convolution, read(e, v) giving lanes q of vector v
  // of the run for element e, slab[corner + offsets[e] + (v kLanes + q) sw]; a loop per stride.
  // `base`: the slab, or (`plane`) the peaks, one plane per segment where the slab has a plane per
  // channel.
  template <typename Body>
  void for_each_run(const float* base, const int64_t* offsets, bool plane, Body body) const {
    constexpr int64_t lanes = static_cast<int64_t>(kLanes);
    const int64_t peaks = static_cast<int64_t>(groups_) * plane_;  // a segment's peaks
    for (const Run& run : b_.runs) {
      const int64_t vectors = (run.length + lanes - 1) / lanes;
      const float* corner = base + (plane ? run.corner / segment_ * peaks + run.corner % segment_ : run.corner);
      if (src_.sw == 1) {
        body(run, vectors, [=](size_t e, int64_t v) { return vec_load(corner + offsets[e] + v * lanes); });
      } else if (src_.sw == 2) {
        body(run, vectors, [=](size_t e, int64_t v) { return vec_load_stride2(corner + offsets[e] + 2 * v * lanes); });
      } else {
        const int64_t stride = src_.sw;
        body(run, vectors, [=](size_t e, int64_t v) { return strided(corner + offsets[e] + v * lanes * stride, stride); });
      }
    }
  }

  // The peaks: per segment and slab position, the max of |x| over the tile's channels; and each
  // kernel tap's offset in a plane of them.
  const float* channel_peaks() {
    const int64_t groups = static_cast<int64_t>(segments_ * groups_);
    b_.peaks.resize(static_cast<size_t>(groups * plane_ + kLanes));
    const float* slab = b_.slab.data();
    float* peaks = b_.peaks.data();
    const int64_t plane = plane_;
    const size_t channels = channels_;
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t q = 0; q < plane; q += static_cast<int64_t>(kLanes)) {
        const float* at = slab + g * static_cast<int64_t>(channels) * plane + q;
        VecF m = vec_zero();
        for (size_t c = 0; c < channels; ++c) m = vec_max(vec_abs(vec_load(at + static_cast<int64_t>(c) * plane)), m);
        vec_store(peaks + g * plane + q, m);
      }
    b_.taps.clear();
    for (int64_t i = 0; i < src_.kh; ++i)
      for (int64_t j = 0; j < src_.kw; ++j) b_.taps.push_back(i * src_.dh * row_stride_ + j * (shifted_ ? plane_ : src_.dw));
    return peaks;
  }

  // p[l * stride] in lane l
  [[gnu::noinline]] static VecF strided(const float* p, int64_t stride) {
    alignas(64) float lanes[kLanes];
    for (size_t l = 0; l < kLanes; ++l) lanes[l] = p[static_cast<int64_t>(l) * stride];
    return vec_load(lanes);
  }

  // Vector v of a run whose first column `column` is at `row`: runs are written in column order,
  // each overwriting the lanes past the previous one's end; nothing is written past column ld.
  void store(float* row, size_t column, int64_t v, VecF value) const {
    const size_t q = static_cast<size_t>(v) * kLanes;
    if (column + q + kLanes > ld_) {
      vec_store_first(row + q, value, ld_ - column - q);
    } else {
      vec_store(row + q, value);
    }
  }

  // The slab: for each image the block touches (a segment), the input rows its patches read, of
  // the tile's channels, zero-padded, in one of two layouts:
  // - rows: [segment][channel][row][column], column c holding input column c - pad_left, with
  //   `pad_left` zeros before each row and zeros after it; a run (one output row) reads every
  //   sw-th column of a row.
  // - shifted (stride 1, outputs as wide as the image and narrower than a vector, such as 8 on
  //   AVX-512, where a vector of one output row would leave lanes empty):
  //   [segment][kx][channel][row][output column], a plane per kernel column kx holding what that
  //   tap reads for each output column, rows out_w apart. Then an image's output positions are
  //   consecutive in every plane, and a vector spans output rows.
  void read_slab() {
    const VectorSource& s = src_;
    const size_t patch = static_cast<size_t>(s.kh * s.kw);
    const size_t c0 = begin_ / patch, c1 = (end_ - 1) / patch + 1;
    const size_t per_image = s.out_h * s.out_w;
    constexpr int64_t lanes = static_cast<int64_t>(kLanes);
    // (a vector may not span images: the block starts at a whole vector, so whole vectors per image
    // suffice; wider outputs that are not whole vectors measured no faster shifted: 28 and 56 wide)
    shifted_ = s.sh == 1 && s.sw == 1 && s.width == static_cast<int64_t>(s.out_w) && s.out_w < kLanes &&
               kLanes % s.out_w == 0 && per_image % kLanes == 0 && first_ % kLanes == 0;
    // runs of consecutive output positions of one image (one output row, or shifted, all the
    // block's rows of the image), and the images' row ranges
    struct Segment {
      size_t image;
      int64_t first_row, last_row;  // output rows
    };
    struct Place {
      size_t column, image, oh, ow, length;
    };
    Segment segments[kBlockVectors];
    Place places[kBlockVectors];  // the runs' output positions (one division per block, then steps)
    size_t segment_count = 0, run_count = 0;
    size_t image = first_ / per_image, oh = (first_ % per_image) / s.out_w, ow = first_ % s.out_w;
    for (size_t i = 0; i < count_;) {
      const size_t length = std::min(count_ - i, s.out_w - ow);
      if (shifted_ && run_count > 0 && places[run_count - 1].image == image) {
        places[run_count - 1].length += length;
      } else {
        places[run_count++] = {i, image, oh, ow, length};
      }
      if (segment_count == 0 || segments[segment_count - 1].image != image) segments[segment_count++] = {image, static_cast<int64_t>(oh), 0};
      segments[segment_count - 1].last_row = static_cast<int64_t>(oh);
      i += length, ow = 0;
      if (++oh == s.out_h) oh = 0, ++image;
    }
    int64_t rows = 0;
    for (size_t g = 0; g < segment_count; ++g)
      rows = std::max(rows, (segments[g].last_row - segments[g].first_row) * s.sh + (s.kh - 1) * s.dh + 1);
    if (shifted_) {
      row_stride_ = static_cast<int64_t>(s.out_w), groups_ = static_cast<size_t>(s.kw);
    } else {
      // a slab row holds the columns the runs' whole vectors read: up to (ow + vectors kLanes) sw
      // - 1 (stride 2 reads pairs) plus the kernel's reach, in whole vectors
      const int64_t stride = std::max<int64_t>(s.sw, 1);
      int64_t columns = 0;
      for (size_t r = 0; r < run_count; ++r) {
        const int64_t vectors = (static_cast<int64_t>(places[r].length) + lanes - 1) / lanes;
        columns = std::max(columns, (static_cast<int64_t>(places[r].ow) + vectors * lanes) * stride + (s.kw - 1) * s.dw);
      }
      row_stride_ = (columns + lanes - 1) / lanes * lanes, groups_ = 1;
    }
    plane_ = rows * row_stride_, channels_ = c1 - c0;
    segment_ = static_cast<int64_t>(groups_ * channels_) * plane_, segments_ = segment_count;
    // (a whole vector at the end of the last row, or of a plane of peaks, may reach a vector past it)
    b_.slab.resize(static_cast<size_t>(segment_count * segment_ + lanes));
    for (size_t g = 0; g < segment_count; ++g) {
      const int64_t y_low = segments[g].first_row * s.sh - s.pad_top;
      float* segment = b_.slab.data() + g * segment_;
      if (shifted_) {
        copy_shifted(segments[g].image, y_low, c0, c1, segment);
      } else {
        copy_rows(segments[g].image, y_low, rows, c0, c1, segment);
      }
    }
    b_.runs.clear();
    b_.corners.resize(ld_ + kLanes);
    size_t g = 0;
    for (size_t r = 0; r < run_count; ++r) {
      const Place& place = places[r];
      while (segments[g].image != place.image) ++g;
      const int64_t corner = static_cast<int64_t>(g) * segment_ +
                             (static_cast<int64_t>(place.oh) - segments[g].first_row) * s.sh * row_stride_ +
                             static_cast<int64_t>(place.ow) * s.sw;
      b_.runs.push_back({place.column, static_cast<int64_t>(place.length), corner});
      for (size_t q = 0; q < place.length; ++q) b_.corners[place.column + q] = corner + static_cast<int64_t>(q) * s.sw;
    }
    b_.offsets.resize(end_ - begin_);
    for (size_t c = c0, e = c0 * patch; c < c1; ++c)
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < s.kw; ++j, ++e)
          if (e >= begin_ && e < end_) {
            const int64_t column = shifted_ ? j * static_cast<int64_t>(channels_) * plane_ : j * s.dw;
            b_.offsets[e - begin_] = static_cast<int64_t>(c - c0) * plane_ + i * s.dh * row_stride_ + column;
          }
  }

  // The rows layout of one segment: rows [y_low, y_low + rows) of channels [c0, c1) of the image.
  void copy_rows(size_t image, int64_t y_low, int64_t rows, size_t c0, size_t c1, float* segment) const {
    const VectorSource& s = src_;
    constexpr int64_t lanes = static_cast<int64_t>(kLanes);
    const int64_t pad = s.pad_left, width = s.width;
    // the input rows of channel c this segment reads, asked for kAhead channels before they are
    // copied: each channel's rows are a short run a plane away from the last, which the hardware
    // prefetchers do not foresee
    const int64_t y0 = std::clamp<int64_t>(y_low, 0, s.height), y1 = std::clamp<int64_t>(y_low + rows, y0, s.height);
    auto prefetch = [&](size_t c) {
      const char* rows_of = reinterpret_cast<const char*>(s.x + ((image * s.channels + c) * s.height + y0) * width);
      for (int64_t b = 0; b < (y1 - y0) * width * static_cast<int64_t>(sizeof(float)); b += 64) _mm_prefetch(rows_of + b, _MM_HINT_T0);
    };
    for (size_t c = c0; c < std::min(c1, c0 + kAhead); ++c) prefetch(c);
    // the slab columns that hold input columns (all bits set), and the padding (zeros)
    b_.inside.resize(static_cast<size_t>(row_stride_));
    for (int64_t q = 0; q < row_stride_; q += lanes)
      vec_store(b_.inside.data() + q, vec_window_bits(static_cast<int>(std::clamp<int64_t>(pad - q, 0, lanes)),
                                                      static_cast<int>(std::clamp<int64_t>(width + pad - q, 0, lanes))));
    // (in locals: the stores may alias any memory, members would be read again for every vector)
    const float* const inside = b_.inside.data();
    const float* const x = s.x;
    const float* const x_end = s.x + s.size;
    const int64_t height = s.height, row_stride = row_stride_, plane = plane_;
    for (size_t c = c0; c < c1; ++c) {
      const float* channel = x + (image * s.channels + c) * height * width;
      if (c + kAhead < c1) prefetch(c + kAhead);
      for (int64_t r = 0; r < rows; ++r) {
        float* row = segment + static_cast<int64_t>(c - c0) * plane + r * row_stride;
        const int64_t y = y_low + r;
        if (y < 0 || y >= height) {
          for (int64_t q = 0; q < row_stride; q += lanes) vec_store(row + q, vec_zero());
          continue;
        }
        const float* from = channel + y * width - pad;  // slab column q holds from[q] (input column q - pad)
        if (from >= x && from + row_stride <= x_end) {  // whole loads, the padding's lanes zeroed
          for (int64_t q = 0; q < row_stride; q += lanes) vec_store(row + q, vec_and(vec_load(from + q), vec_load(inside + q)));
        } else {  // at the ends of X: only the input's lanes are read
          for (int64_t q = 0; q < row_stride; q += lanes) vec_store(row + q, vec_load_masked(from + q, vec_load(inside + q)));
        }
      }
    }
  }

  // The shifted layout of one segment: plane (kx, c) row r column ox holds input row y_low + r,
  // column ox + kx dw - pad_left (0 outside the image). With rows as wide as the image's and a
  // whole number of them per vector, a plane is the input's rows read from a shifted start, a
  // vector at a time, with the same lanes (the columns past an edge) zeroed in every vector.
  void copy_shifted(size_t image, int64_t y_low, size_t c0, size_t c1, float* segment) const {
    const VectorSource& s = src_;
    constexpr int64_t lanes = static_cast<int64_t>(kLanes);
    const int64_t width = s.width, per_vector = lanes / width;  // rows
    for (int64_t kx = 0; kx < s.kw; ++kx) {
      const int64_t shift = kx * s.dw - s.pad_left;  // the input column of output column 0
      alignas(64) int32_t inside[kLanes];
      for (int64_t l = 0; l < lanes; ++l) inside[l] = l % width + shift >= 0 && l % width + shift < width ? -1 : 0;
      const VecF columns = vec_load(reinterpret_cast<const float*>(inside));
      for (size_t c = c0; c < c1; ++c) {
        const float* channel = s.x + (image * s.channels + c) * s.height * width;
        float* plane = segment + (kx * static_cast<int64_t>(channels_) + static_cast<int64_t>(c - c0)) * plane_;
        // whole vectors: the last may reach into the next plane (written after it) or the slack
        for (int64_t q = 0; q < plane_; q += lanes) {
          const int64_t y = y_low + q / width;
          // the vector's rows inside the image: [first, last) of its own
          const int64_t first = std::clamp<int64_t>(-y, 0, per_vector), last = std::clamp<int64_t>(s.height - y, first, per_vector);
          const float* from = channel + y * width + shift;
          VecF value = vec_zero();
          if (first == 0 && last == per_vector && from >= s.x && from + lanes <= s.x + s.size) {
            value = vec_and(vec_load(from), columns);
          } else if (last > first) {  // at the image's top or bottom edge, or at the ends of X
            value = vec_load_masked(from, vec_and(columns, vec_window_bits(static_cast<int>(first * width), static_cast<int>(last * width))));
          }
          vec_store(plane + q, value);
        }
      }
    }
  }

  const VectorSource& src_;
  size_t first_, count_, ld_;
  Buffers& b_;
  size_t begin_ = 0, end_ = 0;
  bool slab_ = false;  // the elements are in the slab (a convolution with elements), else in raw
  bool shifted_ = false;  // the slab's layout (read_slab): shifted, else rows
  int64_t row_stride_ = 0, plane_ = 0;
  int64_t segment_ = 0;   // floats per segment
  size_t channels_ = 0;   // the tile's channels in the slab
  size_t groups_ = 1;     // planes of channels per segment: kw (shifted) or 1
  size_t segments_ = 0;   // images in the slab
};

}  // namespace analog
