#include "mpqat/eval/perplexity.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

#include "mpqat/model/llama.h"
#include "mpqat/util/error.h"

namespace mpqat::eval {

int default_context(const model::ModelConfig& cfg) {
  return static_cast<int>(std::min<int64_t>(2048, cfg.max_position_embeddings));
}

PplResult evaluate_perplexity(const LogitsFn& logits_fn, const std::vector<int32_t>& ids, int context,
                              int batch_size, int log_every, const torch::Device& device) {
  if (context < 2) throw InputError("perplexity context must be >= 2, got " + std::to_string(context));
  if (batch_size < 1) throw InputError("perplexity batch size must be >= 1, got " + std::to_string(batch_size));
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t windows = n / context;
  if (windows == 0)
    throw InputError("text has " + std::to_string(n) + " tokens, fewer than one window of " +
                     std::to_string(context) + " (use a smaller --context)");
  torch::NoGradGuard ng;
  // (windows, context) view of the stream without its tail
  auto all = torch::from_blob(const_cast<int32_t*>(ids.data()), {windows, context}, torch::kInt)
                 .to(torch::kLong);
  double total = 0.0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch_size) {
    const int64_t b = std::min<int64_t>(batch_size, windows - w0);
    auto batch = all.narrow(0, w0, b).to(device);                      // (b, T)
    auto logits = logits_fn(batch).to(torch::kFloat);                   // (b, T, V)
    auto logp = torch::log_softmax(logits.narrow(1, 0, context - 1), -1);  // (b, T-1, V)
    auto target = batch.narrow(1, 1, context - 1).unsqueeze(-1);       // (b, T-1, 1)
    auto nll = -logp.gather(-1, target).squeeze(-1);                   // (b, T-1)
    total += nll.to(torch::kDouble).sum().item<double>();
    if (log_every > 0 && ((w0 + b) / log_every != w0 / log_every || w0 + b == windows)) {
      const double done = static_cast<double>((w0 + b) * (context - 1));
      spdlog::info("perplexity: {}/{} windows, running ppl {:.4f}", w0 + b, windows, std::exp(total / done));
    }
  }
  PplResult r;
  r.tokens = n;
  r.windows = windows;
  r.context = context;
  r.predicted = windows * (context - 1);
  r.nll = total / static_cast<double>(r.predicted);
  r.ppl = std::exp(r.nll);
  return r;
}

PplResult evaluate_perplexity(model::LlamaForCausalLM& model, const std::vector<int32_t>& ids, int context,
                              int batch_size, int log_every) {
  if (context <= 0) context = default_context(model.config());
  torch::Device device = torch::kCPU;
  for (const auto& p : model.parameters()) {
    device = p.device();
    break;
  }
  return evaluate_perplexity([&](const torch::Tensor& x) { return model.forward(x); }, ids, context,
                             batch_size, log_every, device);
}

}  // namespace mpqat::eval
