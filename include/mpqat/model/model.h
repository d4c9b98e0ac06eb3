// The architecture-neutral view of a transformer that every later stage (quantization,
// sensitivity, QAT, evaluation) works through, so that Llama, OPT and BERT are handled alike:
//
//   model  = embeddings -> blocks[0 .. num_blocks) -> head
//   block  = a torch::nn::Module owning its quantizable linears under their Hugging Face names
//            relative to the block ("self_attn.q_proj", "attention.self.query", ...)
//   full linear name = block_prefix(i) + relative name, e.g. "model.decoder.layers.3.fc1"
//
// A pass over a batch:
//   BlockContext ctx = m.context(ids, attention_mask);   // masks, positions, rope tables
//   auto h = m.embed(ids, ctx);                           // (B, T, C)
//   for (i ...) h = m.run_block(i, h, ctx);               // (B, T, C)
//   auto out = m.head(h, ctx);   // causal LM: (B, T, V) logits; classifier: (B, num_labels)
// which is what forward(ids, attention_mask) does. Stages that cache block inputs keep the
// context of the batch along with them. Linears are swapped (fake-quant, packed) with
// set_linear by relative name on a block, or by full name on the model.
//
// Embedding tables, norms and heads (lm_head, score, pooler, classifier) are not block linears
// and are never returned by named_linears().
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mpqat/model/config.h"
#include "mpqat/model/hf_names.h"  // family_block_linear_names, family_block_prefix, block_linear_shape
#include "mpqat/model/linear.h"

namespace mpqat::model {

// Everything a block needs besides its input hidden states, built once per batch by
// TransformerModel::context. Fields a family does not use stay undefined.
struct BlockContext {
  int64_t batch = 0, length = 0;  // B, T
  torch::Tensor ids;              // (B, T) int64 input ids (sequence classifiers read pad tokens)
  torch::Tensor attention_mask;   // (B, T) int64, 1 = token, 0 = padding; undefined = no padding
  // Additive fp32 attention bias broadcastable to (B, H, T, T): 0 where a query may read a key,
  // the lowest float where it may not (as transformers' eager path, so that a fully masked
  // row gives finite uniform weights instead of NaN). Undefined = no masking (BERT, no padding).
  torch::Tensor attn_bias;
  torch::Tensor positions;  // (B, T) int64 position ids (OPT: from the mask cumsum; BERT: 0..T-1)
  int64_t start_pos = 0;    // Llama: first position of the batch
  torch::Tensor cos, sin;   // Llama: (T, head_dim) rotary tables
};

class Block : public torch::nn::Module {
 public:
  ~Block() override = default;

  // hidden (B, T, C) -> (B, T, C)
  virtual torch::Tensor run(const torch::Tensor& hidden, const BlockContext& ctx) = 0;

  // The block's quantizable linears with their names relative to the block, in a fixed order.
  virtual std::vector<std::pair<std::string, LinearPtr>> linears() const;
  // Throws InputError for an unknown name (the message lists the accepted ones).
  virtual LinearPtr linear(const std::string& name) const;
  // Swaps in `module` (any LinearImpl subclass) under `name`, also in the module tree (so
  // named_parameters / named_modules see it). Throws Error when in/out features differ.
  virtual void set_linear(const std::string& name, LinearPtr module);

  // Random init for tests, deterministic given torch::manual_seed.
  virtual void reset_parameters() = 0;

 protected:
  // Registers `module` as child `key` of `parent` (a submodule of this block, or the block
  // itself) and records it under `name`, which gives linears / linear / set_linear for free.
  // Returns `module`.
  LinearPtr add_linear(torch::nn::Module& parent, const std::string& key, const std::string& name,
                       LinearPtr module);
  // The linear recorded by the idx-th add_linear call (the current one after set_linear).
  LinearImpl& lin(size_t idx) const { return *slots_[idx].module; }

 private:
  struct Slot {
    std::string name;
    torch::nn::Module* parent;  // owned by this block
    std::string key;
    LinearPtr module;
  };
  std::vector<Slot> slots_;
  std::string accepted_names() const;
};
using BlockPtr = std::shared_ptr<Block>;

class TransformerModel : public torch::nn::Module {
 public:
  ~TransformerModel() override = default;

  virtual const ModelConfig& config() const = 0;
  virtual int64_t num_blocks() const = 0;
  // Block i; throws Error when out of range. (LlamaForCausalLM hides this with a version
  // returning its concrete block type.)
  BlockPtr block(int64_t i) const { return block_at(i); }

  // ids (B, T) int64; attention_mask (B, T) (any integer or bool dtype, nonzero = token) or
  // undefined for "no padding". Throws InputError for mismatched shapes or sequences longer
  // than the model accepts.
  virtual BlockContext context(const torch::Tensor& ids, const torch::Tensor& attention_mask) = 0;
  // ids (B, T) -> hidden (B, T, C)
  virtual torch::Tensor embed(const torch::Tensor& ids, const BlockContext& ctx) = 0;
  // hidden (B, T, C) -> (B, T, C) through block i
  virtual torch::Tensor run_block(int64_t i, const torch::Tensor& hidden, const BlockContext& ctx);
  // Final norm(s) + output head: (B, T, V) logits for causal LMs, (B, num_labels) otherwise.
  virtual torch::Tensor head(const torch::Tensor& hidden, const BlockContext& ctx) = 0;
  // context + embed + every block + head.
  torch::Tensor forward(const torch::Tensor& ids, const torch::Tensor& attention_mask);

  // "model.layers.{i}.", "model.decoder.layers.{i}.", "bert.encoder.layer.{i}."
  virtual std::string block_prefix(int64_t i) const = 0;
  // Every block linear by full name, blocks in order, each block in linears() order.
  virtual std::vector<std::pair<std::string, LinearPtr>> named_linears() const;
  // By full name; throws InputError naming it when no block owns such a linear.
  LinearPtr linear(const std::string& full_name) const;
  void set_linear(const std::string& full_name, LinearPtr module);

  virtual bool is_causal_lm() const = 0;
  // 0 for causal LMs.
  virtual int64_t num_labels() const { return is_causal_lm() ? 0 : config().num_labels; }

  // Random init for tests, deterministic given torch::manual_seed.
  virtual void reset_parameters() = 0;

 protected:
  virtual BlockPtr block_at(int64_t i) const = 0;
  // Splits "prefix.rel" into (block index, rel); {-1, ""} when no block prefix matches.
  std::pair<int64_t, std::string> split_name(const std::string& full_name) const;
};
using ModelPtr = std::shared_ptr<TransformerModel>;

// ---------------------------------------------------------------------------------------------
// Shared pieces for the families

// LayerNorm with optional affine parameters ("weight", "bias"), fp32.
class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps, bool affine = true);
  // (..., C) -> (..., C)
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight, bias;  // (C) each, or undefined without affine
  int64_t dim;
  double eps;
};

// Elementwise activation by its Hugging Face name (see is_supported_activation in config.h).
// Throws InputError otherwise.
torch::Tensor activation(const std::string& name, const torch::Tensor& x);

// Softmax attention over heads: q (B, H, T, D) already scaled, k / v (B, H, S, D),
// bias broadcastable to (B, H, T, S) or undefined -> (B, H, T, D). Softmax in fp32.
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& bias);

}  // namespace mpqat::model
