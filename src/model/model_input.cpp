#include "mpqat/model/model_input.h"

#include <algorithm>

#include <torch/torch.h>

namespace mpqat::model {

ModelInput pad_right(const std::vector<std::vector<int32_t>>& seqs, int64_t pad_id) {
  int64_t T = 1;
  for (const auto& s : seqs) T = std::max<int64_t>(T, static_cast<int64_t>(s.size()));
  const auto B = static_cast<int64_t>(seqs.size());
  ModelInput in;
  in.ids = torch::full({B, T}, pad_id, torch::kLong);
  in.mask = torch::zeros({B, T}, torch::kLong);
  auto ia = in.ids.accessor<int64_t, 2>();
  auto ma = in.mask.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b)
    for (std::size_t t = 0; t < seqs[static_cast<std::size_t>(b)].size(); ++t) {
      ia[b][static_cast<int64_t>(t)] = seqs[static_cast<std::size_t>(b)][t];
      ma[b][static_cast<int64_t>(t)] = 1;
    }
  return in;
}

}  // namespace mpqat::model
