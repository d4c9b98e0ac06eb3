// `mpqat train DIR --plan PLAN.json --calib FILE [--samples N] [--seqlen L] [--e2e] --out OUT`
// Block-AP (with SGRA from the plan) and optional E2E-QP -> packed checkpoint + train_log.jsonl.
#include <CLI/CLI.hpp>
#include <chrono>
#include <functional>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "mpqat/cli/commands.h"
#include "mpqat/data/calibration.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/io/recipe.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/train/block_ap.h"
#include "mpqat/train/e2e_qp.h"
#include "mpqat/train/options.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;

namespace mpqat::cli {

namespace {

struct TrainOpts {
  std::string model, plan, calib, out, recipe, state_dir, cache_dir, cache_limit, cache_dtype, init, device,
      dtype;
  int64_t samples = 0, seqlen = 0, batch = 0, seed = 0, e2e_batch = 0, timeout_s = 0;
  int epochs = 0, patience = 0, e2e_epochs = 0;
  double lr_w = 0, lr_q = 0, min_lr = 0, val = 0, e2e_lr = 0, e2e_clip = 0, e2e_warmup = 0, gptq_damp = 0;
  bool gptq_act_order = false, gptq_train_scales = false;
  bool e2e = false, no_sgra = false, train_norm = false, no_resume = false, keep_state = false, force = false;
  std::vector<std::string> overrides;
};

// Block-AP (+ E2E-QP) with the settings of `r`, then the checkpoint, the log and the summary.
void train_from(const TrainOpts& o, const io::Recipe& r, bool seqlen_given, bool patience_given, bool val_given) {
  const io::DType dt = io::parse_float_dtype(r.str("output.float_dtype"), "output.float_dtype");
  if (fs::exists(o.out) && !(fs::is_directory(o.out) && fs::is_empty(o.out)) && !o.force)
    throw InputError("output folder '" + o.out + "' exists and is not empty (pass --force to replace it)");

  dist::Options dopt;
  dopt.backend = r.str("distributed.backend");
  dopt.timeout = std::chrono::seconds(r.integer("distributed.timeout_s"));
  auto comm = dist::Communicator::from_env(dopt);
  const auto plan = quant::load_bit_plan(o.plan);
  model::ModelFolder folder(o.model);
  data::CalibrationOptions co;
  co.samples = r.integer("data.calibration.samples");
  const int64_t asked = r.integer("data.calibration.seqlen");
  co.seqlen = model::fit_seqlen(folder.config(), asked, seqlen_given, "--seqlen");
  if (co.seqlen < asked)
    spdlog::warn("data.calibration.seqlen {} exceeds the model's max_position_embeddings {}: using {}", asked,
                 co.seqlen, co.seqlen);
  co.seed = static_cast<uint64_t>(r.integer("seed"));
  const auto calib = data::load_token_calibration(o.calib, folder.tokenizer(), co);
  if (calib.consecutive)
    spdlog::warn("'{}' holds {} tokens, fewer than {} x {}: using {} consecutive windows", o.calib, calib.total_tokens,
                 co.samples, co.seqlen, calib.sequences.size());
  const auto batch = train::stack_sequences(calib.sequences);

  auto bo = train::block_ap_options_from_recipe(r, batch.size());
  if (patience_given) bo.patience = o.patience;
  if (val_given) bo.val_fraction = o.val;
  bo.state_dir = o.state_dir.empty() ? fs::path(o.out).lexically_normal().string() + ".state" : o.state_dir;
  // One training per state folder: a second `mpqat train` on it stops before touching it.
  std::unique_ptr<util::FolderLock> lock;
  if (comm->is_main()) {
    lock = std::make_unique<util::FolderLock>(bo.state_dir, "training state folder");
    if (!bo.resume)
      for (const auto& e : fs::directory_iterator(bo.state_dir))
        if (e.path().filename() != util::FolderLock::kFileName) fs::remove_all(e.path());
  }
  comm->barrier();
  bo.device = dist::resolve_device(r.str("model.device"), *comm, "--device");
  bo.comm = comm.get();

  auto res = train::block_ap(folder, plan, batch, bo);
  const bool e2e = r.flag("training.e2e.enabled");
  if (e2e) train::e2e_qp(res, batch, train::e2e_options_from_recipe(r), comm.get());
  if (comm->is_main()) {
    quant::SaveOptions so;
    so.source_dir = o.model;
    so.float_dtype = dt;
    so.method = e2e ? "block-ap+e2e-qp" : "block-ap";
    so.plan = &plan;
    so.force = o.force;
    quant::save_quantized_checkpoint(*res.shell, res.config, res.blocks, o.out, so);
    util::write_file_atomic((fs::path(o.out) / "train_log.jsonl").string(), train::train_log_jsonl(res));
    std::cout << train::summary_table(res);
    const auto ins = quant::inspect_checkpoint(o.out);
    std::cout << fmt::format("trained {} blocks -> {} ({}, {:.3f} bpw incl. scales/zeros/g_idx, {:.3f} code bits, "
                             "compression {:.3f}x vs fp16)\n",
                             res.blocks.size(), o.out, util::format_bytes(ins.total_bytes), ins.avg_bits_with_overhead,
                             ins.avg_bits, ins.compression_ratio);
    if (!o.keep_state) fs::remove_all(bo.state_dir);
  }
  comm->barrier();
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOpts>();
  auto* sub = app.add_subcommand("train", "Block-wise QAT (Block-AP with SGRA), optional E2E-QP -> quantized checkpoint");
  sub->add_option("model", o->model, "float model folder")->required();
  sub->add_option("--plan", o->plan, "bitplan.json (from mpqat allocate; its sgra entries set per-block epochs/lr/patience)")
      ->required();
  sub->add_option("--calib", o->calib, "calibration text or JSONL file")->required();
  sub->add_option("--out", o->out, "output checkpoint folder (written atomically)")->required();
  sub->add_option("--recipe", o->recipe, "recipe whose training.* / data.calibration.* keys set the defaults");
  // Each option below sets one recipe key (the recipe defaults apply where it is not given), so
  // `mpqat train` and `mpqat run` read the same settings the same way (train/options.h).
  struct Mapped {
    CLI::Option* opt;
    std::string key;
    std::function<std::string()> value;
  };
  auto mapped = std::make_shared<std::vector<Mapped>>();
  auto num = [](auto* v) { return [v] { return fmt::format("{}", *v); }; };  // shortest exact text
  auto text = [](std::string* v) { return [v] { return "'" + *v + "'"; }; };
  auto map = [&](CLI::Option* opt, const std::string& key, std::function<std::string()> value) {
    opt->description(opt->get_description() + " [" + key + "]");
    mapped->push_back({opt, key, std::move(value)});
  };
  map(sub->add_option("--samples", o->samples, "calibration sequences"), "data.calibration.samples", num(&o->samples));
  map(sub->add_option("--seqlen", o->seqlen, "tokens per sequence"), "data.calibration.seqlen", num(&o->seqlen));
  map(sub->add_flag("--e2e", o->e2e, "run E2E-QP (step sizes only, next-token loss) after Block-AP"),
      "training.e2e.enabled", [] { return std::string("true"); });
  map(sub->add_option("--epochs", o->epochs, "epochs per block without SGRA"), "training.epochs", num(&o->epochs));
  map(sub->add_option("--batch-size", o->batch, "global sequences per step"), "training.batch_size", num(&o->batch));
  map(sub->add_option("--lr-weights", o->lr_w, "AdamW lr of the weights"), "training.lr_weights", num(&o->lr_w));
  map(sub->add_option("--lr-quant", o->lr_q, "AdamW lr of scales / zeros"), "training.lr_quant", num(&o->lr_q));
  map(sub->add_option("--min-lr-ratio", o->min_lr, "cosine floor as a fraction of lr"), "training.min_lr_ratio",
      num(&o->min_lr));
  map(sub->add_flag("--no-sgra", o->no_sgra, "ignore the plan's SGRA entries"), "allocation.sgra.enabled",
      [] { return std::string("false"); });
  map(sub->add_flag("--train-norm", o->train_norm, "also train norm weights"), "training.train_norm",
      [] { return std::string("true"); });
  map(sub->add_option("--init", o->init, "quantizer start: minmax, mse or gptq (GPTQ on the quantized chain's inputs)"),
      "training.init", text(&o->init));
  map(sub->add_flag("--gptq-act-order", o->gptq_act_order, "--init gptq: act-order (with static groups)"),
      "training.gptq.act_order", [] { return std::string("true"); });
  map(sub->add_flag("--gptq-train-scales", o->gptq_train_scales,
                    "--init gptq: also train GPTQ's scales and zeros (off: they stay GPTQ's)"),
      "training.gptq.train_scales", [] { return std::string("true"); });
  map(sub->add_option("--gptq-damp", o->gptq_damp, "--init gptq: damping relative to mean(diag H)"),
      "training.gptq.damp", num(&o->gptq_damp));
  map(sub->add_flag("--no-resume", o->no_resume, "start over even when the state folder holds progress"),
      "training.resume", [] { return std::string("false"); });
  map(sub->add_option("--cache-dir", o->cache_dir, "folder for spilled activation caches"), "training.cache_dir",
      text(&o->cache_dir));
  map(sub->add_option("--cache-memory-limit", o->cache_limit, "activation caches past this go to disk"),
      "training.cache_memory_limit", text(&o->cache_limit));
  map(sub->add_option("--cache-dtype", o->cache_dtype, "float16, bfloat16 or float32"), "training.cache_dtype",
      text(&o->cache_dtype));
  map(sub->add_option("--seed", o->seed, "sampling / shuffling seed"), "seed", num(&o->seed));
  map(sub->add_option("--timeout-s", o->timeout_s, "seconds a collective may wait for a peer (under mpqat launch)"),
      "distributed.timeout_s", num(&o->timeout_s));
  map(sub->add_option("--device", o->device, "auto, cpu or cuda (one block at a time on it)"), "model.device",
      text(&o->device));
  map(sub->add_option("--dtype", o->dtype, "storage of unquantized tensors: float16, bfloat16, float32"),
      "output.float_dtype", [o] {
        return std::string(io::config_dtype_name(io::parse_float_dtype(o->dtype, "--dtype"), "--dtype"));
      });
  map(sub->add_option("--e2e-epochs", o->e2e_epochs, "E2E-QP epochs"), "training.e2e.epochs", num(&o->e2e_epochs));
  map(sub->add_option("--e2e-lr", o->e2e_lr, "E2E-QP learning rate"), "training.e2e.lr", num(&o->e2e_lr));
  map(sub->add_option("--e2e-grad-clip", o->e2e_clip, "E2E-QP gradient-norm clip"), "training.e2e.grad_clip",
      num(&o->e2e_clip));
  map(sub->add_option("--e2e-warmup", o->e2e_warmup, "E2E-QP warm-up fraction"), "training.e2e.warmup_ratio",
      num(&o->e2e_warmup));
  map(sub->add_option("--e2e-batch-size", o->e2e_batch, "E2E-QP sequences per step"), "training.e2e.batch_size",
      num(&o->e2e_batch));
  auto* o_patience = sub->add_option("--patience", o->patience, "early-stopping patience without SGRA (0 = off)");
  auto* o_val = sub->add_option("--val-fraction", o->val,
                                "held-out share of the calibration sequences (default: data.validation_samples of them)");
  sub->add_option("--state-dir", o->state_dir, "progress folder for resuming (default OUT.state)");
  sub->add_flag("--keep-state", o->keep_state, "keep the state folder after success");
  sub->add_flag("--force", o->force, "replace a non-empty output folder");
  sub->add_option("overrides", o->overrides, "recipe overrides key=value (with --recipe)");

  sub->callback([=] {
    // The recipe (or the defaults), then the options given explicitly.
    io::Recipe r = o->recipe.empty() ? io::Recipe() : io::Recipe::from_file(o->recipe, o->overrides);
    if (o->recipe.empty() && !o->overrides.empty())
      throw InputError("'" + o->overrides.front() + "': key=value overrides need --recipe");
    for (const auto& m : *mapped)
      if (m.opt->count() > 0) r.set(m.key, m.value(), m.opt->get_name());
    if (o_val->count() > 0 && (o->val < 0 || o->val >= 1)) throw InputError("--val-fraction must be in [0, 1)");
    train_from(*o, r, sub->get_option("--seqlen")->count() > 0, o_patience->count() > 0, o_val->count() > 0);
  });
}

}  // namespace mpqat::cli
