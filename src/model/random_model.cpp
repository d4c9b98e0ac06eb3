// Random Llama folders written one shard at a time (include/mpqat/model/random_model.h).
#include "mpqat/model/random_model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "mpqat/model/llama.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;

namespace mpqat::model {

ModelConfig random_model_shape(const std::string& name) {
  struct Shape {
    int64_t layers, hidden, ffn, heads, kv, vocab, ctx;
  };
  Shape s{};
  if (name == "tiny") s = {8, 512, 1376, 8, 4, 4096, 2048};
  else if (name == "1b") s = {22, 2048, 5632, 32, 4, 32000, 2048};
  else if (name == "7b") s = {32, 4096, 11008, 32, 32, 32000, 4096};
  else throw InputError("unknown model shape '" + name + "' (accepted: tiny, 1b, 7b)");
  const nlohmann::json j{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                         {"hidden_size", s.hidden}, {"intermediate_size", s.ffn},
                         {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
                         {"num_key_value_heads", s.kv}, {"vocab_size", s.vocab},
                         {"max_position_embeddings", s.ctx}, {"rms_norm_eps", 1e-5},
                         {"rope_theta", 10000.0}, {"bos_token_id", 1}, {"eos_token_id", 2},
                         {"tie_word_embeddings", false}, {"torch_dtype", "float16"}};
  return parse_model_config(j, "shape " + name);
}

namespace {

}  // namespace

uint64_t write_random_model(const std::string& dir, const ModelConfig& cfg, const RandomModelOptions& o) {
  if (cfg.family != Family::Llama)
    throw NotImplementedError("random models of the " + cfg.model_type + " family (Llama family only)");
  const auto st = scalar_type(o.dtype, "random model dtype");
  // Names and shapes: the block-free parameters, then every block's (a block of this shape is
  // built once, its storage never touched).
  std::vector<io::TensorToWrite> specs;
  {
    LlamaForCausalLM shell(cfg, /*with_blocks=*/false);
    for (const auto& p : shell.named_parameters(true))
      specs.push_back({p.key(), o.dtype, p.value().sizes().vec(), nullptr,
                       static_cast<size_t>(p.value().numel()) * io::dtype_size(o.dtype)});
    LlamaBlock blk(cfg);
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
      for (const auto& p : blk.named_parameters(true))
        specs.push_back({block_prefix(i) + p.key(), o.dtype, p.value().sizes().vec(), nullptr,
                         static_cast<size_t>(p.value().numel()) * io::dtype_size(o.dtype)});
  }
  uint64_t total = 0;
  util::write_folder_atomic(
      dir,
      [&](const std::string& tmp_dir) {
        std::vector<torch::Tensor> keep;  // the current shard's tensors
        io::write_safetensors_sharded(
            tmp_dir, specs,
            [&](size_t, std::vector<io::TensorToWrite>& part) {
              keep.clear();
              torch::NoGradGuard ng;
              for (auto& t : part) {
                torch::Tensor v;
                if (t.shape.size() == 1 && util::ends_with(t.name, "norm.weight")) {
                  v = torch::ones(t.shape, torch::TensorOptions().dtype(st));
                } else {
                  auto gen = at::detail::createCPUGenerator(util::fnv1a64(t.name, util::kFnv1aBasis ^ o.seed));
                  v = at::normal(0.0, o.std, t.shape, gen, torch::TensorOptions().dtype(torch::kFloat)).to(st);
                }
                keep.push_back(v.contiguous());
                t.data = keep.back().data_ptr();
                total += t.nbytes;
              }
            },
            {{"format", "pt"}}, o.max_shard_bytes, "model");
        ModelConfig c = cfg;
        c.torch_dtype = io::config_dtype_name(o.dtype, "random model dtype");
        save_model_config(c, (fs::path(tmp_dir) / "config.json").string());
        if (!o.tokenizer_from.empty()) {
          bool any = false;
          for (const char* f : {"tokenizer.model", "tokenizer.json", "tokenizer_config.json", "tokenizer.bin",
                                "special_tokens_map.json", "vocab.txt"}) {
            const fs::path p = fs::path(o.tokenizer_from) / f;
            if (fs::exists(p)) {
              fs::copy_file(p, fs::path(tmp_dir) / f, fs::copy_options::overwrite_existing);
              any = true;
            }
          }
          if (!any)
            throw InputError("tokenizer folder '" + o.tokenizer_from +
                             "' holds no tokenizer.model, tokenizer.json, tokenizer.bin or vocab.txt");
        }
      },
      "random model folder");
  return total;
}

}  // namespace mpqat::model
