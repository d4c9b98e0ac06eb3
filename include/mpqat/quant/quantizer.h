// The weight quantizer as EfficientQAT defines it (BRIEF §4), in fp32:
//
//   s_c = clamp(s, 1e-4, 1e4)                    (straight-through: gradient passes unchanged)
//   Z   = clamp(round(z), 0, 2^b - 1)            (straight-through for round and clamp)
//   u   = round(W / s_c) + Z                     (straight-through round)
//   q   = clamp(u, 0, 2^b - 1)                   (hard clamp: zero gradient outside)
//   W^  = (q - Z) * s_c
//
// per group (see scheme.h for the group geometry). scale / zero are (out, groups) fp32.
// Gradients (derived in docs/quantization.md), with inside = (0 <= u <= 2^b - 1):
//   dL/dW = g * inside
//   dL/ds = sum_group g * ((q - Z) - inside * W / s_c)
//   dL/dz = sum_group g * (inside ? 0 : -s_c)
// The CPU path is one hand-written fused loop per pass (at::parallel_for over rows); other
// devices use an equivalent torch-ops path. Both give bitwise-identical W^.
#pragma once

#include <torch/torch.h>

#include <cstdint>

#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

struct InitOptions {
  // Grid search per group over shrink factors a in {1, 1 - step, ..., min_shrink} applied to
  // (min, max), keeping the a with the smallest weight MSE.
  bool clip_search = false;
  int clip_grid = 20;
  double min_shrink = 0.5;
  // Round scales to fp16-representable values before choosing zeros, so that a checkpoint
  // (fp16 scales) dequantizes to exactly what the fake-quant module computes.
  bool fp16_scales = true;
};

struct QuantParams {
  torch::Tensor scale;  // (out, groups) fp32
  torch::Tensor zero;   // (out, groups) fp32, integral after init
};

// Min-max init (EfficientQAT): asym s = (max - min) / (2^b - 1) clamped to [1e-4, 1e4],
// z = round(-min / s); sym s = 2 max|w| / (2^b - 1), z = 2^(b-1). w (out, in) fp32.
QuantParams init_params(const torch::Tensor& w, const QuantSpec& spec, const InitOptions& opts = {});

// (out, groups) float zero -> int32 Z = clamp(round(z), 0, qmax)
torch::Tensor zero_codes(const torch::Tensor& zero, const QuantSpec& spec);
// w (out, in) -> q (out, in) int32 codes under (scale, zero)
torch::Tensor quantize_codes(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                             const QuantSpec& spec);

// Differentiable fake quantization: w (out, in), scale / zero (out, groups) -> W^ (out, in).
torch::Tensor fake_quant(const torch::Tensor& w, const torch::Tensor& scale, const torch::Tensor& zero,
                         const QuantSpec& spec);
// The torch-ops path of fake_quant on any device (CUDA uses it; tests compare it with the CPU
// loop). Same autograd semantics.
torch::Tensor fake_quant_torch_ops(const torch::Tensor& w, const torch::Tensor& scale,
                                   const torch::Tensor& zero, const QuantSpec& spec);

// (in) int32 group index of every input column: i / group_width.
torch::Tensor default_g_idx(int64_t in_features, int64_t group_size);

}  // namespace mpqat::quant
