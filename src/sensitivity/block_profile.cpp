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

BlockProfile block_profile(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                           const BlockProfileOptions& opts) {
  if (sequences.empty()) throw InputError("block profile: no calibration sequences");
  bool subsample = false;
  for (const auto& name : opts.metrics) {
    if (!is_output_metric(name))
      throw InputError("block profile: unknown metric '" + name + "' (accepted: cka, cca, svcca, pwcca, cka-rbf, cka-debiased)");
    subsample = subsample || name != "cka";
  }
  torch::NoGradGuard ng;
  const int64_t nb = m.num_blocks();
  // Token rows of every sequence, and the seeded subsample shared by every block.
  int64_t total = 0;
  for (const auto& s : sequences) total += static_cast<int64_t>(s.size());
  SubsampleOptions so;
  so.max_rows = opts.max_rows;
  so.seed = opts.seed;
  const auto chosen = subsample ? subsample_rows(total, so) : std::vector<Eigen::Index>{};
  const auto chosen_t = torch::tensor(std::vector<int64_t>(chosen.begin(), chosen.end()), torch::kLong);

  std::vector<LinearCkaAccumulator> cka(static_cast<size_t>(nb));
  std::vector<std::vector<torch::Tensor>> rows_in(static_cast<size_t>(nb + 1));  // subsampled hidden states
  std::vector<double> sum(static_cast<size_t>(nb), 0), sumsq(static_cast<size_t>(nb), 0), maxabs(static_cast<size_t>(nb), 0);
  std::vector<std::vector<torch::Tensor>> kept(static_cast<size_t>(nb));
  const int64_t C = m.config().hidden_size;
  AttentionRecorder attention(nb);
  for (const auto& seq : sequences) {
    auto ids = torch::tensor(std::vector<int64_t>(seq.begin(), seq.end()), torch::kLong).unsqueeze(0);
    auto ctx = m.context(ids, torch::Tensor());
    auto h = m.embed(ids, ctx);
    for (int64_t i = 0; i < nb; ++i) {
      torch::Tensor out;
      {
        auto watching = attention.watch(i);
        out = m.run_block(i, h, ctx);
      }
      auto x = h.reshape({-1, C}), y = out.reshape({-1, C});
      cka[static_cast<size_t>(i)].add(to_eigen(x), to_eigen(y));
      sum[static_cast<size_t>(i)] += y.sum().item<double>();
      sumsq[static_cast<size_t>(i)] += y.to(torch::kDouble).pow(2).sum().item<double>();
      maxabs[static_cast<size_t>(i)] = std::max(maxabs[static_cast<size_t>(i)], y.abs().max().item<double>());
      kept[static_cast<size_t>(i)].push_back(y.to(torch::kHalf));  // for sparsity against the block's max
      if (subsample) {
        if (i == 0) rows_in[0].push_back(x);
        rows_in[static_cast<size_t>(i + 1)].push_back(y);
      }
      h = out;
    }
  }
  BlockProfile r;
  r.rows = total;
  r.sampled_rows = static_cast<int64_t>(chosen.size());
  const double n = static_cast<double>(total) * static_cast<double>(C);
  std::vector<Eigen::MatrixXd> sampled(static_cast<size_t>(nb + 1));
  if (subsample)
    for (int64_t i = 0; i <= nb; ++i)
      sampled[static_cast<size_t>(i)] = to_eigen(torch::cat(rows_in[static_cast<size_t>(i)]).index_select(0, chosen_t));
  const auto att = attention.result();
  for (int64_t i = 0; i < nb; ++i) {
    BlockStats st;
    st.attention = att[static_cast<size_t>(i)];
    st.mean = sum[static_cast<size_t>(i)] / n;
    st.std = std::sqrt(std::max(0.0, sumsq[static_cast<size_t>(i)] / n - st.mean * st.mean));
    st.max_abs = maxabs[static_cast<size_t>(i)];
    const double thr = 1e-3 * st.max_abs;
    double near_zero = 0;
    for (const auto& y : kept[static_cast<size_t>(i)]) near_zero += y.to(torch::kFloat).abs().lt(thr).sum().item<double>();
    st.sparsity = near_zero / n;
    std::map<std::string, double> ch;
    for (const auto& name : opts.metrics) {
      const double sim = name == "cka" ? cka[static_cast<size_t>(i)].result()
                                       : subsample_similarity(name, sampled[static_cast<size_t>(i)],
                                                              sampled[static_cast<size_t>(i + 1)], opts.svcca_k,
                                                              opts.svcca_variance);
      ch[name] = 1.0 - sim;
    }
    st.change = ch;
    r.change.push_back(ch);
    r.stats.push_back(st);
  }
  return r;
}

}  // namespace mpqat::sensitivity
