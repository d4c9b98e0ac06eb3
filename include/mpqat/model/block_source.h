// Where a block-at-a-time pass gets its blocks: from a model held whole in memory, or loaded one
// at a time from the mapped checkpoint (streaming). Every pass that may meet a large model
// (sensitivity, evaluation, RTN, E2E-QP) is written once, block-major, against this interface:
//
//   auto src = open_blocks(folder, so);             // in memory or streamed, by the memory limit
//   auto ctx = src->shell().context(ids, mask);     // shell: embeddings, final norm, head
//   auto h = src->shell().embed(ids, ctx);          // (B, T, C)
//   for (i ...) { auto b = src->block(i); h = b->run(h, ctx); }   // a streamed block is freed
//   auto out = src->shell().head(h, ctx);                          // when `b` goes out of scope
//
// run_inputs() does exactly that for a list of inputs, in groups whose hidden states fit a byte
// allowance, so that a streamed model is read once per group rather than once per input.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mpqat/model/config.h"
#include "mpqat/model/model.h"
#include "mpqat/model/model_input.h"

namespace mpqat::model {

class ModelFolder;

class BlockSource {
 public:
  virtual ~BlockSource() = default;
  // Embeddings, final norm(s) and head; context() / embed() / head() as in TransformerModel.
  virtual TransformerModel& shell() = 0;
  // The whole model's configuration (a streamed shell's own config may count 0 blocks).
  virtual const ModelConfig& config() const = 0;
  virtual int64_t num_blocks() const { return config().num_hidden_layers; }
  // Block i: the model's own block (in memory) or a freshly loaded one (streamed; freed when the
  // caller drops it). Eval mode, requires_grad off, on device().
  virtual BlockPtr block(int64_t i) = 0;
  virtual bool streaming() const = 0;
  virtual torch::Device device() const = 0;
  // "model.layers.{i}." etc.
  std::string block_prefix(int64_t i) const { return family_block_prefix(config(), i); }
};

// A model held in memory (any family; packed QuantLinear modules included), owned or borrowed
// (the borrowed model must outlive the source).
std::unique_ptr<BlockSource> model_blocks(std::shared_ptr<TransformerModel> m);
std::unique_ptr<BlockSource> model_blocks(TransformerModel& m);
// Blocks loaded one at a time from `folder` (float or packed) onto `device`. The folder must
// outlive the source.
std::unique_ptr<BlockSource> folder_blocks(const ModelFolder& folder, const torch::Device& device = torch::kCPU);

// Bytes the whole model takes once loaded: float tensors as fp32, packed tensors as stored.
uint64_t whole_model_bytes(const ModelFolder& folder);
// Bytes of the largest block once loaded (fp32 / packed as stored), and of the block-free parts.
uint64_t largest_block_bytes(const ModelFolder& folder);
uint64_t shell_bytes(const ModelFolder& folder);

struct StreamingOptions {
  torch::Device device = torch::kCPU;
  std::string mode = "auto";  // auto: stream when whole_model_bytes > memory_limit; always; never
  uint64_t memory_limit = 0;  // 0 = auto_memory_limit(device)
  std::string limit_key = "model.memory_limit";  // names the setting in errors
};
// 80% of what the device can give: the host's available memory (CPU) or the GPU's free memory.
uint64_t auto_memory_limit(const torch::Device& device);
// Parses "auto" / a byte size (util::parse_bytes) into a limit (0 = auto). `context` names the key.
uint64_t parse_memory_limit(const std::string& text, const std::string& context);
// Throws InputError when one block and the block-free parts (fp32) exceed `limit` (0 = auto):
// no block-at-a-time pass can run then. `what` names the setting in the message.
void check_block_fits(const ModelFolder& folder, uint64_t limit, const torch::Device& device, const std::string& what);
// The source `opts` asks for (a streamed one after check_block_fits). Throws InputError for an
// unknown mode.
std::unique_ptr<BlockSource> open_blocks(const ModelFolder& folder, const StreamingOptions& opts);

// Runs every input (under NoGradGuard) and calls fn(index, head output) in input order:
// (B, T, V) logits for causal LMs, (B, num_labels) for classifiers. In memory each input runs
// through the whole model; streamed, inputs are taken in groups whose fp32 hidden states fit
// `group_bytes` (at least one input per group) and each group reads every block once. Both
// compute the same numbers: every block sees the same input either way.
void run_inputs(BlockSource& src, const std::vector<ModelInput>& inputs, const OutputFn& fn,
                uint64_t group_bytes = 1ull << 30);
// run_inputs as a BatchFn (the evaluators' way in); `src` must outlive it.
BatchFn batch_fn(BlockSource& src, uint64_t group_bytes = 1ull << 30);

// Backpropagates `grad_out` (same shape as the block's output) through block(x): recomputes the
// forward with autograd on, leaves the gradients of the block's parameters that require grad in
// their .grad, and returns dL/dx (undefined when !input_grad). x is not modified.
torch::Tensor block_backward(Block& block, const torch::Tensor& x, const BlockContext& ctx,
                             const torch::Tensor& grad_out, bool input_grad = true);

}  // namespace mpqat::model
