// Typed view of a Hugging Face config.json. No torch here: the allocator, recipes and CLI
// read model shapes without pulling in LibTorch.
//
// Supported (built by model/llama.h): LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM.
// Mistral's sliding_window is recorded but not applied: the model refuses sequences longer
// than the window (NotImplementedError), so every accepted forward is exact.
// Built by model/opt.h: OPTForCausalLM, OPTForSequenceClassification; by model/bert.h:
// BertForSequenceClassification. Parsed but not built: BertForMaskedLM, BertModel.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mpqat::model {

enum class Family { Llama, OPT, BERT };

struct RopeScaling {
  enum class Kind { None, Linear, Llama3 };
  Kind kind = Kind::None;
  double factor = 1.0;
  // llama3 only
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "architectures"[0], e.g. "LlamaForCausalLM"
  std::string model_type;    // "llama", "mistral", "qwen2", "opt", "bert"
  Family family = Family::Llama;

  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // OPT: ffn_dim
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // default: num_attention_heads
  int64_t head_dim = 0;             // default: hidden_size / num_attention_heads
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;  // BERT/OPT: layer_norm_eps (1e-12 / 1e-5)
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // config key (Llama: bias on q, k, v and o)
  bool mlp_bias = false;
  // Derived from the architecture: Qwen2 always has q/k/v bias and no o_proj bias.
  bool qkv_bias = false;
  bool o_proj_bias = false;
  std::optional<int64_t> sliding_window;  // Mistral / Qwen2 (only when use_sliding_window)
  std::string hidden_act = "silu";
  std::string torch_dtype = "float32";
  int64_t bos_token_id = -1;
  int64_t eos_token_id = -1;           // first of eos_token_ids
  std::vector<int64_t> eos_token_ids;  // config may give a list (Llama-3)

  int64_t pad_token_id = -1;

  // *ForSequenceClassification: len(id2label), else num_labels, else 2 (transformers' default);
  // 0 for other architectures.
  int64_t num_labels = 0;

  // OPT
  int64_t word_embed_proj_dim = 0;           // embedding width (default hidden_size)
  bool do_layer_norm_before = true;          // pre-LN (false only for opt-350m)
  bool layer_norm_elementwise_affine = true;
  bool final_layer_norm = true;              // do_layer_norm_before && !_remove_final_layer_norm
  // BERT
  int64_t type_vocab_size = 2;
  std::string position_embedding_type = "absolute";

  std::string source = "config.json";  // where it was read from, for messages

  int64_t q_dim() const { return num_attention_heads * head_dim; }
  int64_t kv_dim() const { return num_key_value_heads * head_dim; }
  bool is_sequence_classifier() const;
  // Parameter count of the transformer (embeddings + blocks + norm + untied head).
  int64_t num_parameters() const;
};

// Elementwise activations the models implement, by Hugging Face name: "relu", "gelu" (exact
// erf), "gelu_new" / "gelu_pytorch_tanh" (tanh approximation), "silu" / "swish".
bool is_supported_activation(const std::string& name);

// Architectures whose config we parse (BertForMaskedLM and BertModel are parsed, not built).
const std::vector<std::string>& supported_architectures();

// Throws InputError naming `source` and the key for a missing or wrong-typed required key,
// an inconsistent shape (heads not dividing hidden) or an unsupported architecture.
ModelConfig parse_model_config(const nlohmann::json& j, const std::string& source = "config.json");
// Reads `path` (a config.json file or a folder holding one).
ModelConfig load_model_config(const std::string& path_or_dir);
// A calibration / training sequence length for `cfg`: `requested` when it fits the model's
// max_position_embeddings; above it, an InputError "<what> N exceeds the model's
// max_position_embeddings M" when the user gave it (`given`), else the maximum (the caller says
// so if it wants to). The one rule of mpqat train, quantize, sensitivity and run.
int64_t fit_seqlen(const ModelConfig& cfg, int64_t requested, bool given, const std::string& what);

// HF-style config.json (keys as transformers writes them for the family).
nlohmann::json model_config_to_json(const ModelConfig& cfg);
void save_model_config(const ModelConfig& cfg, const std::string& path);

}  // namespace mpqat::model
