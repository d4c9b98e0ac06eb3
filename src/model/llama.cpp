#include "mpqat/model/llama.h"

#include <cmath>

#include "mpqat/model/attention_observer.h"
#include "mpqat/util/error.h"

namespace mpqat::model {

// ---------------------------------------------------------------------------------------------
// Small modules

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::ones({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * torch::rsqrt(var + eps));
}

EmbeddingTableImpl::EmbeddingTableImpl(int64_t vocab, int64_t dim) {
  weight = register_parameter("weight", torch::empty({vocab, dim}));
}

torch::Tensor EmbeddingTableImpl::forward(const torch::Tensor& ids) {
  return torch::embedding(weight, ids);
}

// ---------------------------------------------------------------------------------------------
// RoPE

torch::Tensor rope_inv_freq(const ModelConfig& cfg) {
  const int64_t dim = cfg.head_dim;
  auto exps = torch::arange(0, dim, 2, torch::kLong).to(torch::kFloat) / static_cast<double>(dim);
  auto inv_freq = 1.0 / torch::pow(cfg.rope_theta, exps);  // (D/2) fp32
  const auto& rs = cfg.rope_scaling;
  if (rs.kind == RopeScaling::Kind::Linear) {
    inv_freq = inv_freq / rs.factor;
  } else if (rs.kind == RopeScaling::Kind::Llama3) {
    // Wavelengths longer than the original context are slowed down by `factor`, shorter than
    // old/high_freq_factor are kept, and the band in between is interpolated smoothly.
    const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
    const double low_freq_wavelen = old_ctx / rs.low_freq_factor;
    const double high_freq_wavelen = old_ctx / rs.high_freq_factor;
    auto wavelen = 2.0 * M_PI / inv_freq;
    auto llama = torch::where(wavelen > low_freq_wavelen, inv_freq / rs.factor, inv_freq);
    auto smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    auto smoothed = (1 - smooth) * llama / rs.factor + smooth * llama;
    auto is_medium = (wavelen >= high_freq_wavelen).logical_and(wavelen <= low_freq_wavelen);
    inv_freq = torch::where(is_medium, smoothed, llama);
  }
  return inv_freq.contiguous();
}

RotaryEmbedding::RotaryEmbedding(const ModelConfig& cfg) : inv_freq_(rope_inv_freq(cfg)) {}

void RotaryEmbedding::ensure(int64_t n, const torch::Device& device) {
  if (cos_.defined() && cos_.size(0) >= n && cos_.device() == device) return;
  const int64_t have = cos_.defined() ? cos_.size(0) : 0;
  n = std::max(n, have);
  auto pos = torch::arange(n, torch::kLong).to(torch::kFloat);     // (N)
  auto freqs = pos.unsqueeze(1) * inv_freq_.unsqueeze(0);           // (N, D/2) fp32 products
  auto emb = torch::cat({freqs, freqs}, -1);                        // (N, D)
  cos_ = emb.cos().to(device);
  sin_ = emb.sin().to(device);
}

std::pair<torch::Tensor, torch::Tensor> RotaryEmbedding::get(int64_t start, int64_t length,
                                                             const torch::Device& device) {
  ensure(start + length, device);
  return {cos_.narrow(0, start, length), sin_.narrow(0, start, length)};
}

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  return torch::cat({-x2, x1}, -1);
}

torch::Tensor apply_rotary(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  return x * cos + rotate_half(x) * sin;
}

// ---------------------------------------------------------------------------------------------
// Attention, MLP, block

