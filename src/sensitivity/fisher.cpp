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

// One item's loss from the head's output: mean next-token cross-entropy over the T - 1 predicted
// positions of ids (1, T) for causal LMs (logits (1, T, V)); the label's cross-entropy for
// classifiers (logits (1, K)).
torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& ids) {
  const int64_t T = ids.size(1), V = logits.size(2);
  auto pred = logits.slice(1, 0, T - 1).reshape({T - 1, V}).to(torch::kFloat32);
  auto target = ids.slice(1, 1, T).reshape({T - 1});
  return torch::nn::functional::cross_entropy(pred, target);
}

torch::Tensor classifier_loss(const torch::Tensor& logits, int64_t label) {
  auto y = torch::full({1}, label, torch::TensorOptions().dtype(torch::kInt64).device(logits.device()));
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat32), y);
}

void check_causal_sequences(const std::vector<std::vector<int32_t>>& sequences) {
  for (std::size_t i = 0; i < sequences.size(); ++i)
    if (sequences[i].size() < 2)
      throw InputError("calibration sequence " + std::to_string(i) + " has fewer than 2 tokens");
}

void check_labels(const std::vector<std::vector<int32_t>>& ids, const std::vector<int64_t>& labels, int64_t K) {
  if (ids.size() != labels.size())
    throw InputError("fisher_classifier: " + std::to_string(ids.size()) + " inputs but " +
                     std::to_string(labels.size()) + " labels");
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= K)
      throw InputError("calibration label " + std::to_string(labels[i]) + " of example " + std::to_string(i) +
                       " is outside [0, " + std::to_string(K) + ")");
    if (ids[i].empty()) throw InputError("calibration example " + std::to_string(i) + " has no tokens");
  }
}

}  // namespace

