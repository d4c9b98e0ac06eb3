#include "mpqat/quant/gguf_export.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>

#include <fmt/format.h>

#include "mpqat/model/hf_names.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/gguf_blocks.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::quant {

using io::GgmlType;
namespace fs = std::filesystem;

namespace {

// llama.cpp's name for a Hugging Face Llama tensor ("" when it has none).
std::string gguf_name(const std::string& hf) {
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

// Rows of q (or k) in the order llama.cpp's RoPE expects: Hugging Face keeps each head's two
// rotary halves apart ([head][half][i]), GGUF interleaves them ([head][i][half]) as Meta's
// original weights did (convert_hf_to_gguf.py's permute).
std::vector<int64_t> rope_row_order(int64_t heads, int64_t head_dim) {
  std::vector<int64_t> rows;
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < half; ++i)
      for (int64_t j = 0; j < 2; ++j) rows.push_back(h * head_dim + j * half + i);
  return rows;
}

UnpackedModule unpack(const QuantLinearImpl& q, const DetectedModule& d) {
  UnpackedModule m;
  m.name = d.name;
  m.out = d.out;
  m.in = d.in;
  m.spec = d.spec;
  auto qw = q.qweight.contiguous();
  m.codes = unpack_qweight(qw.data_ptr<int32_t>(), d.out, d.in, d.spec.bits);
  auto qz = q.qzeros.contiguous();
  const int64_t groups = qz.size(0);
  m.zeros = unpack_qzeros(qz.data_ptr<int32_t>(), groups, d.out, d.spec.bits);
  auto sc = q.scales.contiguous().to(torch::kHalf);
  m.scales.resize(static_cast<size_t>(sc.numel()));
  std::memcpy(m.scales.data(), sc.data_ptr<at::Half>(), m.scales.size() * 2);
  auto gi = q.g_idx.contiguous().to(torch::kInt);
  m.g_idx.assign(gi.data_ptr<int32_t>(), gi.data_ptr<int32_t>() + gi.numel());
  return m;
}

struct Item {
  model::HfTensor hf;
  std::string gguf;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> rows;  // row order (q/k), empty = identity
  const DetectedModule* det = nullptr;  // packed block linear
  GgufChoice choice;
  std::string spec;
};

void check_supported(const model::ModelConfig& cfg, const std::string& dir) {
  if (cfg.family != model::Family::Llama)
    throw NotImplementedError("export gguf of '" + dir + "': the " + cfg.architecture +
                              " architecture (the llama family is supported: LlamaForCausalLM, MistralForCausalLM)");
  if (cfg.model_type == "qwen2")
    throw NotImplementedError("export gguf of '" + dir + "': Qwen2 (llama.cpp's qwen2 architecture with q/k/v biases)");
  if (cfg.attention_bias || cfg.mlp_bias || cfg.qkv_bias || cfg.o_proj_bias)
    throw NotImplementedError("export gguf of '" + dir + "': linear biases (attention_bias / mlp_bias)");
  if (cfg.rope_scaling.kind == model::RopeScaling::Kind::Llama3)
    throw NotImplementedError("export gguf of '" + dir + "': llama3 RoPE scaling (a rope_freqs.weight tensor)");
  if (cfg.head_dim % 2 != 0) throw InputError("'" + dir + "/config.json': head_dim " + std::to_string(cfg.head_dim) + " is odd");
}

std::vector<io::GgufKV> model_metadata(const model::ModelConfig& cfg, const std::string& name, bool quantized) {
  std::vector<io::GgufKV> kv;
  auto u32 = [](int64_t v) { return static_cast<uint32_t>(v); };
  kv.push_back({"general.architecture", std::string("llama")});
  kv.push_back({"general.name", name});
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
  return kv;
}

// The vocabulary padded to the embedding's rows (as convert_hf_to_gguf.py pads with [PADn]).
std::vector<io::GgufKV> fit_vocab(std::vector<io::GgufKV> vocab, int64_t rows, const std::string& dir) {
  std::vector<std::string>* tokens = nullptr;
  std::vector<float>* scores = nullptr;
  std::vector<int32_t>* types = nullptr;
  for (auto& kv : vocab) {
    if (kv.key == "tokenizer.ggml.tokens") tokens = std::get_if<std::vector<std::string>>(&kv.value);
    if (kv.key == "tokenizer.ggml.scores") scores = std::get_if<std::vector<float>>(&kv.value);
    if (kv.key == "tokenizer.ggml.token_type") types = std::get_if<std::vector<int32_t>>(&kv.value);
  }
  if (!tokens) throw Error("export gguf: the vocabulary metadata has no tokenizer.ggml.tokens");
  const int64_t n = static_cast<int64_t>(tokens->size());
  if (n > rows)
    throw InputError(fmt::format("export gguf of '{}': the tokenizer has {} tokens, the embedding only {} rows "
                                 "(config.json vocab_size); llama.cpp needs a row per token",
                                 dir, n, rows));
  for (int64_t i = n; i < rows; ++i) {
    tokens->push_back(fmt::format("[PAD{}]", i));
    if (scores) scores->push_back(0.0f);
    if (types) types->push_back(5);  // unused
  }
  return vocab;
}

double max_abs_diff(const std::vector<float>& a, const float* b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

}  // namespace

io::GgmlType parse_gguf_float_type(const std::string& s, const std::string& what) {
  const std::string l = util::to_lower(s);
  if (l == "f32") return GgmlType::F32;
  if (l == "f16") return GgmlType::F16;
  if (l == "q8_0") return GgmlType::Q8_0;
  throw InputError(what + " '" + s + "' (accepted: f32, f16, q8_0)");
}

GgufExportReport export_gguf(const std::string& dir, const std::vector<io::GgufKV>& vocab, const std::string& out,
                             const GgufExportOptions& opts) {
  torch::NoGradGuard ng;
  for (GgmlType t : {opts.float_type, opts.embedding_type, opts.fallback})
    if (t != GgmlType::F32 && t != GgmlType::F16 && t != GgmlType::Q8_0)
      throw InputError(std::string("export gguf: type ") + io::ggml_type_traits(t).name + " (f32, f16, q8_0 accepted)");
  if (!opts.force && fs::exists(out))
    throw InputError("export gguf: '" + out + "' exists (give --force to replace it)");
  const model::ModelFolder folder(dir);
  const auto& cfg = folder.config();
  check_supported(cfg, dir);
  const bool quantized = is_quantized_folder(dir);
  std::vector<DetectedModule> detected;
  QuantConfig qc;
  if (quantized) {
    qc = load_quant_config(dir);
    detected = validate_quantized_folder(folder, qc);
  }
  std::map<std::string, const DetectedModule*> by_name;
  for (const auto& d : detected) by_name[d.name] = &d;

  // Pass 1: every tensor's GGUF type (packed modules are unpacked to see which type holds them).
  std::vector<Item> items;
  for (const auto& hf : model::llama_tensors(cfg)) {
    Item it;
    it.hf = hf;
    it.gguf = gguf_name(hf.name);
    if (it.gguf.empty()) throw Error("export gguf: no llama.cpp name for tensor '" + hf.name + "'");
    if (hf.shape.size() == 1) {
      it.type = GgmlType::F32;  // norms: llama.cpp computes them in F32
      it.spec = "f32";
    } else if (hf.linear.empty()) {  // embedding / output
      it.type = hf.shape[1] % 32 == 0 ? opts.embedding_type : GgmlType::F16;
      if (it.type == GgmlType::F16 && opts.embedding_type == GgmlType::F32) it.type = GgmlType::F32;
      it.spec = "float";
    } else {
      auto f = by_name.find(hf.linear);
      if (f != by_name.end() && f->second->quantized) {
        it.det = f->second;
        auto q = read_packed_linear(folder, qc, *it.det);
        it.choice = choose_gguf_type(unpack(*q, *it.det), opts.fallback);
        it.type = it.choice.type;
        it.spec = spec_str(it.det->spec);
      } else {
        it.type = opts.float_type == GgmlType::Q8_0 && hf.shape[1] % 32 != 0 ? GgmlType::F16 : opts.float_type;
        it.choice = {it.type, "float", ""};
        it.spec = "float";
      }
      if (util::ends_with(hf.linear, "self_attn.q_proj")) it.rows = rope_row_order(cfg.num_attention_heads, cfg.head_dim);
      if (util::ends_with(hf.linear, "self_attn.k_proj")) it.rows = rope_row_order(cfg.num_key_value_heads, cfg.head_dim);
    }
    items.push_back(std::move(it));
  }

  std::vector<io::GgufTensorSpec> specs;
  for (const auto& it : items) {
    io::GgufTensorSpec s;
    s.name = it.gguf;
    s.type = it.type;
    if (it.hf.shape.size() == 1) s.ne = {it.hf.shape[0]};
    else s.ne = {it.hf.shape[1], it.hf.shape[0]};
    specs.push_back(std::move(s));
  }
  const std::string name = opts.name.empty() ? fs::path(dir).lexically_normal().filename().string() : opts.name;
  std::vector<io::GgufKV> kvs = model_metadata(cfg, name.empty() ? std::string("model") : name, quantized);
  for (auto& kv : fit_vocab(vocab, cfg.vocab_size, dir)) kvs.push_back(std::move(kv));

  GgufExportReport rep;
  rep.path = out;
  rep.predicted_bytes = io::gguf_file_size(kvs, specs);
  rep.tensors.resize(items.size());

  // Pass 2: encode each tensor, read it back through ggml's dequantization, measure the error.
  io::write_gguf(out, kvs, specs, [&](std::size_t i, uint8_t* dst) {
    const Item& it = items[i];
    const auto& sp = specs[i];
    const int64_t rows = sp.ne.size() > 1 ? sp.ne[1] : 1, n = sp.ne[0];
    std::vector<float> ref;  // the checkpoint's weights, rows in source order
    if (it.det) {
      const auto um = unpack(*read_packed_linear(folder, qc, *it.det), *it.det);
      encode_unpacked(um, it.choice, it.rows, dst);
      ref = dequantize_unpacked(um);
    } else {
      auto t = folder.tensor(it.hf.name, it.hf.shape).contiguous();
      ref.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      encode_float(ref.data(), rows, n, it.type, it.rows, dst);
    }
    const uint64_t rb = io::ggml_row_bytes(it.type, n, it.gguf);
    std::vector<float> back(static_cast<size_t>(n));
    double err = 0.0;
    for (int64_t k = 0; k < rows; ++k) {
      const int64_t src = it.rows.empty() ? k : it.rows[static_cast<size_t>(k)];
      dequantize_gguf_row(it.type, dst + static_cast<uint64_t>(k) * rb, n, back.data());
      err = std::max(err, max_abs_diff(back, ref.data() + src * n));
    }
    auto& r = rep.tensors[i];
    r.gguf_name = it.gguf;
    r.source = it.hf.linear.empty() ? it.hf.name : it.hf.linear;
    r.source_spec = it.spec;
    r.type = io::ggml_type_traits(it.type).name;
    r.how = it.hf.linear.empty() ? (it.type == GgmlType::Q8_0 ? "requantized" : "float") : it.choice.how;
    r.why = it.choice.why;
    r.weights = rows * n;
    r.bytes = sp.nbytes();
    r.max_abs_error = err;
    r.block_linear = !it.hf.linear.empty();
  });
  rep.file_bytes = fs::file_size(out);
  for (const auto& t : rep.tensors) {
    rep.total_weights += t.weights;
    if (t.block_linear) {
      rep.linear_weights += t.weights;
      rep.linear_bytes += t.bytes;
    }
  }
  return rep;
}

std::string format_gguf_report(const GgufExportReport& r) {
  std::string s = fmt::format("{:<28} {:<12} {:<6} {:<24} {:>10} {:>12}\n", "tensor", "checkpoint", "type", "conversion",
                              "bytes", "max |err|");
  for (const auto& t : r.tensors) {
    s += fmt::format("{:<28} {:<12} {:<6} {:<24} {:>10} {:>12.3e}{}\n", t.gguf_name, t.source_spec, t.type, t.how,
                     t.bytes, t.max_abs_error, t.why.empty() ? "" : "  (" + t.why + ")");
  }
  s += fmt::format("{}: {} bytes ({} predicted), {:.3f} bpw over all weights; block linears {:.3f} bpw "
                   "(all bytes of their GGUF blocks / their weights)\n",
                   r.path, r.file_bytes, r.predicted_bytes, r.file_bpw(), r.linear_bpw());
  return s;
}

}  // namespace mpqat::quant
