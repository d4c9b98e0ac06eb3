// An optional, thread-local observer of attention probabilities, for layer analysis
// (sensitivity/layer_profile.h). Off by default; when off, attention pays one thread-local
// pointer check per call and computes exactly what it computed before.
//
// Every softmax attention of the families calls the calling thread's observer, if any, with
// the fp32 probabilities it is about to multiply with the values:
//   probs (B, H, Tq, S): batch, heads, query rows, key positions.
// The query rows are the LAST Tq of the S positions (row r sits at position S - Tq + r), which
// holds for full sequences, Llama's query chunks and KV-cache steps alike; so under a causal
// mask row r may read keys [0, S - Tq + r]. One block may call it several times (Llama splits
// long sequences into query chunks). probs may be part of an autograd graph: do not modify it.
#pragma once

#include <functional>

namespace at {
class Tensor;
}

namespace mpqat::model {

using AttentionObserver = std::function<void(const at::Tensor& probs)>;

// The calling thread's observer, or nullptr (the default).
const AttentionObserver* attention_observer();

// Installs `fn` as this thread's observer for its lifetime, then restores the previous one.
// Scopes nest; neither copyable nor movable (keep it on the stack).
class ScopedAttentionObserver {
 public:
  explicit ScopedAttentionObserver(AttentionObserver fn);
  ~ScopedAttentionObserver();
  ScopedAttentionObserver(const ScopedAttentionObserver&) = delete;
  ScopedAttentionObserver& operator=(const ScopedAttentionObserver&) = delete;

 private:
  AttentionObserver fn_;
  const AttentionObserver* previous_;
};

}  // namespace mpqat::model
