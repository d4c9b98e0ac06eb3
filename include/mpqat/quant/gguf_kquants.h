// llama.cpp's K-quant block types (docs/gguf.md): super-blocks of 256 weights of one row, split
// into sub-blocks that each have a scale (and, for the "_K with min" types, a min) quantized
// against the super-block's fp16 d (and dmin):
//
//   type  sub-blocks   weight                         codes      sub-block scale / min   bytes  bpw
//   Q2_K  16 x 16      d*sc*q - dmin*m                0..3       4 bit / 4 bit            84    2.625
//   Q3_K  16 x 16      d*(sc-32)*(q-4)                0..7       6 bit signed             110   3.4375
//   Q4_K   8 x 32      d*sc*q - dmin*m                0..15      6 bit / 6 bit            144   4.5
//   Q5_K   8 x 32      d*sc*q - dmin*m                0..31      6 bit / 6 bit            176   5.5
//   Q6_K  16 x 16      d*sc*(q-32)                    0..63      int8                     210   6.5625
//
// The byte layouts are ggml's (block_q2_K ... block_q6_K); dequantize_k_row computes what
// ggml's dequantize_row_q*_K computes. The encoder is mpqat's own: per sub-block it searches the
// scale (and min) that minimises the importance-weighted squared error, then quantizes the
// scales against d / dmin (a few candidate d tried on the whole super-block), and rounds every
// weight to the nearest code of its final scale. Weights: importance[j] * sqrt(sigma2 + x_j^2),
// sigma2 = 2 * mean x^2 over the super-block, as llama.cpp weights its imatrix search;
// importance is the mean squared input of column j (an activation second moment, see
// sensitivity/imatrix.h), or 1 without one. No torch here.
#pragma once

#include <cstdint>

#include "mpqat/io/gguf.h"

namespace mpqat::quant {

constexpr int64_t kKQuantBlock = 256;  // weights per super-block (ggml's QK_K)

bool is_k_quant(io::GgmlType t);

// One row of n weights (n a multiple of 256) as `type` (Q2_K ... Q6_K) into dst
// (io::ggml_row_bytes(type, n) bytes). `importance`: n non-negative per-column weights, or
// nullptr for equal importance.
void encode_k_row(io::GgmlType type, const float* x, int64_t n, const float* importance, uint8_t* dst);

// A row of `type` back to fp32, as ggml's dequantize_row_q*_K computes it.
void dequantize_k_row(io::GgmlType type, const uint8_t* src, int64_t n, float* dst);

}  // namespace mpqat::quant