FisherResult fisher_causal_lm(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                              dist::Communicator* comm, bool progress) {
  if (!m.is_causal_lm()) throw InputError("fisher_causal_lm: the model is a classifier (use labelled calibration)");
  check_causal_sequences(sequences);
  GradScope scope(m);
  if (scope.weights.empty()) throw InputError("the model has no quantizable block linears");
  const auto dev = scope.weights.front().device();
  auto loss_fn = [&](int64_t i) {
    auto ids = to_ids(sequences[static_cast<std::size_t>(i)], dev);  // (1, T)
    return causal_lm_loss(m.forward(ids, torch::Tensor()), ids);
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
  check_labels(ids, labels, m.num_labels());
  GradScope scope(m);
  if (scope.weights.empty()) throw InputError("the model has no quantizable block linears");
  const auto dev = scope.weights.front().device();
  auto loss_fn = [&](int64_t i) {
    auto x = to_ids(ids[static_cast<std::size_t>(i)], dev);  // (1, T)
    return classifier_loss(m.forward(x, torch::Tensor()), labels[static_cast<std::size_t>(i)]);
  };
  FisherResult r;
  r.names = scope.names;
  r.fisher = empirical_fisher(static_cast<int64_t>(ids.size()), loss_fn, scope.weights, comm, progress);
  r.items = static_cast<int64_t>(ids.size());
  return r;
}

int64_t fisher_streamed(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                        const std::vector<int64_t>& labels, const FisherBlockFn& on_block,
                        const StreamedFisherOptions& o) {
  auto& shell = src.shell();
  const bool causal = labels.empty();
  if (causal && !shell.is_causal_lm())
    throw InputError("Fisher: the model is a classifier (use labelled calibration)");
  if (!causal && shell.is_causal_lm()) throw InputError("Fisher: the model is a causal LM (use token calibration)");
  if (causal) check_causal_sequences(sequences);
  else check_labels(sequences, labels, src.config().num_labels);
  const int64_t nb = src.num_blocks();
  if (nb < 1) throw InputError("the model has no blocks");
  const int rank = o.comm ? o.comm->rank() : 0;
  const int world = o.comm ? o.comm->world_size() : 1;
  const auto dev = src.device();
  const int64_t C = src.config().hidden_size;

  // This rank's sequences.
  std::vector<int64_t> mine;
  std::vector<int64_t> lengths;
  for (int64_t g = rank; g < static_cast<int64_t>(sequences.size()); g += world) {
    mine.push_back(g);
    lengths.push_back(static_cast<int64_t>(sequences[static_cast<size_t>(g)].size()));
  }
  const int64_t n = static_cast<int64_t>(mine.size());
  auto ids_of = [&](int64_t k) { return to_ids(sequences[static_cast<size_t>(mine[static_cast<size_t>(k)])], dev); };
  auto ctx_of = [&](const torch::Tensor& ids) { return shell.context(ids, torch::Tensor()); };

  model::CacheBudget budget(o.cache);
  std::vector<std::unique_ptr<model::ActivationCache>> inputs(static_cast<size_t>(nb));  // block i's input
  std::unique_ptr<model::ActivationCache> grad;  // dL/d(output of the block being walked)
  std::unique_ptr<util::Progress> bar;
  if (o.progress) bar = std::make_unique<util::Progress>("fisher", 2 * nb, "block");

  // 1. Forward, caching every block's input; 2. the loss gradient at the top.
  {
    torch::NoGradGuard ng;
    // Every cache is made before any block is loaded, so that blocks come and go above them
    // on the heap and a freed block's memory is reused by the next (peak flat in depth).
    for (int64_t i = 0; i < nb; ++i)
      inputs[static_cast<size_t>(i)] = std::make_unique<model::ActivationCache>(budget, lengths, C, "block-input");
    grad = std::make_unique<model::ActivationCache>(budget, lengths, C, "gradient");
    for (int64_t k = 0; k < n; ++k) {
      auto ids = ids_of(k);
      inputs[0]->put(k, shell.embed(ids, ctx_of(ids)));
    }
    for (int64_t i = 0; i < nb; ++i) {
      auto blk = src.block(i);
      for (int64_t k = 0; k < n; ++k) {
        auto ids = ids_of(k);
        const auto ctx = ctx_of(ids);
        auto y = blk->run(inputs[static_cast<size_t>(i)]->get(k, dev), ctx);  // (1, T, C)
        if (i + 1 < nb) {
          inputs[static_cast<size_t>(i + 1)]->put(k, y);
          continue;
        }
        torch::AutoGradMode on(true);
        auto h = y.detach().requires_grad_(true);
        auto out = shell.head(h, ctx);
        auto loss = causal ? causal_lm_loss(out, ids) : classifier_loss(out, labels[static_cast<size_t>(mine[static_cast<size_t>(k)])]);
        grad->put(k, torch::autograd::grad({loss}, {h})[0]);
      }
      if (bar) bar->advance();
    }
  }

  // 3. Blocks downward (two gradient caches, swapped, made before any block is loaded).
  auto next = std::make_unique<model::ActivationCache>(budget, lengths, C, "gradient");
  for (int64_t i = nb - 1; i >= 0; --i) {
    auto blk = src.block(i);
    std::vector<torch::Tensor> params, weights;
    std::vector<bool> before;
    for (auto& p : blk->parameters()) {
      params.push_back(p);
      before.push_back(p.requires_grad());
      p.requires_grad_(false);
    }
    for (const auto& [rel, lin] : blk->linears()) {
      lin->weight.requires_grad_(true);
      weights.push_back(lin->weight);
    }
    std::vector<torch::Tensor> acc;
    for (const auto& w : weights) acc.push_back(torch::zeros(w.sizes(), w.options().dtype(torch::kFloat32)));
    for (int64_t k = 0; k < n; ++k) {
      auto ids = ids_of(k);
      auto dx = model::block_backward(*blk, inputs[static_cast<size_t>(i)]->get(k, dev), ctx_of(ids),
                                      grad->get(k, dev), /*input_grad=*/i > 0);
      for (size_t j = 0; j < weights.size(); ++j) {
        auto& g = weights[j].mutable_grad();
        if (!g.defined()) continue;
        acc[j].addcmul_(g, g);
        g.zero_();
      }
      if (i > 0) next->put(k, dx);
    }
    for (auto& w : weights) w.mutable_grad() = torch::Tensor();
    for (size_t j = 0; j < params.size(); ++j) params[j].requires_grad_(before[j]);
    if (o.comm && o.comm->distributed())
      for (auto& a : acc) o.comm->all_reduce_sum(a);
    std::swap(grad, next);
    on_block(i, *blk, acc);
    if (bar) bar->advance();
  }
  if (bar) bar->finish();
  return static_cast<int64_t>(sequences.size());
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
