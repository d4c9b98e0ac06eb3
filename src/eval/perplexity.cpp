#include "mpqat/eval/perplexity.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>

#include "mpqat/dist/communicator.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/model.h"
#include "mpqat/util/error.h"
#include "mpqat/util/progress.h"

namespace mpqat::eval {

int default_context(const model::ModelConfig& cfg) {
  return static_cast<int>(std::min<int64_t>(2048, cfg.max_position_embeddings));
}

torch::Device module_device(const torch::nn::Module& m) {
  for (const auto& p : m.parameters()) return p.device();
  return torch::kCPU;
}

model::BatchFn batch_fn(const LogitsFn& logits_fn) {
  return [logits_fn](const std::vector<model::ModelInput>& inputs, const model::OutputFn& fn) {
    for (size_t k = 0; k < inputs.size(); ++k) fn(k, logits_fn(inputs[k].ids));
  };
}

PplResult evaluate_perplexity(const model::BatchFn& run, const std::vector<int32_t>& ids, int context,
                              int batch_size, int log_every, const torch::Device& device,
                              dist::Communicator* comm) {
  if (context < 2) throw InputError("perplexity context must be >= 2, got " + std::to_string(context));
  if (batch_size < 1) throw InputError("perplexity batch size must be >= 1, got " + std::to_string(batch_size));
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t windows = n / context;
  if (windows == 0)
    throw InputError("text has " + std::to_string(n) + " tokens, fewer than one window of " +
                     std::to_string(context) + " (use a smaller --context)");
  const int64_t rank = comm ? comm->rank() : 0;
  const int64_t world = comm ? comm->world_size() : 1;
  torch::NoGradGuard ng;
  // (windows, context) view of the stream without its tail
  auto all = torch::from_blob(const_cast<int32_t*>(ids.data()), {windows, context}, torch::kInt)
                 .to(torch::kLong);
  std::vector<int64_t> mine;
  for (int64_t w = rank; w < windows; w += world) mine.push_back(w);
  // This rank's batches of windows.
  std::vector<model::ModelInput> inputs;
  std::vector<std::pair<size_t, size_t>> span;  // batch -> [k0, k1) into mine
  for (size_t k0 = 0; k0 < mine.size(); k0 += static_cast<size_t>(batch_size)) {
    const size_t k1 = std::min(mine.size(), k0 + static_cast<size_t>(batch_size));
    auto idx = torch::from_blob(mine.data() + k0, {static_cast<int64_t>(k1 - k0)}, torch::kLong);
    inputs.push_back({all.index_select(0, idx).to(device), torch::Tensor()});  // (b, T)
    span.emplace_back(k0, k1);
  }
  auto per_window = torch::zeros({windows}, torch::kDouble);  // NLL sum of each window, fp64
  auto pw = per_window.accessor<double, 1>();
  std::unique_ptr<util::Progress> bar;
  if (log_every > 0) bar = std::make_unique<util::Progress>("perplexity", static_cast<int64_t>(mine.size()), "win");
  double local = 0.0;
  int64_t local_done = 0;
  run(inputs, [&](size_t b, const torch::Tensor& out) {
    const auto& batch = inputs[b].ids;
    const auto [k0, k1] = span[b];
    auto logits = out.to(torch::kFloat);                                   // (b, T, V)
    auto logp = torch::log_softmax(logits.narrow(1, 0, context - 1), -1);  // (b, T-1, V)
    auto target = batch.narrow(1, 1, context - 1).unsqueeze(-1);           // (b, T-1, 1)
    auto nll = -logp.gather(-1, target).squeeze(-1);                       // (b, T-1)
    auto sums = nll.to(torch::kDouble).sum(1).to(torch::kCPU);             // (b)
    auto sa = sums.accessor<double, 1>();
    for (size_t k = k0; k < k1; ++k) {
      pw[mine[k]] = sa[static_cast<int64_t>(k - k0)];
      local += pw[mine[k]];
    }
    local_done += static_cast<int64_t>(k1 - k0);
    if (bar) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "ppl %.4f",
                    std::exp(local / static_cast<double>(local_done * (context - 1))));
      bar->set_postfix(buf);
      bar->advance(static_cast<int64_t>(k1 - k0));
    }
  });
  if (bar) bar->finish();
  // Every entry is nonzero on exactly one rank, so the reduction adds only zeros to it: exact.
  if (comm && comm->distributed()) comm->all_reduce_sum(per_window);
  double total = 0.0;
  for (int64_t w = 0; w < windows; ++w) total += pw[w];
  PplResult r;
  r.tokens = n;
  r.windows = windows;
  r.context = context;
  r.predicted = windows * (context - 1);
  r.nll = total / static_cast<double>(r.predicted);
  r.ppl = std::exp(r.nll);
  return r;
}

PplResult evaluate_perplexity(const LogitsFn& logits_fn, const std::vector<int32_t>& ids, int context,
                              int batch_size, int log_every, const torch::Device& device,
                              dist::Communicator* comm) {
  return evaluate_perplexity(batch_fn(logits_fn), ids, context, batch_size, log_every, device, comm);
}

PplResult evaluate_perplexity(model::LlamaForCausalLM& model, const std::vector<int32_t>& ids, int context,
                              int batch_size, int log_every, dist::Communicator* comm) {
  if (context <= 0) context = default_context(model.config());
  return evaluate_perplexity([&](const torch::Tensor& x) { return model.forward(x); }, ids, context,
                             batch_size, log_every, module_device(model), comm);
}

PplResult evaluate_perplexity(model::TransformerModel& model, const std::vector<int32_t>& ids, int context,
                              int batch_size, int log_every, dist::Communicator* comm) {
  if (!model.is_causal_lm())
    throw InputError("perplexity needs a causal language model; " + model.config().architecture +
                     " is a sequence classifier");
  if (context <= 0) context = default_context(model.config());
  return evaluate_perplexity([&](const torch::Tensor& x) { return model.forward(x, torch::Tensor()); }, ids,
                             context, batch_size, log_every, module_device(model), comm);
}

}  // namespace mpqat::eval
