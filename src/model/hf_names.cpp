#include "mpqat/model/hf_names.h"

#include "mpqat/util/error.h"

namespace mpqat::model {

std::vector<std::string> family_block_linear_names(const ModelConfig& cfg) {
  switch (cfg.family) {
    case Family::OPT:
      return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"};
    case Family::BERT:
      return {"attention.self.query",   "attention.self.key", "attention.self.value",
              "attention.output.dense", "intermediate.dense", "output.dense"};
    case Family::Llama:
    default:
      return {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  }
}

std::string family_block_prefix(const ModelConfig& cfg, int64_t i) {
  switch (cfg.family) {
    case Family::OPT: return "model.decoder.layers." + std::to_string(i) + ".";
    case Family::BERT: return "bert.encoder.layer." + std::to_string(i) + ".";
    case Family::Llama:
    default: return "model.layers." + std::to_string(i) + ".";
  }
}

std::pair<int64_t, int64_t> block_linear_shape(const ModelConfig& cfg, const std::string& name) {
  const int64_t C = cfg.hidden_size, F = cfg.intermediate_size;
  if (cfg.family == Family::OPT) {
    if (name == "self_attn.q_proj" || name == "self_attn.k_proj" || name == "self_attn.v_proj" ||
        name == "self_attn.out_proj")
      return {C, C};
    if (name == "fc1") return {F, C};
    if (name == "fc2") return {C, F};
    throw InputError("unknown OPT block linear '" + name +
                     "' (accepted: self_attn.{q,k,v,out}_proj, fc1, fc2)");
  }
  if (cfg.family == Family::BERT) {
    if (name == "attention.self.query" || name == "attention.self.key" ||
        name == "attention.self.value" || name == "attention.output.dense")
      return {C, C};
    if (name == "intermediate.dense") return {F, C};
    if (name == "output.dense") return {C, F};
    throw InputError("unknown BERT block linear '" + name +
                     "' (accepted: attention.self.{query,key,value}, attention.output.dense, "
                     "intermediate.dense, output.dense)");
  }
  if (name == "self_attn.q_proj") return {cfg.q_dim(), C};
  if (name == "self_attn.k_proj" || name == "self_attn.v_proj") return {cfg.kv_dim(), C};
  if (name == "self_attn.o_proj") return {C, cfg.q_dim()};
  if (name == "mlp.gate_proj" || name == "mlp.up_proj") return {F, C};
  if (name == "mlp.down_proj") return {C, F};
  throw InputError("unknown block linear '" + name +
                   "' (accepted: self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj)");
}

bool llama_linear_has_bias(const ModelConfig& cfg, const std::string& rel) {
  if (rel == "self_attn.q_proj" || rel == "self_attn.k_proj" || rel == "self_attn.v_proj") return cfg.qkv_bias;
  if (rel == "self_attn.o_proj") return cfg.o_proj_bias;
  return cfg.mlp_bias;
}

std::vector<HfTensor> llama_tensors(const ModelConfig& cfg) {
  if (cfg.family != Family::Llama)
    throw InputError(cfg.source + ": the tensor list is built from config.json for Llama-family models only; " +
                     cfg.model_type + " lists come from the model's safetensors header");
  const int64_t C = cfg.hidden_size, V = cfg.vocab_size;
  std::vector<HfTensor> t;
  t.push_back({"model.embed_tokens.weight", {V, C}});
  t.push_back({"model.norm.weight", {C}});
  if (!cfg.tie_word_embeddings) t.push_back({"lm_head.weight", {V, C}});
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    const std::string p = family_block_prefix(cfg, i);
    for (const auto& rel : family_block_linear_names(cfg)) {
      const auto [o, in] = block_linear_shape(cfg, rel);
      t.push_back({p + rel + ".weight", {o, in}, p + rel, i, false});
      if (llama_linear_has_bias(cfg, rel)) t.push_back({p + rel + ".bias", {o}, p + rel, i, true});
    }
    t.push_back({p + "input_layernorm.weight", {C}, "", i});
    t.push_back({p + "post_attention_layernorm.weight", {C}, "", i});
  }
  return t;
}

}  // namespace mpqat::model
