// BertForSequenceClassification (transformers' modeling_bert) in LibTorch, with Hugging Face
// parameter names:
//   bert.embeddings.{word,position,token_type}_embeddings.weight, bert.embeddings.LayerNorm.*,
//   bert.encoder.layer.{i}.attention.self.{query,key,value}.{weight,bias},
//   bert.encoder.layer.{i}.attention.output.dense.*, ...attention.output.LayerNorm.*,
//   bert.encoder.layer.{i}.intermediate.dense.*, ...output.dense.*, ...output.LayerNorm.*,
//   bert.pooler.dense.*, classifier.{weight,bias}.
// Post-LN blocks, absolute positions 0..T-1, token_type_ids all zero, padding masked with an
// additive bias, tanh pooler on token 0. (Legacy "LayerNorm.gamma"/"beta" names and
// prefix-less BertModel checkpoints are mapped by the loader.)
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

class BertBlock : public Block {
 public:
  explicit BertBlock(const ModelConfig& cfg);
  // hidden (B, T, C) -> (B, T, C); attn_bias broadcastable to (B, H, T, T) or undefined.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& attn_bias);
  torch::Tensor run(const torch::Tensor& hidden, const BlockContext& ctx) override;
  // Linears and biases N(0, 0.02), LayerNorm weights 1 + N(0, 0.1), LayerNorm biases N(0, 0.1).
  void reset_parameters() override;

  // Containers mirroring the HF module tree: attention.{self, output}, intermediate, output.
  std::shared_ptr<torch::nn::Module> attention, attention_self, attention_output, intermediate, output;
  std::shared_ptr<LayerNormImpl> attention_layer_norm;  // "attention.output.LayerNorm"
  std::shared_ptr<LayerNormImpl> output_layer_norm;     // "output.LayerNorm"

 private:
  int64_t n_heads_, head_dim_;
  std::string act_;
};
using BertBlockPtr = std::shared_ptr<BertBlock>;

class BertEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit BertEmbeddingsImpl(const ModelConfig& cfg);
  std::shared_ptr<EmbeddingTableImpl> word_embeddings, position_embeddings, token_type_embeddings;
  std::shared_ptr<LayerNormImpl> layer_norm;  // "LayerNorm"
};

class BertModelImpl : public torch::nn::Module {
 public:
  explicit BertModelImpl(const ModelConfig& cfg);
  std::shared_ptr<BertEmbeddingsImpl> embeddings;
  std::shared_ptr<torch::nn::Module> encoder, pooler;  // encoder.layer (list), pooler.dense
  torch::nn::ModuleList layer;
  std::vector<BertBlockPtr> blocks;
  LinearPtr pooler_dense;
};

class BertForSequenceClassification : public TransformerModel {
 public:
  // Throws NotImplementedError for other BERT heads or non-absolute position embeddings.
  explicit BertForSequenceClassification(const ModelConfig& cfg);

  const ModelConfig& config() const override { return cfg_; }
  int64_t num_blocks() const override { return static_cast<int64_t>(bert->blocks.size()); }
  BertBlockPtr block(int64_t i) const;

  // Throws InputError when T > max_position_embeddings or the mask's shape differs from ids.
  BlockContext context(const torch::Tensor& ids, const torch::Tensor& attention_mask) override;
  torch::Tensor embed(const torch::Tensor& ids, const BlockContext& ctx) override;
  // Pooler (tanh(dense(h[:, 0]))) + classifier: (B, T, C) -> (B, num_labels).
  torch::Tensor head(const torch::Tensor& hidden, const BlockContext& ctx) override;
  std::string block_prefix(int64_t i) const override;
  bool is_causal_lm() const override { return false; }
  using TransformerModel::forward;
  torch::Tensor forward(const torch::Tensor& ids) { return forward(ids, torch::Tensor()); }
  void reset_parameters() override;

  std::shared_ptr<BertModelImpl> bert;
  LinearPtr classifier;  // (num_labels, C) with bias

 protected:
  BlockPtr block_at(int64_t i) const override { return block(i); }

 private:
  ModelConfig cfg_;
};

}  // namespace mpqat::model
