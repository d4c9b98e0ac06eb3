// Llama-family decoder (Llama, Mistral, Qwen2) in LibTorch, laid out with Hugging Face
// parameter names so that named_parameters() matches the safetensors checkpoint:
//   model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight, ...,
//   model.norm.weight, lm_head.weight (absent when tie_word_embeddings).
// Math is fp32 throughout: RMSNorm, RoPE (HF rotate_half convention), causal softmax
// attention with grouped-query heads, SwiGLU MLP. The model can also be run block by block
// (embed -> block(i) ... -> head), which the calibration / QAT stages and the streaming
// loader rely on. LlamaForCausalLM / LlamaBlock implement the architecture-neutral
// TransformerModel / Block interface of model.h; the KV-cache paths stay Llama-specific.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "mpqat/model/config.h"
#include "mpqat/model/linear.h"
#include "mpqat/model/model.h"

namespace mpqat::model {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  // (..., C) -> (..., C), computed in fp32
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;  // (C)
  double eps;
};

class EmbeddingTableImpl : public torch::nn::Module {
 public:
  EmbeddingTableImpl(int64_t vocab, int64_t dim);
  // (B, T) int64 -> (B, T, C)
  torch::Tensor forward(const torch::Tensor& ids);
  torch::Tensor weight;  // (V, C)
};

// inv_freq (head_dim / 2) in fp32, with the rope_scaling rule applied (linear: / factor;
// llama3: transformers' _compute_llama3_parameters). Computed with fp32 tensor ops in the same
// order as transformers, so the tables match its bit for bit.
torch::Tensor rope_inv_freq(const ModelConfig& cfg);

// cos / sin tables (positions, head_dim), each half repeated (HF: emb = cat(freqs, freqs)).
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const ModelConfig& cfg);
  // Tables for positions [start, start + length) on `device`: two (length, head_dim) tensors.
  // Grows the cache past max_position_embeddings when asked.
  std::pair<torch::Tensor, torch::Tensor> get(int64_t start, int64_t length,
                                              const torch::Device& device);

 private:
  void ensure(int64_t n, const torch::Device& device);
  torch::Tensor inv_freq_;  // (D/2) fp32, CPU
  torch::Tensor cos_, sin_;  // (N, D)
};

// x (B, H, T, D), cos/sin (T, D): x * cos + rotate_half(x) * sin.
torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
// (..., D): cat(-x[..., D/2:], x[..., :D/2])
torch::Tensor rotate_half(const torch::Tensor& x);

// One block's cached keys and values (B, n_kv_heads, S, head_dim), after RoPE.
struct LayerKV {
  torch::Tensor k, v;
  int64_t length() const { return k.defined() ? k.size(2) : 0; }
};

struct KVCache {
  std::vector<LayerKV> layers;
  int64_t length() const { return layers.empty() ? 0 : layers.front().length(); }
  void clear() { layers.clear(); }
};

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  explicit LlamaAttentionImpl(const ModelConfig& cfg);
  // x (B, T, C); cos/sin (T, D) for the positions of x; cache (optional) holds the earlier
  // positions and is extended. Query t attends to keys at positions <= past + t.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        LayerKV* cache = nullptr);
  LinearPtr q_proj, k_proj, v_proj, o_proj;
  int64_t n_heads, n_kv_heads, head_dim;
};

class LlamaMLPImpl : public torch::nn::Module {
 public:
  explicit LlamaMLPImpl(const ModelConfig& cfg);
  // (B, T, C) -> (B, T, C): down(silu(gate(x)) * up(x))
  torch::Tensor forward(const torch::Tensor& x);
  LinearPtr gate_proj, up_proj, down_proj;
};

class LlamaBlock : public Block {
 public:
  explicit LlamaBlock(const ModelConfig& cfg);
  // hidden (B, T, C) -> (B, T, C); cos/sin (T, D) from RotaryEmbedding::get for the positions.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& cos,
                        const torch::Tensor& sin, LayerKV* cache = nullptr);
  // forward with the context's rotary tables (padding needs no mask: see LlamaForCausalLM::context).
  torch::Tensor run(const torch::Tensor& hidden, const BlockContext& ctx) override;

  // The seven projections under their names relative to the block ("self_attn.q_proj", ...),
  // in block_linear_names() order.
  std::vector<std::pair<std::string, LinearPtr>> linears() const override;
  // Throws InputError for an unknown name.
  LinearPtr linear(const std::string& name) const override;
  // Swaps in `module` (a LinearImpl subclass) under `name`; in/out features must match.
  void set_linear(const std::string& name, LinearPtr module) override;

  // Random init for tests: linears N(0, 0.02), biases N(0, 0.02), norm weights 1 + N(0, 0.1).
  void reset_parameters() override;

  std::shared_ptr<LlamaAttentionImpl> self_attn;
  std::shared_ptr<LlamaMLPImpl> mlp;
  std::shared_ptr<RMSNormImpl> input_layernorm, post_attention_layernorm;
};
using LlamaBlockPtr = std::shared_ptr<LlamaBlock>;

