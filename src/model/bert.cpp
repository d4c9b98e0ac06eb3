#include "mpqat/model/bert.h"

#include <cmath>
#include <limits>

#include "mpqat/util/error.h"

namespace mpqat::model {

namespace {

enum BertLinear : size_t { kQuery, kKey, kValue, kAttnOut, kInter, kOut };

const ModelConfig& checked_bert(const ModelConfig& cfg) {
  if (cfg.family != Family::BERT)
    throw InputError(cfg.source + ": architecture '" + cfg.architecture + "' is not a BERT model");
  if (cfg.architecture != "BertForSequenceClassification")
    throw NotImplementedError(cfg.architecture + " (" + cfg.source +
                              "; the BERT architecture built is BertForSequenceClassification)");
  if (cfg.position_embedding_type != "absolute")
    throw NotImplementedError("BERT position_embedding_type '" + cfg.position_embedding_type + "' (" +
                              cfg.source + "; accepted: absolute)");
  if (cfg.num_key_value_heads != cfg.num_attention_heads || cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size)
    throw InputError(cfg.source + ": BERT needs num_attention_heads to divide hidden_size with one kv head per head");
  if (cfg.num_labels <= 0)
    throw InputError(cfg.source + ": BertForSequenceClassification needs num_labels > 0 (or id2label)");
  return cfg;
}

void init_ln(LayerNormImpl& ln) {
  ln.weight.normal_(1.0, 0.1);
  ln.bias.normal_(0.0, 0.1);
}

}  // namespace

BertBlock::BertBlock(const ModelConfig& cfg)
    : n_heads_(cfg.num_attention_heads), head_dim_(cfg.head_dim), act_(cfg.hidden_act) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size;
  attention = register_module("attention", std::make_shared<torch::nn::Module>());
  attention_self = attention->register_module("self", std::make_shared<torch::nn::Module>());
  attention_output = attention->register_module("output", std::make_shared<torch::nn::Module>());
  intermediate = register_module("intermediate", std::make_shared<torch::nn::Module>());
  output = register_module("output", std::make_shared<torch::nn::Module>());
  // add_linear order == BertLinear
  add_linear(*attention_self, "query", "attention.self.query", std::make_shared<LinearImpl>(C, C, true));
  add_linear(*attention_self, "key", "attention.self.key", std::make_shared<LinearImpl>(C, C, true));
  add_linear(*attention_self, "value", "attention.self.value", std::make_shared<LinearImpl>(C, C, true));
  add_linear(*attention_output, "dense", "attention.output.dense", std::make_shared<LinearImpl>(C, C, true));
  add_linear(*intermediate, "dense", "intermediate.dense", std::make_shared<LinearImpl>(C, F, true));
  add_linear(*output, "dense", "output.dense", std::make_shared<LinearImpl>(F, C, true));
  attention_layer_norm =
      attention_output->register_module("LayerNorm", std::make_shared<LayerNormImpl>(C, cfg.rms_norm_eps));
  output_layer_norm = output->register_module("LayerNorm", std::make_shared<LayerNormImpl>(C, cfg.rms_norm_eps));
}

torch::Tensor BertBlock::forward(const torch::Tensor& hidden, const torch::Tensor& attn_bias) {
  const int64_t B = hidden.size(0), T = hidden.size(1);
  auto heads = [&](const torch::Tensor& t) { return t.view({B, T, n_heads_, head_dim_}).transpose(1, 2); };
  auto q = heads(lin(kQuery).forward(hidden)) * std::pow(static_cast<double>(head_dim_), -0.5);  // (B, H, T, D)
  auto k = heads(lin(kKey).forward(hidden));    // (B, H, T, D)
  auto v = heads(lin(kValue).forward(hidden));  // (B, H, T, D)
  auto a = attend(q, k, v, attn_bias).transpose(1, 2).reshape({B, T, n_heads_ * head_dim_});  // (B, T, C)
  auto h = attention_layer_norm->forward(lin(kAttnOut).forward(a) + hidden);
  auto f = activation(act_, lin(kInter).forward(h));  // (B, T, F)
  return output_layer_norm->forward(lin(kOut).forward(f) + h);
}

torch::Tensor BertBlock::run(const torch::Tensor& hidden, const BlockContext& ctx) {
  return forward(hidden, ctx.attn_bias);
}

void BertBlock::reset_parameters() {
  torch::NoGradGuard ng;
  for (const auto& [n, m] : linears()) {
    m->weight.normal_(0.0, 0.02);
    m->bias.normal_(0.0, 0.02);
  }
  init_ln(*attention_layer_norm);
  init_ln(*output_layer_norm);
}

