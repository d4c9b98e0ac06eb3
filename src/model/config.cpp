#include "mpqat/model/config.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mpqat/util/error.h"

namespace mpqat::model {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct ArchInfo {
  const char* architecture;
  const char* model_type;
  Family family;
};

const ArchInfo kArchs[] = {
    {"LlamaForCausalLM", "llama", Family::Llama},
    {"MistralForCausalLM", "mistral", Family::Llama},
    {"Qwen2ForCausalLM", "qwen2", Family::Llama},
    {"OPTForCausalLM", "opt", Family::OPT},
    {"OPTForSequenceClassification", "opt", Family::OPT},
    {"BertForMaskedLM", "bert", Family::BERT},
    {"BertModel", "bert", Family::BERT},
    {"BertForSequenceClassification", "bert", Family::BERT},
};

std::string join_archs() {
  std::string s;
  for (const auto& a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a.architecture);
  return s;
}

std::string where(const std::string& source, const std::string& key) {
  return source + ": key '" + key + "'";
}

int64_t req_int(const json& j, const std::string& key, const std::string& src) {
  if (!j.contains(key) || j[key].is_null())
    throw InputError(where(src, key) + " is missing (an integer is required)");
  const auto& v = j[key];
  if (!v.is_number_integer()) throw InputError(where(src, key) + " must be an integer, got " + v.dump());
  return v.get<int64_t>();
}

int64_t opt_int(const json& j, const std::string& key, int64_t def, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const auto& v = j[key];
  if (!v.is_number_integer()) throw InputError(where(src, key) + " must be an integer, got " + v.dump());
  return v.get<int64_t>();
}

double opt_num(const json& j, const std::string& key, double def, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const auto& v = j[key];
  if (!v.is_number()) throw InputError(where(src, key) + " must be a number, got " + v.dump());
  return v.get<double>();
}

bool opt_bool(const json& j, const std::string& key, bool def, const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const auto& v = j[key];
  if (!v.is_boolean()) throw InputError(where(src, key) + " must be true or false, got " + v.dump());
  return v.get<bool>();
}

std::string opt_str(const json& j, const std::string& key, const std::string& def,
                    const std::string& src) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const auto& v = j[key];
  if (!v.is_string()) throw InputError(where(src, key) + " must be a string, got " + v.dump());
  return v.get<std::string>();
}

void require_positive(int64_t v, const std::string& key, const std::string& src) {
  if (v <= 0) throw InputError(where(src, key) + " must be > 0, got " + std::to_string(v));
}

RopeScaling parse_rope_scaling(const json& j, const std::string& src) {
  RopeScaling rs;
  if (!j.contains("rope_scaling") || j["rope_scaling"].is_null()) return rs;
  const auto& r = j["rope_scaling"];
  const std::string key = "rope_scaling";
  if (!r.is_object()) throw InputError(where(src, key) + " must be an object or null");
  std::string type;
  if (r.contains("rope_type")) type = opt_str(r, "rope_type", "", src + " rope_scaling");
  else type = opt_str(r, "type", "", src + " rope_scaling");
  if (type.empty() || type == "default") return rs;
  if (type == "linear") {
    rs.kind = RopeScaling::Kind::Linear;
    rs.factor = opt_num(r, "factor", 0.0, src + " rope_scaling");
  } else if (type == "llama3") {
    rs.kind = RopeScaling::Kind::Llama3;
    rs.factor = opt_num(r, "factor", 0.0, src + " rope_scaling");
    rs.low_freq_factor = opt_num(r, "low_freq_factor", 1.0, src + " rope_scaling");
    rs.high_freq_factor = opt_num(r, "high_freq_factor", 4.0, src + " rope_scaling");
    rs.original_max_position_embeddings =
        opt_int(r, "original_max_position_embeddings", 8192, src + " rope_scaling");
    if (rs.high_freq_factor <= rs.low_freq_factor)
      throw InputError(where(src, key) + ": high_freq_factor must exceed low_freq_factor");
    require_positive(rs.original_max_position_embeddings,
                     "rope_scaling.original_max_position_embeddings", src);
  } else {
    throw InputError(where(src, key) + " type '" + type +
                     "' is not supported (accepted: none, default, linear, llama3)");
  }
  if (!(rs.factor > 0.0))
    throw InputError(where(src, key) + ".factor is missing or not > 0");
  return rs;
}

}  // namespace

bool is_supported_activation(const std::string& name) {
  for (const char* a : {"relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish"})
    if (name == a) return true;
  return false;
}

const std::vector<std::string>& supported_architectures() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> out;
    for (const auto& a : kArchs) out.emplace_back(a.architecture);
    return out;
  }();
  return v;
}

