// The tile's product: packed weights times a k-major panel of input vectors, one vector per SIMD
// lane, on a register-blocked micro-kernel (AVX-512 or AVX2/FMA, whichever -march=native enables).
#pragma once

#include <algorithm>
#include <cstddef>

#include "simd.h"

#if !defined(ANALOG_SIMD)
#error "the analog tile kernel needs AVX2 and FMA (or AVX-512)"
#endif

namespace analog {

// Where the micro-kernel reads its input vectors: a k-major panel in memory (vector j of step q
// at p + q * ld + j * kLanes), or the patch rows of a convolution straight from the block's input
// slab (vector j of step q at bases[j] + offsets[q]), which needs no panel at all.
struct PanelRows {
  const float* p;
  size_t ld;
  VecF load(size_t q, size_t j) const { return vec_load(p + q * ld + j * kLanes); }
  PanelRows from(size_t q, size_t j) const { return {p + q * ld + j * kLanes, ld}; }
};
struct SlabRows {
  const float* const* bases;
  const int64_t* offsets;
  VecF load(size_t q, size_t j) const { return vec_load(bases[j] + offsets[q]); }
  SlabRows from(size_t q, size_t j) const { return {bases + j, offsets + q}; }
};

// C[Rows][Cols vectors of positions] (+)= A * P over k: A holds the weights of Rows outputs k-major
// (a[q * Rows + i]), P the input vectors k-major, one per lane; C rows are `ldc` apart. Rows x
// Cols accumulators stay in registers; each step loads Cols input vectors and broadcasts Rows
// weights. Every output is one chain of FMAs in k order, whether or not a call starts from the
// partial sums in C (`accumulate`), so splitting k changes no bit.
template <size_t Rows, size_t Cols, typename Panel>
inline void micro_kernel(size_t k, const float* a, Panel p, float* c, size_t ldc, bool accumulate) {
  VecF acc[Rows][Cols];
#pragma GCC unroll 8
  for (size_t i = 0; i < Rows; ++i)
#pragma GCC unroll 8
    for (size_t j = 0; j < Cols; ++j) acc[i][j] = accumulate ? vec_load(c + i * ldc + j * kLanes) : vec_zero();
  for (size_t q = 0; q < k; ++q) {
    VecF x[Cols];
#pragma GCC unroll 8
    for (size_t j = 0; j < Cols; ++j) x[j] = p.load(q, j);
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
// Input vectors per block of work, a whole number of register blocks on either path. A
// convolution's block reads the input rows its patches need once (tile_source.h's slab), so a
// longer block reads fewer rows twice: 192 vectors are 6 output rows of a 32-wide image and read 8
// input rows, where 96 read 5 for 3 (ResNet-20: 7% less time pass-through, measured). A dense
// block's panel holds K x vectors: 96 keep it in L2 at K = 512 and give the threads more blocks.
constexpr size_t kBlockVectors = 192;       // a convolution's (the most a block has)
constexpr size_t kDenseBlockVectors = 96;   // rows of a dense X
constexpr size_t kLineFloats = 64 / sizeof(float);  // floats per cache line
static_assert(kBlockVectors % (kBlockCols * kLanes) == 0 && kDenseBlockVectors % (kBlockCols * kLanes) == 0);
// Input elements per pass over the panel: a pass reads at most 96 KiB of it for every block of
// outputs, which stays in L2 however long the layer's tiles are (no gain measured at ResNet-20's
// sizes, at most 576 inputs).
constexpr size_t kDepth = 256;

// C[rows][columns] = A * P: rows a multiple of kBlockRows, A packed per block of kBlockRows rows
// ([rows / kBlockRows][k][kBlockRows]), columns the `vectors` SIMD vectors of P. Short blocks of
// vectors (bound-management rounds) take the one-vector-wide kernel for the rest.
template <typename Panel>
inline void gemm(size_t k, size_t rows, size_t vectors, const float* a, Panel p, float* c, size_t ldc) {
  if (k == 0)  // an empty sum (a tile of no inputs) is 0; the loop below would write nothing
    for (size_t i = 0; i < rows; ++i) std::fill(c + i * ldc, c + i * ldc + vectors * kLanes, 0.0f);
  // passes of equal depth (288 as 144 + 144, not 256 + 32: a short pass pays the accumulators'
  // loads and stores for few steps)
  const size_t passes = (k + kDepth - 1) / kDepth, even = passes == 0 ? 0 : (k + passes - 1) / passes;
  for (size_t q = 0; q < k; q += even) {
    const size_t depth = std::min(even, k - q);
    for (size_t i = 0; i < rows; i += kBlockRows) {
      const float* ai = a + i * k + q * kBlockRows;
      float* ci = c + i * ldc;
      size_t j = 0;
      for (; j + kBlockCols <= vectors; j += kBlockCols)
        micro_kernel<kBlockRows, kBlockCols>(depth, ai, p.from(q, j), ci + j * kLanes, ldc, q > 0);
      for (; j < vectors; ++j) micro_kernel<kBlockRows, 1>(depth, ai, p.from(q, j), ci + j * kLanes, ldc, q > 0);
    }
  }
}

}  // namespace analog
