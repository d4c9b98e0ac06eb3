#include "mpqat/quant/gguf_layout.h"

#include <filesystem>
#include <utility>
#include <variant>

#include <fmt/format.h>

#include "mpqat/quant/gguf_kquants.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::quant {

using io::GgmlType;

namespace {
constexpr int64_t kBlock = 32;  // weights per block of Q4_0 ... Q8_0
}  // namespace

void check_gguf_types(const GgufTypes& t) {
  auto plain = [](GgmlType x) { return x == GgmlType::F32 || x == GgmlType::F16 || x == GgmlType::Q8_0; };
  if (!plain(t.float_type) && !is_k_quant(t.float_type))
    throw InputError(std::string("export gguf: float type ") + io::ggml_type_traits(t.float_type).name +
                     " (f32, f16, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k accepted)");
  if (!plain(t.embedding_type) && t.embedding_type != GgmlType::Q6_K)
    throw InputError(std::string("export gguf: embedding type ") + io::ggml_type_traits(t.embedding_type).name +
                     " (f32, f16, q8_0, q6_k accepted)");
  if (!plain(t.fallback))
    throw InputError(std::string("export gguf: fallback type ") + io::ggml_type_traits(t.fallback).name +
                     " (f32, f16, q8_0 accepted)");
}

std::string gguf_tensor_name(const std::string& hf) {
  static const std::vector<std::pair<std::string, std::string>> block = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string pre = "model.layers.";
  if (!util::starts_with(hf, pre)) return "";
  const auto dot = hf.find('.', pre.size());
  const std::string idx = hf.substr(pre.size(), dot - pre.size());
  const std::string rest = hf.substr(dot + 1);
  for (const auto& [from, to] : block)
    if (rest == from) return "blk." + idx + "." + to;
  return "";
}

std::vector<int64_t> gguf_rope_row_order(int64_t heads, int64_t head_dim) {
  // Hugging Face: [head][half][i]; GGUF: [head][i][half] (convert_hf_to_gguf.py's permute).
  std::vector<int64_t> rows;
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) rows.push_back(h * head_dim + j * half + i);
  return rows;
}

std::vector<int64_t> gguf_row_order(const model::ModelConfig& cfg, const model::HfTensor& t) {
  if (util::ends_with(t.linear, "self_attn.q_proj")) return gguf_rope_row_order(cfg.num_attention_heads, cfg.head_dim);
  if (util::ends_with(t.linear, "self_attn.k_proj")) return gguf_rope_row_order(cfg.num_key_value_heads, cfg.head_dim);
  return {};
}

void check_gguf_supported(const model::ModelConfig& cfg, const std::string& dir) {
  if (cfg.family != model::Family::Llama)
    throw NotImplementedError("export gguf of '" + dir + "': the " + cfg.architecture +
                              " architecture (the llama family is supported: LlamaForCausalLM, MistralForCausalLM)");
  if (cfg.model_type == "qwen2")
    throw NotImplementedError("export gguf of '" + dir + "': Qwen2 (llama.cpp's qwen2 architecture with q/k/v biases)");
  if (cfg.attention_bias || cfg.mlp_bias || cfg.qkv_bias || cfg.o_proj_bias)
    throw NotImplementedError("export gguf of '" + dir + "': linear biases (attention_bias / mlp_bias)");
  if (cfg.head_dim % 2 != 0) throw InputError("'" + dir + "/config.json': head_dim " + std::to_string(cfg.head_dim) + " is odd");
}

GgmlType gguf_float_tensor_type(const model::HfTensor& t, const GgufTypes& types) {
  if (t.shape.size() == 1) return GgmlType::F32;  // norms: llama.cpp computes them in F32
  const int64_t n = t.shape[1];
  const GgmlType want = t.linear.empty() ? types.embedding_type : types.float_type;
  if (is_k_quant(want) && n % kKQuantBlock != 0) return n % kBlock == 0 ? GgmlType::Q8_0 : GgmlType::F16;
  if (want == GgmlType::Q8_0 && n % kBlock != 0) return GgmlType::F16;
  return want;
}

