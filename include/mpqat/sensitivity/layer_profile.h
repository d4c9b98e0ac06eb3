// Attention statistics of seed 003's layer analysis ([M4], sensitivity mode "profile"): per
// block, the entropy of every head's attention distributions and how specialised the heads
// are. (The block-to-block change and the activation statistics are in block_profile.h.)
//
// For a query row with attention probabilities p over the n keys it may read:
//   H(row) = -sum_j p_j ln p_j  (nats),  0 <= H <= ln n  (ln n: uniform over the n keys).
// Per block and head h, over every query row of every calibration sequence:
//   head_entropy[h]        = mean H(row)
//   head_specialisation[h] = 1 - sum H(row) / sum ln n(row)   in [0, 1]: 0 = uniform attention,
//                            1 = every row reads one key (rows with n = 1 count in neither sum)
//   entropy = mean over heads of head_entropy; entropy_std = their standard deviation (over
//   heads, population); specialisation = mean over heads of head_specialisation;
//   max_entropy = mean ln n(row), the entropy uniform attention would have.
// n(row) is found from the probabilities: when every entry right of the causal diagonal is
// exactly 0 (a causal mask), row r of Tq query rows over S keys reads S - Tq + r + 1 keys, else
// all S. Sequences are run one at a time without padding, so no key is masked otherwise.
// No torch in this header.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "mpqat/model/attention_observer.h"

namespace mpqat::model {
class TransformerModel;
}

namespace mpqat::sensitivity {

struct AttentionStats {
  std::vector<double> head_entropy;         // per head, nats
  std::vector<double> head_specialisation;  // per head, [0, 1]
  double entropy = 0.0, entropy_std = 0.0, specialisation = 0.0, max_entropy = 0.0;
  int64_t rows = 0;  // query rows seen per head (0: the block computed no attention)
};

// Accumulates the attention of blocks over any number of passes. Not thread-safe; install it
// on the thread that runs the blocks:
//   AttentionRecorder rec(m.num_blocks());
//   for (i ...) { auto watching = rec.watch(i); h = m.run_block(i, h, ctx); }
class AttentionRecorder {
 public:
  explicit AttentionRecorder(int64_t num_blocks);
  ~AttentionRecorder();
  AttentionRecorder(const AttentionRecorder&) = delete;
  AttentionRecorder& operator=(const AttentionRecorder&) = delete;

  // While the returned scope lives, attention computed on this thread is added to `block`'s
  // statistics. Throws Error when `block` is out of range.
  model::ScopedAttentionObserver watch(int64_t block);
  // One entry per block, in block order.
  std::vector<AttentionStats> result() const;

  // What watch()'s observer does (exposed for tests): probs (B, H, Tq, S).
  void add(int64_t block, const at::Tensor& probs);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One full-precision pass over `sequences` (one at a time, no padding), block by block, with
// a recorder watching every block. Throws InputError when there are no sequences.
std::vector<AttentionStats> attention_profile(model::TransformerModel& m,
                                              const std::vector<std::vector<int32_t>>& sequences);

}  // namespace mpqat::sensitivity