LlamaAttentionImpl::LlamaAttentionImpl(const ModelConfig& cfg)
    : n_heads(cfg.num_attention_heads), n_kv_heads(cfg.num_key_value_heads), head_dim(cfg.head_dim) {
  const int64_t C = cfg.hidden_size;
  q_proj = register_module("q_proj", std::make_shared<LinearImpl>(C, cfg.q_dim(), cfg.qkv_bias));
  k_proj = register_module("k_proj", std::make_shared<LinearImpl>(C, cfg.kv_dim(), cfg.qkv_bias));
  v_proj = register_module("v_proj", std::make_shared<LinearImpl>(C, cfg.kv_dim(), cfg.qkv_bias));
  o_proj = register_module("o_proj", std::make_shared<LinearImpl>(cfg.q_dim(), C, cfg.o_proj_bias));
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos,
                                          const torch::Tensor& sin, LayerKV* cache) {
  const int64_t B = x.size(0), T = x.size(1);
  auto q = q_proj->forward(x).view({B, T, n_heads, head_dim}).transpose(1, 2);     // (B, H, T, D)
  auto k = k_proj->forward(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);  // (B, Hkv, T, D)
  auto v = v_proj->forward(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);  // (B, Hkv, T, D)
  q = apply_rotary(q, cos, sin);
  k = apply_rotary(k, cos, sin);
  int64_t past = 0;
  if (cache != nullptr) {
    past = cache->length();
    if (past > 0) {
      k = torch::cat({cache->k, k}, 2);
      v = torch::cat({cache->v, v}, 2);
    }
    cache->k = k;
    cache->v = v;
  }
  const int64_t n_rep = n_heads / n_kv_heads;
  if (n_rep > 1) {
    // query head h reads kv head h / n_rep (HF repeat_kv)
    k = k.repeat_interleave(n_rep, 1);  // (B, H, S, D)
    v = v.repeat_interleave(n_rep, 1);
  }
  // Scaling q (B, H, T, D) is cheaper than scaling the (B, H, T, S) scores.
  q = q * (1.0 / std::sqrt(static_cast<double>(head_dim)));
  // Queries go in chunks: chunk [t0, t1) only needs keys [0, past + t1), which skips most of
  // the masked upper triangle and bounds the scores buffer to (B, H, chunk, S).
  constexpr int64_t kChunk = 128;
  auto opts = torch::TensorOptions().dtype(torch::kLong).device(x.device());
  std::vector<torch::Tensor> outs;
  for (int64_t t0 = 0; t0 < T; t0 += kChunk) {
    const int64_t tc = std::min(kChunk, T - t0);
    const int64_t sc = past + t0 + tc;  // keys visible to the last query of the chunk
    auto kc = k.narrow(2, 0, sc), vc = v.narrow(2, 0, sc);
    auto scores = torch::matmul(q.narrow(2, t0, tc), kc.transpose(-2, -1));  // (B, H, tc, sc)
    if (tc > 1) {
      auto qpos = (torch::arange(tc, opts) + (past + t0)).unsqueeze(1);  // (tc, 1)
      auto kpos = torch::arange(sc, opts).unsqueeze(0);                  // (1, sc)
      scores.masked_fill_(kpos > qpos, -std::numeric_limits<float>::infinity());
    }
    auto probs = torch::softmax(scores.to(torch::kFloat), -1);
    if (const auto* obs = attention_observer()) (*obs)(probs);
    outs.push_back(torch::matmul(probs, vc));  // (B, H, tc, D)
  }
  auto out = outs.size() == 1 ? outs[0] : torch::cat(outs, 2);  // (B, H, T, D)
  out = out.transpose(1, 2).reshape({B, T, n_heads * head_dim});       // (B, T, H*D)
  return o_proj->forward(out);
}

LlamaMLPImpl::LlamaMLPImpl(const ModelConfig& cfg) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size;
  gate_proj = register_module("gate_proj", std::make_shared<LinearImpl>(C, F, cfg.mlp_bias));
  up_proj = register_module("up_proj", std::make_shared<LinearImpl>(C, F, cfg.mlp_bias));
  down_proj = register_module("down_proj", std::make_shared<LinearImpl>(F, C, cfg.mlp_bias));
}

torch::Tensor LlamaMLPImpl::forward(const torch::Tensor& x) {
  return down_proj->forward(torch::silu(gate_proj->forward(x)) * up_proj->forward(x));
}

LlamaBlock::LlamaBlock(const ModelConfig& cfg) {
  self_attn = register_module("self_attn", std::make_shared<LlamaAttentionImpl>(cfg));
  mlp = register_module("mlp", std::make_shared<LlamaMLPImpl>(cfg));
  input_layernorm =
      register_module("input_layernorm", std::make_shared<RMSNormImpl>(cfg.hidden_size, cfg.rms_norm_eps));
  post_attention_layernorm = register_module(
      "post_attention_layernorm", std::make_shared<RMSNormImpl>(cfg.hidden_size, cfg.rms_norm_eps));
}

torch::Tensor LlamaBlock::run(const torch::Tensor& hidden, const BlockContext& ctx) {
  return forward(hidden, ctx.cos, ctx.sin);
}

torch::Tensor LlamaBlock::forward(const torch::Tensor& hidden, const torch::Tensor& cos,
                                  const torch::Tensor& sin, LayerKV* cache) {
  auto h = hidden + self_attn->forward(input_layernorm->forward(hidden), cos, sin, cache);
  return h + mlp->forward(post_attention_layernorm->forward(h));
}

