#include "mpqat/quant/gguf_blocks.h"

#include <ATen/Parallel.h>
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>

#include <fmt/format.h>

#include "mpqat/quant/gguf_kquants.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::quant {

using io::GgmlType;

uint16_t fp32_to_fp16(float f) {
  return Eigen::half(f).x;
}

float fp16_to_fp32(uint16_t bits) {
  Eigen::half_impl::__half_raw r;
  r.x = bits;
  return static_cast<float>(Eigen::half(r));
}

namespace {

constexpr int64_t kQK = 32;  // weights per block of the legacy types

void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }

int64_t group_of(const UnpackedModule& m, int64_t col) { return m.g_idx[static_cast<size_t>(col)]; }

// Block-wise view of one row: (d, m, codes) as the exact encoders need them.
struct RowCtx {
  const UnpackedModule& m;
  int64_t r;
  int32_t q(int64_t j) const { return m.codes[static_cast<size_t>(r * m.in + j)]; }
  int64_t g(int64_t j) const { return group_of(m, j); }
  uint16_t s(int64_t j) const { return m.scales[static_cast<size_t>(g(j) * m.out + r)]; }
  int32_t z(int64_t j) const { return m.zeros[static_cast<size_t>(g(j) * m.out + r)]; }
};

// ggml's quantize_row_q8_0_ref for one block.
void q8_0_block_from_float(const float* x, uint8_t* dst) {
  float amax = 0.0f;
  for (int64_t j = 0; j < kQK; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  put_u16(dst, fp32_to_fp16(d));
  auto* qs = reinterpret_cast<int8_t*>(dst + 2);
  for (int64_t j = 0; j < kQK; ++j) qs[j] = static_cast<int8_t>(std::lround(x[j] * id));
}

void float_row(const float* x, int64_t n, GgmlType type, uint8_t* dst, const float* importance = nullptr) {
  if (is_k_quant(type)) return encode_k_row(type, x, n, importance, dst);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(dst, x, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t j = 0; j < n; ++j) put_u16(dst + 2 * j, fp32_to_fp16(x[j]));
      return;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / kQK; ++b) q8_0_block_from_float(x + b * kQK, dst + b * 34);
      return;
    default:
      throw Error(std::string("GGUF: float rows cannot be encoded as ") + io::ggml_type_traits(type).name);
  }
}

// The exact block encoders (choose_gguf_type established that the codes fit).
void exact_row(const RowCtx& c, GgmlType type, uint8_t* dst) {
  const int64_t n = c.m.in;
  const uint64_t bb = io::ggml_type_traits(type).block_bytes;
  for (int64_t b = 0; b < n / kQK; ++b) {
    uint8_t* blk = dst + static_cast<uint64_t>(b) * bb;
    const int64_t j0 = b * kQK;  // one group covers the whole block
    const uint16_t s = c.s(j0);
    const int32_t z = c.z(j0);
    int32_t code[kQK];
    const bool offset_form = type == GgmlType::Q4_0 || type == GgmlType::Q5_0 || type == GgmlType::Q8_0;
    const int32_t off = type == GgmlType::Q4_0 ? 8 : type == GgmlType::Q5_0 ? 16 : 0;
    for (int64_t j = 0; j < kQK; ++j) code[j] = offset_form ? c.q(j0 + j) - z + off : c.q(j0 + j);
    put_u16(blk, s);
    uint8_t* p = blk + 2;
    if (!offset_form) {  // Q4_1 / Q5_1: m = -z * s
      put_u16(p, fp32_to_fp16(-static_cast<float>(z) * fp16_to_fp32(s)));
      p += 2;
    }
    if (type == GgmlType::Q8_0) {
      for (int64_t j = 0; j < kQK; ++j) reinterpret_cast<int8_t*>(p)[j] = static_cast<int8_t>(code[j]);
      continue;
    }
    if (type == GgmlType::Q5_0 || type == GgmlType::Q5_1) {
      uint32_t qh = 0;
      for (int64_t j = 0; j < kQK; ++j) qh |= static_cast<uint32_t>((code[j] >> 4) & 1) << j;
      std::memcpy(p, &qh, 4);
      p += 4;
    }
    for (int64_t j = 0; j < kQK / 2; ++j)
      p[j] = static_cast<uint8_t>((code[j] & 0xF) | ((code[j + kQK / 2] & 0xF) << 4));
  }
}