BertEmbeddingsImpl::BertEmbeddingsImpl(const ModelConfig& cfg) {
  const int64_t C = cfg.hidden_size;
  word_embeddings = register_module("word_embeddings", std::make_shared<EmbeddingTableImpl>(cfg.vocab_size, C));
  position_embeddings =
      register_module("position_embeddings", std::make_shared<EmbeddingTableImpl>(cfg.max_position_embeddings, C));
  token_type_embeddings =
      register_module("token_type_embeddings", std::make_shared<EmbeddingTableImpl>(cfg.type_vocab_size, C));
  layer_norm = register_module("LayerNorm", std::make_shared<LayerNormImpl>(C, cfg.rms_norm_eps));
}

BertModelImpl::BertModelImpl(const ModelConfig& cfg) {
  embeddings = register_module("embeddings", std::make_shared<BertEmbeddingsImpl>(cfg));
  encoder = register_module("encoder", std::make_shared<torch::nn::Module>());
  layer = encoder->register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto b = std::make_shared<BertBlock>(cfg);
    layer->push_back(b);
    blocks.push_back(b);
  }
  pooler = register_module("pooler", std::make_shared<torch::nn::Module>());
  pooler_dense = pooler->register_module("dense", std::make_shared<LinearImpl>(cfg.hidden_size, cfg.hidden_size, true));
}

BertForSequenceClassification::BertForSequenceClassification(const ModelConfig& cfg) : cfg_(checked_bert(cfg)) {
  bert = register_module("bert", std::make_shared<BertModelImpl>(cfg));
  classifier = register_module("classifier", std::make_shared<LinearImpl>(cfg.hidden_size, cfg.num_labels, true));
}

BertBlockPtr BertForSequenceClassification::block(int64_t i) const {
  if (i < 0 || i >= num_blocks())
    throw Error("block index " + std::to_string(i) + " out of range [0, " + std::to_string(num_blocks()) + ")");
  return bert->blocks[static_cast<size_t>(i)];
}

std::string BertForSequenceClassification::block_prefix(int64_t i) const { return family_block_prefix(cfg_, i); }

BlockContext BertForSequenceClassification::context(const torch::Tensor& ids, const torch::Tensor& attention_mask) {
  if (ids.dim() != 2) throw InputError(cfg_.architecture + ": ids must be (B, T), got " + std::to_string(ids.dim()) + " dims");
  BlockContext ctx;
  ctx.batch = ids.size(0);
  ctx.length = ids.size(1);
  ctx.ids = ids;
  if (ctx.length > cfg_.max_position_embeddings)
    throw InputError(cfg_.architecture + ": sequence of " + std::to_string(ctx.length) +
                     " tokens exceeds max_position_embeddings " + std::to_string(cfg_.max_position_embeddings));
  auto lopts = torch::TensorOptions().dtype(torch::kLong).device(ids.device());
  ctx.positions = torch::arange(ctx.length, lopts).unsqueeze(0).expand({ctx.batch, ctx.length});  // (B, T)
  if (attention_mask.defined()) {
    if (attention_mask.sizes() != ids.sizes())
      throw InputError(cfg_.architecture + ": attention_mask must have the shape of ids (B, T)");
    ctx.attention_mask = attention_mask.ne(0).to(torch::kLong);
    auto bias = torch::zeros({ctx.batch, 1, 1, ctx.length},
                             torch::TensorOptions().dtype(torch::kFloat).device(ids.device()));
    ctx.attn_bias = bias.masked_fill_(attention_mask.eq(0).view({ctx.batch, 1, 1, ctx.length}),
                                      std::numeric_limits<float>::lowest());
  }
  return ctx;
}

torch::Tensor BertForSequenceClassification::embed(const torch::Tensor& ids, const BlockContext& ctx) {
  auto& e = *bert->embeddings;
  auto h = e.word_embeddings->forward(ids) + e.token_type_embeddings->forward(torch::zeros_like(ids));
  h = h + e.position_embeddings->forward(ctx.positions);
  return e.layer_norm->forward(h);  // (B, T, C)
}

torch::Tensor BertForSequenceClassification::head(const torch::Tensor& hidden, const BlockContext& ctx) {
  auto first = hidden.select(1, 0);  // (B, C)
  auto pooled = torch::tanh(bert->pooler_dense->forward(first));
  return classifier->forward(pooled);  // (B, num_labels)
}

void BertForSequenceClassification::reset_parameters() {
  torch::NoGradGuard ng;
  auto& e = *bert->embeddings;
  e.word_embeddings->weight.normal_(0.0, 0.02);
  e.position_embeddings->weight.normal_(0.0, 0.02);
  e.token_type_embeddings->weight.normal_(0.0, 0.02);
  init_ln(*e.layer_norm);
  for (auto& b : bert->blocks) b->reset_parameters();
  bert->pooler_dense->weight.normal_(0.0, 0.02);
  bert->pooler_dense->bias.normal_(0.0, 0.02);
  classifier->weight.normal_(0.0, 0.02);
  classifier->bias.normal_(0.0, 0.02);
}

}  // namespace mpqat::model
