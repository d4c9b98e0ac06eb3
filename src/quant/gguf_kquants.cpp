// llama.cpp's K-quant types: encoder (mpqat's importance-weighted search) and ggml's
// dequantization (include/mpqat/quant/gguf_kquants.h).
//
// The encoder writes each code through an element-index map of the block layout (where the
// bits of weight e of the super-block go); the dequantizer follows ggml's dequantize_row_q*_K
// loops as written there, so the test that decodes what was encoded checks the maps against
// ggml's loops, and the llama.cpp test checks both against llama.cpp.
#include "mpqat/quant/gguf_kquants.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "mpqat/quant/gguf_blocks.h"  // fp16
#include "mpqat/util/error.h"

namespace mpqat::quant {

using io::GgmlType;

namespace {

constexpr int kQK = static_cast<int>(kKQuantBlock);

uint16_t get_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
float round_fp16(float v) { return fp16_to_fp32(fp32_to_fp16(v)); }
int nearest(float v) { return static_cast<int>(std::lrintf(v)); }

// ---------------------------------------------------------------- the layouts

// What each type is: sub-block length, code range, whether it has mins, the scale grid.
struct KFormat {
  int sub = 16;           // weights per sub-block
  int qmax = 3;           // codes 0..qmax (stored)
  int offset = 0;         // symmetric types: weight = scale * (code - offset)
  bool with_min = false;  // weight = scale * code - min
  int scale_levels = 15;  // unsigned scale / min codes 0..scale_levels (with_min)
  int scale_lo = 0, scale_hi = 0;  // signed scale codes (symmetric types)
};

KFormat k_format(GgmlType t) {
  switch (t) {
    case GgmlType::Q2_K: return {16, 3, 0, true, 15, 0, 0};
    case GgmlType::Q3_K: return {16, 7, 4, false, 0, -32, 31};
    case GgmlType::Q4_K: return {32, 15, 0, true, 63, 0, 0};
    case GgmlType::Q5_K: return {32, 31, 0, true, 63, 0, 0};
    case GgmlType::Q6_K: return {16, 63, 32, false, 0, -128, 127};
    default: throw Error(std::string("not a K-quant type: ") + io::ggml_type_traits(t).name);
  }
}

// Writes code c (0..qmax) of weight e (0..255) into a zeroed super-block of type t.
void put_code(GgmlType t, uint8_t* blk, int e, int c) {
  const int chunk = e / 128, r = e % 128, j = r / 32, l = r % 32;
  switch (t) {
    case GgmlType::Q2_K:  // scales[16], qs[64]: byte 32*chunk + l, bits 2j
      blk[16 + 32 * chunk + l] |= static_cast<uint8_t>(c << (2 * j));
      return;
    case GgmlType::Q3_K:  // hmask[32] (bit e/32 of byte e%32), qs[64] low 2 bits as Q2_K
      blk[32 + 32 * chunk + l] |= static_cast<uint8_t>((c & 3) << (2 * j));
      if (c & 4) blk[e % 32] |= static_cast<uint8_t>(1u << (e / 32));
      return;
    case GgmlType::Q4_K:  // d, dmin, scales[12], qs[128]: 64-weight pairs, low nibble first 32
      blk[16 + 32 * (e / 64) + e % 32] |= static_cast<uint8_t>(c << (e % 64 < 32 ? 0 : 4));
      return;
    case GgmlType::Q5_K:  // d, dmin, scales[12], qh[32] (bit e/32 of byte e%32), qs[128] as Q4_K
      blk[48 + 32 * (e / 64) + e % 32] |= static_cast<uint8_t>((c & 15) << (e % 64 < 32 ? 0 : 4));
      if (c & 16) blk[16 + e % 32] |= static_cast<uint8_t>(1u << (e / 32));
      return;
    case GgmlType::Q6_K: {  // ql[128], qh[64], scales[16], d
      // weight 128*chunk + 32*j + l: low nibble in ql[64*chunk + 32*(j%2) + l] (j < 2: low
      // half of the byte, else high), top 2 bits in qh[32*chunk + l] at bits 2j.
      blk[64 * chunk + 32 * (j % 2) + l] |= static_cast<uint8_t>((c & 15) << (j < 2 ? 0 : 4));
      blk[128 + 32 * chunk + l] |= static_cast<uint8_t>((c >> 4) << (2 * j));
      return;
    }
    default: break;
  }
}

// The 6-bit scale / min codes of Q4_K / Q5_K (12 bytes for 8 pairs).
void put_scale_min_k4(uint8_t* q, int j, int ls, int lm) {
  if (j < 4) {
    q[j] = static_cast<uint8_t>(ls);
    q[j + 4] = static_cast<uint8_t>(lm);
  } else {
    q[j + 4] = static_cast<uint8_t>((ls & 0xF) | ((lm & 0xF) << 4));
    q[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
    q[j] |= static_cast<uint8_t>((lm >> 4) << 6);
  }
}
void get_scale_min_k4(int j, const uint8_t* q, int* d, int* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// The 16 signed 6-bit scales of Q3_K (stored + 32) in 12 bytes.
void put_scales_q3(uint8_t* q, const int* stored) {
  std::memset(q, 0, 12);
  for (int j = 0; j < 16; ++j) {
    const int l = stored[j];
    if (j < 8) q[j] = static_cast<uint8_t>(l & 0xF);
    else q[j - 8] |= static_cast<uint8_t>((l & 0xF) << 4);
    q[j % 4 + 8] |= static_cast<uint8_t>((l >> 4) << (2 * (j / 4)));
  }
}

// ---------------------------------------------------------------- the search

// Scale s of codes l in [-(offset), qmax - offset] minimising sum w (x - s l)^2, over roundings
// of x at candidate scales around the one that maps the largest |x| onto -offset.
float fit_symmetric(const float* x, const float* w, int n, int lo, int hi) {
  float amax = 0.0f, xm = 0.0f;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), xm = x[i];
  if (amax < 1e-30f) return 0.0f;
  float best_s = 0.0f;
  double best = std::numeric_limits<double>::infinity();
  for (int k = -4; k <= 4; ++k) {
    const float iscale = (static_cast<float>(lo) - 0.2f * static_cast<float>(k)) / xm;
    double slx = 0, sll = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest(iscale * x[i]), lo, hi);
      slx += double(w[i]) * x[i] * l;
      sll += double(w[i]) * l * l;
    }
    if (sll <= 0) continue;
    const double err = -slx * slx / sll;  // sum w x^2 - (sum w x l)^2 / sum w l^2, up to a constant
    if (err < best) best = err, best_s = static_cast<float>(slx / sll);
  }
  return best_s;
}

struct ScaleMin {
  float scale = 0.0f, min = 0.0f;  // x ~ scale * q - min, both >= 0
};

// (scale, min) for codes 0..qmax minimising sum w (x - scale q + min)^2: for candidate roundings
// of x onto [min(x, 0), max(x)], the weighted least-squares line through the codes (min kept
// >= 0, as the types store it).
ScaleMin fit_asymmetric(const float* x, const float* w, int n, int qmax) {
  float lo = 0.0f, hi = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  if (!(hi > lo)) return {0.0f, -lo};
  ScaleMin best_sm{(hi - lo) / static_cast<float>(qmax), -lo};
  double best = std::numeric_limits<double>::infinity();
  std::array<int, 32> q{};  // n <= 32 (sub-blocks of 16 or 32)
  for (int k = -4; k <= 4; ++k) {
    const float iscale = (static_cast<float>(qmax) + 0.2f * static_cast<float>(k)) / (hi - lo);
    double sw = 0, swq = 0, swq2 = 0, swx = 0, swqx = 0;
    for (int i = 0; i < n; ++i) {
      q[i] = std::clamp(nearest(iscale * (x[i] - lo)), 0, qmax);
      const double wi = w[i];
      sw += wi, swq += wi * q[i], swq2 += wi * q[i] * q[i], swx += wi * x[i], swqx += wi * q[i] * x[i];
    }
    const double det = sw * swq2 - swq * swq;
    if (det <= 0) continue;
    double a = (sw * swqx - swq * swx) / det, b = (swq2 * swx - swq * swqx) / det;
    if (b > 0) b = 0, a = swq2 > 0 ? swqx / swq2 : 0.0;
    if (a <= 0) continue;
    double err = 0;
    for (int i = 0; i < n; ++i) {
      const double e = a * q[i] + b - x[i];
      err += w[i] * e * e;
    }
    if (err < best) best = err, best_sm = {static_cast<float>(a), static_cast<float>(-b)};
  }
  return best_sm;
}

// One super-block: the weights' importance, the sub-block fits, the quantized scales for the
// best of a few candidate d, the codes; written into blk (zeroed here).
void encode_super_block(GgmlType t, const KFormat& f, const float* x, const float* imp, uint8_t* blk) {
  const int nsub = kQK / f.sub;
  std::array<float, kQK> w{};
  double sx2 = 0;
  for (int i = 0; i < kQK; ++i) sx2 += double(x[i]) * x[i];
  const float sigma2 = static_cast<float>(2.0 * sx2 / kQK);
  for (int i = 0; i < kQK; ++i) w[i] = (imp ? std::max(imp[i], 0.0f) : 1.0f) * std::sqrt(sigma2 + x[i] * x[i]);

  std::array<float, 16> sc{}, mn{};
  for (int s = 0; s < nsub; ++s) {
    if (f.with_min) {
      const auto sm = fit_asymmetric(x + s * f.sub, w.data() + s * f.sub, f.sub, f.qmax);
      sc[s] = sm.scale, mn[s] = sm.min;
    } else {
      sc[s] = fit_symmetric(x + s * f.sub, w.data() + s * f.sub, f.sub, -f.offset, f.qmax - f.offset);
    }
  }
  // Candidate super-block scales: the largest sub-block scale (by magnitude) onto the top of the
  // scale grid, or a little inside it; the one with the least weighted error of the block wins.
  float smax = 0.0f, mmax = 0.0f;
  for (int s = 0; s < nsub; ++s) {
    if (std::fabs(sc[s]) > std::fabs(smax)) smax = sc[s];
    mmax = std::max(mmax, mn[s]);
  }
  const float top = f.with_min ? static_cast<float>(f.scale_levels) : static_cast<float>(f.scale_lo);
  const float dmin = round_fp16(mmax / static_cast<float>(f.scale_levels));
  std::array<int, 16> ls{}, lm{}, best_ls{}, best_lm{};
  std::array<int, kQK> codes{}, best_codes{};
  float best_d = 0.0f;
  double best = std::numeric_limits<double>::infinity();
  for (int k = 0; k <= 6; ++k) {
    const float d = smax == 0.0f ? 0.0f : round_fp16(smax / (top - (top > 0 ? 0.25f : -0.25f) * static_cast<float>(k)));
    double err = 0;
    for (int s = 0; s < nsub; ++s) {
      float dl = 0.0f, ml = 0.0f;
      if (f.with_min) {
        ls[s] = d > 0 ? std::clamp(nearest(sc[s] / d), 0, f.scale_levels) : 0;
        lm[s] = dmin > 0 ? std::clamp(nearest(mn[s] / dmin), 0, f.scale_levels) : 0;
        dl = d * static_cast<float>(ls[s]), ml = dmin * static_cast<float>(lm[s]);
      } else {
        ls[s] = d != 0.0f ? std::clamp(nearest(sc[s] / d), f.scale_lo, f.scale_hi) : 0;
        dl = d * static_cast<float>(ls[s]);
      }
      for (int i = s * f.sub; i < (s + 1) * f.sub; ++i) {
        int c;
        if (f.with_min) c = dl > 0 ? std::clamp(nearest((x[i] + ml) / dl), 0, f.qmax) : 0;
        else c = dl != 0.0f ? std::clamp(nearest(x[i] / dl), -f.offset, f.qmax - f.offset) + f.offset : f.offset;
        codes[i] = c;
        const float y = f.with_min ? dl * static_cast<float>(c) - ml : dl * static_cast<float>(c - f.offset);
        err += double(w[i]) * (y - x[i]) * (y - x[i]);
      }
    }
    if (err < best) best = err, best_d = d, best_ls = ls, best_lm = lm, best_codes = codes;
    if (smax == 0.0f) break;
  }

  std::memset(blk, 0, io::ggml_type_traits(t).block_bytes);
  for (int e = 0; e < kQK; ++e) put_code(t, blk, e, best_codes[e]);
  switch (t) {
    case GgmlType::Q2_K:
      for (int s = 0; s < 16; ++s) blk[s] = static_cast<uint8_t>(best_ls[s] | (best_lm[s] << 4));
      put_u16(blk + 80, fp32_to_fp16(best_d));
      put_u16(blk + 82, fp32_to_fp16(dmin));
      return;
    case GgmlType::Q3_K: {
      int stored[16];
      for (int s = 0; s < 16; ++s) stored[s] = best_ls[s] + 32;
      put_scales_q3(blk + 96, stored);
      put_u16(blk + 108, fp32_to_fp16(best_d));
      return;
    }
    case GgmlType::Q4_K: case GgmlType::Q5_K:
      put_u16(blk, fp32_to_fp16(best_d));
      put_u16(blk + 2, fp32_to_fp16(dmin));
      for (int s = 0; s < 8; ++s) put_scale_min_k4(blk + 4, s, best_ls[s], best_lm[s]);
      return;
    case GgmlType::Q6_K:
      for (int s = 0; s < 16; ++s) reinterpret_cast<int8_t*>(blk + 192)[s] = static_cast<int8_t>(best_ls[s]);
      put_u16(blk + 208, fp32_to_fp16(best_d));
      return;
    default: break;
  }
}

// ---------------------------------------------------------------- ggml's dequantization loops

void dequant_q2_k(const uint8_t* x, float* y) {
  const float d = fp16_to_fp32(get_u16(x + 80)), min = fp16_to_fp32(get_u16(x + 82));
  const uint8_t* scales = x;
  const uint8_t* q = x + 16;
  int is = 0;
  for (int n = 0; n < kQK; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      uint8_t sc = scales[is++];
      float dl = d * (sc & 0xF), ml = min * (sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<int8_t>((q[l] >> shift) & 3) - ml;
      sc = scales[is++];
      dl = d * (sc & 0xF), ml = min * (sc >> 4);
      for (int l = 0; l < 16; ++l) *y++ = dl * static_cast<int8_t>((q[l + 16] >> shift) & 3) - ml;
      shift += 2;
    }
    q += 32;
  }
}

void dequant_q3_k(const uint8_t* x, float* y) {
  const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
  const float d_all = fp16_to_fp32(get_u16(x + 108));
  const uint8_t* q = x + 32;
  const uint8_t* hm = x;
  uint8_t m = 1;
  uint32_t aux[4];
  std::memcpy(aux, x + 96, 12);
  const uint32_t tmp = aux[2];
  aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
  aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
  aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
  aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
  const auto* scales = reinterpret_cast<const int8_t*>(aux);
  int is = 0;
  for (int n = 0; n < kQK; n += 128) {
    int shift = 0;
    for (int j = 0; j < 4; ++j) {
      float dl = d_all * (scales[is++] - 32);
      for (int l = 0; l < 16; ++l) *y++ = dl * (static_cast<int8_t>((q[l] >> shift) & 3) - ((hm[l] & m) ? 0 : 4));
      dl = d_all * (scales[is++] - 32);
      for (int l = 0; l < 16; ++l)
        *y++ = dl * (static_cast<int8_t>((q[l + 16] >> shift) & 3) - ((hm[l + 16] & m) ? 0 : 4));
      shift += 2;
      m = static_cast<uint8_t>(m << 1);
    }
    q += 32;
  }
}

void dequant_q45_k(const uint8_t* x, float* y, bool five) {
  const float d = fp16_to_fp32(get_u16(x)), min = fp16_to_fp32(get_u16(x + 2));
  const uint8_t* scales = x + 4;
  const uint8_t* qh = x + 16;
  const uint8_t* ql = x + (five ? 48 : 16);
  int is = 0;
  uint8_t u1 = 1, u2 = 2;
  for (int j = 0; j < kQK; j += 64) {
    int sc, m;
    get_scale_min_k4(is + 0, scales, &sc, &m);
    const float d1 = d * sc, m1 = min * m;
    get_scale_min_k4(is + 1, scales, &sc, &m);
    const float d2 = d * sc, m2 = min * m;
    for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (five && (qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (five && (qh[l] & u2) ? 16 : 0)) - m2;
    ql += 32;
    is += 2;
    u1 = static_cast<uint8_t>(u1 << 2), u2 = static_cast<uint8_t>(u2 << 2);
  }
}

void dequant_q6_k(const uint8_t* x, float* y) {
  const float d = fp16_to_fp32(get_u16(x + 208));
  const uint8_t* ql = x;
  const uint8_t* qh = x + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(x + 192);
  for (int n = 0; n < kQK; n += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = static_cast<int8_t>((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = static_cast<int8_t>((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = static_cast<int8_t>((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = static_cast<int8_t>((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l + 0] = d * sc[is + 0] * q1;
      y[l + 32] = d * sc[is + 2] * q2;
      y[l + 64] = d * sc[is + 4] * q3;
      y[l + 96] = d * sc[is + 6] * q4;
    }
    y += 128;
    ql += 64;
    qh += 32;
    sc += 8;
  }
}

void check_row(GgmlType t, int64_t n) {
  if (!is_k_quant(t)) throw Error(std::string("not a K-quant type: ") + io::ggml_type_traits(t).name);
  if (n % kKQuantBlock != 0)
    throw InputError("a " + std::string(io::ggml_type_traits(t).name) + " row holds whole super-blocks of 256 weights; got " +
                     std::to_string(n));
}

}  // namespace

bool is_k_quant(GgmlType t) {
  return t == GgmlType::Q2_K || t == GgmlType::Q3_K || t == GgmlType::Q4_K || t == GgmlType::Q5_K ||
         t == GgmlType::Q6_K;
}

void encode_k_row(GgmlType type, const float* x, int64_t n, const float* importance, uint8_t* dst) {
  check_row(type, n);
  const KFormat f = k_format(type);
  const uint64_t bb = io::ggml_type_traits(type).block_bytes;
  for (int64_t b = 0; b < n / kKQuantBlock; ++b)
    encode_super_block(type, f, x + b * kKQuantBlock, importance ? importance + b * kKQuantBlock : nullptr,
                       dst + static_cast<uint64_t>(b) * bb);
}

void dequantize_k_row(GgmlType type, const uint8_t* src, int64_t n, float* dst) {
  check_row(type, n);
  const uint64_t bb = io::ggml_type_traits(type).block_bytes;
  for (int64_t b = 0; b < n / kKQuantBlock; ++b) {
    const uint8_t* x = src + static_cast<uint64_t>(b) * bb;
    float* y = dst + b * kKQuantBlock;
    switch (type) {
      case GgmlType::Q2_K: dequant_q2_k(x, y); break;
      case GgmlType::Q3_K: dequant_q3_k(x, y); break;
      case GgmlType::Q4_K: dequant_q45_k(x, y, false); break;
      case GgmlType::Q5_K: dequant_q45_k(x, y, true); break;
      default: dequant_q6_k(x, y); break;
    }
  }
}

}  // namespace mpqat::quant