const std::vector<std::string>& block_linear_names() {
  static const std::vector<std::string> names = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  return names;
}

std::string block_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

std::vector<std::string> quantizable_linear_names(const ModelConfig& cfg) {
  std::vector<std::string> out;
  const auto names = family_block_linear_names(cfg);
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& n : names) out.push_back(family_block_prefix(cfg, i) + n);
  return out;
}

std::vector<std::pair<std::string, LinearPtr>> LlamaBlock::linears() const {
  return {{"self_attn.q_proj", self_attn->q_proj}, {"self_attn.k_proj", self_attn->k_proj},
          {"self_attn.v_proj", self_attn->v_proj}, {"self_attn.o_proj", self_attn->o_proj},
          {"mlp.gate_proj", mlp->gate_proj},       {"mlp.up_proj", mlp->up_proj},
          {"mlp.down_proj", mlp->down_proj}};
}

LinearPtr LlamaBlock::linear(const std::string& name) const {
  for (const auto& [n, m] : linears())
    if (n == name) return m;
  throw InputError("unknown block linear '" + name +
                   "' (accepted: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj)");
}

void LlamaBlock::set_linear(const std::string& name, LinearPtr module) {
  if (!module) throw Error("set_linear('" + name + "'): null module");
  auto old = linear(name);
  if (old->in_features() != module->in_features() || old->out_features() != module->out_features())
    throw Error("set_linear('" + name + "'): shape (" + std::to_string(module->out_features()) + ", " +
                std::to_string(module->in_features()) + ") does not match (" +
                std::to_string(old->out_features()) + ", " + std::to_string(old->in_features()) + ")");
  if (name == "self_attn.q_proj") self_attn->q_proj = self_attn->replace_module("q_proj", module);
  else if (name == "self_attn.k_proj") self_attn->k_proj = self_attn->replace_module("k_proj", module);
  else if (name == "self_attn.v_proj") self_attn->v_proj = self_attn->replace_module("v_proj", module);
  else if (name == "self_attn.o_proj") self_attn->o_proj = self_attn->replace_module("o_proj", module);
  else if (name == "mlp.gate_proj") mlp->gate_proj = mlp->replace_module("gate_proj", module);
  else if (name == "mlp.up_proj") mlp->up_proj = mlp->replace_module("up_proj", module);
  else if (name == "mlp.down_proj") mlp->down_proj = mlp->replace_module("down_proj", module);
}

void LlamaBlock::reset_parameters() {
  torch::NoGradGuard ng;
  for (const auto& [n, m] : linears()) {
    m->weight.normal_(0.0, 0.02);
    if (m->bias.defined()) m->bias.normal_(0.0, 0.02);
  }
  input_layernorm->weight.normal_(1.0, 0.1);
  post_attention_layernorm->weight.normal_(1.0, 0.1);
}

// ---------------------------------------------------------------------------------------------
// Whole model

LlamaModelImpl::LlamaModelImpl(const ModelConfig& cfg, bool with_blocks) {
  embed_tokens = register_module("embed_tokens", std::make_shared<EmbeddingTableImpl>(cfg.vocab_size, cfg.hidden_size));
  layers = register_module("layers", torch::nn::ModuleList());
  if (with_blocks) {
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
      auto b = std::make_shared<LlamaBlock>(cfg);
      layers->push_back(b);
      blocks.push_back(b);
    }
  }
  norm = register_module("norm", std::make_shared<RMSNormImpl>(cfg.hidden_size, cfg.rms_norm_eps));
}

namespace {
const ModelConfig& checked(const ModelConfig& cfg) {
  if (cfg.family == Family::OPT) throw NotImplementedError("OPT models");
  if (cfg.family == Family::BERT) throw NotImplementedError("BERT models");
  return cfg;
}
}  // namespace

LlamaForCausalLM::LlamaForCausalLM(const ModelConfig& cfg, bool with_blocks)
    : cfg_(checked(cfg)), rope_(cfg) {
  model = register_module("model", std::make_shared<LlamaModelImpl>(cfg, with_blocks));
  if (!cfg.tie_word_embeddings)
    lm_head_ = register_module("lm_head", std::make_shared<LinearImpl>(cfg.hidden_size, cfg.vocab_size, false));
}

void LlamaForCausalLM::check_length(int64_t total) const {
  if (cfg_.sliding_window && total > *cfg_.sliding_window)
    throw NotImplementedError("sliding-window attention (sequence of " + std::to_string(total) +
                              " tokens > sliding_window " + std::to_string(*cfg_.sliding_window) + ")");
}

