// The layer-to-layer profile and layer statistics (include/mpqat/sensitivity/block_profile.h).
#include "mpqat/sensitivity/block_profile.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "mpqat/sensitivity/layer_profile.h"
#include "mpqat/sensitivity/output_sensitivity.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/util/error.h"

namespace mpqat::sensitivity {

namespace {

Eigen::MatrixXd to_eigen(const torch::Tensor& t) {  // (rows, C) -> fp64 row-major copy
  auto c = t.to(torch::kCPU, torch::kDouble).contiguous();
  Eigen::MatrixXd m(c.size(0), c.size(1));
  const double* p = c.data_ptr<double>();
  for (Eigen::Index r = 0; r < m.rows(); ++r)
    for (Eigen::Index k = 0; k < m.cols(); ++k) m(r, k) = p[r * m.cols() + k];
  return m;
}

}  // namespace

BlockProfile block_profile(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                           const BlockProfileOptions& opts) {
  if (sequences.empty()) throw InputError("block profile: no calibration sequences");
  bool subsample = false;
  for (const auto& name : opts.metrics) {
    if (!is_output_metric(name))
      throw InputError("block profile: unknown metric '" + name + "' (accepted: cka, cca, svcca, pwcca, cka-rbf, cka-debiased)");
    subsample = subsample || name != "cka";
  }
  torch::NoGradGuard ng;
  auto& shell = src.shell();
  const auto dev = src.device();
  const int64_t nb = src.num_blocks();
  const int64_t C = src.config().hidden_size;
  // Token rows of every sequence, and the seeded subsample shared by every block.
  int64_t total = 0;
  std::vector<int64_t> lengths;
  for (const auto& s : sequences) {
    total += static_cast<int64_t>(s.size());
    lengths.push_back(static_cast<int64_t>(s.size()));
  }
  SubsampleOptions so;
  so.max_rows = opts.max_rows;
  so.seed = opts.seed;
  const auto chosen = subsample ? subsample_rows(total, so) : std::vector<Eigen::Index>{};
  const auto chosen_t = torch::tensor(std::vector<int64_t>(chosen.begin(), chosen.end()), torch::kLong);
  auto ids_of = [&](size_t k) {
    return torch::tensor(std::vector<int64_t>(sequences[k].begin(), sequences[k].end()), torch::kLong).unsqueeze(0).to(dev);
  };
  // The subsampled rows of every sequence's hidden states in `cache`, stacked in token order.
  auto sampled_rows = [&](const model::ActivationCache& cache) {
    std::vector<torch::Tensor> all;
    for (size_t k = 0; k < sequences.size(); ++k) all.push_back(cache.get(static_cast<int64_t>(k)).reshape({-1, C}));
    return to_eigen(torch::cat(all).index_select(0, chosen_t));
  };

  model::CacheBudget budget(opts.cache);
  auto cur = std::make_unique<model::ActivationCache>(budget, lengths, C, "block-input");
  for (size_t k = 0; k < sequences.size(); ++k) {
    auto ids = ids_of(k);
    cur->put(static_cast<int64_t>(k), shell.embed(ids, shell.context(ids, torch::Tensor())));
  }
  Eigen::MatrixXd sampled_in;
  if (subsample) sampled_in = sampled_rows(*cur);
  AttentionRecorder attention(nb);
  BlockProfile r;
  r.rows = total;
  r.sampled_rows = static_cast<int64_t>(chosen.size());
  const double n = static_cast<double>(total) * static_cast<double>(C);
  for (int64_t i = 0; i < nb; ++i) {
    auto blk = src.block(i);
    auto next = std::make_unique<model::ActivationCache>(budget, lengths, C, "block-output");
    LinearCkaAccumulator cka;
    double sum = 0, sumsq = 0, maxabs = 0;
    for (size_t k = 0; k < sequences.size(); ++k) {
      auto ids = ids_of(k);
      const auto ctx = shell.context(ids, torch::Tensor());
      auto xin = cur->get(static_cast<int64_t>(k), dev);
      torch::Tensor out;
      {
        auto watching = attention.watch(i);
        out = blk->run(xin, ctx);
      }
      auto x = xin.reshape({-1, C}), y = out.reshape({-1, C});
      cka.add(to_eigen(x), to_eigen(y));
      sum += y.sum().item<double>();
      sumsq += y.to(torch::kDouble).pow(2).sum().item<double>();
      maxabs = std::max(maxabs, y.abs().max().item<double>());
      next->put(static_cast<int64_t>(k), out);
    }
    BlockStats st;
    st.mean = sum / n;
    st.std = std::sqrt(std::max(0.0, sumsq / n - st.mean * st.mean));
    st.max_abs = maxabs;
    // Sparsity against the block's own maximum: a second pass over its outputs.
    const double thr = 1e-3 * st.max_abs;
    double near_zero = 0;
    for (size_t k = 0; k < sequences.size(); ++k)
      near_zero += next->get(static_cast<int64_t>(k)).abs().lt(thr).sum().item<double>();
    st.sparsity = near_zero / n;
    Eigen::MatrixXd sampled_out;
    if (subsample) sampled_out = sampled_rows(*next);
    std::map<std::string, double> ch;
    for (const auto& name : opts.metrics) {
      const double sim = name == "cka" ? cka.result()
                                       : subsample_similarity(name, sampled_in, sampled_out, opts.svcca_k, opts.svcca_variance);
      ch[name] = 1.0 - sim;
    }
    st.change = ch;
    r.change.push_back(ch);
    r.stats.push_back(st);
    cur = std::move(next);
    sampled_in = std::move(sampled_out);
  }
  const auto att = attention.result();
  for (int64_t i = 0; i < nb; ++i) r.stats[static_cast<size_t>(i)].attention = att[static_cast<size_t>(i)];
  return r;
}

BlockProfile block_profile(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                           const BlockProfileOptions& opts) {
  auto src = model::model_blocks(m);
  return block_profile(*src, sequences, opts);
}

}  // namespace mpqat::sensitivity
