// The linear layer every quantizable projection goes through. Later stages subclass it
// (fake-quant for QAT, packed QuantLinear for deployment) and swap instances in with
// torch::nn::Module::replace_module / LlamaBlock::set_linear.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>

namespace mpqat::model {

class LinearImpl : public torch::nn::Module {
 public:
  // Weight (out, in) and bias (out) are allocated uninitialised: a loader fills them, or call
  // reset_parameters().
  LinearImpl(int64_t in_features, int64_t out_features, bool bias);
  ~LinearImpl() override = default;

  // (..., in) -> (..., out)
  virtual torch::Tensor forward(const torch::Tensor& x);

  // Kaiming-uniform weight and uniform bias, as torch.nn.Linear, from the global generator.
  void reset_parameters();

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }
  bool has_bias() const { return bias.defined(); }

  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out) or undefined

 protected:
  int64_t in_features_;
  int64_t out_features_;
};

using LinearPtr = std::shared_ptr<LinearImpl>;

}  // namespace mpqat::model
