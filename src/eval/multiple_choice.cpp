#include "mpqat/eval/multiple_choice.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>

#include "mpqat/dist/communicator.h"
#include "mpqat/util/error.h"
#include "mpqat/util/progress.h"

namespace mpqat::eval {

TokenPair encode_pair(const data::Tokenizer& tok, const std::string& context, const std::string& continuation,
                      bool add_bos) {
  std::string ctx = context, cont = continuation;
  const auto last = ctx.find_last_not_of(' ');
  const std::size_t keep = last == std::string::npos ? 0 : last + 1;
  if (keep < ctx.size()) {
    cont = ctx.substr(keep) + cont;
    ctx.resize(keep);
  }
  TokenPair p;
  const bool bos = add_bos && tok.bos_id() >= 0;
  if (ctx.empty()) {
    // lm-eval scores a context-free continuation after the prefix (BOS) token.
    if (tok.bos_id() < 0)
      throw InputError("cannot score a continuation with an empty context: the tokenizer has no BOS token");
    p.context = {tok.bos_id()};
    auto c = tok.encode(cont, false);
    p.continuation = std::move(c);
    return p;
  }
  const auto whole = tok.encode(ctx + cont, bos);
  p.context = tok.encode(ctx, bos);
  const std::size_t n = std::min(p.context.size(), whole.size());
  p.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return p;
}

std::vector<double> loglikelihoods(const LogitsFn& logits_fn, const std::vector<TokenPair>& pairs,
                                   int64_t max_length, int batch_size, const torch::Device& device,
                                   const std::string& progress_label) {
  return loglikelihoods(batch_fn(logits_fn), pairs, max_length, batch_size, device, progress_label);
}

std::vector<double> loglikelihoods(const model::BatchFn& run, const std::vector<TokenPair>& pairs,
                                   int64_t max_length, int batch_size, const torch::Device& device,
                                   const std::string& progress_label) {
  if (batch_size < 1) throw InputError("batch size must be >= 1, got " + std::to_string(batch_size));
  if (max_length < 1) throw InputError("max length must be >= 1, got " + std::to_string(max_length));
  const std::size_t n = pairs.size();
  // input = (ctx + cont)[-(max_length + 1):][:-1]; the last len(cont) input positions predict cont.
  std::vector<std::vector<int64_t>> inputs(n);
  std::vector<std::vector<int64_t>> targets(n);
  std::size_t cut = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& p = pairs[i];
    const auto c = static_cast<int64_t>(p.continuation.size());
    if (c == 0) throw InputError("request " + std::to_string(i) + " has an empty continuation after tokenization");
    if (p.context.empty())
      throw InputError("request " + std::to_string(i) + " has no context token (add BOS)");
    std::vector<int64_t> full(p.context.begin(), p.context.end());
    full.insert(full.end(), p.continuation.begin(), p.continuation.end());
    const auto start = std::max<int64_t>(0, static_cast<int64_t>(full.size()) - (max_length + 1));
    inputs[i].assign(full.begin() + start, full.end() - 1);
    // A continuation longer than the window keeps only its last max_length tokens, the ones
    // predicted inside it (lm-eval fails on such a request; a tiny-context model meets them).
    const auto kept = std::min<int64_t>(c, max_length);
    if (kept < c) ++cut;
    targets[i].assign(p.continuation.end() - kept, p.continuation.end());
  }
  if (cut > 0)
    spdlog::warn("{} of {} continuations are longer than the model's context of {} tokens; only their last {} "
                 "tokens are scored",
                 cut, n, max_length, max_length);
  // Longest first, as lm-eval, so batches hold similar lengths.
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return inputs[a].size() > inputs[b].size(); });

  std::unique_ptr<util::Progress> bar;
  if (!progress_label.empty()) bar = std::make_unique<util::Progress>(progress_label, static_cast<int64_t>(n), "req");
  torch::NoGradGuard ng;
  std::vector<double> out(n, 0.0);
  std::vector<model::ModelInput> batches;
  for (std::size_t b0 = 0; b0 < n; b0 += static_cast<std::size_t>(batch_size)) {
    const std::size_t b1 = std::min(n, b0 + static_cast<std::size_t>(batch_size));
    const auto B = static_cast<int64_t>(b1 - b0);
    const auto T = static_cast<int64_t>(inputs[order[b0]].size());
    auto ids = torch::zeros({B, T}, torch::kLong);  // (B, T), right-padded with 0
    auto acc = ids.accessor<int64_t, 2>();
    for (int64_t r = 0; r < B; ++r) {
      const auto& in = inputs[order[b0 + r]];
      for (std::size_t t = 0; t < in.size(); ++t) acc[r][static_cast<int64_t>(t)] = in[t];
    }
    batches.push_back({ids.to(device), torch::Tensor()});
  }
  run(batches, [&](std::size_t k, const torch::Tensor& logits) {  // (B, T, V)
    const std::size_t b0 = k * static_cast<std::size_t>(batch_size);
    const auto B = batches[k].ids.size(0);
    for (int64_t r = 0; r < B; ++r) {
      const std::size_t i = order[b0 + static_cast<std::size_t>(r)];
      const auto L = static_cast<int64_t>(inputs[i].size());
      const auto c = static_cast<int64_t>(targets[i].size());
      auto rows = logits[r].narrow(0, L - c, c).to(torch::kFloat);        // (c, V)
      auto logp = torch::log_softmax(rows, -1);                             // (c, V)
      auto tgt = torch::tensor(targets[i], torch::kLong).to(logp.device()).unsqueeze(-1);  // (c, 1)
      out[i] = logp.gather(-1, tgt).to(torch::kDouble).sum().item<double>();
    }
    if (bar) bar->advance(B);
  });
  if (bar) bar->finish();
  return out;
}