torch::Tensor LlamaForCausalLM::embed(const torch::Tensor& ids) {
  if (ids.dim() != 2) throw Error("LlamaForCausalLM: ids must be (B, T)");
  return model->embed_tokens->forward(ids);
}

std::shared_ptr<LlamaBlock> LlamaForCausalLM::block(int64_t i) const {
  if (i < 0 || i >= num_blocks())
    throw Error("block index " + std::to_string(i) + " out of range [0, " + std::to_string(num_blocks()) + ")");
  return model->blocks[static_cast<size_t>(i)];
}

torch::Tensor LlamaForCausalLM::run_block(LlamaBlock& blk, const torch::Tensor& hidden, int64_t start_pos,
                                          LayerKV* cache) {
  check_length(start_pos + hidden.size(1));
  auto [cos, sin] = rope_.get(start_pos, hidden.size(1), hidden.device());
  return blk.forward(hidden, cos, sin, cache);
}

torch::Tensor LlamaForCausalLM::run_block(int64_t i, const torch::Tensor& hidden, int64_t start_pos,
                                          LayerKV* cache) {
  return run_block(*block(i), hidden, start_pos, cache);
}

torch::Tensor LlamaForCausalLM::head(const torch::Tensor& hidden) {
  auto h = model->norm->forward(hidden);
  if (lm_head_) return lm_head_->forward(h);
  return torch::linear(h, model->embed_tokens->weight);
}

BlockContext LlamaForCausalLM::context(const torch::Tensor& ids, const torch::Tensor& attention_mask) {
  if (ids.dim() != 2) throw InputError("LlamaForCausalLM: ids must be (B, T), got " + std::to_string(ids.dim()) + " dims");
  BlockContext ctx;
  ctx.batch = ids.size(0);
  ctx.length = ids.size(1);
  ctx.ids = ids;
  check_length(ctx.length);
  if (attention_mask.defined()) {
    if (attention_mask.sizes() != ids.sizes())
      throw InputError("LlamaForCausalLM: attention_mask must have the shape of ids (B, T)");
    auto m = attention_mask.ne(0).to(torch::kLong);  // (B, T)
    // Right padding <=> the mask never rises from 0 to 1 along a row.
    if (ctx.length > 1 && (m.narrow(1, 1, ctx.length - 1) > m.narrow(1, 0, ctx.length - 1)).any().item<bool>())
      throw NotImplementedError("Llama attention with left or inner padding (pad on the right)");
    ctx.attention_mask = m;
  }
  auto [cos, sin] = rope_.get(0, ctx.length, ids.device());
  ctx.cos = cos;
  ctx.sin = sin;
  return ctx;
}

torch::Tensor LlamaForCausalLM::run_block(int64_t i, const torch::Tensor& hidden, const BlockContext& ctx) {
  return block(i)->forward(hidden, ctx.cos, ctx.sin);
}

torch::Tensor LlamaForCausalLM::forward(const torch::Tensor& ids, KVCache* cache) {
  const int64_t T = ids.size(-1);
  const int64_t start = cache ? cache->length() : 0;
  check_length(start + T);
  if (cache && cache->layers.size() != model->blocks.size()) {
    if (start != 0) throw Error("KVCache does not match the model's block count");
    cache->layers.assign(model->blocks.size(), LayerKV{});
  }
  auto h = embed(ids);  // (B, T, C)
  auto [cos, sin] = rope_.get(start, T, h.device());
  for (size_t i = 0; i < model->blocks.size(); ++i)
    h = model->blocks[i]->forward(h, cos, sin, cache ? &cache->layers[i] : nullptr);
  return head(h);  // (B, T, V)
}

std::vector<std::pair<std::string, LinearPtr>> LlamaForCausalLM::named_linears() const {
  std::vector<std::pair<std::string, LinearPtr>> out;
  for (int64_t i = 0; i < num_blocks(); ++i)
    for (auto& [n, m] : model->blocks[static_cast<size_t>(i)]->linears())
      out.emplace_back(block_prefix(i) + n, m);
  return out;
}

void LlamaForCausalLM::reset_parameters() {
  torch::NoGradGuard ng;
  model->embed_tokens->weight.normal_(0.0, 0.02);
  for (auto& b : model->blocks) b->reset_parameters();
  model->norm->weight.normal_(1.0, 0.1);
  if (lm_head_) lm_head_->weight.normal_(0.0, 0.02);
}

}  // namespace mpqat::model
