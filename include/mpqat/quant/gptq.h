// GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
// Pre-trained Transformers") for one linear, at any scheme of scheme.h. docs/quantization.md
// derives it; in short, with H = 2/N sum X^T X of the module's inputs:
//   - dead columns (H_jj = 0) get H_jj = 1 and a zero weight column;
//   - act_order (desc_act): columns are processed by decreasing diag(H);
//   - damping: H += lambda * mean(diag H) * I; when H is still not positive definite, lambda is
//     multiplied by 10 and the factorisation retried (up to max_damp_retries, logged);
//   - U = the upper Cholesky factor of H^-1; columns one at a time, in lazy batches of
//     block_columns: q = quantize(w_j), err = (w_j - q) / U_jj, the remaining columns of the
//     batch take -err * U_j,j+1.., the columns after the batch take the batch's errors at once;
//   - group parameters (min-max, or the clipping search of InitOptions) are chosen when a group
//     starts, from the group's columns as they are at that moment (all earlier updates applied);
//     with act_order the groups are runs of group_size permuted columns and g_idx maps every
//     input column to its group; static_groups fixes the groups on the original column order
//     before any update (contiguous groups, default g_idx).
// Codes, scales and zeros follow the fake-quant semantics of quantizer.h bit for bit, so a
// QuantLinear built from them computes (q - Z) * s.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "mpqat/quant/quantizer.h"
#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

struct GptqOptions {
  double damp = 0.01;           // lambda, relative to mean(diag H)
  bool act_order = false;       // desc_act
  bool static_groups = false;   // groups fixed before the act-order permutation
  int64_t block_columns = 128;  // lazy batch width
  int max_damp_retries = 6;     // each retry multiplies lambda by 10
  bool measure = true;          // fill proxy_loss / rtn_proxy_loss
};

struct GptqModuleResult {
  torch::Tensor codes;  // (out, in) int32, original column order
  torch::Tensor scale;  // (out, groups) fp32 (fp16-representable with InitOptions::fp16_scales)
  torch::Tensor zero;   // (out, groups) fp32, integral
  torch::Tensor g_idx;  // (in) int32: group of every input column
  int64_t group_cols = 0;  // columns of a full group (group_width)
  double damp = 0;      // lambda used (relative)
  int retries = 0;      // damping retries
  int64_t dead_columns = 0;
  // tr((W - W^) H (W - W^)^T) with the H given, for GPTQ and for round-to-nearest at the same
  // scheme and init (0 when not measured).
  double proxy_loss = 0, rtn_proxy_loss = 0;
  bool default_groups() const;  // g_idx == i / group width
};

// w (out, in) float, h (in, in) float or double (symmetric, positive semi-definite). Runs on w's
// device. Throws InputError when the shapes disagree or H stays indefinite after every retry.
// `context` names the module in messages.
GptqModuleResult gptq_quantize(const torch::Tensor& w, const torch::Tensor& h, const QuantSpec& spec,
                               const GptqOptions& opts = {}, const InitOptions& init = {},
                               const std::string& context = "linear");

// W^ (out, in) fp32 = (codes - Z[g_idx]) * s[g_idx].
torch::Tensor gptq_dequantize(const GptqModuleResult& r, const QuantSpec& spec);

// tr((W - Q) H (W - Q)^T): the product in fp32, the sum in fp64.
double hessian_proxy_loss(const torch::Tensor& w, const torch::Tensor& q, const torch::Tensor& h);

}  // namespace mpqat::quant
