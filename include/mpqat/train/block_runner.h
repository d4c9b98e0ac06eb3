// Runs one block over a rank's cached activations: the piece the block-at-a-time passes of the
// train layer share (Block-AP, GPTQ). Sequences are addressed by their local index in the
// rank's Shard (steps.h); activations live in model::ActivationCache (fp32 on `device` when read).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mpqat/model/activation_cache.h"
#include "mpqat/model/model.h"
#include "mpqat/train/steps.h"

namespace mpqat::train {

struct BlockRunner {
  model::TransformerModel& shell;
  const Shard& shard;
  torch::Device device;

  // Masks, positions and rope tables of the local sequences `local`.
  model::BlockContext ctx(const std::vector<int64_t>& local) const {
    auto idx = torch::tensor(local, torch::kLong);
    auto ids = shard.ids.index_select(0, idx).to(device);
    torch::Tensor mask;
    if (shard.mask.defined()) mask = shard.mask.index_select(0, idx).to(device);
    return shell.context(ids, mask);
  }
  // The attention mask (k, L) of `local` on the device (undefined = every position is a token).
  torch::Tensor mask(const std::vector<int64_t>& local) const {
    if (!shard.mask.defined()) return {};
    return shard.mask.index_select(0, torch::tensor(local, torch::kLong)).to(device);
  }
  // Sum of squared errors of block(x[local]) against t[local] over valid positions.
  torch::Tensor sse(model::Block& block, const model::ActivationCache& xc, const model::ActivationCache& tc,
                    const std::vector<int64_t>& local) const {
    auto x = xc.get(local, device);  // (k, L, C) fp32
    auto t = tc.get(local, device);
    auto d = (block.run(x, ctx(local)) - t).pow(2);
    if (shard.mask.defined()) d = d * mask(local).to(torch::kFloat).unsqueeze(-1);
    return d.sum();
  }
  // Local index chunks [0, chunk), [chunk, 2 chunk), ... of `cache`'s items.
  static std::vector<std::vector<int64_t>> chunks(int64_t n, int64_t chunk) {
    std::vector<std::vector<int64_t>> out;
    for (int64_t s = 0; s < n; s += chunk) {
      out.emplace_back();
      for (int64_t k = s; k < std::min(n, s + chunk); ++k) out.back().push_back(k);
    }
    return out;
  }
  // In place: cache[local] = block(cache[local]) in chunks.
  void apply(model::Block& block, model::ActivationCache& cache, int64_t chunk) const {
    torch::NoGradGuard ng;
    for (const auto& local : chunks(cache.items(), chunk))
      cache.put(local, block.run(cache.get(local, device), ctx(local)));
  }
};

}  // namespace mpqat::train
