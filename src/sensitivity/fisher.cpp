#include "mpqat/sensitivity/fisher.h"

#include <memory>

#include "mpqat/dist/communicator.h"
#include "mpqat/quant/quantizer.h"
#include "mpqat/util/error.h"
#include "mpqat/util/progress.h"

namespace mpqat::sensitivity {

std::vector<torch::Tensor> empirical_fisher(int64_t num_items,
                                            const std::function<torch::Tensor(int64_t)>& loss_fn,
                                            const std::vector<torch::Tensor>& params, dist::Communicator* comm,
                                            bool progress) {
  const int rank = comm ? comm->rank() : 0;
  const int world = comm ? comm->world_size() : 1;
  std::vector<torch::Tensor> acc;
  acc.reserve(params.size());
  for (const auto& p : params) {
    if (!p.requires_grad()) throw Error("empirical_fisher: a parameter does not require grad");
    acc.push_back(torch::zeros(p.sizes(), p.options().dtype(torch::kFloat32)));
  }
  std::unique_ptr<util::Progress> bar;
  const int64_t mine = num_items > rank ? (num_items - rank + world - 1) / world : 0;
  if (progress) bar = std::make_unique<util::Progress>("fisher", mine, "seq");
  for (int64_t i = rank; i < num_items; i += world) {
    torch::Tensor loss = loss_fn(i);
    loss.backward();
    for (std::size_t k = 0; k < params.size(); ++k) {
      auto& g = const_cast<torch::Tensor&>(params[k]).mutable_grad();
      if (!g.defined()) continue;  // parameter not on this loss's path
      acc[k].addcmul_(g, g);
      g.zero_();  // reused by the next backward: no second gradient-sized buffer
    }
    if (bar) bar->advance();
  }
  if (bar) bar->finish();
  for (auto& p : params) const_cast<torch::Tensor&>(p).mutable_grad() = torch::Tensor();
  if (comm && comm->distributed())
    for (auto& a : acc) comm->all_reduce_sum(a);
  return acc;
}

namespace {

// Switches requires_grad on for the block linears' weights only, and back off on exit.
struct GradScope {
  std::vector<torch::Tensor> all;
  std::vector<bool> before;
  std::vector<torch::Tensor> weights;
  std::vector<std::string> names;
  explicit GradScope(model::TransformerModel& m) {
    for (auto& p : m.parameters()) {
      all.push_back(p);
      before.push_back(p.requires_grad());
      p.requires_grad_(false);
    }
    for (auto& [name, lin] : m.named_linears()) {
      lin->weight.requires_grad_(true);
      weights.push_back(lin->weight);
      names.push_back(name);
    }
  }
  ~GradScope() {
    for (std::size_t i = 0; i < all.size(); ++i) all[i].requires_grad_(before[i]);
  }
};

torch::Tensor to_ids(const std::vector<int32_t>& seq, const torch::Device& dev) {
  std::vector<int64_t> v(seq.begin(), seq.end());
  return torch::tensor(v, torch::kInt64).view({1, -1}).to(dev);  // (1, T)
}

}  // namespace

FisherResult fisher_causal_lm(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                              dist::Communicator* comm, bool progress) {
  if (!m.is_causal_lm()) throw InputError("fisher_causal_lm: the model is a classifier (use labelled calibration)");
  for (std::size_t i = 0; i < sequences.size(); ++i)
    if (sequences[i].size() < 2)
      throw InputError("calibration sequence " + std::to_string(i) + " has fewer than 2 tokens");
  GradScope scope(m);
  if (scope.weights.empty()) throw InputError("the model has no quantizable block linears");
  const auto dev = scope.weights.front().device();
  auto loss_fn = [&](int64_t i) {
    auto ids = to_ids(sequences[static_cast<std::size_t>(i)], dev);  // (1, T)
    auto logits = m.forward(ids, torch::Tensor());                   // (1, T, V)
    const int64_t T = ids.size(1), V = logits.size(2);
    auto pred = logits.slice(1, 0, T - 1).reshape({T - 1, V}).to(torch::kFloat32);
    auto target = ids.slice(1, 1, T).reshape({T - 1});
    return torch::nn::functional::cross_entropy(pred, target);  // mean over T - 1 positions
  };
  FisherResult r;
  r.names = scope.names;
  r.fisher = empirical_fisher(static_cast<int64_t>(sequences.size()), loss_fn, scope.weights, comm, progress);
  r.items = static_cast<int64_t>(sequences.size());
  return r;
}

FisherResult fisher_classifier(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& ids,
                               const std::vector<int64_t>& labels, dist::Communicator* comm, bool progress) {
  if (m.is_causal_lm()) throw InputError("fisher_classifier: the model is a causal LM (use token calibration)");
  if (ids.size() != labels.size())
    throw InputError("fisher_classifier: " + std::to_string(ids.size()) + " inputs but " +
                     std::to_string(labels.size()) + " labels");
  const int64_t K = m.num_labels();
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= K)
      throw InputError("calibration label " + std::to_string(labels[i]) + " of example " + std::to_string(i) +
                       " is outside [0, " + std::to_string(K) + ")");
    if (ids[i].empty()) throw InputError("calibration example " + std::to_string(i) + " has no tokens");
  }
  GradScope scope(m);
  if (scope.weights.empty()) throw InputError("the model has no quantizable block linears");
  const auto dev = scope.weights.front().device();
  auto loss_fn = [&](int64_t i) {
    auto x = to_ids(ids[static_cast<std::size_t>(i)], dev);                   // (1, T)
    auto logits = m.forward(x, torch::Tensor()).to(torch::kFloat32);        // (1, K)
    auto y = torch::full({1}, labels[static_cast<std::size_t>(i)], torch::TensorOptions().dtype(torch::kInt64).device(dev));
    return torch::nn::functional::cross_entropy(logits, y);
  };
  FisherResult r;
  r.names = scope.names;
  r.fisher = empirical_fisher(static_cast<int64_t>(ids.size()), loss_fn, scope.weights, comm, progress);
  r.items = static_cast<int64_t>(ids.size());
  return r;
}

double omega(const torch::Tensor& w, const torch::Tensor& f, int bits, int64_t group_size) {
  quant::QuantSpec spec;
  spec.bits = bits;
  spec.group_size = group_size;
  quant::validate_spec(spec, "sensitivity candidate");
  torch::NoGradGuard ng;
  auto wf = w.detach().to(torch::kFloat32).contiguous();
  auto qp = quant::init_params(wf, spec);
  auto q = quant::fake_quant(wf, qp.scale, qp.zero, spec);
  auto d = (wf - q).to(torch::kFloat64);
  return 0.5 * (f.to(torch::kFloat64) * d * d).sum().item<double>();
}

std::map<std::string, double> omega_table(const torch::Tensor& w, const torch::Tensor& f,
                                          const std::vector<int>& bits, const std::vector<int64_t>& group_sizes) {
  std::map<std::string, double> t;
  for (int b : bits)
    for (int64_t g : group_sizes) t[std::to_string(b) + ":" + std::to_string(g)] = omega(w, f, b, g);
  t["16"] = 0.0;
  return t;
}

}  // namespace mpqat::sensitivity