bool ModelConfig::is_sequence_classifier() const {
  const std::string suffix = "ForSequenceClassification";
  return architecture.size() > suffix.size() &&
         architecture.compare(architecture.size() - suffix.size(), suffix.size(), suffix) == 0;
}

int64_t ModelConfig::num_parameters() const {
  const int64_t C = hidden_size, F = intermediate_size;
  if (family == Family::OPT) {
    const int64_t E = word_embed_proj_dim, ln = layer_norm_elementwise_affine ? 2 * C : 0;
    const int64_t bias = attention_bias ? 4 * C + F + C : 0;
    int64_t n = vocab_size * E + (max_position_embeddings + 2) * C + (E != C ? 2 * E * C : 0);
    n += num_hidden_layers * (4 * C * C + 2 * C * F + bias + 2 * ln);
    if (final_layer_norm) n += ln;
    if (is_sequence_classifier()) n += num_labels * E;
    else if (!tie_word_embeddings) n += vocab_size * E;
    return n;
  }
  if (family == Family::BERT) {
    int64_t n = (vocab_size + max_position_embeddings + type_vocab_size) * C + 2 * C;
    n += num_hidden_layers * (4 * C * C + 4 * C + 2 * C * F + F + C + 4 * C);
    n += C * C + C;  // pooler
    if (is_sequence_classifier()) n += num_labels * C + num_labels;
    return n;
  }
  int64_t per_block = C * q_dim() + 2 * C * kv_dim() + q_dim() * C + 3 * C * intermediate_size + 2 * C;
  if (qkv_bias) per_block += q_dim() + 2 * kv_dim();
  if (o_proj_bias) per_block += C;
  if (mlp_bias) per_block += 2 * intermediate_size + C;
  int64_t n = vocab_size * C + num_hidden_layers * per_block + C;
  if (!tie_word_embeddings) n += vocab_size * C;
  return n;
}

