#include "mpqat/model/llama2c.h"

#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>

#include "mpqat/data/llama2c_tokenizer.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"

namespace mpqat::model {

namespace fs = std::filesystem;

namespace {

constexpr uint64_t kHeaderBytes = 7 * sizeof(int32_t);

// Float counts of each section, in file order.
struct Sizes {
  uint64_t emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, freq, wcls;
};

Sizes section_sizes(const Llama2cHeader& h) {
  const uint64_t C = static_cast<uint64_t>(h.dim), F = static_cast<uint64_t>(h.hidden_dim),
                 L = static_cast<uint64_t>(h.n_layers), V = static_cast<uint64_t>(h.vocab_size),
                 KV = static_cast<uint64_t>(h.kv_dim()), S = static_cast<uint64_t>(h.seq_len),
                 hd = static_cast<uint64_t>(h.head_size());
  Sizes s{};
  s.emb = V * C;
  s.rms_att = L * C;
  s.wq = L * C * C;
  s.wk = L * KV * C;
  s.wv = L * KV * C;
  s.wo = L * C * C;
  s.rms_ffn = L * C;
  s.w1 = L * F * C;
  s.w2 = L * C * F;
  s.w3 = L * F * C;
  s.rms_final = C;
  s.freq = S * hd / 2;  // each of real and imag
  s.wcls = h.shared_classifier ? 0 : V * C;
  return s;
}

}  // namespace

uint64_t Llama2cHeader::expected_file_size() const {
  const Sizes s = section_sizes(*this);
  const uint64_t floats = s.emb + s.rms_att + s.wq + s.wk + s.wv + s.wo + s.rms_ffn + s.w1 + s.w2 +
                          s.w3 + s.rms_final + 2 * s.freq + s.wcls;
  return kHeaderBytes + floats * sizeof(float);
}

model::ModelConfig Llama2cHeader::to_config() const {
  model::ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.model_type = "llama";
  c.family = model::Family::Llama;
  c.hidden_size = dim;
  c.intermediate_size = hidden_dim;
  c.num_hidden_layers = n_layers;
  c.num_attention_heads = n_heads;
  c.num_key_value_heads = n_kv_heads;
  c.head_dim = head_size();
  c.vocab_size = vocab_size;
  c.max_position_embeddings = seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = shared_classifier;
  c.torch_dtype = "float32";
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  c.eos_token_ids = {2};
  return c;
}

Llama2cHeader read_llama2c_header(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot open llama2.c checkpoint '" + path + "'");
  int32_t v[7];
  in.read(reinterpret_cast<char*>(v), sizeof(v));
  if (in.gcount() != static_cast<std::streamsize>(sizeof(v)))
    throw InputError("llama2.c checkpoint '" + path + "' is shorter than its 28-byte header");
  Llama2cHeader h;
  h.dim = v[0];
  h.hidden_dim = v[1];
  h.n_layers = v[2];
  h.n_heads = v[3];
  h.n_kv_heads = v[4];
  h.shared_classifier = v[5] > 0;
  h.vocab_size = v[5] < 0 ? -v[5] : v[5];
  h.seq_len = v[6];
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int i = 0; i < 7; ++i) {
    const int32_t x = i == 5 ? h.vocab_size : v[i];
    if (x <= 0 || x > (1 << 24))
      throw InputError("llama2.c checkpoint '" + path + "': header field " + names[i] + " = " +
                       std::to_string(v[i]) + " is out of range (not a llama2.c legacy checkpoint?)");
  }
  if (h.dim % h.n_heads != 0 || h.n_heads % h.n_kv_heads != 0 || h.head_size() % 2 != 0)
    throw InputError("llama2.c checkpoint '" + path + "': n_heads " + std::to_string(h.n_heads) +
                     " / n_kv_heads " + std::to_string(h.n_kv_heads) + " do not divide dim " +
                     std::to_string(h.dim) + " into even head sizes");
  std::error_code ec;
  const uint64_t actual = fs::file_size(path, ec);
  if (ec) throw InputError("cannot stat llama2.c checkpoint '" + path + "': " + ec.message());
  const uint64_t expected = h.expected_file_size();
  if (actual != expected)
    throw InputError("llama2.c checkpoint '" + path + "' is " + std::to_string(actual) +
                     " bytes but its header (dim " + std::to_string(h.dim) + ", layers " +
                     std::to_string(h.n_layers) + ", vocab " + std::to_string(h.vocab_size) +
                     ") implies " + std::to_string(expected) + " bytes (truncated or not a llama2.c legacy file)");
  return h;
}