// W^ of one row, as the mpqat loader computes it: float(q - z) * s.
void dequantize_row(const RowCtx& c, float* out) {
  for (int64_t j = 0; j < c.m.in; ++j) out[j] = static_cast<float>(c.q(j) - c.z(j)) * fp16_to_fp32(c.s(j));
}

std::vector<int64_t> identity_if_empty(const std::vector<int64_t>& rows, int64_t n) {
  if (!rows.empty()) return rows;
  std::vector<int64_t> id(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) id[static_cast<size_t>(i)] = i;
  return id;
}

}  // namespace

std::vector<float> dequantize_unpacked(const UnpackedModule& m) {
  std::vector<float> w(static_cast<size_t>(m.out * m.in));
  for (int64_t r = 0; r < m.out; ++r) dequantize_row(RowCtx{m, r}, w.data() + r * m.in);
  return w;
}

namespace {

// The K-quant type with at least `bits` bits per code (2..6), or none.
std::optional<GgmlType> k_quant_for_bits(int bits) {
  switch (bits) {
    case 2: return GgmlType::Q2_K;
    case 3: return GgmlType::Q3_K;
    case 4: return GgmlType::Q4_K;
    case 5: return GgmlType::Q5_K;
    case 6: return GgmlType::Q6_K;
    default: return std::nullopt;
  }
}

double type_bpw(GgmlType t) {
  const auto& tr = io::ggml_type_traits(t);
  return 8.0 * static_cast<double>(tr.block_bytes) / static_cast<double>(tr.block_elems);
}

// The plan's legacy form: an exact block type, or the fallback.
GgufChoice legacy_choice(const QuantSpec& spec, int64_t in, GgmlType fallback) {
  const int64_t gw = group_width(in, spec.group_size);
  std::string why;
  if (in % kQK != 0) why = "row length " + std::to_string(in) + " is not a multiple of 32";
  else if (gw % kQK != 0) why = "group size " + std::to_string(gw) + " is not a multiple of 32";
  if (!why.empty()) {
    // Q8_0 needs whole blocks too.
    const GgmlType t = fallback == GgmlType::Q8_0 && in % kQK != 0 ? GgmlType::F16 : fallback;
    return {t, t == GgmlType::Q8_0 ? "requantized" : "float", why};
  }
  // q - z spans [-2^(b-1), 2^(b-1) - 1] symmetric, [-(2^b - 1), 2^b - 1] asymmetric.
  if (spec.bits <= 3 || (spec.bits == 4 && spec.sym)) return {GgmlType::Q4_0, "exact", ""};
  if (spec.bits == 4) return {GgmlType::Q4_1, "exact codes, m rounded", ""};
  if (spec.bits == 5) return spec.sym ? GgufChoice{GgmlType::Q5_0, "exact", ""} : GgufChoice{GgmlType::Q5_1, "exact codes, m rounded", ""};
  return {GgmlType::Q8_0, "exact", ""};
}

// The K-quant of the module's bits when K-quants are on, the row is whole super-blocks, and it
// is smaller than `legacy`.
// `reason` "" = the size: "3-bit: 3.4375 bpw instead of Q4_0's 4.5".
std::optional<GgufChoice> k_choice(const QuantSpec& spec, int64_t in, const GgufTypes& types, const GgufChoice& legacy,
                                   const std::string& reason) {
  const auto k = k_quant_for_bits(spec.bits);
  if (!types.k_quants || !k || in % kKQuantBlock != 0 || !(type_bpw(*k) < type_bpw(legacy.type))) return std::nullopt;
  const int64_t gw = group_width(in, spec.group_size);
  const std::string why = !reason.empty() ? reason
                                          : fmt::format("{}-bit{}: {:g} bpw instead of {}'s {:g}", spec.bits,
                                                        gw != kQK ? fmt::format(" g{}", gw) : std::string(), type_bpw(*k),
                                                        io::ggml_type_traits(legacy.type).name, type_bpw(legacy.type));
  return GgufChoice{*k, "requantized", why};
}

}  // namespace

