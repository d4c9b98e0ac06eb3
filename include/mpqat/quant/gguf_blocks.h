// The packed checkpoint's modules as llama.cpp's block types (docs/gguf.md): which ggml type
// holds a module's codes exactly, the block encoders, and a reference dequantizer of those
// types for measuring what a conversion lost. No torch here.
//
// The checkpoint's weight is W^ = (q - z) * s per group (q, z codes, s fp16). ggml's blocks hold
// 32 consecutive weights of a row:
//   Q4_0 / Q5_0   x = (c - 8) * d / (c - 16) * d     exact when every q - z of a block is in
//                                                    [-8, 7] / [-16, 15] (symmetric 2-4 / 5 bits)
//   Q4_1 / Q5_1   x = c * d + m                      the codes exactly, d = s; only
//                                                    m = fp16(-z * s) is rounded
//   Q8_0          x = c * d, c int8                  exact when every q - z is in [-128, 127]
//                                                    (6 bits always, 8 bits symmetric); otherwise
//                                                    requantized from W^ (d = max|W^| / 127)
// A group of 64, 128, 256 or a whole row is several blocks with the same d and m. A module whose
// row length is not a multiple of 32, whose last group is partial, or whose g_idx is not the
// contiguous one (act-order) has no block form: it is written in the fallback type from W^.
// With K-quants (GgufTypes::k_quants) and rows of a multiple of 256, 2/3/6-bit modules, 4/5-bit
// ones whose group is not 32 (asymmetric) and act-order ones are requantized from W^ into the
// K-quant type of at least their bits (gguf_kquants.h), which is smaller than any exact form.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpqat/io/gguf.h"
#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

// One quantized linear, unpacked: codes and g_idx as the loader reads them.
struct UnpackedModule {
  std::string name;
  int64_t out = 0, in = 0;
  QuantSpec spec;
  std::vector<int32_t> codes;     // (out, in) row-major
  std::vector<int32_t> zeros;     // (groups, out) zero codes
  std::vector<uint16_t> scales;   // (groups, out) fp16 bits
  std::vector<int32_t> g_idx;     // (in)
  int64_t groups() const { return static_cast<int64_t>(scales.size()) / (out > 0 ? out : 1); }
};

// fp16 <-> fp32 (round to nearest even), as ggml's GGML_FP32_TO_FP16.
uint16_t fp32_to_fp16(float f);
float fp16_to_fp32(uint16_t h);

// W^ (out, in) row-major in fp32, computed as the mpqat loader does: float(q - z) * s.
std::vector<float> dequantize_unpacked(const UnpackedModule& m);

// The types an export uses where the checkpoint does not decide (docs/gguf.md).
struct GgufTypes {
  // Linears of a float checkpoint: F32, F16, Q8_0 or a K-quant (Q2_K ... Q6_K, rows of a
  // multiple of 256; shorter rows get Q8_0).
  io::GgmlType float_type = io::GgmlType::F16;
  // token_embd.weight / output.weight: F32, F16, Q8_0 or Q6_K (rows of a multiple of 256, else Q8_0).
  io::GgmlType embedding_type = io::GgmlType::F16;
  io::GgmlType fallback = io::GgmlType::F16;        // packed modules no block type holds: F32, F16, Q8_0
  // Packed 2/3/6-bit modules, and 4/5-bit ones whose group is not 32, as the K-quant type of at
  // least their bits where it is smaller than the exact legacy type (rows of a multiple of 256):
  // requantized, importance-weighted. Off: only exact legacy types and the fallback.
  bool k_quants = true;
};
struct GgufChoice {
  io::GgmlType type = io::GgmlType::F16;
  // "exact" (every weight as in the checkpoint), "exact codes, m rounded" (Q4_1/Q5_1),
  // "requantized" (Q8_0 from W^) or "float" (the fallback type from W^).
  std::string how;
  std::string why;  // for "requantized" / "float": the reason
};
// The ggml type of a packed module from its plan alone (bits, group, symmetry, row length):
// Q4_0 for 2/3 bits and symmetric 4 (q - z within [-8, 7]), Q4_1 asymmetric 4, Q5_0 / Q5_1
// symmetric / asymmetric 5, Q8_0 for 6 and 8 bits, the fallback when the row or the group is not
// whole 32-weight blocks; with types.k_quants and rows of a multiple of 256, Q2_K / Q3_K / Q6_K
// for 2 / 3 / 6 bits and Q4_K / Q5_K for asymmetric 4 / 5 bits whose group is not 32 (and for
// any 2-6 bits the legacy types cannot hold). `how` is what the conversion keeps ("exact",
// "exact codes, m rounded", or "float" / "requantized"); asymmetric 8-bit is "exact" here and
// choose_gguf_type (which sees the codes) may find it needs requantizing.
GgufChoice gguf_choice_for_spec(const QuantSpec& spec, int64_t in, const GgufTypes& types);

// gguf_choice_for_spec checked against the module's codes and g_idx: act-order g_idx -> the
// K-quant of its bits (types.k_quants, rows of 256) or the fallback; asymmetric 8-bit whose
// q - z leaves int8 -> Q8_0 requantized.
GgufChoice choose_gguf_type(const UnpackedModule& m, const GgufTypes& types);

// Rows of `m` in the order `rows` gives (rows[k] = the source row written k-th; empty = identity),
// encoded as `c.type` into dst (rows.size() * row bytes): from the codes when `c` (from
// choose_gguf_type on this module) is an exact form, else requantized / converted from W^.
// `importance`: m.in per-column weights for a K-quant's search (nullptr: equal).
void encode_unpacked(const UnpackedModule& m, const GgufChoice& c, const std::vector<int64_t>& rows, uint8_t* dst,
                     const float* importance = nullptr);

// Float rows (rows x n, row-major) as F32, F16, Q8_0 (ggml's reference rounding) or a K-quant
// (with `importance` as above), reordered as above.
void encode_float(const float* w, int64_t rows_total, int64_t n, io::GgmlType type,
                  const std::vector<int64_t>& rows, uint8_t* dst, const float* importance = nullptr);

// One row of n weights of `type` (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K ... Q6_K) back to
// fp32, as ggml's dequantize_row_* computes it.
void dequantize_gguf_row(io::GgmlType type, const uint8_t* src, int64_t n, float* dst);

}  // namespace mpqat::quant
