// GPTQ for one linear (include/mpqat/quant/gptq.h, docs/quantization.md).
#include "mpqat/quant/gptq.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "mpqat/util/error.h"

namespace mpqat::quant {

namespace {

constexpr double kScaleMin = 1e-4;
constexpr double kScaleMax = 1e4;

// Quantizes one column w (out) with per-row scale / zero (out): the fake-quant rule of
// quantizer.h. Returns the codes (float, integral) and writes W^ into `dq`.
torch::Tensor quantize_column(const torch::Tensor& w, const torch::Tensor& s, const torch::Tensor& z, double qmax,
                              torch::Tensor& dq) {
  auto sc = s.clamp(kScaleMin, kScaleMax);
  auto Z = z.round().clamp(0.0, qmax);
  auto q = (torch::round(w / sc) + Z).clamp(0.0, qmax);
  dq = (q - Z) * sc;
  return q;
}

// The upper Cholesky factor of (H + lambda * mean(diag H) * I)^-1, raising lambda by 10 until
// both factorisations succeed. H is double.
torch::Tensor inverse_factor(const torch::Tensor& H, const GptqOptions& o, const std::string& context,
                             GptqModuleResult& res) {
  const int64_t n = H.size(0);
  const double mean_diag = H.diagonal().mean().item<double>();
  if (!(mean_diag > 0))
    throw InputError("GPTQ " + context + ": the Hessian's mean diagonal is " + std::to_string(mean_diag) +
                     " (every input column zero, or not a sum of X^T X)");
  double lambda = o.damp;
  for (int attempt = 0; attempt <= o.max_damp_retries; ++attempt, lambda = std::max(lambda, 1e-3) * 10) {
    auto Hd = H.clone();
    Hd.diagonal().add_(lambda * mean_diag);
    auto [L, info] = torch::linalg_cholesky_ex(Hd);
    if (info.item<int64_t>() == 0) {
      auto Hinv = torch::cholesky_inverse(L);
      auto [U, info2] = torch::linalg_cholesky_ex(Hinv, /*upper=*/true);
      if (info2.item<int64_t>() == 0 && torch::isfinite(U).all().item<bool>()) {
        res.damp = lambda;
        res.retries = attempt;
        if (attempt > 0)
          spdlog::warn("GPTQ {}: the Hessian ({}x{}) was not positive definite at damp {}; used damp {}", context, n,
                       n, o.damp, lambda);
        return U;
      }
    }
  }
  throw InputError("GPTQ " + context + ": the Hessian stays indefinite after damping up to " +
                   std::to_string(lambda / 10) + " x mean(diag H) (non-finite calibration activations? raise --damp)");
}

}  // namespace

bool GptqModuleResult::default_groups() const {
  if (!g_idx.defined()) return true;
  return torch::equal(g_idx.to(torch::kCPU).to(torch::kInt), default_g_idx(g_idx.size(0), group_cols));
}

double hessian_proxy_loss(const torch::Tensor& w, const torch::Tensor& q, const torch::Tensor& h) {
  torch::NoGradGuard no_grad;
  // The product in fp32 (a diagnostic: ~1e-6 relative), the sum of its positive terms in fp64.
  auto d = (w.to(torch::kFloat) - q.to(w.device(), torch::kFloat));
  auto hf = h.to(w.device(), torch::kFloat);
  return (torch::matmul(d, hf) * d).sum(torch::kDouble).item<double>();
}

torch::Tensor gptq_dequantize(const GptqModuleResult& r, const QuantSpec& spec) {
  torch::NoGradGuard no_grad;
  auto gi = r.g_idx.to(r.codes.device(), torch::kLong);
  auto s = r.scale.clamp(kScaleMin, kScaleMax).index_select(1, gi);
  auto z = r.zero.round().clamp(0.0, spec.qmax()).index_select(1, gi);
  return (r.codes.to(torch::kFloat) - z) * s;
}

GptqModuleResult gptq_quantize(const torch::Tensor& w_in, const torch::Tensor& h_in, const QuantSpec& spec,
                               const GptqOptions& o, const InitOptions& init, const std::string& context) {
  validate_spec(spec, "GPTQ " + context);
  torch::NoGradGuard no_grad;
  if (w_in.dim() != 2 || h_in.dim() != 2 || h_in.size(0) != w_in.size(1) || h_in.size(1) != w_in.size(1))
    throw InputError("GPTQ " + context + ": the Hessian must be (in, in) = (" + std::to_string(w_in.size(-1)) + ", " +
                     std::to_string(w_in.size(-1)) + ") for a weight of " + std::to_string(w_in.dim()) + " dims");
  if (o.damp < 0) throw InputError("GPTQ damp must be >= 0 (got " + std::to_string(o.damp) + ")");
  if (o.block_columns < 1) throw InputError("GPTQ block_columns must be >= 1");
  const auto dev = w_in.device();
  const int64_t out = w_in.size(0), in = w_in.size(1);
  const int64_t gw = group_width(in, spec.group_size), ng = num_groups(in, spec.group_size);
  const double qmax = spec.qmax();
  const QuantSpec slice_spec{spec.bits, -1, spec.sym};  // one group over the slice given

  auto W = w_in.detach().to(torch::kFloat).clone();
  auto H = h_in.detach().to(dev, torch::kDouble).clone();
  if (!torch::isfinite(H).all().item<bool>())
    throw InputError("GPTQ " + context + ": the Hessian has NaN or Inf entries (non-finite calibration activations)");
  GptqModuleResult res;
  auto dead = H.diagonal().eq(0);
  res.dead_columns = dead.sum().item<int64_t>();
  if (res.dead_columns > 0) {
    H.diagonal().masked_fill_(dead, 1.0);
    W.masked_fill_(dead.unsqueeze(0), 0.0f);
  }

  // Static groups: parameters of the contiguous groups, from the weights before any update.
  std::vector<QuantParams> fixed;
  if (o.static_groups)
    for (int64_t g = 0; g < ng; ++g)
      fixed.push_back(init_params(W.slice(1, g * gw, std::min(in, (g + 1) * gw)), slice_spec, init));

  torch::Tensor perm;
  if (o.act_order) {
    perm = std::get<1>(torch::sort(H.diagonal(), /*stable=*/true, /*dim=*/0, /*descending=*/true));
    W = W.index_select(1, perm);
    H = H.index_select(0, perm).index_select(1, perm);
  }
  auto U = inverse_factor(H, o, context, res).to(torch::kFloat);

  auto codes = torch::empty({out, in}, W.options());  // permuted order
  auto scale = torch::empty({out, ng}, W.options());
  auto zero = torch::empty({out, ng}, W.options());
  std::vector<int64_t> perm_v(in);
  if (o.act_order) {
    auto pc = perm.to(torch::kCPU);
    std::copy(pc.data_ptr<int64_t>(), pc.data_ptr<int64_t>() + in, perm_v.begin());
  } else {
    for (int64_t j = 0; j < in; ++j) perm_v[j] = j;
  }
  torch::Tensor s_cur, z_cur;  // (out) parameters of the current group
  const int64_t bs = o.block_columns;
  for (int64_t i1 = 0; i1 < in; i1 += bs) {
    const int64_t i2 = std::min(in, i1 + bs), count = i2 - i1;
    auto W1 = W.slice(1, i1, i2).clone();
    auto Err1 = torch::zeros({out, count}, W.options());
    auto U1 = U.slice(0, i1, i2).slice(1, i1, i2);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t col = i1 + i;
      if (o.static_groups) {
        const int64_t g = perm_v[col] / gw;
        s_cur = fixed[g].scale.select(1, 0);
        z_cur = fixed[g].zero.select(1, 0);
      } else if (col % gw == 0) {
        // The group's columns as they are now: the batch's own (updated in W1) and, past the
        // batch, W minus the pending updates of this batch's errors so far.
        const int64_t end = std::min(in, col + gw);
        auto cur = W1.slice(1, i, std::min(count, end - i1));
        if (end > i2) {
          auto beyond = W.slice(1, i2, end);
          if (i > 0) beyond = beyond - torch::matmul(Err1.slice(1, 0, i), U.slice(0, i1, col).slice(1, i2, end));
          cur = torch::cat({cur, beyond}, 1);
        }
        auto p = init_params(cur, slice_spec, init);
        s_cur = p.scale.select(1, 0);
        z_cur = p.zero.select(1, 0);
        scale.select(1, col / gw).copy_(s_cur);
        zero.select(1, col / gw).copy_(z_cur);
      }
      auto w = W1.select(1, i);
      torch::Tensor dq;
      codes.select(1, col).copy_(quantize_column(w, s_cur, z_cur, qmax, dq));
      auto err = (w - dq) / U1[i][i];
      W1.slice(1, i).sub_(torch::outer(err, U1[i].slice(0, i)));
      Err1.select(1, i).copy_(err);
    }
    if (i2 < in) W.slice(1, i2).sub_(torch::matmul(Err1, U.slice(0, i1, i2).slice(1, i2)));
  }

