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
#pragma GCC unroll 4
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

// The register block of a layer of `outputs`: its outputs (the packed weights pad the layer's to a
// multiple) by input vectors, in SIMD registers. Each step loads the vectors and broadcasts the
// outputs' weights for outputs x vectors FMAs; wider blocks run out of registers, and the compiler
// then folds a load into every FMA. AVX-512 takes 8 x 3 vectors of 16 lanes. AVX2's 16 registers
// hold 6 x 2 or 4 x 3 vectors of 8: 6 x 2 broadcasts fewer weights per FMA, but pads 16 or 32
// outputs to 18 or 36 (12% of the FMAs on zeros); a layer takes 6 x 2 where it pads nothing.
inline size_t block_rows(size_t outputs) {
  if constexpr (kRegisters == 32) return 8;
  return outputs % 6 == 0 ? 6 : 4;
}
inline size_t padded_rows(size_t outputs, size_t block) { return (outputs + block - 1) / block * block; }
// Input vectors per block of work, a whole number of register blocks on either path. A
// convolution's block reads the input rows its patches need once (tile_source.h's slab), so a
// longer block reads fewer rows twice: 192 vectors are 6 output rows of a 32-wide image and read 8
// input rows, where 96 read 5 for 3 (ResNet-20: 7% less time pass-through, measured). A dense
// block's panel holds K x vectors: 96 keep it in L2 at K = 512 and give the threads more blocks.
constexpr size_t kBlockVectors = 192;       // a convolution's (the most a block has)
constexpr size_t kDenseBlockVectors = 96;   // rows of a dense X
constexpr size_t kLineFloats = 64 / sizeof(float);  // floats per cache line
static_assert(kBlockVectors % (6 * kLanes) == 0 && kDenseBlockVectors % (6 * kLanes) == 0);  // blocks of 2 or 3
// Input elements per pass over the panel: a pass reads at most 96 KiB of it for every block of
// outputs, which stays in L2 however long the layer's tiles are (no gain measured at ResNet-20's
// sizes, at most 576 inputs).
constexpr size_t kDepth = 256;

// C[rows][columns] = A * P in register blocks of Rows x Cols: rows a multiple of Rows, A packed
// per block of Rows rows ([rows / Rows][k][Rows]), columns the `vectors` SIMD vectors of P. Short
// blocks of vectors (bound-management rounds) take the one-vector-wide kernel for the rest.
template <size_t Rows, size_t Cols, typename Panel>
inline void gemm_blocks(size_t k, size_t rows, size_t vectors, const float* a, Panel p, float* c, size_t ldc) {
  if (k == 0)  // an empty sum (a tile of no inputs) is 0; the loop below would write nothing
    for (size_t i = 0; i < rows; ++i) std::fill(c + i * ldc, c + i * ldc + vectors * kLanes, 0.0f);
  // passes of equal depth (288 as 144 + 144, not 256 + 32: a short pass pays the accumulators'
  // loads and stores for few steps)
  const size_t passes = (k + kDepth - 1) / kDepth, even = passes == 0 ? 0 : (k + passes - 1) / passes;
  for (size_t q = 0; q < k; q += even) {
    const size_t depth = std::min(even, k - q);
    for (size_t i = 0; i < rows; i += Rows) {
      const float* ai = a + i * k + q * Rows;
      float* ci = c + i * ldc;
      size_t j = 0;
      for (; j + Cols <= vectors; j += Cols) micro_kernel<Rows, Cols>(depth, ai, p.from(q, j), ci + j * kLanes, ldc, q > 0);
      for (; j < vectors; ++j) micro_kernel<Rows, 1>(depth, ai, p.from(q, j), ci + j * kLanes, ldc, q > 0);
    }
  }
}

// gemm_blocks in the register block of `block` rows (block_rows of the layer).
template <typename Panel>
inline void gemm(size_t block, size_t k, size_t rows, size_t vectors, const float* a, Panel p, float* c, size_t ldc) {
  if constexpr (kRegisters == 32) {
    gemm_blocks<8, 3>(k, rows, vectors, a, p, c, ldc);
  } else if (block == 6) {
    gemm_blocks<6, 2>(k, rows, vectors, a, p, c, ldc);
  } else {
    gemm_blocks<4, 3>(k, rows, vectors, a, p, c, ldc);
  }
}

}  // namespace analog
