#include "mpqat/eval/generate.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <utility>

#include "mpqat/model/llama.h"
#include "mpqat/util/error.h"

namespace mpqat::eval {

namespace {

// xorshift64*: tiny, seedable and identical on every platform (std distributions are not).
float next_uniform(uint64_t& s) {
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  const uint32_t r = static_cast<uint32_t>((s * 0x2545F4914F6CDD1Dull) >> 32);
  return static_cast<float>(r >> 8) / 16777216.0f;  // [0, 1)
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;  // first maximum wins, as llama2.c
  return static_cast<int32_t>(best);
}

// log softmax(x)[id] and best minus second-best value, in double.
std::pair<double, double> logprob_and_margin(const float* x, int64_t n, int32_t id) {
  double best = -INFINITY, second = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    if (v > best) {
      second = best;
      best = v;
    } else if (v > second) {
      second = v;
    }
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - best);
  return {static_cast<double>(x[id]) - best - std::log(sum), best - second};
}

}  // namespace

int32_t sample_token(const float* logits, int64_t vocab, const GenerateOptions& opts, uint64_t& rng) {
  if (opts.greedy || opts.temperature <= 0.0) return argmax(logits, vocab);
  std::vector<double> p(static_cast<size_t>(vocab));
  double mx = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) mx = std::max(mx, static_cast<double>(logits[i]) / opts.temperature);
  double sum = 0.0;
  for (int64_t i = 0; i < vocab; ++i) sum += (p[i] = std::exp(static_cast<double>(logits[i]) / opts.temperature - mx));
  for (auto& x : p) x /= sum;
  const double r = next_uniform(rng);
  if (opts.top_p <= 0.0 || opts.top_p >= 1.0) {
    double cdf = 0.0;
    for (int64_t i = 0; i < vocab; ++i) {
      cdf += p[i];
      if (r < cdf) return static_cast<int32_t>(i);
    }
    return static_cast<int32_t>(vocab - 1);
  }
  // Nucleus: the smallest set of most likely tokens whose mass exceeds top_p.
  std::vector<int32_t> idx(static_cast<size_t>(vocab));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  double mass = 0.0;
  size_t last = idx.size() - 1;
  for (size_t k = 0; k < idx.size(); ++k) {
    mass += p[idx[k]];
    if (mass > opts.top_p) {
      last = k;
      break;
    }
  }
  const double target = r * mass;
  double cdf = 0.0;
  for (size_t k = 0; k <= last; ++k) {
    cdf += p[idx[k]];
    if (target < cdf) return idx[k];
  }
  return idx[last];
}

GenerateResult generate(model::LlamaForCausalLM& model, const data::Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opts, const std::function<void(const std::string&)>& on_piece) {
  if (opts.max_new_tokens < 0) throw InputError("--max-new-tokens must be >= 0");
  if (!opts.greedy && opts.temperature < 0.0) throw InputError("--temperature must be >= 0");
  torch::NoGradGuard ng;
  GenerateResult res;
  res.ids = tok.encode(prompt, /*add_bos=*/true);
  if (res.ids.empty())
    throw InputError("the prompt is empty and the tokenizer has no BOS token to start from");
  res.prompt_tokens = static_cast<int64_t>(res.ids.size());
  const int32_t bos = tok.bos_id(), eos = tok.eos_id();

  auto emit = [&](int32_t prev, int32_t id) {
    const std::string piece = tok.decode_piece(prev, id);
    res.text += piece;
    if (on_piece) on_piece(piece);
  };
  if (res.ids[0] != bos) emit(-1, res.ids[0]);
  for (size_t i = 1; i < res.ids.size(); ++i) emit(res.ids[i - 1], res.ids[i]);

  torch::Device device = torch::kCPU;
  for (const auto& p : model.parameters()) {
    device = p.device();
    break;
  }
  const int64_t max_pos = model.config().max_position_embeddings;
  const int64_t vocab = model.config().vocab_size;
  uint64_t rng = opts.seed ^ 0x9E3779B97F4A7C15ull;
  if (rng == 0) rng = 1;
  model::KVCache cache;
  res.stop_reason = "max_new_tokens";
  while (res.new_tokens < opts.max_new_tokens) {
    // The last token never needs a forward pass, so a sequence may end one past the context.
    if (static_cast<int64_t>(res.ids.size()) > max_pos) {
      res.stop_reason = "context";
      break;
    }
    const int64_t start = opts.use_cache ? cache.length() : 0;
    std::vector<int64_t> chunk(res.ids.begin() + start, res.ids.end());
    auto x = torch::tensor(chunk, torch::kLong).unsqueeze(0).to(device);  // (1, T)
    auto logits = model.forward(x, opts.use_cache ? &cache : nullptr);   // (1, T, V)
    auto last = logits.select(1, logits.size(1) - 1).squeeze(0).to(torch::kCPU, torch::kFloat).contiguous();
    const int32_t next = sample_token(last.data_ptr<float>(), vocab, opts, rng);
    const auto [lp, margin] = logprob_and_margin(last.data_ptr<float>(), vocab, next);
    if (next == eos) {
      res.stop_reason = "eos";
      break;
    }
    if (next == bos) {
      res.stop_reason = "bos";
      break;
    }
    emit(res.ids.back(), next);
    res.ids.push_back(next);
    res.logprobs.push_back(lp);
    res.margins.push_back(margin);
    ++res.new_tokens;
  }
  return res;
}

}  // namespace mpqat::eval
