// Quantizer init, the fused fake-quant autograd function and the two quantized linears. One
// translation unit on purpose: torch TUs are expensive to compile.
#include "mpqat/quant/quantizer.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "mpqat/quant/quant_linear.h"
#include "mpqat/util/error.h"

namespace mpqat::quant {

namespace {

constexpr float kScaleMin = 1e-4f;
constexpr float kScaleMax = 1e4f;

// Smallest fp16 value >= 1e-4, so that an fp16-rounded scale survives the forward clamp unchanged.
float fp16_scale_min() {
  c10::Half h(kScaleMin);
  if (static_cast<float>(h) < kScaleMin) h = c10::Half(static_cast<uint16_t>(h.x + 1), c10::Half::from_bits());
  return static_cast<float>(h);
}

void check_operands(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                    const QuantSpec& spec) {
  validate_spec(spec, "fake_quant");
  if (w.dim() != 2 || w.scalar_type() != torch::kFloat)
    throw Error("fake_quant: weight must be a 2-D fp32 tensor (out, in), got " + std::string(w.toString()) +
                " of " + std::to_string(w.dim()) + " dims");
  const int64_t g = num_groups(w.size(1), spec.group_size);
  for (const auto* t : {&scale, &zero})
    if (t->dim() != 2 || t->size(0) != w.size(0) || t->size(1) != g || t->scalar_type() != torch::kFloat)
      throw Error("fake_quant: scale and zero must be fp32 (" + std::to_string(w.size(0)) + ", " +
                  std::to_string(g) + ") for weight (" + std::to_string(w.size(0)) + ", " +
                  std::to_string(w.size(1)) + ") at " + spec_str(spec));
}

// Round half to even, as std::nearbyint / torch.round under the default rounding mode, without a
// libm call or a branch so the forward loop vectorises: adding and subtracting 2^23 leaves no
// fractional bits. Equal to nearbyint for |x| < 2^46 (W / s here is at most |W| / 1e-4);
// copysign keeps nearbyint's -0.
inline float round_even(float x) {
  const float a = std::fabs(x);
  return std::copysign((a + 8388608.0f) - 8388608.0f, x);
}

// Same select pattern as std::min / std::max (compiles to minps / maxps).
inline float clampf(float v, float lo, float hi) { return std::min(std::max(v, lo), hi); }

// (out, in) -> (out, groups): sum over each group's columns (last group may be narrower).
torch::Tensor group_sum(const torch::Tensor& t, int64_t gw) {
  const int64_t out = t.size(0), in = t.size(1), ng = (in + gw - 1) / gw;
  auto p = ng * gw == in ? t : torch::cat({t, torch::zeros({out, ng * gw - in}, t.options())}, 1);
  return p.view({out, ng, gw}).sum(-1);
}

// (out, in) -> (out, groups) min and max per group (the last group padded by its first column).
std::pair<torch::Tensor, torch::Tensor> group_minmax(const torch::Tensor& w, int64_t gw) {
  const int64_t out = w.size(0), in = w.size(1), ng = (in + gw - 1) / gw;
  auto p = w;
  if (ng * gw != in) p = torch::cat({w, w.select(1, (ng - 1) * gw).unsqueeze(1).expand({out, ng * gw - in})}, 1);
  auto v = p.reshape({out, ng, gw});
  return {std::get<0>(v.min(-1)), std::get<0>(v.max(-1))};
}

// (out, groups) -> (out, in) by g_idx
torch::Tensor expand_groups(const torch::Tensor& t, const torch::Tensor& gidx_long) {
  return t.index_select(1, gidx_long);
}

// ------------------------------------------------------------------------------------------
// CPU fused loops

void fq_forward_cpu(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                    const QuantSpec& spec, torch::Tensor& out_t) {
  const int64_t out = w.size(0), in = w.size(1), gw = group_width(in, spec.group_size);
  const int64_t ng = num_groups(in, spec.group_size);
  const float qmax = static_cast<float>(spec.qmax());
  const float* W = w.data_ptr<float>();
  const float* S = scale.data_ptr<float>();
  const float* Zp = zero.data_ptr<float>();
  float* O = out_t.data_ptr<float>();
  at::parallel_for(0, out, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t o = r0; o < r1; ++o) {
      for (int64_t g = 0; g < ng; ++g) {
        const float sc = clampf(S[o * ng + g], kScaleMin, kScaleMax);
        const float Z = clampf(round_even(Zp[o * ng + g]), 0.0f, qmax);
        const int64_t i1 = std::min(in, (g + 1) * gw);
        for (int64_t i = g * gw; i < i1; ++i) {
          const float u = round_even(W[o * in + i] / sc) + Z;
          const float q = clampf(u, 0.0f, qmax);
          O[o * in + i] = (q - Z) * sc;
        }
      }
    }
  });
}

