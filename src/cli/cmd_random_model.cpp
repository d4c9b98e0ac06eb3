// `mpqat random-model DIR --shape tiny|1b|7b [--layers N] [--tokenizer-from DIR]` (hidden): a random
// Llama folder of a benchmark shape, written one shard at a time (model/random_model.h). For
// memory and speed benchmarks (tools/bench_scale.sh) and the memory tests; never for quality.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "mpqat/cli/commands.h"
#include "mpqat/model/random_model.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {

void add_random_model_command(CLI::App& app) {
  struct Opts {
    std::string dir, shape = "tiny", tokenizer_from, shard = "2GB", dtype = "f16";
    int64_t layers = 0, hidden = 0, ffn = 0, vocab = 0;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("random-model", "Write a random Llama folder of a benchmark shape (sharded safetensors)");
  sub->group("");  // hidden: a benchmark tool
  sub->add_option("DIR", o->dir, "output folder")->required();
  sub->add_option("--shape", o->shape, "tiny, 1b (TinyLlama-1.1B) or 7b (Llama-2-7B)")->capture_default_str();
  sub->add_option("--layers", o->layers, "blocks (0 = the shape's)")->capture_default_str();
  sub->add_option("--hidden", o->hidden, "hidden size (0 = the shape's)");
  sub->add_option("--ffn", o->ffn, "intermediate size (0 = the shape's)");
  sub->add_option("--vocab", o->vocab, "vocabulary size (0 = the shape's; must match --tokenizer-from)");
  sub->add_option("--tokenizer-from", o->tokenizer_from, "folder whose tokenizer files are copied");
  sub->add_option("--shard-size", o->shard, "largest shard (0 = one file)")->capture_default_str();
  sub->add_option("--dtype", o->dtype, "f16, bf16 or f32")->capture_default_str();
  sub->add_option("--seed", o->seed, "weights seed")->capture_default_str();
  sub->callback([o] {
    auto cfg = model::random_model_shape(o->shape);
    auto set = [](int64_t v, int64_t& field, const char* what) {
      if (v < 0) throw InputError(std::string(what) + " must be >= 0");
      if (v > 0) field = v;
    };
    set(o->layers, cfg.num_hidden_layers, "--layers");
    set(o->hidden, cfg.hidden_size, "--hidden");
    set(o->ffn, cfg.intermediate_size, "--ffn");
    set(o->vocab, cfg.vocab_size, "--vocab");
    if (cfg.hidden_size % cfg.num_attention_heads != 0)
      throw InputError("--hidden " + std::to_string(cfg.hidden_size) + " is not a multiple of the shape's " +
                       std::to_string(cfg.num_attention_heads) + " heads");
    cfg.head_dim = cfg.hidden_size / cfg.num_attention_heads;
    model::RandomModelOptions ro;
    ro.seed = o->seed;
    ro.dtype = io::parse_float_dtype(o->dtype, "--dtype");
    ro.max_shard_bytes = o->shard == "0" ? 0 : util::parse_bytes(o->shard, "--shard-size");
    ro.tokenizer_from = o->tokenizer_from;
    const auto bytes = model::write_random_model(o->dir, cfg, ro);
    std::cout << "wrote " << o->dir << ": " << cfg.num_parameters() << " parameters, " << util::format_bytes(bytes)
              << "\n";
  });
}

}  // namespace mpqat::cli