std::vector<io::GgufKV> gguf_metadata(const model::ModelConfig& cfg, const std::string& name, bool quantized,
                                      const std::vector<io::GgufKV>& vocab_in, const std::string& dir) {
  std::vector<io::GgufKV> kv;
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  kv.push_back({"general.architecture", std::string("llama")});
  kv.push_back({"general.name", name.empty() ? std::string("model") : name});
  if (quantized) kv.push_back({"general.quantization_version", uint32_t{2}});
  kv.push_back({"llama.context_length", u32(cfg.max_position_embeddings)});
  kv.push_back({"llama.embedding_length", u32(cfg.hidden_size)});
  kv.push_back({"llama.block_count", u32(cfg.num_hidden_layers)});
  kv.push_back({"llama.feed_forward_length", u32(cfg.intermediate_size)});
  kv.push_back({"llama.attention.head_count", u32(cfg.num_attention_heads)});
  kv.push_back({"llama.attention.head_count_kv", u32(cfg.num_key_value_heads)});
  kv.push_back({"llama.attention.key_length", u32(cfg.head_dim)});
  kv.push_back({"llama.attention.value_length", u32(cfg.head_dim)});
  kv.push_back({"llama.rope.dimension_count", u32(cfg.head_dim)});
  kv.push_back({"llama.rope.freq_base", static_cast<float>(cfg.rope_theta)});
  if (cfg.rope_scaling.kind == model::RopeScaling::Kind::Linear) {
    kv.push_back({"llama.rope.scaling.type", std::string("linear")});
    kv.push_back({"llama.rope.scaling.factor", static_cast<float>(cfg.rope_scaling.factor)});
  }
  kv.push_back({"llama.attention.layer_norm_rms_epsilon", static_cast<float>(cfg.rms_norm_eps)});
  kv.push_back({"llama.vocab_size", u32(cfg.vocab_size)});
  kv.push_back({"mpqat.source", std::string(quantized ? "packed mixed-precision checkpoint" : "float checkpoint")});

  // The vocabulary padded to the embedding's rows.
  std::vector<io::GgufKV> vocab = vocab_in;
  std::vector<std::string>* tokens = nullptr;
  std::vector<float>* scores = nullptr;
  std::vector<int32_t>* types = nullptr;
  for (auto& v : vocab) {
    if (v.key == "tokenizer.ggml.tokens") tokens = std::get_if<std::vector<std::string>>(&v.value);
    if (v.key == "tokenizer.ggml.scores") scores = std::get_if<std::vector<float>>(&v.value);
    if (v.key == "tokenizer.ggml.token_type") types = std::get_if<std::vector<int32_t>>(&v.value);
  }
  if (!tokens) throw Error("export gguf: the vocabulary metadata has no tokenizer.ggml.tokens");
  const int64_t n = static_cast<int64_t>(tokens->size()), rows = cfg.vocab_size;
  if (n > rows)
    throw InputError(fmt::format("export gguf of '{}': the tokenizer has {} tokens, the embedding only {} rows "
                                 "(config.json vocab_size); llama.cpp needs a row per token",
                                 dir, n, rows));
  for (int64_t i = n; i < rows; ++i) {
    tokens->push_back(fmt::format("[PAD{}]", i));
    if (scores) scores->push_back(0.0f);
    if (types) types->push_back(5);  // unused
  }
  for (auto& v : vocab) kv.push_back(std::move(v));
  return kv;
}

std::string gguf_default_name(const std::string& folder_name, const std::string& source_model) {
  // Absolute and normal, so "." / "dir/" / "../dir" name the folder itself.
  const std::string src = source_model.empty() ? folder_name : source_model;
  auto p = std::filesystem::absolute(std::filesystem::path(src)).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() ? std::string("model") : name;
}

std::optional<io::GgufTensorSpec> gguf_rope_freqs_spec(const model::ModelConfig& cfg) {
  if (cfg.rope_scaling.kind != model::RopeScaling::Kind::Llama3) return std::nullopt;
  return io::GgufTensorSpec{"rope_freqs.weight", {cfg.head_dim / 2}, GgmlType::F32};
}

std::vector<io::GgufTensorSpec> gguf_tensor_specs(const model::ModelConfig& cfg,
                                                  const std::function<GgmlType(const model::HfTensor&)>& type_of) {
  std::vector<io::GgufTensorSpec> specs;
  if (const auto rf = gguf_rope_freqs_spec(cfg)) specs.push_back(*rf);
  for (const auto& t : model::llama_tensors(cfg)) specs.push_back(gguf_tensor_spec(t, type_of(t)));
  return specs;
}

io::GgufTensorSpec gguf_tensor_spec(const model::HfTensor& t, GgmlType type) {
  io::GgufTensorSpec s;
  s.name = gguf_tensor_name(t.name);
  if (s.name.empty()) throw Error("export gguf: no llama.cpp name for tensor '" + t.name + "'");
  s.type = type;
  if (t.shape.size() == 1) s.ne = {t.shape[0]};
  else s.ne = {t.shape[1], t.shape[0]};
  return s;
}

}  // namespace mpqat::quant