void fq_backward_cpu(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                     const QuantSpec& spec, const torch::Tensor& grad, torch::Tensor* gw_t, torch::Tensor& gs_t,
                     torch::Tensor& gz_t) {
  const int64_t out = w.size(0), in = w.size(1), gw = group_width(in, spec.group_size);
  const int64_t ng = num_groups(in, spec.group_size);
  const float qmax = static_cast<float>(spec.qmax());
  const float* W = w.data_ptr<float>();
  const float* S = scale.data_ptr<float>();
  const float* Zp = zero.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  float* GW = gw_t->data_ptr<float>();
  float* GS = gs_t.data_ptr<float>();
  float* GZ = gz_t.data_ptr<float>();
  at::parallel_for(0, out, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t o = r0; o < r1; ++o) {
      for (int64_t g = 0; g < ng; ++g) {
        const float sc = clampf(S[o * ng + g], kScaleMin, kScaleMax);
        const float Z = clampf(round_even(Zp[o * ng + g]), 0.0f, qmax);
        const int64_t i1 = std::min(in, (g + 1) * gw);
        // One pass: dL/dW and the per-group sums (fp64). GCC does not vectorise this loop
        // (its compare-and-selects stay branches under trapping math); the forward loop is.
        double ds = 0.0, dz = 0.0;
        for (int64_t i = g * gw; i < i1; ++i) {
          const float x = W[o * in + i] / sc;
          const float u = round_even(x) + Z;
          const bool inside = u >= 0.0f && u <= qmax;
          const float q = clampf(u, 0.0f, qmax);
          const float gi = G[o * in + i];
          GW[o * in + i] = inside ? gi : 0.0f;
          ds += static_cast<double>(gi) * ((q - Z) - (inside ? x : 0.0f));
          if (!inside) dz += gi;
        }
        dz *= -static_cast<double>(sc);
        GS[o * ng + g] = static_cast<float>(ds);
        GZ[o * ng + g] = static_cast<float>(dz);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// torch-ops path (any device)

struct Expanded {
  torch::Tensor sf, Zf, u, q;  // (out, in)
};

Expanded fq_expand(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                   const QuantSpec& spec) {
  const double qmax = spec.qmax();
  auto gidx = default_g_idx(w.size(1), spec.group_size).to(torch::kLong).to(w.device());
  Expanded e;
  e.sf = expand_groups(scale.clamp(kScaleMin, kScaleMax), gidx);
  e.Zf = expand_groups(zero.round().clamp(0.0, qmax), gidx);
  e.u = torch::round(w / e.sf) + e.Zf;
  e.q = e.u.clamp(0.0, qmax);
  return e;
}

class FakeQuantFunction : public torch::autograd::Function<FakeQuantFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& w,
                               const torch::Tensor& scale, const torch::Tensor& zero, int64_t bits,
                               int64_t group_size, bool force_torch_ops) {
    const QuantSpec spec{static_cast<int>(bits), group_size, false};
    auto wc = w.contiguous(), sc = scale.contiguous(), zc = zero.contiguous();
    ctx->save_for_backward({wc, sc, zc});
    ctx->saved_data["bits"] = bits;
    ctx->saved_data["group_size"] = group_size;
    ctx->saved_data["torch_ops"] = force_torch_ops;
    if (wc.device().is_cpu() && !force_torch_ops) {
      auto out = torch::empty_like(wc);
      fq_forward_cpu(wc, sc, zc, spec, out);
      return out;
    }
    auto e = fq_expand(wc, sc, zc, spec);
    return (e.q - e.Zf) * e.sf;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &w = saved[0], &scale = saved[1], &zero = saved[2];
    const QuantSpec spec{static_cast<int>(ctx->saved_data["bits"].toInt()), ctx->saved_data["group_size"].toInt(),
                         false};
    const bool torch_ops = ctx->saved_data["torch_ops"].toBool();
    auto g = grads[0].contiguous();
    torch::Tensor gw, gs, gz;
    if (w.device().is_cpu() && !torch_ops) {
      gw = torch::empty_like(w);
      gs = torch::empty_like(scale);
      gz = torch::empty_like(zero);
      fq_backward_cpu(w, scale, zero, spec, g, &gw, gs, gz);
    } else {
      const double qmax = spec.qmax();
      auto e = fq_expand(w, scale, zero, spec);
      auto inside = (e.u >= 0.0).logical_and(e.u <= qmax);
      gw = g * inside;
      auto gidx = default_g_idx(w.size(1), spec.group_size).to(torch::kLong).to(w.device());
      auto ds_full = g * ((e.q - e.Zf) - torch::where(inside, w / e.sf, torch::zeros_like(w)));
      auto dz_full = torch::where(inside, torch::zeros_like(w), -g * e.sf);
      gs = torch::zeros_like(scale).index_add_(1, gidx, ds_full);
      gz = torch::zeros_like(zero).index_add_(1, gidx, dz_full);
    }
    return {gw, gs, gz, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor default_g_idx(int64_t in_features, int64_t group_size) {
  const int64_t gw = group_width(in_features, group_size);
  return torch::div(torch::arange(in_features, torch::kInt), gw, "floor").to(torch::kInt);
}

QuantParams init_params(const torch::Tensor& w_in, const QuantSpec& spec, const InitOptions& opts) {
  validate_spec(spec, "init_params");
  torch::NoGradGuard ng;
  auto w = w_in.detach().to(torch::kFloat).contiguous();
  const int64_t gw = group_width(w.size(1), spec.group_size);
  const double qmax = spec.qmax();
  auto [mn, mx] = group_minmax(w, gw);  // (out, groups)
  const float smin = opts.fp16_scales ? fp16_scale_min() : kScaleMin;

  auto make = [&](const torch::Tensor& lo, const torch::Tensor& hi) {
    QuantParams p;
    if (spec.sym) {
      auto amax = torch::max(lo.abs(), hi.abs());
      p.scale = (amax * 2.0 / qmax).clamp(kScaleMin, kScaleMax);
    } else {
      p.scale = ((hi - lo) / qmax).clamp(kScaleMin, kScaleMax);
    }
    if (opts.fp16_scales) p.scale = p.scale.to(torch::kHalf).to(torch::kFloat).clamp(smin, kScaleMax);
    if (spec.sym) p.zero = torch::full_like(p.scale, static_cast<double>(1 << (spec.bits - 1)));
    else p.zero = (-(lo / p.scale).clamp(-1e4, 1e4)).round();
    return p;
  };

  QuantParams best = make(mn, mx);
  if (!opts.clip_search) return best;
  const QuantSpec plain{spec.bits, spec.group_size, false};
  auto err_of = [&](const QuantParams& p) {
    auto wh = fake_quant(w, p.scale, p.zero, plain);
    return group_sum((wh - w).pow(2), gw);  // (out, groups)
  };
  auto best_err = err_of(best);
  const int n = std::max(1, opts.clip_grid);
  for (int k = 1; k <= n; ++k) {
    const double a = 1.0 - (1.0 - opts.min_shrink) * k / n;
    auto cand = make(mn * a, mx * a);
    auto err = err_of(cand);
    auto better = err < best_err;
    best.scale = torch::where(better, cand.scale, best.scale);
    best.zero = torch::where(better, cand.zero, best.zero);
    best_err = torch::where(better, err, best_err);
  }
  return best;
}

torch::Tensor zero_codes(const torch::Tensor& zero, const QuantSpec& spec) {
  return zero.detach().round().clamp(0, spec.qmax()).to(torch::kInt);
}

torch::Tensor quantize_codes(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                             const QuantSpec& spec) {
  torch::NoGradGuard ng;
  check_operands(w, scale, zero, spec);
  auto e = fq_expand(w.detach().contiguous(), scale.detach(), zero.detach(), spec);
  return e.q.to(torch::kInt);
}

torch::Tensor fake_quant(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                         const QuantSpec& spec) {
  check_operands(w, scale, zero, spec);
  return FakeQuantFunction::apply(w, scale, zero, static_cast<int64_t>(spec.bits), spec.group_size, false);
}

torch::Tensor fake_quant_torch_ops(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                                   const QuantSpec& spec) {
  check_operands(w, scale, zero, spec);
  return FakeQuantFunction::apply(w, scale, zero, static_cast<int64_t>(spec.bits), spec.group_size, true);
}

// ---------------------------------------------------------------------------------------------
// FakeQuantLinear

FakeQuantLinearImpl::FakeQuantLinearImpl(const model::LinearImpl& src, const QuantSpec& spec,
                                         const InitOptions& opts)
    : model::LinearImpl(src.in_features(), src.out_features(), src.has_bias()), spec_(spec) {
  validate_spec(spec, "FakeQuantLinear");
  torch::NoGradGuard ng;
  weight.copy_(src.weight.detach().to(weight.device()));
  if (bias.defined()) bias.copy_(src.bias.detach());
  auto p = init_params(weight, spec, opts);
  scale = register_parameter("scale", p.scale);
  // Symmetric schemes keep the zero point fixed at 2^(b-1).
  zero = register_parameter("zero", p.zero, /*requires_grad=*/!spec.sym);
}

torch::Tensor FakeQuantLinearImpl::forward(const torch::Tensor& x) {
  return torch::linear(x, fake_quant(weight, scale, zero, spec_), bias);
}

torch::Tensor FakeQuantLinearImpl::quantized_weight() const {
  torch::NoGradGuard ng;
  return fake_quant(weight.detach(), scale.detach(), zero.detach(), spec_);
}

void FakeQuantLinearImpl::round_scales_to_fp16() {
  torch::NoGradGuard ng;
  scale.copy_(scale.clamp(kScaleMin, kScaleMax).to(torch::kHalf).to(torch::kFloat).clamp(fp16_scale_min(), kScaleMax));
}

QuantLinearPtr FakeQuantLinearImpl::to_quant_linear() const {
  torch::NoGradGuard ng;
  auto codes = quantize_codes(weight, scale, zero, spec_);
  auto sc = scale.detach().clamp(kScaleMin, kScaleMax);
  return QuantLinearImpl::from_codes(codes, zero_codes(zero, spec_), sc,
                                     bias.defined() ? bias.detach() : torch::Tensor(), spec_);
}

// ---------------------------------------------------------------------------------------------
// QuantLinear

QuantLinearImpl::QuantLinearImpl(int64_t in_features, int64_t out_features, bool with_bias, const QuantSpec& spec)
    : model::LinearImpl(in_features, out_features, with_bias), spec_(spec) {
  validate_spec(spec, "QuantLinear");
  parameters_.erase("weight");
  weight = torch::Tensor();
  const int64_t ng = num_groups(in_features, spec.group_size);
  qweight = register_buffer("qweight", torch::zeros({packed_words(in_features, spec.bits), out_features}, torch::kInt));
  qzeros = register_buffer("qzeros", torch::zeros({ng, packed_words(out_features, spec.bits)}, torch::kInt));
  scales = register_buffer("scales", torch::zeros({ng, out_features}, torch::kHalf));
  g_idx = register_buffer("g_idx", default_g_idx(in_features, spec.group_size));
}

QuantLinearPtr QuantLinearImpl::from_codes(const torch::Tensor& codes_in, const torch::Tensor& zeros_in,
                                           const torch::Tensor& scales_in, const torch::Tensor& bias_in,
                                           const QuantSpec& spec) {
  torch::NoGradGuard ng;
  auto codes = codes_in.to(torch::kCPU).to(torch::kInt).contiguous();  // (out, in)
  const int64_t out = codes.size(0), in = codes.size(1);
  auto m = std::make_shared<QuantLinearImpl>(in, out, bias_in.defined(), spec);
  const int64_t ngr = num_groups(in, spec.group_size);
  if (zeros_in.size(0) != out || zeros_in.size(1) != ngr || scales_in.size(0) != out || scales_in.size(1) != ngr)
    throw Error("QuantLinear::from_codes: zeros / scales must be (" + std::to_string(out) + ", " +
                std::to_string(ngr) + ")");
  auto qw = pack_qweight(codes.data_ptr<int32_t>(), out, in, spec.bits);
  std::memcpy(m->qweight.data_ptr<int32_t>(), qw.data(), qw.size() * sizeof(int32_t));
  auto zt = zeros_in.to(torch::kCPU).to(torch::kInt).t().contiguous();  // (groups, out)
  auto qz = pack_qzeros(zt.data_ptr<int32_t>(), ngr, out, spec.bits);
  std::memcpy(m->qzeros.data_ptr<int32_t>(), qz.data(), qz.size() * sizeof(int32_t));
  m->scales.copy_(scales_in.to(torch::kCPU).to(torch::kFloat).t().to(torch::kHalf));
  if (bias_in.defined()) m->bias.copy_(bias_in.to(torch::kCPU));
  if (codes_in.device() != torch::Device(torch::kCPU)) m->to(codes_in.device());
  return m;
}

void QuantLinearImpl::set_cache(bool on) {
  cache_on_ = on;
  if (!on) cached_ = torch::Tensor();
}

uint64_t QuantLinearImpl::packed_bytes() const {
  return qweight.numel() * 4ull + qzeros.numel() * 4ull + scales.numel() * 2ull + g_idx.numel() * 4ull;
}

torch::Tensor QuantLinearImpl::dequantize() const {
  if (!qweight.device().is_cpu()) return dequantize_torch_ops();
  torch::NoGradGuard ng;
  const int64_t in = in_features_, out = out_features_, ngr = scales.size(0);
  const int bits = spec_.bits;
  auto qw = qweight.contiguous();
  auto zc = unpack_qzeros(qzeros.contiguous().data_ptr<int32_t>(), ngr, out, bits);  // (groups, out)
  auto sf = scales.to(torch::kFloat).contiguous();                                   // (groups, out)
  auto gi = g_idx.to(torch::kInt).contiguous();
  const uint32_t* QW = reinterpret_cast<const uint32_t*>(qw.data_ptr<int32_t>());
  const float* S = sf.data_ptr<float>();
  const int32_t* Z = zc.data();
  const int32_t* GI = gi.data_ptr<int32_t>();
  // Decoded in tiles of qweight's own (in, out) orientation: for a fixed input row the shift is
  // a constant and reads run along `out`, so the decode loop vectorises; each tile is then
  // written transposed into the (out, in) weight, 16 consecutive floats per output row.
  constexpr int64_t TI = 16, TO = 256;
  auto res = torch::empty({out, in}, torch::kFloat);  // (out, in)
  float* R = res.data_ptr<float>();
  const uint32_t mask = (uint32_t(1) << bits) - 1;
  const int64_t iblocks = (in + TI - 1) / TI;
  at::parallel_for(0, iblocks, 1, [&](int64_t b0, int64_t b1) {
    float tile[TI * TO];  // (TI, TO)
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t i0 = blk * TI, ni = std::min(TI, in - i0);
      for (int64_t o0 = 0; o0 < out; o0 += TO) {
        const int64_t no = std::min(TO, out - o0);
        for (int64_t k = 0; k < ni; ++k) {
          const int64_t i = i0 + k, p = i * bits, r = p >> 5;
          const int sh = static_cast<int>(p & 31);
          const uint32_t* a = QW + r * out + o0;
          const int32_t* z = Z + static_cast<int64_t>(GI[i]) * out + o0;
          const float* sc = S + static_cast<int64_t>(GI[i]) * out + o0;
          float* dst = tile + k * TO;
          if (sh + bits > 32) {
            const uint32_t* nb = a + out;  // the code continues in the next word row
            const int shb = 32 - sh;
            for (int64_t o = 0; o < no; ++o) {
              const uint32_t v = ((a[o] >> sh) | (nb[o] << shb)) & mask;
              dst[o] = static_cast<float>(static_cast<int32_t>(v) - z[o]) * sc[o];
            }
          } else {
            for (int64_t o = 0; o < no; ++o) {
              const uint32_t v = (a[o] >> sh) & mask;
              dst[o] = static_cast<float>(static_cast<int32_t>(v) - z[o]) * sc[o];
            }
          }
        }
        for (int64_t o = 0; o < no; ++o) {
          float* row = R + (o0 + o) * in + i0;
          for (int64_t k = 0; k < ni; ++k) row[k] = tile[k * TO + o];
        }
      }
    }
  });
  return res;
}

torch::Tensor QuantLinearImpl::dequantize_torch_ops() const {
  torch::NoGradGuard ng;
  const int64_t in = in_features_, out = out_features_;
  const int bits = spec_.bits;
  const auto dev = qweight.device();
  const int64_t mask = (int64_t(1) << bits) - 1;
  // Unpacks n codes along dim 0 of a (words, cols) int32 tensor -> (n, cols) int64.
  auto unpack = [&](const torch::Tensor& words, int64_t n) {
    auto w64 = words.to(torch::kLong).bitwise_and(static_cast<int64_t>(0xFFFFFFFF));
    auto p = torch::arange(n, torch::TensorOptions().dtype(torch::kLong).device(dev)) * bits;
    auto widx = torch::div(p, 32, "floor");
    auto off = (p - widx * 32).unsqueeze(1);
    auto lo = w64.index_select(0, widx).bitwise_right_shift(off);
    auto hi = w64.index_select(0, (widx + 1).clamp_max(words.size(0) - 1)).bitwise_left_shift(32 - off);
    return lo.bitwise_or(hi).bitwise_and(mask);
  };
  auto codes = unpack(qweight, in);                      // (in, out)
  auto zeros = unpack(qzeros.t().contiguous(), out).t();  // (groups, out)
  auto gi = g_idx.to(torch::kLong);
  auto wt = (codes - zeros.index_select(0, gi)).to(torch::kFloat) * scales.to(torch::kFloat).index_select(0, gi);
  return wt.t().contiguous();  // (out, in)
}

torch::Tensor QuantLinearImpl::forward(const torch::Tensor& x) {
  if (cache_on_) {
    if (!cached_.defined()) cached_ = dequantize();
    return torch::linear(x, cached_, bias);
  }
  return torch::linear(x, dequantize(), bias);
}

}  // namespace mpqat::quant
