// E2E-QP (EfficientQAT, BRIEF §4): after Block-AP, only the step sizes (scales) of the packed
// linears train, end to end on next-token loss; the integer codes and zeros stay fixed.
//
// Memory is bounded by one block, not the model (docs/training.md, "Memory"): every linear keeps
// its packed codes (QuantLinear's buffers) and an fp32 step-size parameter, and dequantizes on
// the fly; each step runs forward block by block without autograd, caching every block's input
// (model/activation_cache.h), then walks the blocks downward recomputing one block at a time
// with autograd on (model::block_backward), so only that block's dequantized weights and
// activations are ever held for the backward pass.
#pragma once

#include <cstdint>

#include "mpqat/model/activation_cache.h"
#include "mpqat/train/block_ap.h"

namespace mpqat::dist {
class Communicator;
}

namespace mpqat::train {

struct E2eOptions {
  int epochs = 1;
  double lr = 1e-5;
  double warmup_ratio = 0.03;
  double grad_clip = 0.3;  // global gradient-norm clip (0 = off)
  int64_t batch_size = 1;  // global sequences per step
  uint64_t seed = 0;
  model::CacheOptions cache;  // block inputs of one step (fp32: exact gradients)
};

// E2E-QP on a Block-AP result (causal LMs only; InputError otherwise). Blocks are replaced by
// their re-packed versions (fp16 step sizes); result.e2e receives the log.
void e2e_qp(QatResult& result, const TokenBatch& data, const E2eOptions& opts, dist::Communicator* comm = nullptr);

}  // namespace mpqat::train
