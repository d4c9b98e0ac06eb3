#include "mpqat/model/opt.h"

#include <cmath>
#include <limits>

#include "mpqat/util/error.h"

namespace mpqat::model {

namespace {

enum OPTLinear : size_t { kQ, kK, kV, kOut, kFc1, kFc2 };

const ModelConfig& checked_opt(const ModelConfig& cfg) {
  if (cfg.family != Family::OPT)
    throw InputError(cfg.source + ": architecture '" + cfg.architecture + "' is not an OPT model");
  if (cfg.num_key_value_heads != cfg.num_attention_heads || cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size)
    throw InputError(cfg.source + ": OPT needs num_attention_heads to divide hidden_size with one kv head per head");
  return cfg;
}

void init_ln(LayerNormImpl& ln) {
  if (ln.weight.defined()) ln.weight.normal_(1.0, 0.1);
  if (ln.bias.defined()) ln.bias.normal_(0.0, 0.1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Block

OPTBlock::OPTBlock(const ModelConfig& cfg)
    : n_heads_(cfg.num_attention_heads), head_dim_(cfg.head_dim), pre_ln_(cfg.do_layer_norm_before),
      act_(cfg.hidden_act) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size;
  const bool b = cfg.attention_bias;
  self_attn = register_module("self_attn", std::make_shared<torch::nn::Module>());
  // add_linear order == OPTLinear
  add_linear(*self_attn, "q_proj", "self_attn.q_proj", std::make_shared<LinearImpl>(C, C, b));
  add_linear(*self_attn, "k_proj", "self_attn.k_proj", std::make_shared<LinearImpl>(C, C, b));
  add_linear(*self_attn, "v_proj", "self_attn.v_proj", std::make_shared<LinearImpl>(C, C, b));
  add_linear(*self_attn, "out_proj", "self_attn.out_proj", std::make_shared<LinearImpl>(C, C, b));
  self_attn_layer_norm = register_module(
      "self_attn_layer_norm", std::make_shared<LayerNormImpl>(C, cfg.rms_norm_eps, cfg.layer_norm_elementwise_affine));
  add_linear(*this, "fc1", "fc1", std::make_shared<LinearImpl>(C, F, b));
  add_linear(*this, "fc2", "fc2", std::make_shared<LinearImpl>(F, C, b));
  final_layer_norm = register_module(
      "final_layer_norm", std::make_shared<LayerNormImpl>(C, cfg.rms_norm_eps, cfg.layer_norm_elementwise_affine));
}

torch::Tensor OPTBlock::forward(const torch::Tensor& hidden, const torch::Tensor& attn_bias) {
  const int64_t B = hidden.size(0), T = hidden.size(1);
  auto x = pre_ln_ ? self_attn_layer_norm->forward(hidden) : hidden;
  auto q = lin(kQ).forward(x) * std::pow(static_cast<double>(head_dim_), -0.5);
  q = q.view({B, T, n_heads_, head_dim_}).transpose(1, 2);                             // (B, H, T, D)
  auto k = lin(kK).forward(x).view({B, T, n_heads_, head_dim_}).transpose(1, 2);  // (B, H, T, D)
  auto v = lin(kV).forward(x).view({B, T, n_heads_, head_dim_}).transpose(1, 2);  // (B, H, T, D)
  auto a = attend(q, k, v, attn_bias).transpose(1, 2).reshape({B, T, n_heads_ * head_dim_});  // (B, T, C)
  auto h = hidden + lin(kOut).forward(a);
  if (!pre_ln_) h = self_attn_layer_norm->forward(h);
  auto y = pre_ln_ ? final_layer_norm->forward(h) : h;
  h = h + lin(kFc2).forward(activation(act_, lin(kFc1).forward(y)));
  if (!pre_ln_) h = final_layer_norm->forward(h);
  return h;
}

torch::Tensor OPTBlock::run(const torch::Tensor& hidden, const BlockContext& ctx) {
  return forward(hidden, ctx.attn_bias);
}

void OPTBlock::reset_parameters() {
  torch::NoGradGuard ng;
  for (const auto& [n, m] : linears()) {
    m->weight.normal_(0.0, 0.02);
    if (m->bias.defined()) m->bias.normal_(0.0, 0.02);
  }
  init_ln(*self_attn_layer_norm);
  init_ln(*final_layer_norm);
}

// ---------------------------------------------------------------------------------------------
// Decoder

OPTDecoderImpl::OPTDecoderImpl(const ModelConfig& cfg) {
  const int64_t C = cfg.hidden_size, E = cfg.word_embed_proj_dim;
  embed_tokens = register_module("embed_tokens", std::make_shared<EmbeddingTableImpl>(cfg.vocab_size, E));
  // transformers' OPTLearnedPositionalEmbedding keeps 2 extra rows (offset 2).
  embed_positions = register_module("embed_positions",
                                    std::make_shared<EmbeddingTableImpl>(cfg.max_position_embeddings + 2, C));
  if (cfg.final_layer_norm)
    final_layer_norm = register_module(
        "final_layer_norm", std::make_shared<LayerNormImpl>(C, cfg.rms_norm_eps, cfg.layer_norm_elementwise_affine));
  if (E != C) {
    project_out = register_module("project_out", std::make_shared<LinearImpl>(C, E, false));
    project_in = register_module("project_in", std::make_shared<LinearImpl>(E, C, false));
  }
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto b = std::make_shared<OPTBlock>(cfg);
    layers->push_back(b);
    blocks.push_back(b);
  }
}

OPTModelImpl::OPTModelImpl(const ModelConfig& cfg) {
  decoder = register_module("decoder", std::make_shared<OPTDecoderImpl>(cfg));
}

// ---------------------------------------------------------------------------------------------
// Model

OPTPreTrainedModel::OPTPreTrainedModel(const ModelConfig& cfg) : cfg_(checked_opt(cfg)) {
  model = register_module("model", std::make_shared<OPTModelImpl>(cfg));
}

OPTBlockPtr OPTPreTrainedModel::block(int64_t i) const {
  if (i < 0 || i >= num_blocks())
    throw Error("block index " + std::to_string(i) + " out of range [0, " + std::to_string(num_blocks()) + ")");
  return model->decoder->blocks[static_cast<size_t>(i)];
}

std::string OPTPreTrainedModel::block_prefix(int64_t i) const { return family_block_prefix(cfg_, i); }

BlockContext OPTPreTrainedModel::context(const torch::Tensor& ids, const torch::Tensor& attention_mask) {
  if (ids.dim() != 2) throw InputError(cfg_.architecture + ": ids must be (B, T), got " + std::to_string(ids.dim()) + " dims");
  BlockContext ctx;
  ctx.batch = ids.size(0);
  ctx.length = ids.size(1);
  ctx.ids = ids;
  const int64_t T = ctx.length;
  if (T > cfg_.max_position_embeddings)
    throw InputError(cfg_.architecture + ": sequence of " + std::to_string(T) +
                     " tokens exceeds max_position_embeddings " + std::to_string(cfg_.max_position_embeddings));
  auto lopts = torch::TensorOptions().dtype(torch::kLong).device(ids.device());
  torch::Tensor m;  // (B, T) int64
  if (attention_mask.defined()) {
    if (attention_mask.sizes() != ids.sizes())
      throw InputError(cfg_.architecture + ": attention_mask must have the shape of ids (B, T)");
    m = attention_mask.ne(0).to(torch::kLong);
    ctx.attention_mask = m;
  } else {
    m = torch::ones({ctx.batch, T}, lopts);
  }
  // Pads get position -1 (+ offset 2 = row 1), as transformers does.
  ctx.positions = m.cumsum(1) * m - 1;  // (B, T)
  auto causal = torch::ones({T, T}, lopts.dtype(torch::kBool)).tril();       // (T, T)
  auto allowed = causal.unsqueeze(0).logical_and(m.to(torch::kBool).unsqueeze(1));  // (B, T, T)
  auto bias = torch::zeros({ctx.batch, 1, T, T}, torch::TensorOptions().dtype(torch::kFloat).device(ids.device()));
  ctx.attn_bias = bias.masked_fill_(allowed.logical_not().unsqueeze(1), std::numeric_limits<float>::lowest());
  return ctx;
}

torch::Tensor OPTPreTrainedModel::embed(const torch::Tensor& ids, const BlockContext& ctx) {
  auto& d = *model->decoder;
  auto tok = d.embed_tokens->forward(ids);  // (B, T, E)
  if (d.project_in) tok = d.project_in->forward(tok);  // (B, T, C)
  return tok + d.embed_positions->forward(ctx.positions + 2);
}

torch::Tensor OPTPreTrainedModel::decoder_tail(const torch::Tensor& hidden) {
  auto& d = *model->decoder;
  auto h = d.final_layer_norm ? d.final_layer_norm->forward(hidden) : hidden;
  if (d.project_out) h = d.project_out->forward(h);
  return h;  // (B, T, E)
}

void OPTPreTrainedModel::reset_parameters() {
  torch::NoGradGuard ng;
  auto& d = *model->decoder;
  d.embed_tokens->weight.normal_(0.0, 0.02);
  d.embed_positions->weight.normal_(0.0, 0.02);
  if (d.project_in) d.project_in->weight.normal_(0.0, 0.02);
  if (d.project_out) d.project_out->weight.normal_(0.0, 0.02);
  for (auto& b : d.blocks) b->reset_parameters();
  if (d.final_layer_norm) init_ln(*d.final_layer_norm);
}

OPTForCausalLM::OPTForCausalLM(const ModelConfig& cfg) : OPTPreTrainedModel(cfg) {
  if (!cfg.tie_word_embeddings)
    lm_head_ = register_module("lm_head",
                               std::make_shared<LinearImpl>(cfg.word_embed_proj_dim, cfg.vocab_size, false));
}

torch::Tensor OPTForCausalLM::head(const torch::Tensor& hidden, const BlockContext& ctx) {
  auto h = decoder_tail(hidden);  // (B, T, E)
  if (lm_head_) return lm_head_->forward(h);
  return torch::linear(h, model->decoder->embed_tokens->weight);  // (B, T, V)
}

void OPTForCausalLM::reset_parameters() {
  OPTPreTrainedModel::reset_parameters();
  torch::NoGradGuard ng;
  if (lm_head_) lm_head_->weight.normal_(0.0, 0.02);
}

OPTForSequenceClassification::OPTForSequenceClassification(const ModelConfig& cfg) : OPTPreTrainedModel(cfg) {
  if (cfg.num_labels <= 0)
    throw InputError(cfg.source + ": OPTForSequenceClassification needs num_labels > 0 (or id2label)");
  score = register_module("score", std::make_shared<LinearImpl>(cfg.word_embed_proj_dim, cfg.num_labels, false));
}

torch::Tensor OPTForSequenceClassification::last_token_index(const torch::Tensor& ids,
                                                             const torch::Tensor& attention_mask,
                                                             int64_t pad_token_id) {
  const int64_t T = ids.size(1);
  auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(ids.device()));  // (T)
  if (pad_token_id >= 0) return (pos * ids.ne(pad_token_id).to(torch::kLong)).argmax(-1);
  if (attention_mask.defined()) return (pos * attention_mask.ne(0).to(torch::kLong)).argmax(-1);
  return torch::full({ids.size(0)}, T - 1, pos.options());
}

torch::Tensor OPTForSequenceClassification::head(const torch::Tensor& hidden, const BlockContext& ctx) {
  auto h = decoder_tail(hidden);  // (B, T, E)
  auto idx = last_token_index(ctx.ids, ctx.attention_mask, cfg_.pad_token_id);  // (B)
  auto rows = torch::arange(h.size(0), idx.options());
  return score->forward(h.index({rows, idx}));  // (B, num_labels)
}

void OPTForSequenceClassification::reset_parameters() {
  OPTPreTrainedModel::reset_parameters();
  torch::NoGradGuard ng;
  score->weight.normal_(0.0, 0.02);
}

}  // namespace mpqat::model
