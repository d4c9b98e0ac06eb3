// The two quantized linears that swap into a model (Block::set_linear / TransformerModel::
// set_linear):
//   FakeQuantLinear: trainable float weight + scale + zero, forward = linear(x, fake_quant(W)).
//   QuantLinear:     packed GPTQ tensors as buffers (qweight, qzeros, scales, g_idx), forward =
//                    dequantize to fp32 + matmul (CPU loop; torch ops on other devices).
// For the same codes and fp16-representable scales both compute W^ = float(q - Z) * s bit for
// bit, so their outputs are identical in fp32.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

#include "mpqat/model/linear.h"
#include "mpqat/quant/quantizer.h"
#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

class QuantLinearImpl;
using QuantLinearPtr = std::shared_ptr<QuantLinearImpl>;

class FakeQuantLinearImpl : public model::LinearImpl {
 public:
  // Copies weight (and bias) of `src` and initialises scale / zero with init_params.
  FakeQuantLinearImpl(const model::LinearImpl& src, const QuantSpec& spec, const InitOptions& opts = {});
  torch::Tensor forward(const torch::Tensor& x) override;

  // W^ (out, in) without autograd.
  torch::Tensor quantized_weight() const;
  // Packs the current codes with fp16 scales. Exactly equal outputs need fp16-representable
  // scales (true after init with fp16_scales; after training call round_scales_to_fp16 first).
  QuantLinearPtr to_quant_linear() const;
  void round_scales_to_fp16();

  const QuantSpec& spec() const { return spec_; }
  torch::Tensor scale;  // (out, groups) trainable
  torch::Tensor zero;   // (out, groups) trainable

 private:
  QuantSpec spec_;
};
using FakeQuantLinearPtr = std::shared_ptr<FakeQuantLinearImpl>;

class QuantLinearImpl : public model::LinearImpl {
 public:
  // Empty buffers of the right shapes; `bias` as a parameter when with_bias. QuantLinear has
  // no "weight" parameter (the member `weight` stays undefined): use dequantize().
  QuantLinearImpl(int64_t in_features, int64_t out_features, bool with_bias, const QuantSpec& spec);

  // From codes (out, in) int32, zero codes (out, groups) int32 and scales (out, groups) float
  // (stored as fp16). bias (out) or undefined.
  static QuantLinearPtr from_codes(const torch::Tensor& codes, const torch::Tensor& zeros,
                                   const torch::Tensor& scales, const torch::Tensor& bias,
                                   const QuantSpec& spec);

  torch::Tensor forward(const torch::Tensor& x) override;
  // (out, in) fp32 W^ on the buffers' device.
  torch::Tensor dequantize() const;
  // Torch-ops dequantize on any device (used off-CPU; tests compare it with the CPU loop).
  torch::Tensor dequantize_torch_ops() const;
  // Keep the dequantized weight between forwards (invalidated by clear_cache()).
  void set_cache(bool on);
  void clear_cache() { cached_ = torch::Tensor(); }

  const QuantSpec& spec() const { return spec_; }
  // Bytes of qweight + qzeros + scales + g_idx.
  uint64_t packed_bytes() const;

  torch::Tensor qweight;  // (packed_words(in, bits), out) int32
  torch::Tensor qzeros;   // (groups, packed_words(out, bits)) int32, true zeros (gptq_v2)
  torch::Tensor scales;   // (groups, out) fp16
  torch::Tensor g_idx;    // (in) int32

 private:
  QuantSpec spec_;
  bool cache_on_ = false;
  mutable torch::Tensor cached_;
};

}  // namespace mpqat::quant