ModelConfig parse_model_config(const json& j, const std::string& src) {
  if (!j.is_object()) throw InputError(src + ": expected a JSON object");
  ModelConfig c;
  c.source = src;

  std::string arch;
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const auto& a = j["architectures"];
    if (!a.is_array() || a.empty() || !a[0].is_string())
      throw InputError(where(src, "architectures") + " must be a non-empty list of strings");
    arch = a[0].get<std::string>();
  }
  const std::string model_type = opt_str(j, "model_type", "", src);
  const ArchInfo* info = nullptr;
  for (const auto& a : kArchs) {
    if (!arch.empty() ? arch == a.architecture : model_type == a.model_type) {
      info = &a;
      break;
    }
  }
  if (info == nullptr) {
    if (arch.empty() && model_type.empty())
      throw InputError(where(src, "architectures") + " is missing (accepted: " + join_archs() + ")");
    throw InputError(src + ": architecture '" + (arch.empty() ? model_type : arch) +
                     "' is not supported (accepted: " + join_archs() + ")");
  }
  c.architecture = info->architecture;
  c.model_type = model_type.empty() ? info->model_type : model_type;
  c.family = info->family;

  c.hidden_size = req_int(j, "hidden_size", src);
  c.num_hidden_layers = req_int(j, "num_hidden_layers", src);
  c.num_attention_heads = req_int(j, "num_attention_heads", src);
  c.vocab_size = req_int(j, "vocab_size", src);
  c.max_position_embeddings = req_int(j, "max_position_embeddings", src);
  if (c.family == Family::OPT) {
    c.intermediate_size = req_int(j, "ffn_dim", src);
    c.rms_norm_eps = 1e-5;
    c.hidden_act = opt_str(j, "activation_function", "relu", src);
    c.tie_word_embeddings = opt_bool(j, "tie_word_embeddings", true, src);
    c.attention_bias = c.qkv_bias = c.o_proj_bias = opt_bool(j, "enable_bias", true, src);
    c.mlp_bias = c.attention_bias;
    c.word_embed_proj_dim = opt_int(j, "word_embed_proj_dim", c.hidden_size, src);
    require_positive(c.word_embed_proj_dim, "word_embed_proj_dim", src);
    c.do_layer_norm_before = opt_bool(j, "do_layer_norm_before", true, src);
    c.layer_norm_elementwise_affine = opt_bool(j, "layer_norm_elementwise_affine", true, src);
    c.final_layer_norm = c.do_layer_norm_before && !opt_bool(j, "_remove_final_layer_norm", false, src);
    if (!is_supported_activation(c.hidden_act))
      throw InputError(where(src, "activation_function") + " '" + c.hidden_act +
                       "' is not supported (accepted: relu, gelu, gelu_new, silu)");
  } else if (c.family == Family::BERT) {
    c.intermediate_size = req_int(j, "intermediate_size", src);
    c.rms_norm_eps = opt_num(j, "layer_norm_eps", 1e-12, src);
    c.hidden_act = opt_str(j, "hidden_act", "gelu", src);
    c.attention_bias = c.qkv_bias = c.o_proj_bias = c.mlp_bias = true;
    c.tie_word_embeddings = opt_bool(j, "tie_word_embeddings", true, src);
    c.type_vocab_size = opt_int(j, "type_vocab_size", 2, src);
    require_positive(c.type_vocab_size, "type_vocab_size", src);
    c.position_embedding_type = opt_str(j, "position_embedding_type", "absolute", src);
    if (!(c.rms_norm_eps > 0.0)) throw InputError(where(src, "layer_norm_eps") + " must be > 0");
    if (!is_supported_activation(c.hidden_act))
      throw InputError(where(src, "hidden_act") + " '" + c.hidden_act +
                       "' is not supported (accepted: gelu, gelu_new, relu, silu)");
  } else {
    c.intermediate_size = req_int(j, "intermediate_size", src);
    c.rms_norm_eps = opt_num(j, "rms_norm_eps", 1e-6, src);
    c.rope_theta = opt_num(j, "rope_theta", 10000.0, src);
    c.rope_scaling = parse_rope_scaling(j, src);
    c.hidden_act = opt_str(j, "hidden_act", "silu", src);
    c.tie_word_embeddings = opt_bool(j, "tie_word_embeddings", false, src);
    c.attention_bias = opt_bool(j, "attention_bias", false, src);
    c.mlp_bias = opt_bool(j, "mlp_bias", false, src);
    if (c.model_type == "qwen2" || c.architecture == "Qwen2ForCausalLM") {
      c.qkv_bias = true;
      c.o_proj_bias = false;
      if (opt_bool(j, "use_sliding_window", false, src))
        c.sliding_window = opt_int(j, "sliding_window", 0, src);
    } else {
      c.qkv_bias = c.o_proj_bias = c.attention_bias;
      if (j.contains("sliding_window") && !j["sliding_window"].is_null())
        c.sliding_window = opt_int(j, "sliding_window", 0, src);
    }
    if (c.hidden_act != "silu" && c.hidden_act != "swish")
      throw InputError(where(src, "hidden_act") + " '" + c.hidden_act +
                       "' is not supported for " + c.architecture + " (accepted: silu)");
    if (!(c.rms_norm_eps > 0.0)) throw InputError(where(src, "rms_norm_eps") + " must be > 0");
    if (!(c.rope_theta > 0.0)) throw InputError(where(src, "rope_theta") + " must be > 0");
  }
  c.num_key_value_heads = opt_int(j, "num_key_value_heads", c.num_attention_heads, src);

  require_positive(c.hidden_size, "hidden_size", src);
  require_positive(c.intermediate_size, c.family == Family::OPT ? "ffn_dim" : "intermediate_size", src);
  require_positive(c.num_hidden_layers, "num_hidden_layers", src);
  require_positive(c.num_attention_heads, "num_attention_heads", src);
  require_positive(c.num_key_value_heads, "num_key_value_heads", src);
  require_positive(c.vocab_size, "vocab_size", src);
  require_positive(c.max_position_embeddings, "max_position_embeddings", src);

  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = req_int(j, "head_dim", src);
    require_positive(c.head_dim, "head_dim", src);
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      throw InputError(where(src, "num_attention_heads") + " (" +
                       std::to_string(c.num_attention_heads) + ") must divide hidden_size (" +
                       std::to_string(c.hidden_size) + ")");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    throw InputError(where(src, "num_key_value_heads") + " (" +
                     std::to_string(c.num_key_value_heads) + ") must divide num_attention_heads (" +
                     std::to_string(c.num_attention_heads) + ")");
  if (c.family == Family::Llama && c.head_dim % 2 != 0)
    throw InputError(where(src, "head_dim") + " must be even for rotary embeddings, got " +
                     std::to_string(c.head_dim));

  c.torch_dtype = opt_str(j, "torch_dtype", "float32", src);
  c.bos_token_id = opt_int(j, "bos_token_id", -1, src);
  c.pad_token_id = opt_int(j, "pad_token_id", -1, src);
  if (c.is_sequence_classifier()) {
    if (j.contains("id2label") && !j["id2label"].is_null()) {
      if (!j["id2label"].is_object() || j["id2label"].empty())
        throw InputError(where(src, "id2label") + " must be a non-empty object {\"0\": label, ...}");
      c.num_labels = static_cast<int64_t>(j["id2label"].size());
    } else {
      c.num_labels = opt_int(j, "num_labels", 2, src);
    }
    require_positive(c.num_labels, "num_labels", src);
  }
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) {
      c.eos_token_ids.push_back(e.get<int64_t>());
    } else if (e.is_array()) {
      for (const auto& x : e) {
        if (!x.is_number_integer())
          throw InputError(where(src, "eos_token_id") + " must be an integer or a list of integers");
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      throw InputError(where(src, "eos_token_id") + " must be an integer or a list of integers");
    }
  }
  if (!c.eos_token_ids.empty()) c.eos_token_id = c.eos_token_ids.front();
  return c;
}

