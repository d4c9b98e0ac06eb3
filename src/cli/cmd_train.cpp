// `mpqat train DIR --plan PLAN.json --calib FILE [--samples N] [--seqlen L] [--e2e] --out OUT`
// Block-AP (with SGRA from the plan) and optional E2E-QP -> packed checkpoint + train_log.jsonl.
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

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
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;

namespace mpqat::cli {

void add_train_command(CLI::App& app) {
  struct Opts {
    std::string model, plan, calib, out, recipe, state_dir, cache_dir, cache_limit = "8GiB", init = "minmax",
        device = "cpu", dtype = "f16";
    int64_t samples = 128, seqlen = 512, batch = 2, seed = 0;
    int epochs = 2, patience = 0, e2e_epochs = 1;
    double lr_w = 1e-5, lr_q = 1e-4, min_lr = 0.05, val = 0.1, e2e_lr = 1e-5, e2e_clip = 0.3, e2e_warmup = 0.03;
    bool e2e = false, no_sgra = false, train_norm = false, no_resume = false, keep_state = false, force = false;
    std::vector<std::string> overrides;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("train", "Block-wise QAT (Block-AP with SGRA), optional E2E-QP -> quantized checkpoint");
  sub->add_option("model", o->model, "float model folder")->required();
  sub->add_option("--plan", o->plan, "bitplan.json (from mpqat allocate; its sgra entries set per-block epochs/lr/patience)")
      ->required();
  sub->add_option("--calib", o->calib, "calibration text or JSONL file")->required();
  sub->add_option("--out", o->out, "output checkpoint folder (written atomically)")->required();
  sub->add_option("--recipe", o->recipe, "recipe whose training.* / data.calibration.* keys set the defaults");
  auto* o_samples = sub->add_option("--samples", o->samples, "calibration sequences")->capture_default_str();
  auto* o_seqlen = sub->add_option("--seqlen", o->seqlen, "tokens per sequence")->capture_default_str();
  auto* o_e2e = sub->add_flag("--e2e", o->e2e, "run E2E-QP (step sizes only, next-token loss) after Block-AP");
  auto* o_epochs = sub->add_option("--epochs", o->epochs, "epochs per block without SGRA")->capture_default_str();
  sub->add_option("--patience", o->patience, "early-stopping patience without SGRA (0 = off)")
                    ->capture_default_str();
  auto* o_batch = sub->add_option("--batch-size", o->batch, "global sequences per step")->capture_default_str();
  auto* o_lrw = sub->add_option("--lr-weights", o->lr_w, "AdamW lr of the weights")->capture_default_str();
  auto* o_lrq = sub->add_option("--lr-quant", o->lr_q, "AdamW lr of scales / zeros")->capture_default_str();
  auto* o_minlr = sub->add_option("--min-lr-ratio", o->min_lr, "cosine floor as a fraction of lr")->capture_default_str();
  sub->add_option("--val-fraction", o->val, "held-out share of the calibration sequences")->capture_default_str();
  sub->add_flag("--no-sgra", o->no_sgra, "ignore the plan's SGRA entries");
  auto* o_norm = sub->add_flag("--train-norm", o->train_norm, "also train norm weights");
  auto* o_init = sub->add_option("--init", o->init, "quantizer init: minmax or mse")->capture_default_str();
  sub->add_option("--state-dir", o->state_dir, "progress folder for --resume (default OUT.state)");
  sub->add_flag("--no-resume", o->no_resume, "start over even when the state folder holds progress");
  sub->add_flag("--keep-state", o->keep_state, "keep the state folder after success");
  auto* o_cdir = sub->add_option("--cache-dir", o->cache_dir, "folder for spilled activation caches");
  auto* o_climit = sub->add_option("--cache-memory-limit", o->cache_limit, "activation caches past this go to disk")
                       ->capture_default_str();
  auto* o_seed = sub->add_option("--seed", o->seed, "sampling / shuffling seed")->capture_default_str();
  sub->add_option("--device", o->device, "cpu or cuda (one block at a time on it)")->capture_default_str();
  sub->add_option("--dtype", o->dtype, "storage of unquantized tensors: f16, bf16, f32")->capture_default_str();
  auto* o_e2e_ep = sub->add_option("--e2e-epochs", o->e2e_epochs, "E2E-QP epochs")->capture_default_str();
  auto* o_e2e_lr = sub->add_option("--e2e-lr", o->e2e_lr, "E2E-QP learning rate")->capture_default_str();
  auto* o_e2e_clip = sub->add_option("--e2e-grad-clip", o->e2e_clip, "E2E-QP gradient-norm clip")->capture_default_str();
  auto* o_e2e_warm = sub->add_option("--e2e-warmup", o->e2e_warmup, "E2E-QP warm-up fraction")->capture_default_str();
  sub->add_flag("--force", o->force, "replace a non-empty output folder");
  sub->add_option("overrides", o->overrides, "recipe overrides key=value (with --recipe)");

  sub->callback([=] {
    // Recipe defaults, overridden by flags given explicitly.
    if (!o->recipe.empty()) {
      const auto r = io::Recipe::from_file(o->recipe, o->overrides);
      auto take = [](CLI::Option* opt) { return opt->count() == 0; };
      if (take(o_samples)) o->samples = r.integer("data.calibration.samples");
      if (take(o_seqlen)) o->seqlen = r.integer("data.calibration.seqlen");
      if (take(o_seed)) o->seed = r.integer("seed");
      if (take(o_epochs)) o->epochs = static_cast<int>(r.integer("training.epochs"));
      if (take(o_batch)) o->batch = r.integer("training.batch_size");
      if (take(o_lrw)) o->lr_w = r.number("training.lr_weights");
      if (take(o_lrq)) o->lr_q = r.number("training.lr_quant");
      if (take(o_minlr)) o->min_lr = r.number("training.min_lr_ratio");
      if (take(o_norm)) o->train_norm = r.flag("training.train_norm");
      if (take(o_init)) o->init = r.str("training.init");
      if (take(o_cdir)) o->cache_dir = r.str("training.cache_dir");
      if (take(o_climit)) o->cache_limit = r.str("training.cache_memory_limit");
      if (take(o_e2e)) o->e2e = r.flag("training.e2e.enabled");
      if (take(o_e2e_ep)) o->e2e_epochs = static_cast<int>(r.integer("training.e2e.epochs"));
      if (take(o_e2e_lr)) o->e2e_lr = r.number("training.e2e.lr");
      if (take(o_e2e_clip)) o->e2e_clip = r.number("training.e2e.grad_clip");
      if (take(o_e2e_warm)) o->e2e_warmup = r.number("training.e2e.warmup_ratio");
      if (!r.flag("allocation.sgra.enabled")) o->no_sgra = true;
      if (!r.flag("training.resume")) o->no_resume = true;
    } else if (!o->overrides.empty()) {
      throw InputError("'" + o->overrides.front() + "': key=value overrides need --recipe");
    }
    if (o->init != "minmax" && o->init != "mse")
      throw InputError("--init '" + o->init + "' is not supported (accepted: minmax, mse)");
    if (o->val < 0 || o->val >= 1) throw InputError("--val-fraction must be in [0, 1)");
    const io::DType dt = io::parse_float_dtype(o->dtype, "--dtype");
    if (o->device != "cpu" && o->device != "cuda")
      throw InputError("--device must be cpu or cuda, got '" + o->device + "'");
    if (o->device == "cuda" && !torch::cuda::is_available())
      throw InputError("--device cuda: LibTorch sees no CUDA device (use --device cpu)");
    if (fs::exists(o->out) && !(fs::is_directory(o->out) && fs::is_empty(o->out)) && !o->force)
      throw InputError("output folder '" + o->out + "' exists and is not empty (pass --force to replace it)");

    auto comm = dist::Communicator::from_env();
    const auto plan = quant::load_bit_plan(o->plan);
    model::ModelFolder folder(o->model);
    data::CalibrationOptions co;
    co.samples = o->samples;
    co.seqlen = o->seqlen;
    co.seed = static_cast<uint64_t>(o->seed);
    const auto calib = data::load_token_calibration(o->calib, folder.tokenizer(), co);
    if (calib.consecutive)
      spdlog::warn("'{}' holds {} tokens, fewer than {} x {}: using {} consecutive windows", o->calib, calib.total_tokens,
                   o->samples, o->seqlen, calib.sequences.size());
    const auto batch = train::stack_sequences(calib.sequences);

    train::BlockApOptions bo;
    bo.epochs = o->epochs;
    bo.patience = o->patience;
    bo.use_sgra = !o->no_sgra;
    bo.batch_size = o->batch;
    bo.lr_weights = o->lr_w;
    bo.lr_quant = o->lr_q;
    bo.min_lr_ratio = o->min_lr;
    bo.train_norm = o->train_norm;
    bo.init.clip_search = o->init == "mse";
    bo.val_fraction = o->val;
    bo.cache = model::cache_options("float16", o->cache_limit, o->cache_dir,
                                    {"--cache-dtype", "--cache-memory-limit", "--cache-dir"});
    bo.state_dir = o->state_dir.empty() ? fs::path(o->out).lexically_normal().string() + ".state" : o->state_dir;
    bo.resume = !o->no_resume;
    if (o->no_resume && comm->is_main() && fs::exists(bo.state_dir)) fs::remove_all(bo.state_dir);
    comm->barrier();
    bo.seed = static_cast<uint64_t>(o->seed);
    bo.device = o->device == "cuda" ? torch::Device(torch::kCUDA, comm->local_rank()) : torch::Device(torch::kCPU);
    bo.comm = comm.get();
    // Test hooks (documented in docs/training.md): a NaN loss at BLOCK:STEP; SIGKILL after a block.
    if (const char* h = std::getenv("MPQAT_TEST_NAN_AT")) {
      const std::string s(h);
      const auto c = s.find(':');
      if (c == std::string::npos) throw InputError("MPQAT_TEST_NAN_AT must be BLOCK:STEP");
      bo.nan_block = std::stoll(s.substr(0, c));
      bo.nan_step = std::stoll(s.substr(c + 1));
    }
    if (const char* k = std::getenv("MPQAT_TEST_KILL_AFTER_BLOCK")) {
      const int64_t kb = std::stoll(k);
      bo.after_block = [kb](int64_t b) {
        if (b == kb) std::raise(SIGKILL);
      };
    }

    auto res = train::block_ap(folder, plan, batch, bo);
    if (o->e2e) {
      train::E2eOptions eo;
      eo.epochs = o->e2e_epochs;
      eo.lr = o->e2e_lr;
      eo.grad_clip = o->e2e_clip;
      eo.warmup_ratio = o->e2e_warmup;
      eo.batch_size = 1;
      eo.seed = static_cast<uint64_t>(o->seed);
      train::e2e_qp(res, batch, eo, comm.get());
    }
    if (comm->is_main()) {
      quant::SaveOptions so;
      so.source_dir = o->model;
      so.float_dtype = dt;
      so.method = o->e2e ? "block-ap+e2e-qp" : "block-ap";
      so.plan = &plan;
      so.force = o->force;
      quant::save_quantized_checkpoint(*res.shell, res.config, res.blocks, o->out, so);
      util::write_file_atomic((fs::path(o->out) / "train_log.jsonl").string(), train::train_log_jsonl(res));
      std::cout << train::summary_table(res);
      const auto r = quant::inspect_checkpoint(o->out);
      std::cout << "trained " << res.blocks.size() << " blocks -> " << o->out << " (" << util::format_bytes(r.total_bytes)
                << ", " << r.avg_bits << " avg bits, compression " << r.compression_ratio << "x vs fp16)\n";
      if (!o->keep_state) fs::remove_all(bo.state_dir);
    }
    comm->barrier();
  });
}

}  // namespace mpqat::cli
