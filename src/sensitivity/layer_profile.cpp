// Attention entropy and head specialisation per block (include/mpqat/sensitivity/layer_profile.h).
#include "mpqat/sensitivity/layer_profile.h"

#include <torch/torch.h>

#include <cmath>
#include <string>

#include "mpqat/model/model.h"
#include "mpqat/util/error.h"

namespace mpqat::sensitivity {

struct AttentionRecorder::Impl {
  struct Block {
    std::vector<double> sum_entropy;  // per head, sum over rows of H(row)
    double sum_log_keys = 0.0;        // sum over rows of ln n(row) (the same for every head)
    int64_t rows = 0;                 // per head
  };
  std::vector<Block> blocks;
};

AttentionRecorder::AttentionRecorder(int64_t num_blocks) : impl_(std::make_unique<Impl>()) {
  if (num_blocks < 0) throw Error("AttentionRecorder: negative block count");
  impl_->blocks.resize(static_cast<size_t>(num_blocks));
}

AttentionRecorder::~AttentionRecorder() = default;

model::ScopedAttentionObserver AttentionRecorder::watch(int64_t block) {
  if (block < 0 || block >= static_cast<int64_t>(impl_->blocks.size()))
    throw Error("AttentionRecorder: block " + std::to_string(block) + " out of range (" +
                std::to_string(impl_->blocks.size()) + " blocks)");
  return model::ScopedAttentionObserver([this, block](const at::Tensor& probs) { add(block, probs); });
}

void AttentionRecorder::add(int64_t block, const at::Tensor& probs) {
  if (block < 0 || block >= static_cast<int64_t>(impl_->blocks.size()))
    throw Error("AttentionRecorder: block " + std::to_string(block) + " out of range");
  if (probs.dim() != 4) throw Error("AttentionRecorder: attention probabilities must be (B, H, Tq, S)");
  torch::NoGradGuard ng;
  auto p = probs.detach().to(torch::kCPU, torch::kFloat);
  const int64_t B = p.size(0), H = p.size(1), Tq = p.size(2), S = p.size(3);
  if (B == 0 || Tq == 0 || S == 0) return;
  auto& b = impl_->blocks[static_cast<size_t>(block)];
  if (b.sum_entropy.empty()) b.sum_entropy.assign(static_cast<size_t>(H), 0.0);
  if (static_cast<int64_t>(b.sum_entropy.size()) != H)
    throw Error("AttentionRecorder: block " + std::to_string(block) + " changed its number of heads");
  // -sum p ln p per row (xlogy gives 0 for p = 0), summed over batch and rows per head, in fp64.
  auto ent = torch::xlogy(p, p).neg().sum(-1).to(torch::kDouble).sum(std::vector<int64_t>{0, 2});  // (H)
  auto acc = ent.contiguous();
  const double* e = acc.data_ptr<double>();
  for (int64_t h = 0; h < H; ++h) b.sum_entropy[static_cast<size_t>(h)] += e[h];
  // Keys each row reads: causal when nothing right of the diagonal got any weight.
  const int64_t offset = S - Tq;  // row r sits at position offset + r
  bool causal = false;
  if (offset >= 0) causal = Tq == 1 || torch::triu(p, offset + 1).eq(0).all().item<bool>();
  double log_keys = 0.0;
  for (int64_t r = 0; r < Tq; ++r)
    log_keys += std::log(static_cast<double>(causal ? offset + r + 1 : S));
  b.sum_log_keys += static_cast<double>(B) * log_keys;
  b.rows += B * Tq;
}

std::vector<AttentionStats> AttentionRecorder::result() const {
  std::vector<AttentionStats> out;
  for (const auto& b : impl_->blocks) {
    AttentionStats s;
    s.rows = b.rows;
    if (b.rows > 0) {
      const auto H = b.sum_entropy.size();
      const double n = static_cast<double>(b.rows);
      s.max_entropy = b.sum_log_keys / n;
      double sum = 0.0, sum_spec = 0.0;
      for (size_t h = 0; h < H; ++h) {
        const double ent = b.sum_entropy[h] / n;
        const double spec = b.sum_log_keys > 0.0 ? 1.0 - b.sum_entropy[h] / b.sum_log_keys : 0.0;
        s.head_entropy.push_back(ent);
        s.head_specialisation.push_back(spec);
        sum += ent;
        sum_spec += spec;
      }
      s.entropy = sum / static_cast<double>(H);
      s.specialisation = sum_spec / static_cast<double>(H);
      double var = 0.0;
      for (double ent : s.head_entropy) var += (ent - s.entropy) * (ent - s.entropy);
      s.entropy_std = std::sqrt(var / static_cast<double>(H));
    }
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<AttentionStats> attention_profile(model::TransformerModel& m,
                                              const std::vector<std::vector<int32_t>>& sequences) {
  if (sequences.empty()) throw InputError("attention profile: no calibration sequences");
  torch::NoGradGuard ng;
  const int64_t nb = m.num_blocks();
  AttentionRecorder rec(nb);
  for (const auto& seq : sequences) {
    if (seq.empty()) continue;
    auto ids = torch::tensor(std::vector<int64_t>(seq.begin(), seq.end()), torch::kLong).unsqueeze(0);
    auto ctx = m.context(ids, torch::Tensor());
    auto h = m.embed(ids, ctx);
    for (int64_t i = 0; i < nb; ++i) {
      auto watching = rec.watch(i);
      h = m.run_block(i, h, ctx);
    }
  }
  return rec.result();
}

}  // namespace mpqat::sensitivity
