// Zero-shot multiple-choice scoring as lm-eval-harness's `loglikelihood` requests do it:
//   - trailing spaces of the context move to the front of the continuation;
//   - whole = encode(context + continuation), ctx = encode(context), cont = whole[len(ctx):]
//     (so a token merged across the boundary is scored as part of the continuation);
//   - logprob = sum over cont tokens of log-softmax given every token before it, the sequence
//     left-truncated to max_length + 1 tokens (the continuation kept while it fits);
//   - acc: argmax of logprob is gold; acc_norm: argmax of logprob / len(choice), len in Unicode
//     code points of the choice text without the delimiter (lm-eval's completion_len);
//   - stderr = sample standard deviation / sqrt(n).
// Items are split across ranks (rank r scores items r, r + N, ...) and the sums all-reduced, so the
// result does not depend on the number of ranks. Accumulation is fp64.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mpqat/data/tokenizer.h"
#include "mpqat/eval/perplexity.h"  // LogitsFn
#include "mpqat/eval/scores.h"      // MultipleChoiceResult
#include "mpqat/eval/tasks.h"

namespace mpqat::dist {
class Communicator;
}

namespace mpqat::eval {

// A tokenized (context, continuation) request.
struct TokenPair {
  std::vector<int32_t> context;       // may start with BOS
  std::vector<int32_t> continuation;  // scored tokens
};

// lm-eval's _encode_pair. add_bos: prepend BOS (when the tokenizer has one) to the whole text.
// An empty context gets BOS as its only token; throws InputError when there is no BOS then.
TokenPair encode_pair(const data::Tokenizer& tok, const std::string& context, const std::string& continuation,
                      bool add_bos = true);

// Sum of log p(continuation | context) for each pair, fp64. Pairs are sorted by length and run
// `batch_size` at a time, padded on the right (the pad never reaches a real position of a causal
// model). max_length: the model's context; longer sequences keep their last max_length + 1 tokens,
// and a continuation longer than max_length is scored on its last max_length tokens (with a
// warning). Throws InputError when a continuation is empty.
std::vector<double> loglikelihoods(const LogitsFn& logits_fn, const std::vector<TokenPair>& pairs,
                                   int64_t max_length, int batch_size = 1,
                                   const torch::Device& device = torch::kCPU,
                                   const std::string& progress_label = "");
// The same with every batch handed to `run` at once (model::run_inputs streams block-major).
std::vector<double> loglikelihoods(const model::BatchFn& run, const std::vector<TokenPair>& pairs,
                                   int64_t max_length, int batch_size = 1,
                                   const torch::Device& device = torch::kCPU,
                                   const std::string& progress_label = "");

struct MultipleChoiceOptions {
  int batch_size = 1;
  int64_t max_length = 2048;
  bool add_bos = true;       // the tokenizer's default for causal Llama checkpoints
  int64_t limit = 0;         // first `limit` items; 0 = all
  bool progress = true;      // progress bar (output rank only)
  torch::Device device = torch::kCPU;
  dist::Communicator* comm = nullptr;  // null = single process
};


// Sample standard error of the mean of n values in {0, 1} whose sum is `hits`.
double binary_mean_stderr(double hits, int64_t n);

// Scores each item's continuations; `gold` decides acc / acc_norm.
MultipleChoiceResult evaluate_multiple_choice(const LogitsFn& logits_fn, const data::Tokenizer& tok,
                                              const std::vector<MultipleChoiceItem>& items,
                                              const MultipleChoiceOptions& opts, const std::string& task = "");
MultipleChoiceResult evaluate_multiple_choice(const model::BatchFn& run, const data::Tokenizer& tok,
                                              const std::vector<MultipleChoiceItem>& items,
                                              const MultipleChoiceOptions& opts, const std::string& task = "");

MultipleChoiceResult evaluate_task(const LogitsFn& logits_fn, const data::Tokenizer& tok,
                                   const MultipleChoiceTask& task, const MultipleChoiceOptions& opts);
MultipleChoiceResult evaluate_task(const model::BatchFn& run, const data::Tokenizer& tok,
                                   const MultipleChoiceTask& task, const MultipleChoiceOptions& opts);

}  // namespace mpqat::eval