ModelConfig load_model_config(const std::string& path_or_dir) {
  fs::path p(path_or_dir);
  if (fs::is_directory(p)) p /= "config.json";
  std::ifstream in(p);
  if (!in) throw InputError("cannot open model config '" + p.string() + "' (expected a config.json file or a folder holding one)");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw InputError("'" + p.string() + "' is not valid JSON: " + e.what());
  }
  return parse_model_config(j, p.string());
}

namespace {

void put_common_tail(const ModelConfig& c, json& j) {
  j["torch_dtype"] = c.torch_dtype;
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_ids.size() > 1) j["eos_token_id"] = c.eos_token_ids;
  else if (c.eos_token_id >= 0) j["eos_token_id"] = c.eos_token_id;
  if (c.pad_token_id >= 0) j["pad_token_id"] = c.pad_token_id;
  if (c.is_sequence_classifier()) {
    json id2label = json::object(), label2id = json::object();
    for (int64_t i = 0; i < c.num_labels; ++i) {
      id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
      label2id["LABEL_" + std::to_string(i)] = i;
    }
    j["id2label"] = id2label;
    j["label2id"] = label2id;
  }
}

}  // namespace

json model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = json::array({c.architecture});
  j["model_type"] = c.model_type;
  if (c.family == Family::OPT) {
    j["hidden_size"] = c.hidden_size;
    j["ffn_dim"] = c.intermediate_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["vocab_size"] = c.vocab_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["word_embed_proj_dim"] = c.word_embed_proj_dim;
    j["do_layer_norm_before"] = c.do_layer_norm_before;
    j["_remove_final_layer_norm"] = c.do_layer_norm_before && !c.final_layer_norm;
    j["layer_norm_elementwise_affine"] = c.layer_norm_elementwise_affine;
    j["enable_bias"] = c.attention_bias;
    j["activation_function"] = c.hidden_act;
    j["tie_word_embeddings"] = c.tie_word_embeddings;
    put_common_tail(c, j);
    return j;
  }
  if (c.family == Family::BERT) {
    j["hidden_size"] = c.hidden_size;
    j["intermediate_size"] = c.intermediate_size;
    j["num_hidden_layers"] = c.num_hidden_layers;
    j["num_attention_heads"] = c.num_attention_heads;
    j["vocab_size"] = c.vocab_size;
    j["max_position_embeddings"] = c.max_position_embeddings;
    j["type_vocab_size"] = c.type_vocab_size;
    j["layer_norm_eps"] = c.rms_norm_eps;
    j["hidden_act"] = c.hidden_act;
    j["position_embedding_type"] = c.position_embedding_type;
    put_common_tail(c, j);
    return j;
  }
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  switch (c.rope_scaling.kind) {
    case RopeScaling::Kind::None:
      j["rope_scaling"] = nullptr;
      break;
    case RopeScaling::Kind::Linear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope_scaling.factor}};
      break;
    case RopeScaling::Kind::Llama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", c.rope_scaling.factor},
                           {"low_freq_factor", c.rope_scaling.low_freq_factor},
                           {"high_freq_factor", c.rope_scaling.high_freq_factor},
                           {"original_max_position_embeddings",
                            c.rope_scaling.original_max_position_embeddings}};
      break;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = c.mlp_bias;
  j["hidden_act"] = c.hidden_act;
  if (c.sliding_window) j["sliding_window"] = *c.sliding_window;
  put_common_tail(c, j);
  return j;
}

void save_model_config(const ModelConfig& cfg, const std::string& path) {
  std::ofstream out(path);
  if (!out) throw Error("cannot write '" + path + "'");
  out << model_config_to_json(cfg).dump(2) << "\n";
  if (!out) throw Error("failed writing '" + path + "'");
}

int64_t fit_seqlen(const ModelConfig& cfg, int64_t requested, bool given, const std::string& what) {
  const int64_t max_pos = cfg.max_position_embeddings;
  if (max_pos <= 0 || requested <= max_pos) return requested;
  if (given)
    throw InputError(what + " " + std::to_string(requested) + " exceeds the model's max_position_embeddings " +
                     std::to_string(max_pos));
  return max_pos;
}

}  // namespace mpqat::model