  // Back to the original column order.
  std::vector<int32_t> gidx(in);
  if (o.static_groups) {
    for (int64_t g = 0; g < ng; ++g) {
      scale.select(1, g).copy_(fixed[g].scale.select(1, 0));
      zero.select(1, g).copy_(fixed[g].zero.select(1, 0));
    }
    for (int64_t j = 0; j < in; ++j) gidx[j] = static_cast<int32_t>(j / gw);
  } else {
    for (int64_t col = 0; col < in; ++col) gidx[perm_v[col]] = static_cast<int32_t>(col / gw);
  }
  if (o.act_order) {
    auto inv = torch::empty_like(perm);
    inv.index_put_({perm}, torch::arange(in, perm.options()));
    codes = codes.index_select(1, inv);
  }
  res.codes = codes.to(torch::kInt);
  res.scale = scale;
  res.zero = zero;
  res.g_idx = torch::from_blob(gidx.data(), {in}, torch::kInt).clone().to(dev);
  res.group_cols = gw;
  if (o.measure) {
    auto h = h_in.to(dev, torch::kFloat);
    res.proxy_loss = hessian_proxy_loss(w_in.to(torch::kFloat), gptq_dequantize(res, spec), h);
    auto p = init_params(w_in.to(torch::kFloat), spec, init);
    res.rtn_proxy_loss = hessian_proxy_loss(w_in.to(torch::kFloat), fake_quant(w_in.to(torch::kFloat), p.scale, p.zero, spec), h);
  }
  return res;
}

}  // namespace mpqat::quant
