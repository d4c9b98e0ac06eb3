// Perplexity over a token stream, GPTQ-style: the stream is cut into non-overlapping windows of
// `context` tokens (a last partial window is dropped); each window is scored from position 0,
// i.e. tokens 1..T-1 are predicted from the tokens before them inside the window.
// NLL is accumulated in fp64.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "mpqat/model/config.h"

namespace mpqat::model {
class LlamaForCausalLM;
}

namespace mpqat::eval {

struct PplResult {
  double nll = 0.0;        // mean NLL per predicted token, nats
  double ppl = 0.0;        // exp(nll)
  int64_t tokens = 0;      // length of the whole id stream (including the dropped tail)
  int64_t windows = 0;     // full windows scored
  int context = 0;         // window length
  int64_t predicted = 0;   // tokens scored: windows * (context - 1)
};

// ids (B, T) int64 -> logits (B, T, V) float
using LogitsFn = std::function<torch::Tensor(const torch::Tensor&)>;

// 2048, or the model's max_position_embeddings when smaller.
int default_context(const model::ModelConfig& cfg);

// Throws InputError when the stream is shorter than one window or context < 2.
// log_every > 0 logs a progress line every that many windows.
PplResult evaluate_perplexity(const LogitsFn& logits_fn, const std::vector<int32_t>& ids, int context,
                              int batch_size = 1, int log_every = 0, const torch::Device& device = torch::kCPU);

// context 0 = default_context(model.config()). Runs under NoGradGuard on the model's device.
PplResult evaluate_perplexity(model::LlamaForCausalLM& model, const std::vector<int32_t>& ids,
                              int context = 0, int batch_size = 1, int log_every = 0);

}  // namespace mpqat::eval
