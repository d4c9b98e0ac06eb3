// OPT decoder (transformers' modeling_opt) in LibTorch, with Hugging Face parameter names:
//   model.decoder.embed_tokens.weight (V, E), model.decoder.embed_positions.weight (P + 2, C),
//   model.decoder.project_in.weight (C, E) / project_out.weight (E, C) when E != C,
//   model.decoder.layers.{i}.self_attn.{q,k,v,out}_proj.{weight,bias},
//   model.decoder.layers.{i}.{fc1,fc2}.{weight,bias},
//   model.decoder.layers.{i}.{self_attn_layer_norm,final_layer_norm}.{weight,bias},
//   model.decoder.final_layer_norm.{weight,bias} (pre-LN models only),
//   lm_head.weight (untied only) | score.weight (num_labels, E) for sequence classification.
// (E = word_embed_proj_dim, C = hidden_size.) Learned positions are cumsum(mask) - 1 + 2, so
// left padding shifts positions as in transformers. Queries are scaled by head_dim^-0.5 before
// the product; attention is causal plus padding.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mpqat/model/config.h"
#include "mpqat/model/linear.h"
#include "mpqat/model/llama.h"  // EmbeddingTableImpl
#include "mpqat/model/model.h"

namespace mpqat::model {

class OPTBlock : public Block {
 public:
  explicit OPTBlock(const ModelConfig& cfg);
  // hidden (B, T, C) -> (B, T, C); attn_bias broadcastable to (B, H, T, T) (see BlockContext).
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& attn_bias);
  torch::Tensor run(const torch::Tensor& hidden, const BlockContext& ctx) override;
  // Linears and biases N(0, 0.02), LayerNorm weights 1 + N(0, 0.1), LayerNorm biases N(0, 0.1).
  void reset_parameters() override;

  std::shared_ptr<torch::nn::Module> self_attn;  // holds q_proj, k_proj, v_proj, out_proj
  std::shared_ptr<LayerNormImpl> self_attn_layer_norm, final_layer_norm;

 private:
  int64_t n_heads_, head_dim_;
  bool pre_ln_;
  std::string act_;
};
using OPTBlockPtr = std::shared_ptr<OPTBlock>;

class OPTDecoderImpl : public torch::nn::Module {
 public:
  explicit OPTDecoderImpl(const ModelConfig& cfg);
  std::shared_ptr<EmbeddingTableImpl> embed_tokens, embed_positions;
  LinearPtr project_in, project_out;                 // nullptr when E == C
  std::shared_ptr<LayerNormImpl> final_layer_norm;  // nullptr for post-LN models
  torch::nn::ModuleList layers;
  std::vector<OPTBlockPtr> blocks;
};

class OPTModelImpl : public torch::nn::Module {
 public:
  explicit OPTModelImpl(const ModelConfig& cfg);
  std::shared_ptr<OPTDecoderImpl> decoder;
};

// Everything but the head; OPTForCausalLM and OPTForSequenceClassification add theirs.
class OPTPreTrainedModel : public TransformerModel {
 public:
  const ModelConfig& config() const override { return cfg_; }
  int64_t num_blocks() const override { return static_cast<int64_t>(model->decoder->blocks.size()); }
  OPTBlockPtr block(int64_t i) const;

  // Throws InputError when T > max_position_embeddings or the mask's shape differs from ids.
  BlockContext context(const torch::Tensor& ids, const torch::Tensor& attention_mask) override;
  torch::Tensor embed(const torch::Tensor& ids, const BlockContext& ctx) override;
  std::string block_prefix(int64_t i) const override;
  using TransformerModel::forward;
  torch::Tensor forward(const torch::Tensor& ids) { return forward(ids, torch::Tensor()); }
  void reset_parameters() override;

  std::shared_ptr<OPTModelImpl> model;

 protected:
  // Throws NotImplementedError / InputError when cfg is not an OPT config this code can build.
  explicit OPTPreTrainedModel(const ModelConfig& cfg);
  // The decoder's tail: final_layer_norm and project_out when present. (B, T, C) -> (B, T, E)
  torch::Tensor decoder_tail(const torch::Tensor& hidden);
  BlockPtr block_at(int64_t i) const override { return block(i); }
  ModelConfig cfg_;
};

class OPTForCausalLM : public OPTPreTrainedModel {
 public:
  explicit OPTForCausalLM(const ModelConfig& cfg);
  // (B, T, C) -> logits (B, T, V)
  torch::Tensor head(const torch::Tensor& hidden, const BlockContext& ctx) override;
  bool is_causal_lm() const override { return true; }
  void reset_parameters() override;
  // Untied output projection, or nullptr when tied to embed_tokens.
  LinearPtr lm_head() const { return lm_head_; }

 private:
  LinearPtr lm_head_;
};

class OPTForSequenceClassification : public OPTPreTrainedModel {
 public:
  explicit OPTForSequenceClassification(const ModelConfig& cfg);
  // (B, T, C) -> logits (B, num_labels) from the hidden state of each row's last non-pad token.
  torch::Tensor head(const torch::Tensor& hidden, const BlockContext& ctx) override;
  bool is_causal_lm() const override { return false; }
  void reset_parameters() override;

  // Per row (B) int64, the index of the token that is classified: the last token whose id is
  // not pad_token_id (transformers' rule; with right padding, the one before the first pad).
  // Without a pad_token_id: the last position where the mask is nonzero, else T - 1.
  static torch::Tensor last_token_index(const torch::Tensor& ids, const torch::Tensor& attention_mask,
                                        int64_t pad_token_id);

  LinearPtr score;  // (num_labels, E), no bias
};

}  // namespace mpqat::model
