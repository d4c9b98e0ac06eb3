#include "mpqat/sensitivity/output_sensitivity.h"

#include <algorithm>
#include <memory>

#include <Eigen/Dense>

#include "mpqat/quant/quantizer.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/util/error.h"

namespace mpqat::sensitivity {

const std::vector<std::string>& output_metric_names() {
  static const std::vector<std::string> n = {"cka", "cca", "svcca", "pwcca", "cka-rbf", "cka-debiased"};
  return n;
}

bool is_output_metric(const std::string& name) {
  const auto& n = output_metric_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

double subsample_similarity(const std::string& name, const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y,
                            int svcca_k, double svcca_variance) {
  if (name == "cca") return cca(X, Y).mean_rho();
  if (name == "svcca") {
    SvccaOptions so;
    so.k = svcca_k;
    so.var_fraction = svcca_variance;
    return svcca(X, Y, so).mean_rho;
  }
  if (name == "pwcca") return pwcca(X, Y).value;
  if (name == "cka-rbf") {
    SubsampleOptions all;
    all.max_rows = 0;
    return rbf_cka(X, Y, 0.5, false, all);
  }
  if (name == "cka-debiased") return debiased_linear_cka(X, Y);
  throw InputError("unknown similarity metric '" + name + "' (accepted: cca, svcca, pwcca, cka-rbf, cka-debiased)");
}

namespace {

using RowMatrix = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Eigen::MatrixXd to_eigen(const torch::Tensor& t) {  // (n, d) -> fp64 Eigen
  auto c = t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  return Eigen::Map<const RowMatrix>(c.data_ptr<double>(), c.size(0), c.size(1));
}

// Stands in for a block linear during the pass: returns the full-precision output and records
// it together with the output of the quantized weight. Built with zero-sized parameters so that
// it holds no copy of the weight (it uses the original's tensors).
class ObserveLinear : public model::LinearImpl {
 public:
  ObserveLinear(model::LinearPtr orig, torch::Tensor wq, bool stream_cka, const std::vector<int64_t>* chosen)
      : model::LinearImpl(0, 0, false), orig_(std::move(orig)), wq_(std::move(wq)), stream_cka_(stream_cka),
        chosen_(chosen) {
    in_features_ = orig_->in_features();
    out_features_ = orig_->out_features();
    weight = orig_->weight;
    bias = orig_->bias;
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    auto y = orig_->forward(x);  // (..., out)
    torch::NoGradGuard ng;
    auto x2 = x.reshape({-1, x.size(-1)});                         // (n, in)
    auto yf = y.reshape({-1, y.size(-1)});                         // (n, out)
    auto yq = torch::nn::functional::linear(x2, wq_, orig_->bias);  // (n, out)
    const int64_t n = x2.size(0);
    if (stream_cka_) cka_.add(to_eigen(yf), to_eigen(yq));
    if (chosen_ && !chosen_->empty()) {
      std::vector<int64_t> local;
      auto it = std::lower_bound(chosen_->begin(), chosen_->end(), seen_);
      for (; it != chosen_->end() && *it < seen_ + n; ++it) local.push_back(*it - seen_);
      if (!local.empty()) {
        auto idx = torch::tensor(local, torch::kInt64).to(x2.device());
        sub_y_.push_back(to_eigen(yf.index_select(0, idx)));
        sub_q_.push_back(to_eigen(yq.index_select(0, idx)));
      }
    }
    seen_ += n;
    return y;
  }

  static Eigen::MatrixXd stack(const std::vector<Eigen::MatrixXd>& parts) {
    Eigen::Index r = 0, c = parts.empty() ? 0 : parts.front().cols();
    for (const auto& p : parts) r += p.rows();
    Eigen::MatrixXd m(r, c);
    Eigen::Index at = 0;
    for (const auto& p : parts) {
      m.middleRows(at, p.rows()) = p;
      at += p.rows();
    }
    return m;
  }

  model::LinearPtr orig_;
  torch::Tensor wq_;
  bool stream_cka_;
  const std::vector<int64_t>* chosen_;
  int64_t seen_ = 0;
  LinearCkaAccumulator cka_;
  std::vector<Eigen::MatrixXd> sub_y_, sub_q_;
};

}  // namespace

OutputSensitivity output_sensitivity(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                                     const OutputSensitivityOptions& opts) {
  if (opts.metrics.empty()) throw InputError("output sensitivity: no metric given");
  bool stream = false, subsample = false;
  for (const auto& name : opts.metrics) {
    if (!is_output_metric(name))
      throw InputError("unknown output-sensitivity metric '" + name +
                       "' (accepted: cka, cca, svcca, pwcca, cka-rbf, cka-debiased)");
    (name == "cka" ? stream : subsample) = true;
  }
  if (sequences.empty()) throw InputError("output sensitivity: no calibration sequences");
  quant::QuantSpec spec;
  spec.bits = opts.probe_bits;
  spec.group_size = opts.group_size;
  quant::validate_spec(spec, "output sensitivity probe");

  int64_t total = 0;
  std::vector<int64_t> lengths;
  for (const auto& s : sequences) {
    if (s.empty()) throw InputError("output sensitivity: an empty calibration sequence");
    total += static_cast<int64_t>(s.size());
    lengths.push_back(static_cast<int64_t>(s.size()));
  }
  std::vector<int64_t> chosen;
  if (subsample) {
    SubsampleOptions so;
    so.max_rows = opts.max_rows;
    so.seed = opts.seed;
    for (auto i : subsample_rows(total, so)) chosen.push_back(static_cast<int64_t>(i));
    std::sort(chosen.begin(), chosen.end());
  }

  torch::NoGradGuard ng;
  auto& shell = src.shell();
  const auto dev = src.device();
  const int64_t C = src.config().hidden_size;
  auto ids_of = [&](size_t k) {
    std::vector<int64_t> v(sequences[k].begin(), sequences[k].end());
    return torch::tensor(v, torch::kInt64).view({1, -1}).to(dev);  // (1, T)
  };
  model::CacheBudget budget(opts.cache);
  auto cur = std::make_unique<model::ActivationCache>(budget, lengths, C, "block-input");
  for (size_t k = 0; k < sequences.size(); ++k) {
    auto ids = ids_of(k);
    cur->put(static_cast<int64_t>(k), shell.embed(ids, shell.context(ids, torch::Tensor())));
  }

  OutputSensitivity r;
  r.rows = total;
  r.sampled_rows = static_cast<int64_t>(chosen.size());
  const int64_t nb = src.num_blocks();
  for (int64_t i = 0; i < nb; ++i) {
    auto blk = src.block(i);
    const auto lin = blk->linears();
    std::vector<std::shared_ptr<ObserveLinear>> obs;
    // Puts the block's own linears back whatever happens (an in-memory model is the user's).
    struct Restore {
      model::Block& b;
      const std::vector<std::pair<std::string, model::LinearPtr>>& lin;
      std::size_t n = 0;
      ~Restore() {
        for (std::size_t k = 0; k < n; ++k) b.set_linear(lin[k].first, lin[k].second);
      }
    } restore{*blk, lin};
    for (const auto& [name, l] : lin) {
      auto w = l->weight.detach().to(torch::kFloat32).contiguous();
      auto qp = quant::init_params(w, spec);
      auto wq = quant::fake_quant(w, qp.scale, qp.zero, spec).to(l->weight.dtype());
      obs.push_back(std::make_shared<ObserveLinear>(l, wq, stream, subsample ? &chosen : nullptr));
      blk->set_linear(name, obs.back());
      ++restore.n;
    }
    std::unique_ptr<model::ActivationCache> next;
    if (i + 1 < nb) next = std::make_unique<model::ActivationCache>(budget, lengths, C, "block-input");
    for (size_t k = 0; k < sequences.size(); ++k) {
      auto ids = ids_of(k);
      auto y = blk->run(cur->get(static_cast<int64_t>(k), dev), shell.context(ids, torch::Tensor()));
      if (next) next->put(static_cast<int64_t>(k), y);
    }
    for (std::size_t k = 0; k < lin.size(); ++k) {
      r.names.push_back(src.block_prefix(i) + lin[k].first);
      const auto& o = *obs[k];
      Eigen::MatrixXd Y, Q;
      if (subsample) {
        Y = ObserveLinear::stack(o.sub_y_);
        Q = ObserveLinear::stack(o.sub_q_);
      }
      for (const auto& name : opts.metrics) {
        const double sim =
            name == "cka" ? o.cka_.result() : subsample_similarity(name, Y, Q, opts.svcca_k, opts.svcca_variance);
        r.metric[name].push_back(1.0 - sim);
      }
    }
    cur = std::move(next);
  }
  return r;
}

OutputSensitivity output_sensitivity(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                                     const OutputSensitivityOptions& opts) {
  auto src = model::model_blocks(m);
  return output_sensitivity(*src, sequences, opts);
}

}  // namespace mpqat::sensitivity
