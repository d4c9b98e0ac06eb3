// One model input of a batched pass and the callback that receives each output, shared by the
// block-at-a-time runner (block_source.h) and the evaluators (eval/). Light: no <torch/torch.h>.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

namespace mpqat::model {

struct ModelInput {
  at::Tensor ids;   // (B, T) int64
  at::Tensor mask;  // (B, T) or undefined (no padding)
};

// The one builder of padded batches: (B, T) int64 ids with `pad_id` after each sequence and a
// (B, T) int64 mask of 1 on real tokens, on the CPU; T = the longest sequence (at least 1).
ModelInput pad_right(const std::vector<std::vector<int32_t>>& seqs, int64_t pad_id);

// Receives the head's output of input `index`: (B, T, V) logits or (B, num_labels).
using OutputFn = std::function<void(std::size_t index, const at::Tensor& output)>;

// Runs a list of inputs and calls the OutputFn for each, in input order.
using BatchFn = std::function<void(const std::vector<ModelInput>& inputs, const OutputFn& fn)>;

}  // namespace mpqat::model
