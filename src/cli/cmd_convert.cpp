// `mpqat convert llama2c MODEL.bin --tokenizer TOK.bin --out DIR [--force]`
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "mpqat/cli/commands.h"
#include "mpqat/model/llama2c.h"
#include "mpqat/util/error.h"

namespace mpqat::cli {

void add_convert_command(CLI::App& app) {
  auto* conv = app.add_subcommand("convert", "Convert a checkpoint from another format into a Hugging Face model folder");
  conv->require_subcommand(1);

  struct Opts {
    std::string model, tokenizer, out;
    bool force = false;
  };
  auto o = std::make_shared<Opts>();
  auto* l2c = conv->add_subcommand(
      "llama2c", "llama2.c legacy checkpoint (.bin) + tokenizer.bin -> Llama folder (config.json, model.safetensors, tokenizer)");
  l2c->add_option("MODEL", o->model, "llama2.c checkpoint, e.g. stories260K.bin")->required();
  l2c->add_option("--tokenizer", o->tokenizer, "llama2.c tokenizer.bin matching the model")->required();
  l2c->add_option("--out", o->out, "output folder (written atomically via <out>.tmp)")->required();
  l2c->add_flag("--force", o->force, "replace a non-empty output folder")->capture_default_str();
  l2c->callback([o] {
    model::ConvertOptions opts;
    opts.force = o->force;
    model::convert_llama2c(o->model, o->tokenizer, o->out, opts);
    std::cout << "wrote " << o->out << "\n";
  });
}

}  // namespace mpqat::cli