// "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
// "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"
const std::vector<std::string>& block_linear_names();
// "model.layers.{i}."
std::string block_prefix(int64_t i);
// Every quantizable linear, e.g. "model.layers.3.self_attn.q_proj" (lm_head excluded), for
// any family ("model.decoder.layers.0.fc1", "bert.encoder.layer.0.attention.self.query").
std::vector<std::string> quantizable_linear_names(const ModelConfig& cfg);

// "model": embed_tokens, layers, norm.
class LlamaModelImpl : public torch::nn::Module {
 public:
  LlamaModelImpl(const ModelConfig& cfg, bool with_blocks);
  std::shared_ptr<EmbeddingTableImpl> embed_tokens;
  torch::nn::ModuleList layers;
  std::shared_ptr<RMSNormImpl> norm;
  std::vector<LlamaBlockPtr> blocks;
};

class LlamaForCausalLM : public TransformerModel {
 public:
  // Parameters are allocated uninitialised (the loader fills them; tests call
  // reset_parameters). with_blocks = false builds embeddings, norm and head only (streaming).
  // Throws NotImplementedError for OPT / BERT configs.
  explicit LlamaForCausalLM(const ModelConfig& cfg, bool with_blocks = true);

  const ModelConfig& config() const override { return cfg_; }
  int64_t num_blocks() const override { return static_cast<int64_t>(model->blocks.size()); }

  // ids (B, T) int64 -> logits (B, T, V). With a cache, ids continue the cached sequence and
  // the cache is extended.
  torch::Tensor forward(const torch::Tensor& ids, KVCache* cache = nullptr);
  using TransformerModel::forward;  // forward(ids, attention_mask)

  // TransformerModel. Padding must be on the right (each mask row ones then zeros): causal
  // attention keeps real tokens from reading later pads, so no mask is applied and the logits
  // of real tokens are exact; other padding throws NotImplementedError.
  BlockContext context(const torch::Tensor& ids, const torch::Tensor& attention_mask) override;
  torch::Tensor embed(const torch::Tensor& ids, const BlockContext& ctx) override { return embed(ids); }
  torch::Tensor run_block(int64_t i, const torch::Tensor& hidden, const BlockContext& ctx) override;
  torch::Tensor head(const torch::Tensor& hidden, const BlockContext& ctx) override { return head(hidden); }
  std::string block_prefix(int64_t i) const override { return mpqat::model::block_prefix(i); }
  bool is_causal_lm() const override { return true; }

  // ids (B, T) -> hidden (B, T, C)
  torch::Tensor embed(const torch::Tensor& ids);
  std::shared_ptr<LlamaBlock> block(int64_t i) const;
  // Runs block i on hidden (B, T, C) for positions [start_pos, start_pos + T).
  torch::Tensor run_block(int64_t i, const torch::Tensor& hidden, int64_t start_pos = 0,
                          LayerKV* cache = nullptr);
  // Runs any block (e.g. one loaded alone) at positions [start_pos, start_pos + T).
  torch::Tensor run_block(LlamaBlock& blk, const torch::Tensor& hidden, int64_t start_pos = 0,
                          LayerKV* cache = nullptr);
  // Final norm + lm_head: hidden (B, T, C) -> logits (B, T, V).
  torch::Tensor head(const torch::Tensor& hidden);

  // Every block linear with its full HF name ("model.layers.3.mlp.up_proj").
  std::vector<std::pair<std::string, LinearPtr>> named_linears() const override;
  // Untied output projection, or nullptr when tied to embed_tokens.
  LinearPtr lm_head() const { return lm_head_; }
  RotaryEmbedding& rope() { return rope_; }

  // Random init for tests (deterministic given torch::manual_seed).
  void reset_parameters() override;

  std::shared_ptr<LlamaModelImpl> model;

 protected:
  BlockPtr block_at(int64_t i) const override { return block(i); }

 private:
  void check_length(int64_t total) const;
  ModelConfig cfg_;
  LinearPtr lm_head_;
  RotaryEmbedding rope_;
};
using LlamaPtr = std::shared_ptr<LlamaForCausalLM>;

}  // namespace mpqat::model