double binary_mean_stderr(double hits, int64_t n) {
  if (n < 2) return 0.0;
  const double nd = static_cast<double>(n);
  const double p = hits / nd;
  const double var = std::max(0.0, (hits - nd * p * p) / (nd - 1.0));  // sample variance of 0/1 values
  return std::sqrt(var / nd);
}

MultipleChoiceResult evaluate_multiple_choice(const LogitsFn& logits_fn, const data::Tokenizer& tok,
                                              const std::vector<MultipleChoiceItem>& items,
                                              const MultipleChoiceOptions& opts, const std::string& task) {
  return evaluate_multiple_choice(batch_fn(logits_fn), tok, items, opts, task);
}

MultipleChoiceResult evaluate_multiple_choice(const model::BatchFn& run, const data::Tokenizer& tok,
                                              const std::vector<MultipleChoiceItem>& items,
                                              const MultipleChoiceOptions& opts, const std::string& task) {
  if (opts.limit < 0) throw InputError("limit must be >= 0, got " + std::to_string(opts.limit));
  const int64_t total = opts.limit > 0 ? std::min<int64_t>(opts.limit, static_cast<int64_t>(items.size()))
                                       : static_cast<int64_t>(items.size());
  const int rank = opts.comm ? opts.comm->rank() : 0;
  const int world = opts.comm ? opts.comm->world_size() : 1;

  std::vector<int64_t> mine;
  for (int64_t i = rank; i < total; i += world) mine.push_back(i);
  std::vector<TokenPair> pairs;
  std::vector<std::size_t> first;  // index of each local item's first pair
  for (auto i : mine) {
    const auto& it = items[static_cast<std::size_t>(i)];
    if (it.continuations.empty() || it.gold < 0 || it.gold >= static_cast<int>(it.continuations.size()))
      throw InputError(task + " item " + std::to_string(i) + ": gold index " + std::to_string(it.gold) +
                       " is outside its " + std::to_string(it.continuations.size()) + " choices");
    first.push_back(pairs.size());
    for (const auto& c : it.continuations) pairs.push_back(encode_pair(tok, it.context, c, opts.add_bos));
  }
  const std::string label = opts.progress ? (task.empty() ? std::string("multiple choice") : task) : "";
  const auto ll = loglikelihoods(run, pairs, opts.max_length, opts.batch_size, opts.device, label);

  double hits = 0.0, hits_norm = 0.0;
  for (std::size_t k = 0; k < mine.size(); ++k) {
    const auto& it = items[static_cast<std::size_t>(mine[k])];
    std::size_t best = 0, best_norm = 0;
    double vbest = -INFINITY, vnorm = -INFINITY;
    for (std::size_t c = 0; c < it.continuations.size(); ++c) {
      const double v = ll[first[k] + c];
      // Length of the choice without the delimiter, as lm-eval's doc_to_choice gives it.
      const std::string& text = c < it.choices.size() ? it.choices[c] : it.continuations[c];
      const double norm = v / static_cast<double>(std::max<int64_t>(1, utf8_length(text)));
      // Strict > keeps the first maximum, as numpy.argmax.
      if (v > vbest) vbest = v, best = c;
      if (norm > vnorm) vnorm = norm, best_norm = c;
    }
    hits += best == static_cast<std::size_t>(it.gold) ? 1.0 : 0.0;
    hits_norm += best_norm == static_cast<std::size_t>(it.gold) ? 1.0 : 0.0;
  }
  auto sums = torch::tensor({static_cast<double>(mine.size()), hits, hits_norm}, torch::kDouble);
  if (opts.comm) opts.comm->all_reduce_sum(sums);
  MultipleChoiceResult r;
  r.task = task;
  r.n = static_cast<int64_t>(std::llround(sums[0].item<double>()));
  const double h = sums[1].item<double>(), hn = sums[2].item<double>();
  if (r.n > 0) {
    r.acc = h / static_cast<double>(r.n);
    r.acc_norm = hn / static_cast<double>(r.n);
  }
  r.acc_stderr = binary_mean_stderr(h, r.n);
  r.acc_norm_stderr = binary_mean_stderr(hn, r.n);
  return r;
}

MultipleChoiceResult evaluate_task(const LogitsFn& logits_fn, const data::Tokenizer& tok,
                                   const MultipleChoiceTask& task, const MultipleChoiceOptions& opts) {
  return evaluate_multiple_choice(batch_fn(logits_fn), tok, task.items, opts, task.name);
}

MultipleChoiceResult evaluate_task(const model::BatchFn& run, const data::Tokenizer& tok,
                                   const MultipleChoiceTask& task, const MultipleChoiceOptions& opts) {
  return evaluate_multiple_choice(run, tok, task.items, opts, task.name);
}

}  // namespace mpqat::eval