std::vector<float> permute_rope_rows(const float* w, int64_t n_heads, int64_t head_dim, int64_t in) {
  std::vector<float> out(static_cast<size_t>(n_heads * head_dim * in));
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      const float* even = w + (h * head_dim + 2 * i) * in;
      const float* odd = w + (h * head_dim + 2 * i + 1) * in;
      std::memcpy(&out[static_cast<size_t>((h * head_dim + i) * in)], even, sizeof(float) * in);
      std::memcpy(&out[static_cast<size_t>((h * head_dim + half + i) * in)], odd, sizeof(float) * in);
    }
  }
  return out;
}

void convert_llama2c(const std::string& model_bin, const std::string& tokenizer_bin,
                     const std::string& out_dir_arg, const ConvertOptions& opts) {
  const Llama2cHeader h = read_llama2c_header(model_bin);
  const data::Llama2cTokenizer tok(tokenizer_bin);
  if (tok.vocab_size() != h.vocab_size)
    throw InputError("tokenizer '" + tokenizer_bin + "' has " + std::to_string(tok.vocab_size()) +
                     " tokens but checkpoint '" + model_bin + "' has vocab_size " +
                     std::to_string(h.vocab_size));

  fs::path out = fs::path(out_dir_arg).lexically_normal();
  if (out.has_filename() == false) out = out.parent_path();
  if (out.empty()) throw InputError("--out must name a folder");
  if (fs::exists(out)) {
    if (!fs::is_directory(out))
      throw InputError("output '" + out.string() + "' exists and is not a folder");
    if (!fs::is_empty(out) && !opts.force)
      throw InputError("output folder '" + out.string() + "' is not empty (use --force to replace it)");
  }

  // The whole file: it is at most a few GB of fp32 for the models llama2.c can run.
  std::vector<float> data((h.expected_file_size() - kHeaderBytes) / sizeof(float));
  {
    std::ifstream in(model_bin, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(kHeaderBytes));
    in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size() * sizeof(float)));
    if (!in) throw InputError("failed reading llama2.c checkpoint '" + model_bin + "'");
  }
  const Sizes s = section_sizes(h);
  const float* p = data.data();
  const float* emb = p; p += s.emb;
  const float* rms_att = p; p += s.rms_att;
  const float* wq = p; p += s.wq;
  const float* wk = p; p += s.wk;
  const float* wv = p; p += s.wv;
  const float* wo = p; p += s.wo;
  const float* rms_ffn = p; p += s.rms_ffn;
  const float* w1 = p; p += s.w1;
  const float* w2 = p; p += s.w2;
  const float* w3 = p; p += s.w3;
  const float* rms_final = p; p += s.rms_final;
  p += 2 * s.freq;  // freq_cis_real / imag: recomputed from rope_theta
  const float* wcls = h.shared_classifier ? nullptr : p;

  const int64_t C = h.dim, F = h.hidden_dim, V = h.vocab_size, KV = h.kv_dim(), hd = h.head_size();
  std::deque<std::vector<float>> owned;  // permuted copies; deque keeps pointers stable
  std::vector<io::TensorToWrite> tensors;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, const float* ptr) {
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    tensors.push_back({name, io::DType::F32, std::move(shape), ptr, n * sizeof(float)});
  };
  add("model.embed_tokens.weight", {V, C}, emb);
  for (int64_t l = 0; l < h.n_layers; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    add(pre + "input_layernorm.weight", {C}, rms_att + l * C);
    owned.push_back(permute_rope_rows(wq + l * C * C, h.n_heads, hd, C));
    add(pre + "self_attn.q_proj.weight", {C, C}, owned.back().data());
    owned.push_back(permute_rope_rows(wk + l * KV * C, h.n_kv_heads, hd, C));
    add(pre + "self_attn.k_proj.weight", {KV, C}, owned.back().data());
    add(pre + "self_attn.v_proj.weight", {KV, C}, wv + l * KV * C);
    add(pre + "self_attn.o_proj.weight", {C, C}, wo + l * C * C);
    add(pre + "post_attention_layernorm.weight", {C}, rms_ffn + l * C);
    add(pre + "mlp.gate_proj.weight", {F, C}, w1 + l * F * C);
    add(pre + "mlp.down_proj.weight", {C, F}, w2 + l * C * F);
    add(pre + "mlp.up_proj.weight", {F, C}, w3 + l * F * C);
  }
  add("model.norm.weight", {C}, rms_final);
  if (wcls) add("lm_head.weight", {V, C}, wcls);

  util::write_folder_atomic(
      out.string(),
      [&](const std::string& tmp_dir) {
        const fs::path tmp(tmp_dir);
        model::save_model_config(h.to_config(), (tmp / "config.json").string());
        io::write_safetensors_sharded(tmp_dir, tensors, {{"format", "pt"}});
        fs::copy_file(tokenizer_bin, tmp / "tokenizer.bin", fs::copy_options::overwrite_existing);
        data::write_hf_tokenizer_files(tok, tmp_dir);
      },
      "converted model folder");
}

}  // namespace mpqat::model
