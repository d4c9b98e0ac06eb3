#include "mpqat/model/linear.h"

#include <cmath>

namespace mpqat::model {

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias)
    : in_features_(in_features), out_features_(out_features) {
  weight = register_parameter("weight", torch::empty({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", torch::empty({out_features}));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  return torch::linear(x, weight, bias);
}

void LinearImpl::reset_parameters() {
  torch::NoGradGuard ng;
  // Same bounds as torch.nn.Linear (kaiming_uniform with a = sqrt(5) gives 1/sqrt(in)).
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_features_));
  weight.uniform_(-bound, bound);
  if (bias.defined()) bias.uniform_(-bound, bound);
}

}  // namespace mpqat::model
