// Text generation with a KV cache: greedy or temperature + top-p (nucleus) sampling.
// Matches llama2.c run.c: the prompt is encoded with BOS (an empty prompt is just BOS), the
// printed text is every piece after BOS (prompt pieces included) via decode_piece, and
// generation stops at EOS, at a generated BOS (run.c's sequence delimiter), after
// max_new_tokens, or when the sequence reaches max_position_embeddings.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "mpqat/data/tokenizer.h"

namespace mpqat::model {
class LlamaForCausalLM;
}

namespace mpqat::eval {

struct GenerateOptions {
  int max_new_tokens = 256;
  bool greedy = false;       // also implied by temperature == 0
  double temperature = 1.0;
  double top_p = 0.9;        // 1.0 = sample from the full distribution
  uint64_t seed = 0;
  bool use_cache = true;     // false recomputes the whole prefix each step (slow; for tests)
};

struct GenerateResult {
  std::vector<int32_t> ids;  // prompt (with BOS) followed by the generated tokens
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  std::string text;          // decode_piece of every token after BOS
  std::string stop_reason;   // "eos", "bos", "max_new_tokens", "context"
  // One entry per generated token, from the fp32 logits it was chosen from (temperature 1):
  // log p(token) and the gap between the best and the second-best logit (a near-tie when small).
  std::vector<double> logprobs;
  std::vector<double> margins;
};

// Samples from logits (V) fp32 as configured; `rng_state` is advanced (xorshift64*).
int32_t sample_token(const float* logits, int64_t vocab, const GenerateOptions& opts, uint64_t& rng_state);

// on_piece (optional) receives each printed piece as it is produced.
GenerateResult generate(model::LlamaForCausalLM& model, const data::Tokenizer& tok, const std::string& prompt,
                        const GenerateOptions& opts,
                        const std::function<void(const std::string&)>& on_piece = {});

}  // namespace mpqat::eval
