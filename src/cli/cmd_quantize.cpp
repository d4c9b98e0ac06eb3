// `mpqat quantize DIR --plan PLAN.json --method rtn|gptq --out OUT [--clip-search] [--dtype f16]
//  [--max-shard-size 4GiB] [--force]`; GPTQ also takes `--calib FILE [--samples N] [--seqlen L]
//  [--act-order] [--static-groups] [--damp 0.01] [--block-columns 128] [--seed S] [--device D]`.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "mpqat/cli/commands.h"
#include "mpqat/data/calibration.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/io/recipe.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/train/gptq.h"
#include "mpqat/train/options.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;

namespace mpqat::cli {

namespace {

struct QuantizeOpts {
  std::string model, plan, method = "rtn", out, dtype = "f16", shard = "4GiB", calib, device = "auto";
  bool clip = false, force = false, act_order = false, static_groups = false;
  int64_t samples = 128, seqlen = 0, block_columns = 128, seed = 0, timeout_s = 600;
  double damp = 0.01;
};

// GPTQ over every block; rank 0 writes the checkpoint and gptq_log.jsonl into it. Returns
// whether this process is rank 0.
bool run_gptq(const QuantizeOpts& o, const quant::BitPlan& plan, quant::SaveOptions so) {
  dist::Options dopt;
  dopt.timeout = std::chrono::seconds(o.timeout_s);
  auto comm = dist::Communicator::from_env(dopt);
  model::ModelFolder folder(o.model);
  io::Recipe r;
  r.set("training.gptq.damp", fmt::format("{}", o.damp), "--damp");
  r.set("training.gptq.act_order", o.act_order ? "true" : "false", "--act-order");
  r.set("training.gptq.static_groups", o.static_groups ? "true" : "false", "--static-groups");
  r.set("training.gptq.block_columns", std::to_string(o.block_columns), "--block-columns");
  r.set("training.init", o.clip ? "mse" : "minmax", "--clip-search");
  auto go = train::gptq_run_options_from_recipe(r);
  go.device = dist::resolve_device(o.device, *comm, "--device");
  go.comm = comm.get();
  data::CalibrationOptions co;
  co.samples = o.samples;
  co.seqlen = o.seqlen;
  if (co.seqlen == 0) co.seqlen = std::min<int64_t>(512, folder.config().max_position_embeddings);
  co.seqlen = model::fit_seqlen(folder.config(), co.seqlen, /*given=*/true, "--seqlen");
  if (co.seqlen < 2) throw InputError("--seqlen " + std::to_string(co.seqlen) + " must be at least 2");
  co.seed = static_cast<uint64_t>(o.seed);
  const auto calib = data::load_token_calibration(o.calib, folder.tokenizer(), co);
  if (calib.consecutive)
    spdlog::warn("'{}' holds {} tokens, fewer than {} x {}: using {} consecutive windows", o.calib, calib.total_tokens,
                 co.samples, co.seqlen, calib.sequences.size());
  const auto res = train::gptq_model(folder, plan, train::stack_sequences(calib.sequences), go);
  if (comm->is_main()) {
    so.method = std::string("gptq") + (o.act_order ? (o.static_groups ? "+act-order-static" : "+act-order") : "");
    quant::save_quantized_checkpoint(*res.model.shell, res.model.config, res.model.blocks, o.out, so);
    util::write_file_atomic((fs::path(o.out) / "gptq_log.jsonl").string(), train::gptq_log_jsonl(res.logs));
    std::cout << train::gptq_summary_table(res.logs);
  }
  comm->barrier();
  return comm->is_main();
}

}  // namespace

void add_quantize_command(CLI::App& app) {
  auto o = std::make_shared<QuantizeOpts>();
  auto* sub = app.add_subcommand("quantize", "Post-training quantization (RTN or GPTQ) from a bit plan -> packed checkpoint");
  sub->add_option("model", o->model, "model folder")->required();
  sub->add_option("--plan", o->plan, "bitplan.json: {\"modules\": {NAME: {\"bits\": B, \"group_size\": G}}}")->required();
  sub->add_option("--method", o->method, "rtn (round to nearest) or gptq (needs --calib)")->capture_default_str();
  sub->add_option("--out", o->out, "output checkpoint folder (written atomically)")->required();
  sub->add_flag("--clip-search", o->clip, "per-group clipping search minimising weight MSE");
  sub->add_option("--dtype", o->dtype, "storage of unquantized tensors: f16, bf16, f32")->capture_default_str();
  sub->add_option("--max-shard-size", o->shard, "shard model.safetensors above this size (0 = never)")
      ->capture_default_str();
  sub->add_flag("--force", o->force, "replace a non-empty output folder");
  sub->add_option("--calib", o->calib, "gptq: calibration text or JSONL file");
  sub->add_option("--samples", o->samples, "gptq: calibration sequences")->capture_default_str();
  sub->add_option("--seqlen", o->seqlen, "gptq: tokens per calibration sequence (0 = min(512, model max))")->capture_default_str();
  sub->add_flag("--act-order", o->act_order, "gptq: columns by decreasing Hessian diagonal (desc_act)");
  sub->add_flag("--static-groups", o->static_groups, "gptq: with --act-order, keep groups contiguous");
  sub->add_option("--damp", o->damp, "gptq: damping relative to mean(diag H)")->capture_default_str();
  sub->add_option("--block-columns", o->block_columns, "gptq: lazy-batch width")->capture_default_str();
  sub->add_option("--seed", o->seed, "gptq: calibration sampling seed")->capture_default_str();
  sub->add_option("--device", o->device, "gptq: auto, cpu or cuda (one block at a time on it)")->capture_default_str();
  sub->add_option("--timeout-s", o->timeout_s, "gptq under mpqat launch: seconds a collective may wait for a peer")
      ->capture_default_str();
  sub->callback([o] {
    if (o->method != "rtn" && o->method != "gptq")
      throw InputError("--method '" + o->method + "' is not supported by quantize (accepted: rtn, gptq; QAT is `mpqat train`)");
    if (o->method == "gptq" && o->calib.empty())
      throw InputError("--method gptq needs --calib FILE (calibration text or JSONL for the Hessians)");
    if (o->method == "rtn" && (!o->calib.empty() || o->act_order || o->static_groups))
      throw InputError("--calib, --act-order and --static-groups apply to --method gptq only");
    if (o->static_groups && !o->act_order) spdlog::warn("--static-groups without --act-order changes nothing");
    quant::SaveOptions so;
    so.float_dtype = io::parse_float_dtype(o->dtype, "--dtype");
    so.max_shard_bytes = o->shard == "0" ? 0 : util::parse_bytes(o->shard, "--max-shard-size");
    if (quant::is_quantized_folder(o->model))
      throw InputError("model folder '" + o->model + "' is already quantized (quantize needs a float model)");
    if (fs::exists(o->out) && !(fs::is_directory(o->out) && fs::is_empty(o->out)) && !o->force)
      throw InputError("output folder '" + o->out + "' exists and is not empty (pass --force to replace it)");
    const auto plan = quant::load_bit_plan(o->plan);
    so.source_dir = o->model;
    so.plan = &plan;
    so.force = o->force;
    const auto n = static_cast<int64_t>(plan.quantized().size());
    if (o->method == "gptq") {
      if (!run_gptq(*o, plan, so)) return;
    } else {
      model::ModelFolder folder(o->model);
      quant::InitOptions init;
      init.clip_search = o->clip;
      // Block by block: one float block in memory whatever the model's size.
      const auto q = quant::rtn_quantize_blocks(folder, plan, init);
      so.method = o->clip ? "rtn+clip" : "rtn";
      quant::save_quantized_checkpoint(*q.shell, q.config, q.blocks, o->out, so);
    }
    const auto r = quant::inspect_checkpoint(o->out);
    std::cout << fmt::format("quantized {} of {} linears -> {} ({}, {:.3f} bpw incl. scales/zeros/g_idx, {:.3f} code "
                             "bits, compression {:.3f}x vs fp16)\n",
                             n, r.modules.size(), o->out, util::format_bytes(r.total_bytes), r.avg_bits_with_overhead,
                             r.avg_bits, r.compression_ratio);
  });
}

}  // namespace mpqat::cli
