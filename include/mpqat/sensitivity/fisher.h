// Diagonal empirical Fisher and the Omega table ([M4], BRIEF §5).
//
//   F_w = sum over calibration items i of (dL_i / dw)^2
//
// where one item is one calibration sequence (its own batch of size 1, the SqueezeLLM setting)
// and L_i is the mean next-token cross-entropy over its T - 1 predicted positions (causal LMs),
// or the cross-entropy of its label (classifiers). Because every item is its own batch, F does
// not depend on how the items are split across ranks (beyond float summation order).
//
//   Omega_l(b, g) = 1/2 * sum_w F_w * (w - Q_{b,g}(w))^2
//
// with Q the project's RTN quantizer (min-max init, asymmetric, fp16-representable scales, as
// the checkpoint writer stores them), summed in fp64: the second-order estimate of the increase
// of the summed per-item loss when module l alone is quantized to (b, g).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "mpqat/model/activation_cache.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/model.h"

namespace mpqat::dist {
class Communicator;
}

namespace mpqat::sensitivity {

// For each item i handled by this rank (i = rank, rank + world, ... < num_items): loss =
// loss_fn(i), backward, acc_p += grad_p^2 (fp32, one accumulator per parameter), grad zeroed.
// Then, with `comm`, the accumulators are all_reduce_sum'ed. `params` must have requires_grad;
// any other tensor loss_fn touches should not (its gradient would be computed for nothing).
// Returns one fp32 tensor per parameter, shaped like it.
std::vector<torch::Tensor> empirical_fisher(int64_t num_items,
                                            const std::function<torch::Tensor(int64_t)>& loss_fn,
                                            const std::vector<torch::Tensor>& params,
                                            dist::Communicator* comm = nullptr, bool progress = false);

struct FisherResult {
  std::vector<std::string> names;    // full linear names, named_linears() order
  std::vector<torch::Tensor> fisher; // (out, in) fp32 each, on the weight's device
  int64_t items = 0;
};

// Causal LM: each sequence (any length >= 2) is one item. requires_grad is switched on for the
// block linears' weights only during the pass and restored afterwards.
FisherResult fisher_causal_lm(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                              dist::Communicator* comm = nullptr, bool progress = false);

// Sequence classifier (head gives (1, num_labels)): item i is ids[i] with label labels[i].
// Throws InputError when a label is outside [0, num_labels).
FisherResult fisher_classifier(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& ids,
                               const std::vector<int64_t>& labels, dist::Communicator* comm = nullptr,
                               bool progress = false);

// The same Fisher, block by block (the production path of `mpqat sensitivity` / `mpqat run`), with
// at most one block's weights, gradients and accumulators in memory besides the shell and the
// activation caches (docs/sensitivity.md, "Memory"):
//   1. every sequence runs forward block by block; the input of each block is cached;
//   2. at the top, the loss of each sequence and its gradient with respect to the last hidden
//      state;
//   3. blocks downward: block i is loaded, its forward recomputed per sequence from the cached
//      input with autograd on, that sequence's incoming gradient backpropagated; the squared
//      weight gradients add to block i's Fisher and dL/dx becomes block i-1's incoming gradient.
// Each sequence is its own item, as in empirical_fisher, so the result equals fisher_causal_lm /
// fisher_classifier on the whole model up to float summation order. Ranks take the sequences
// g % world == rank and all-reduce each block's Fisher before on_block sees it.
struct StreamedFisherOptions {
  model::CacheOptions cache;          // block inputs and gradients (fp32 keeps the result exact)
  dist::Communicator* comm = nullptr;
  bool progress = false;
};
// on_block(i, block, fisher): called once per block, top block first, with the block's linears
// (block->linears() order) and their all-reduced Fisher ((out, in) fp32 each, on the block's
// device); the block is freed after the call.
using FisherBlockFn = std::function<void(int64_t block, model::Block& blk, const std::vector<torch::Tensor>& fisher)>;
// labels empty: causal LM (mean next-token loss of each sequence, >= 2 tokens); otherwise a
// sequence classifier with labels[i] for sequences[i]. Returns the number of items. Throws
// InputError for too-short sequences, labels out of range or a model/labels mismatch.
int64_t fisher_streamed(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                        const std::vector<int64_t>& labels, const FisherBlockFn& on_block,
                        const StreamedFisherOptions& opts = {});

// 1/2 * sum F * (W - Q_{bits,group}(W))^2 in fp64. w, f (out, in).
double omega(const torch::Tensor& w, const torch::Tensor& f, int bits, int64_t group_size);

// "<bits>:<group>" -> omega for every pair, plus "16" -> 0 (the keys of sensitivity.json).
std::map<std::string, double> omega_table(const torch::Tensor& w, const torch::Tensor& f,
                                          const std::vector<int>& bits,
                                          const std::vector<int64_t>& group_sizes);

}  // namespace mpqat::sensitivity