GgufChoice gguf_choice_for_spec(const QuantSpec& spec, int64_t in, const GgufTypes& types) {
  const GgmlType fallback = types.fallback;
  if (fallback != GgmlType::F32 && fallback != GgmlType::F16 && fallback != GgmlType::Q8_0)
    throw InputError(std::string("GGUF fallback type ") + io::ggml_type_traits(fallback).name +
                     " (F32, F16 or Q8_0 accepted)");
  const GgufChoice legacy = legacy_choice(spec, in, fallback);
  // The mapping: 4/5-bit groups of 32 keep their exact legacy types; 2/3/6 bits, other
  // groups and what no legacy type holds take the K-quant where it is smaller.
  const int64_t gw = group_width(in, spec.group_size);
  const bool k_wanted = spec.bits == 2 || spec.bits == 3 || spec.bits == 6 || gw != kQK || !util::starts_with(legacy.how, "exact");
  if (k_wanted)
    if (auto k = k_choice(spec, in, types, legacy, "")) return *k;
  return legacy;
}

GgufChoice choose_gguf_type(const UnpackedModule& m, const GgufTypes& types) {
  GgufChoice c = gguf_choice_for_spec(m.spec, m.in, types);
  if (c.how == "float" || c.how == "requantized") return c;
  const int64_t gw = group_width(m.in, m.spec.group_size);
  for (int64_t j = 0; j < m.in; ++j)
    if (m.g_idx[static_cast<size_t>(j)] != j / gw) {
      const GgufChoice fb{types.fallback, types.fallback == GgmlType::Q8_0 ? "requantized" : "float",
                          "g_idx is not contiguous (act-order)"};
      if (auto k = k_choice(m.spec, m.in, types, fb, "g_idx is not contiguous (act-order)")) return *k;
      return fb;
    }
  int32_t lo = std::numeric_limits<int32_t>::max(), hi = std::numeric_limits<int32_t>::min();
  for (int64_t r = 0; r < m.out; ++r) {
    const RowCtx rc{m, r};
    for (int64_t j = 0; j < m.in; ++j) {
      const int32_t d = rc.q(j) - rc.z(j);
      lo = std::min(lo, d);
      hi = std::max(hi, d);
    }
  }
  // The plan's type holds the codes unless they leave its range: symmetric codes never do (zero
  // 2^(b-1)); a checkpoint that breaks that gets the asymmetric type, asymmetric 8-bit (q - z
  // outside int8) is requantized.
  if (c.type == GgmlType::Q4_0 && !(lo >= -8 && hi <= 7)) return {GgmlType::Q4_1, "exact codes, m rounded", ""};
  if (c.type == GgmlType::Q5_0 && !(lo >= -16 && hi <= 15)) return {GgmlType::Q5_1, "exact codes, m rounded", ""};
  if (c.type == GgmlType::Q8_0 && !(lo >= -128 && hi <= 127))
    return {GgmlType::Q8_0, "requantized", "q - z leaves int8 (asymmetric 8-bit)"};
  return c;
}

