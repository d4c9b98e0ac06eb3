// Perplexity over a token stream, GPTQ-style: the stream is cut into non-overlapping windows of
// `context` tokens (a last partial window is dropped); each window is scored from position 0,
// i.e. tokens 1..T-1 are predicted from the tokens before them inside the window.
// NLL is accumulated in fp64.
//
// Data parallel: with a communicator of N ranks, rank r scores windows r, r + N, r + 2N, ...;
// each window's NLL sum (fp64) goes into a per-window vector that is all-reduced and then summed
// in window order on every rank, so the result is the same for any N (given the same per-window
// logits, i.e. the same batch size; batch 1 makes them independent of N altogether).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "mpqat/model/config.h"
#include "mpqat/model/model_input.h"

namespace mpqat::model {
class LlamaForCausalLM;
class TransformerModel;
}  // namespace mpqat::model

namespace mpqat::dist {
class Communicator;
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

// Each input's ids through logits_fn, one after the other (masks ignored).
model::BatchFn batch_fn(const LogitsFn& logits_fn);

// Throws InputError when the stream is shorter than one window or context < 2.
// log_every > 0 shows a util::Progress bar over this rank's windows (the output rank prints) with
// the running perplexity. Every rank returns the same, global, result. `run` gets all of this
// rank's batches of windows at once (model::run_inputs streams a large model block-major).
PplResult evaluate_perplexity(const model::BatchFn& run, const std::vector<int32_t>& ids, int context,
                              int batch_size = 1, int log_every = 0, const torch::Device& device = torch::kCPU,
                              dist::Communicator* comm = nullptr);
PplResult evaluate_perplexity(const LogitsFn& logits_fn, const std::vector<int32_t>& ids, int context,
                              int batch_size = 1, int log_every = 0, const torch::Device& device = torch::kCPU,
                              dist::Communicator* comm = nullptr);

// context 0 = default_context(model.config()). Runs under NoGradGuard on the model's device.
PplResult evaluate_perplexity(model::LlamaForCausalLM& model, const std::vector<int32_t>& ids,
                              int context = 0, int batch_size = 1, int log_every = 0,
                              dist::Communicator* comm = nullptr);
// Any causal LM through TransformerModel::forward(ids, no mask). Throws InputError for a
// classifier (num_labels > 0).
PplResult evaluate_perplexity(model::TransformerModel& model, const std::vector<int32_t>& ids,
                              int context = 0, int batch_size = 1, int log_every = 0,
                              dist::Communicator* comm = nullptr);

// The device of a module's first parameter (CPU when it has none).
torch::Device module_device(const torch::nn::Module& m);

}  // namespace mpqat::eval
