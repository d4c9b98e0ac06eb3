// `mpqat quantize DIR --plan PLAN.json --method rtn --out OUT [--clip-search] [--dtype f16]
//  [--max-shard-size 4GiB] [--force]`
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "mpqat/cli/commands.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {

void add_quantize_command(CLI::App& app) {
  struct Opts {
    std::string model, plan, method = "rtn", out, dtype = "f16", shard = "4GiB";
    bool clip = false, force = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("quantize", "Post-training quantization (RTN) from a bit plan -> packed checkpoint");
  sub->add_option("model", o->model, "model folder")->required();
  sub->add_option("--plan", o->plan, "bitplan.json: {\"modules\": {NAME: {\"bits\": B, \"group_size\": G}}}")->required();
  sub->add_option("--method", o->method, "rtn")->capture_default_str();
  sub->add_option("--out", o->out, "output checkpoint folder (written atomically)")->required();
  sub->add_flag("--clip-search", o->clip, "per-group clipping search minimising weight MSE");
  sub->add_option("--dtype", o->dtype, "storage of unquantized tensors: f16, bf16, f32")->capture_default_str();
  sub->add_option("--max-shard-size", o->shard, "shard model.safetensors above this size (0 = never)")
      ->capture_default_str();
  sub->add_flag("--force", o->force, "replace a non-empty output folder");
  sub->callback([o] {
    if (o->method != "rtn")
      throw InputError("--method '" + o->method + "' is not supported by quantize (accepted: rtn; QAT is `mpqat train`)");
    quant::SaveOptions so;
    so.float_dtype = io::parse_float_dtype(o->dtype, "--dtype");
    so.max_shard_bytes = o->shard == "0" ? 0 : util::parse_bytes(o->shard, "--max-shard-size");
    if (quant::is_quantized_folder(o->model))
      throw InputError("model folder '" + o->model + "' is already quantized (quantize needs a float model)");
    const auto plan = quant::load_bit_plan(o->plan);
    model::ModelFolder folder(o->model);
    quant::InitOptions init;
    init.clip_search = o->clip;
    // Block by block: one float block in memory whatever the model's size.
    const auto q = quant::rtn_quantize_blocks(folder, plan, init);
    const auto n = static_cast<int64_t>(plan.quantized().size());
    so.source_dir = o->model;
    so.method = o->clip ? "rtn+clip" : "rtn";
    so.plan = &plan;
    so.force = o->force;
    quant::save_quantized_checkpoint(*q.shell, q.config, q.blocks, o->out, so);
    const auto r = quant::inspect_checkpoint(o->out);
    std::cout << "quantized " << n << " of " << r.modules.size() << " linears -> " << o->out << " ("
              << util::format_bytes(r.total_bytes) << ", " << r.avg_bits << " avg bits, compression "
              << r.compression_ratio << "x vs fp16)\n";
  });
}

}  // namespace mpqat::cli