void encode_unpacked(const UnpackedModule& m, const GgufChoice& c, const std::vector<int64_t>& rows_in, uint8_t* dst,
                     const float* importance) {
  const auto rows = identity_if_empty(rows_in, m.out);
  const GgmlType type = c.type;
  const uint64_t rb = io::ggml_row_bytes(type, m.in, "GGUF tensor for '" + m.name + "'");
  // The codes themselves where choose_gguf_type found a block type that holds them; otherwise
  // (requantized / float) from W^.
  if (util::starts_with(c.how, "exact")) {
    for (size_t k = 0; k < rows.size(); ++k) exact_row(RowCtx{m, rows[k]}, type, dst + k * rb);
    return;
  }
  // Rows are independent (K-quants' search is the costly part): the intra-op threads share them.
  at::parallel_for(0, static_cast<int64_t>(rows.size()), 16, [&](int64_t k0, int64_t k1) {
    std::vector<float> row(static_cast<size_t>(m.in));
    for (int64_t k = k0; k < k1; ++k) {
      dequantize_row(RowCtx{m, rows[static_cast<size_t>(k)]}, row.data());
      float_row(row.data(), m.in, type, dst + static_cast<uint64_t>(k) * rb, importance);
    }
  });
}

void encode_float(const float* w, int64_t rows_total, int64_t n, GgmlType type, const std::vector<int64_t>& rows_in,
                  uint8_t* dst, const float* importance) {
  const auto rows = identity_if_empty(rows_in, rows_total);
  const uint64_t rb = io::ggml_row_bytes(type, n, "GGUF float tensor");
  at::parallel_for(0, static_cast<int64_t>(rows.size()), 16, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k)
      float_row(w + rows[static_cast<size_t>(k)] * n, n, type, dst + static_cast<uint64_t>(k) * rb, importance);
  });
}

void dequantize_gguf_row(GgmlType type, const uint8_t* src, int64_t n, float* y) {
  auto u16 = [](const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
  };
  const auto& tr = io::ggml_type_traits(type);
  if (n % tr.block_elems != 0) throw InputError("GGUF row of " + std::to_string(n) + " weights is not whole blocks");
  if (is_k_quant(type)) return dequantize_k_row(type, src, n, y);
  switch (type) {
    case GgmlType::F32:
      std::memcpy(y, src, static_cast<size_t>(n) * 4);
      return;
    case GgmlType::F16:
      for (int64_t j = 0; j < n; ++j) y[j] = fp16_to_fp32(u16(src + 2 * j));
      return;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / kQK; ++b) {
        const uint8_t* blk = src + b * 34;
        const float d = fp16_to_fp32(u16(blk));
        for (int64_t j = 0; j < kQK; ++j) y[b * kQK + j] = static_cast<float>(reinterpret_cast<const int8_t*>(blk + 2)[j]) * d;
      }
      return;
    case GgmlType::Q4_0: case GgmlType::Q4_1: case GgmlType::Q5_0: case GgmlType::Q5_1: {
      const bool has_m = type == GgmlType::Q4_1 || type == GgmlType::Q5_1;
      const bool five = type == GgmlType::Q5_0 || type == GgmlType::Q5_1;
      for (int64_t b = 0; b < n / kQK; ++b) {
        const uint8_t* p = src + b * static_cast<int64_t>(tr.block_bytes);
        const float d = fp16_to_fp32(u16(p));
        p += 2;
        float mm = 0.0f;
        if (has_m) {
          mm = fp16_to_fp32(u16(p));
          p += 2;
        }
        uint32_t qh = 0;
        if (five) {
          std::memcpy(&qh, p, 4);
          p += 4;
        }
        const int off = has_m ? 0 : (five ? 16 : 8);
        for (int64_t j = 0; j < kQK / 2; ++j) {
          int c0 = p[j] & 0xF, c1 = p[j] >> 4;
          if (five) {
            c0 |= static_cast<int>((qh >> j) & 1) << 4;
            c1 |= static_cast<int>((qh >> (j + 16)) & 1) << 4;
          }
          y[b * kQK + j] = static_cast<float>(c0 - off) * d + mm;
          y[b * kQK + j + kQK / 2] = static_cast<float>(c1 - off) * d + mm;
        }
      }
      return;
    }
    default:
      throw NotImplementedError(std::string("dequantizing GGUF ") + tr.name + " rows");
  }
}

}  // namespace mpqat::quant
