// A tile's constant weights read from the model's external data file by the kernel itself
// (native_graph.read_weights_from_file). onnxruntime then never loads them, so a big model's
// weights are in memory once, packed, instead of twice (onnxruntime's copy and the packed one).
#pragma once

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "ort_glue.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "external data is little-endian float32: stored weights are read as they lie only on little-endian hosts"
#endif

namespace analog {

// Where a node's weights lie in the model's data file (attributes weight_file, weight_offset,
// weight_shape [rows, cols], weight_transposed: the file holds them as [cols, rows], a MatMul's
// [K, M] weight). They come from a model, which may be damaged: the kernel checks that the region
// lies inside a regular file when it is made.
struct StoredWeights {
  std::string file;
  int64_t offset;
  std::vector<int64_t> dims;
  bool transposed;

  size_t size() const { return static_cast<size_t>(dims[0]) * static_cast<size_t>(dims[1]); }

  // What is wrong with the region, for attribute weight_file's error ("" when it lies in the file).
  std::string problem() const {
    const int64_t bytes = static_cast<int64_t>(size() * sizeof(float));  // bounded by the caller
    std::error_code error;
    if (!std::filesystem::is_regular_file(file, error)) return "names no data file: '" + printable(file) + "'";
    const auto file_size = std::filesystem::file_size(file, error);
    if (error) return "names a file that cannot be read: '" + printable(file) + "'";
    const int64_t size = static_cast<int64_t>(file_size);
    if (offset > size || bytes > size - offset) {
      return "names '" + printable(file) + "', which holds " + std::to_string(size) + " bytes, not " +
             std::to_string(bytes) + " from offset " + std::to_string(offset);
    }
    return "";
  }

  // Writes the [rows, cols] weights to `out` in row order.
  void read(float* out) const {
    const size_t rows = static_cast<size_t>(dims[0]), cols = static_cast<size_t>(dims[1]);
    std::vector<float> stored(transposed ? size() : 0);
    std::ifstream in(file, std::ios::binary);
    in.seekg(offset);
    in.read(reinterpret_cast<char*>(transposed ? stored.data() : out), static_cast<std::streamsize>(size() * 4));
    if (!in) throw KernelError("cannot read the weights from '" + printable(file) + "'");
    if (!transposed) return;
    // [cols, rows] -> [rows, cols] in square blocks, each read and written while in cache
    constexpr size_t kBlock = 64;
    for (size_t c0 = 0; c0 < cols; c0 += kBlock)
      for (size_t r0 = 0; r0 < rows; r0 += kBlock)
        for (size_t j = c0; j < std::min(cols, c0 + kBlock); ++j)
          for (size_t i = r0; i < std::min(rows, r0 + kBlock); ++i) out[i * cols + j] = stored[j * rows + i];
  }
};

}  // namespace analog
