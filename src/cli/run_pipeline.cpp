// The `mpqat run` pipeline (include/mpqat/cli/run_pipeline.h, docs/pipeline.md).
#include "mpqat/cli/run_pipeline.h"
#include "mpqat/cli/commands.h"
#include "mpqat/cli/stage_cache.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "mpqat/alloc/allocate.h"
#include "mpqat/data/calibration.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/eval/classification.h"
#include "mpqat/eval/evaluate_model.h"
#include "mpqat/eval/multiple_choice.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/eval/report.h"
#include "mpqat/eval/run_report.h"
#include "mpqat/eval/seed_outputs.h"
#include "mpqat/eval/tasks.h"
#include "mpqat/io/gguf.h"
#include "mpqat/io/recipe.h"
#include "mpqat/model/activation_cache.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/classifier_input.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model_input.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/gguf_export.h"
#include "mpqat/quant/gguf_kquants.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/sensitivity/imatrix.h"
#include "mpqat/sensitivity/run_sensitivity.h"
#include "mpqat/train/block_ap.h"
#include "mpqat/train/e2e_qp.h"
#include "mpqat/train/gptq.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/train/options.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mpqat::cli {
namespace {

using Clock = std::chrono::steady_clock;

// Every configured evaluation of the model in `dir` (float or quantized), through the evaluation
// `mpqat eval` uses too (eval/evaluate_model.h).
eval::ModelMetrics evaluate_folder(const std::string& dir, const io::Recipe& r, dist::Communicator& comm) {
  const model::ModelFolder folder(dir);
  const auto& cfg = folder.config();
  const auto device = dist::resolve_device(r.str("model.device"), comm, "model.device");
  // The whole model when it fits model.memory_limit, else one block at a time.
  model::StreamingOptions st;
  st.device = device;
  st.mode = r.str("model.streaming");
  st.memory_limit = model::parse_memory_limit(r.str("model.memory_limit"), "model.memory_limit");
  auto src = model::open_blocks(folder, st);
  const uint64_t group = std::max<uint64_t>(256ull << 20, (st.memory_limit ? st.memory_limit : model::auto_memory_limit(device)) / 4);
  const model::BatchFn logits = model::batch_fn(*src, group);
  const auto req = eval::evaluation_request_from_recipe(r, cfg, src->shell().is_causal_lm());
  const auto ev = eval::evaluate_model(folder, logits, req, device, &comm);

  eval::ModelMetrics out;
  out.streamed = src->streaming();
  // One file: "ppl" is its number (the documented contract); several: one entry per file name.
  for (const auto& [f, res] : ev.perplexity)
    out.ppl.emplace_back(ev.perplexity.size() == 1 ? std::string() : fs::path(f).filename().string(), res.ppl);
  std::sort(out.ppl.begin(), out.ppl.end());  // by file name, as report.json lists them
  out.tasks = ev.tasks;
  std::sort(out.tasks.begin(), out.tasks.end(), [](const auto& a, const auto& b) { return a.task < b.task; });
  if (ev.classification) out.classification.emplace_back("", *ev.classification);
  return out;
}

// Calibration for Block-AP: token windows (causal LMs) or labelled examples padded to one
// length with a mask (classifiers).
train::TokenBatch calibration_batch(const model::ModelFolder& folder, const io::Recipe& r, int64_t samples,
                                    int64_t seqlen, uint64_t seed) {
  const std::string path = r.str("data.calibration.path");
  const auto& cfg = folder.config();
  const auto& tok = folder.tokenizer();
  if (!cfg.is_sequence_classifier()) {
    data::CalibrationOptions co;
    co.samples = samples;
    co.seqlen = model::fit_seqlen(cfg, seqlen, /*given=*/false, "data.calibration.seqlen");
    co.seed = seed;
    const auto cal = data::load_token_calibration(path, tok, co);
    return train::stack_sequences(cal.sequences);
  }
  data::ClassificationReadOptions ro;
  ro.text_field = r.str("data.calibration.text_field");
  ro.label_field = r.str("data.calibration.label_field");
  const auto cal = data::load_labelled_calibration(path, samples, data::parse_sampling(r.str("data.calibration.sampling")),
                                                   seed, ro);
  auto enc = model::classifier_encoding(cfg, tok);
  enc.max_length = std::min<int64_t>(seqlen, enc.max_length);
  const auto seqs = model::encode_for_classifier(tok, cal.texts, enc);
  auto padded = model::pad_right(seqs, enc.pad_id);
  train::TokenBatch b;
  b.ids = padded.ids;
  b.mask = padded.mask;
  return b;
}

io::DType float_dtype_of(const io::Recipe& r) {
  return io::parse_float_dtype(r.str("output.float_dtype"), "output.float_dtype");
}

uint64_t folder_safetensors_bytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") n += e.file_size();
  return n;
}

// The ranking written next to sensitivity.json, for the user.
std::string sensitivity_text_path(const std::string& json_path) {
  fs::path t(json_path);
  t.replace_extension(".txt");
  return fs::exists(t) ? util::read_file(t.string()) : std::string();
}

json read_json(const fs::path& p) { return json::parse(util::read_file(p.string())); }

void write_json(const fs::path& p, const json& j) { util::write_file_atomic(p.string(), j.dump(2) + "\n"); }

// The seeds' name of a data set: the folder holding `path`, upper case ("SST2"); "DATA" without.
std::string seed_data_name(const std::string& path) {
  std::string name = fs::path(path).parent_path().filename().string();
  for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name.empty() ? "DATA" : name;
}

// Sensitivities/layer_sensitivity_<MODEL>_<DATA>_<metric>.json/.txt from sensitivity.json's
// per-block scores.
void write_seed_sensitivity_file(const fs::path& out, const std::string& sens_path, const model::ModelConfig& cfg,
                                 const std::string& model_dir, const std::string& data_name, const std::string& metric) {
  const auto sj = read_json(sens_path);
  std::vector<double> per_block(static_cast<size_t>(cfg.num_hidden_layers), 0.0);
  if (sj.contains("blocks"))
    for (const auto& [k, v] : sj["blocks"].items())
      if (std::stoul(k) < per_block.size()) per_block[std::stoul(k)] = v.value("score", 0.0);
  eval::write_seed_sensitivity(out.string(), fs::path(model_dir).lexically_normal().filename().string(), data_name,
                               metric, per_block);
}

// What the stages of one run share.
struct Run {
  const io::Recipe& r;
  dist::Communicator& comm;
  bool main;
  fs::path out;
  std::string model_dir, model_id, calib_path;
  const model::ModelFolder& folder;
  const model::ModelConfig& cfg;
  bool causal;
  StageCache stages;
  // The recipe values and files the evaluations read.
  std::string eval_inputs() const {
    // (model.streaming / memory_limit change where the model is, not the numbers: left out)
    std::string s = keys_text(r, {"evaluation.", "model.device"});
    for (const auto& f : r.strings("evaluation.perplexity")) s += file_identity(f);
    s += file_identity(r.str("evaluation.classification.path"));
    return s;
  }
  torch::Device device() const { return dist::resolve_device(r.str("model.device"), comm, "model.device"); }
};

// Stage fp_eval: the float model's metrics (empty when evaluation.fp_baseline is off).
eval::ModelMetrics stage_fp_eval(Run& run) {
  if (!run.r.flag("evaluation.fp_baseline")) return {};
  run.stages.begin("fp_eval");
  const std::string h = util::fnv1a64_hex(run.model_id + run.eval_inputs());
  const bool reuse = run.stages.reusable("fp_eval", h, {run.out / "fp_eval.json"});
  eval::ModelMetrics fp;
  if (reuse) {
    fp = eval::model_metrics_from_json(read_json(run.out / "fp_eval.json"));
  } else {
    spdlog::info("stage fp_eval: evaluating the float model");
    fp = evaluate_folder(run.model_dir, run.r, run.comm);
    if (run.main) write_json(run.out / "fp_eval.json", eval::to_json(fp));
  }
  run.stages.done("fp_eval", h, reuse);
  return fp;
}

// Stage sensitivity: sensitivity.json (or the recipe's sensitivity.file). Returns its path ("" when
// allocation.method plan needs none) and sets `hash` to what the allocation depends on.
std::string stage_sensitivity(Run& run, std::string& hash) {
  const auto& r = run.r;
  std::string sens_path = r.str("sensitivity.file");
  if (!sens_path.empty()) {
    hash = util::fnv1a64_hex(file_identity(sens_path));
    return sens_path;
  }
  if (r.str("allocation.method") == "plan") return "";
  // Uniform bits without calibration data (RTN): nothing needs a sensitivity (preflight agrees).
  if (r.str("allocation.method") == "uniform" && run.calib_path.empty()) return "";
  run.stages.begin("sensitivity");
  if (run.calib_path.empty())
    throw InputError(r.source() + ": data.calibration.path is required for the sensitivity stage (or set sensitivity.file)");
  hash = util::fnv1a64_hex(run.model_id + file_identity(run.calib_path) +
             keys_text(r, {"data.calibration.", "sensitivity.", "allocation.bits", "allocation.group_sizes"}));
  sens_path = (run.out / "sensitivity.json").string();
  const bool reuse = run.stages.reusable("sensitivity", hash, {sens_path});
  if (!reuse) {
    spdlog::info("stage sensitivity: {} on {}", fmt::format("{}", fmt::join(r.strings("sensitivity.metrics"), ", ")),
                 run.calib_path);
    auto so = sensitivity::sensitivity_options_from_recipe(r, run.out.string());
    so.seqlen = model::fit_seqlen(run.cfg, so.seqlen, /*given=*/false, "data.calibration.seqlen");
    so.device = run.device();
    const auto rep = sensitivity::compute_sensitivity(so, &run.comm);
    if (run.main) sensitivity::write_sensitivity(rep, sens_path);
    run.comm.barrier();
  }
  run.stages.done("sensitivity", hash, reuse);
  return sens_path;
}

// Stage allocation: bitplan.json, bitplan.txt, allocation.json. Returns the allocator's summary
// and sets `hash` to what the quantization depends on.
json stage_allocation(Run& run, const std::string& sens_path, const std::string& sens_hash,
                      const alloc::SizeModel& sm, std::string& hash) {
  const auto& r = run.r;
  const fs::path plan_path = run.out / "bitplan.json";
  run.stages.begin("allocation");
  hash = util::fnv1a64_hex(sens_hash + run.model_id + keys_text(r, {"allocation.", "output.float_dtype", "output.shard_size"}) +
             file_identity(r.str("allocation.plan")));
  const bool reuse = run.stages.reusable("allocation", hash, {plan_path, run.out / "allocation.json"});
  json summary;
  if (reuse) {
    summary = read_json(run.out / "allocation.json");
  } else {
    spdlog::info("stage allocation: {}", r.str("allocation.method"));
    const auto ao = alloc::alloc_options_from_recipe(r);
    const alloc::Sensitivity sens =
        sens_path.empty() ? alloc::equal_sensitivity(sm.layout()) : alloc::load_sensitivity(sens_path);
    const auto res = alloc::allocate(sm, sens, ao);
    summary = alloc::summary_json(res);
    if (run.main) {
      alloc::write_plan(plan_path.string(), res, sm, ao);
      util::write_file_atomic((run.out / "bitplan.txt").string(), alloc::result_text(res));
      write_json(run.out / "allocation.json", summary);
    }
    run.comm.barrier();
  }
  run.stages.done("allocation", hash, reuse);
  return summary;
}

// RTN or Block-AP (+ E2E-QP) into `ckpt` (rank 0 writes), for stage_quantize.
void quantize_into(Run& run, const quant::BitPlan& plan, const fs::path& ckpt) {
  const auto& r = run.r;
  quant::SaveOptions so;
  so.source_dir = run.model_dir;
  so.float_dtype = float_dtype_of(r);
  so.max_shard_bytes = util::parse_bytes(r.str("output.shard_size"), "output.shard_size");
  so.plan = &plan;
  so.force = true;
  quant::InitOptions init;
  init.clip_search = r.str("training.init") == "mse";
  if (r.str("training.method") == "rtn") {
    spdlog::info("stage quantize: RTN");
    so.method = init.clip_search ? "rtn+clip" : "rtn";
    if (run.main) {
      const auto q = quant::rtn_quantize_blocks(run.folder, plan, init);
      quant::save_quantized_checkpoint(*q.shell, q.config, q.blocks, ckpt.string(), so);
    }
    return;
  }
  const std::string method = r.str("training.method");
  if (run.calib_path.empty())
    throw InputError(r.source() + ": data.calibration.path is required for training.method " + method);
  const bool e2e = r.flag("training.e2e.enabled");
  if (e2e && !run.causal) throw InputError(r.source() + ": training.e2e needs a causal LM (next-token loss)");
  const bool gptq = method == "gptq";
  spdlog::info("stage quantize: {}{}", gptq ? "GPTQ" : "Block-AP", e2e ? " + E2E-QP" : "");
  const auto batch = calibration_batch(run.folder, r, r.integer("data.calibration.samples"),
                                       r.integer("data.calibration.seqlen"),
                                       static_cast<uint64_t>(r.integer("data.calibration.seed")));
  auto bo = train::block_ap_options_from_recipe(r, batch.size());
  bo.state_dir = (run.out / "train_state").string();
  bo.device = run.device();
  bo.comm = &run.comm;
  train::QatResult res;
  std::vector<train::GptqBlockLog> gptq_logs;
  if (gptq) {
    auto go = train::gptq_run_options_from_recipe(r);
    go.device = run.device();
    go.comm = &run.comm;
    run.stages.part_begin("gptq");
    auto g = train::gptq_model(run.folder, plan, batch, go);
    run.stages.part_done();
    res = std::move(g.model);
    gptq_logs = std::move(g.logs);
  } else {
    run.stages.part_begin("block_ap");
    res = train::block_ap(run.folder, plan, batch, bo);
    run.stages.part_done();
  }
  if (e2e) {
    const auto edata = calibration_batch(run.folder, r, r.integer("training.e2e.samples"),
                                         r.integer("training.e2e.seqlen"),
                                         static_cast<uint64_t>(r.integer("data.calibration.seed")) + 1);
    run.stages.part_begin("e2e_qp");
    train::e2e_qp(res, edata, train::e2e_options_from_recipe(r), &run.comm);
    run.stages.part_done();
  }
  so.method = std::string(gptq ? "gptq" : "block-ap") + (e2e ? "+e2e-qp" : "");
  if (run.main) {
    run.stages.part_begin("save");
    quant::save_quantized_checkpoint(*res.shell, res.config, res.blocks, ckpt.string(), so);
    run.stages.part_done();
    if (gptq) {
      util::write_file_atomic((run.out / "gptq_log.jsonl").string(), train::gptq_log_jsonl(gptq_logs));
      std::cout << train::gptq_summary_table(gptq_logs);
    }
    util::write_file_atomic((run.out / "train_log.jsonl").string(), train::train_log_jsonl(res));
    if (!gptq) std::cout << train::summary_table(res);
    fs::remove_all(bo.state_dir);
  }
}

// Stage quantize: checkpoint/ and train_log.jsonl. Sets `hash` to what the reload depends on.
void stage_quantize(Run& run, const quant::BitPlan& plan, const std::string& plan_hash, std::string& hash) {
  const auto& r = run.r;
  const fs::path ckpt = run.out / "checkpoint";
  run.stages.begin("quantize");
  hash = util::fnv1a64_hex(plan_hash + run.model_id + file_identity(run.calib_path) +
             keys_text(r, {"training.", "data.calibration.", "data.validation_samples", "seed", "output.float_dtype",
                           "output.shard_size"}));
  std::vector<fs::path> outs{ckpt};
  if (r.str("training.method") != "rtn") outs.push_back(run.out / "train_log.jsonl");
  if (r.str("training.method") == "gptq") outs.push_back(run.out / "gptq_log.jsonl");
  const bool reuse = run.stages.reusable("quantize", hash, outs);
  if (!reuse) {
    run.stages.forget("reload_eval");
    quantize_into(run, plan, ckpt);
    run.comm.barrier();
  }
  run.stages.done("quantize", hash, reuse);
}

// Stage reload_eval: the checkpoint loaded back through the loader and evaluated.
eval::ModelMetrics stage_reload_eval(Run& run, const std::string& qat_hash) {
  const fs::path ckpt = run.out / "checkpoint";
  run.stages.begin("reload_eval");
  const std::string h = util::fnv1a64_hex(qat_hash + file_identity(ckpt.string()) + run.eval_inputs());
  const bool reuse = run.stages.reusable("reload_eval", h, {run.out / "quantized_eval.json"});
  eval::ModelMetrics qm;
  if (reuse) {
    qm = eval::model_metrics_from_json(read_json(run.out / "quantized_eval.json"));
  } else {
    spdlog::info("stage reload_eval: loading {} and evaluating", ckpt.string());
    qm = evaluate_folder(ckpt.string(), run.r, run.comm);
    if (run.main) write_json(run.out / "quantized_eval.json", eval::to_json(qm));
  }
  run.stages.done("reload_eval", h, reuse);
  return qm;
}

// The budget as measured on the written checkpoint (never copied from the prediction).
eval::ReportBudget measured_budget(const json& alloc_summary, const fs::path& ckpt, const quant::InspectReport& insp) {
  eval::ReportBudget b;
  b.kind = alloc_summary.value("budget_metric", "");
  b.text = alloc_summary["budget"].is_string() ? alloc_summary["budget"].get<std::string>() : alloc_summary["budget"].dump();
  const uint64_t budget = alloc_summary.value("budget_bytes", uint64_t{0});
  uint64_t actual = 0;
  if (b.kind == "file_bytes") {
    actual = folder_safetensors_bytes(ckpt.string());
  } else if (b.kind == "tensor_bytes") {
    actual = insp.total_bytes;
  } else if (b.kind == "code_bits") {  // code bits of the block linears (a float module at its dtype's width)
    for (const auto& m : insp.modules) actual += static_cast<uint64_t>(m.bits) * static_cast<uint64_t>(m.out * m.in);
  } else {  // linear_bytes: every tensor of the block linears, as the file holds them
    for (const auto& m : insp.modules) actual += m.bytes;
  }
  b.value = static_cast<double>(budget);
  b.actual = actual;
  b.predicted = alloc_summary.value("predicted_metric_bytes", uint64_t{0});
  b.met = actual <= budget;
  return b;
}

// Per module: planned bits (and group) with its sensitivity metrics.
std::vector<eval::ReportLayer> layer_table(const Run& run, const quant::BitPlan& plan, const std::string& sens_path) {
  json sens_modules = json::object();
  if (!sens_path.empty() && fs::exists(sens_path)) {
    const auto sj = read_json(sens_path);
    if (sj.contains("modules")) sens_modules = sj["modules"];
  }
  std::vector<eval::ReportLayer> layers;
  for (int64_t b = 0; b < run.cfg.num_hidden_layers; ++b)
    for (const auto& rel : model::family_block_linear_names(run.cfg)) {
      eval::ReportLayer e;
      e.name = model::family_block_prefix(run.cfg, b) + rel;
      e.block = b;
      auto it = plan.modules.find(e.name);
      e.bits = it == plan.modules.end() ? 16 : it->second.bits;
      if (it != plan.modules.end() && it->second.quantized()) e.group_size = it->second.group_size;
      if (sens_modules.contains(e.name) && sens_modules[e.name].contains("metrics"))
        for (const auto& [metric, v] : sens_modules[e.name]["metrics"].items())
          e.sensitivity.emplace_back(metric, v.is_number() ? std::optional<double>(v.get<double>()) : std::nullopt);
      layers.push_back(std::move(e));
    }
  return layers;
}

// Block-AP's rows and E2E-QP's line of train_log.jsonl (train's document, docs/training.md).
void read_train_log(const fs::path& path, eval::RunReport& report) {
  if (!fs::exists(path)) return;
  std::istringstream ls(util::read_file(path.string()));
  for (std::string line; std::getline(ls, line);) {
    if (line.empty()) continue;
    const auto l = json::parse(line);
    if (l.contains("e2e")) {
      const json& e = l["e2e"];
      report.e2e = eval::ReportE2e{e.value("steps", int64_t{0}), e.value("nan_steps", int64_t{0}),
                                   e.value("start_loss", 0.0), e.value("end_loss", 0.0), e.value("seconds", 0.0)};
      continue;
    }
    train::BlockLog bl;
    try {
      bl = train::block_log_from_json(l);
    } catch (const json::exception& e) {  // a log of an older version: the report keeps what it can
      spdlog::warn("{}: a block line could not be read ({}); the report leaves it out", path.string(), e.what());
      continue;
    }
    eval::ReportBlock b;
    b.block = bl.block;
    b.epochs = bl.epochs_run;
    b.steps = bl.steps;
    b.start_val_mse = bl.start_val_mse;
    b.best_val_mse = bl.best_val_mse;
    b.end_val_mse = bl.end_val_mse;
    b.kept_rtn = bl.kept_rtn;
    b.seconds = bl.seconds;
    b.val_curve = bl.val_curve;
    report.blocks.push_back(std::move(b));
  }
}

// The run's report (eval/run_report.h; report.json is its JSON form, docs/reports.md).
eval::RunReport build_report(Run& run, eval::ModelMetrics fp, eval::ModelMetrics qm, const json& alloc_summary,
                             const quant::BitPlan& plan, const std::string& sens_path) {
  const auto& r = run.r;
  const fs::path ckpt = run.out / "checkpoint";
  const auto insp = quant::inspect_checkpoint(ckpt.string());
  eval::RunReport report;
  report.model = run.model_dir;
  report.recipe = r.source();
  report.name = r.str("output.name");
  report.created = util::utc_iso_now();
  report.mpqat_version = MPQAT_VERSION;
  report.architecture = run.cfg.architecture;
  report.method = eval::RunReport::Method{r.str("allocation.method"), r.str("training.method"),
                                          r.flag("training.e2e.enabled")};
  fp.bytes = insp.fp16_bytes;
  report.fp = std::move(fp);
  qm.bytes = insp.total_bytes;
  qm.avg_bits = insp.avg_bits;  // code bits (kept for readers of older reports)
  qm.code_bits = insp.avg_bits;
  qm.bpw = insp.avg_bits_with_overhead;
  report.quantized = std::move(qm);
  eval::ReportSize size;
  size.file_bytes = folder_safetensors_bytes(ckpt.string());
  size.tensor_bytes = insp.total_bytes;
  size.fp16_bytes = insp.fp16_bytes;
  size.avg_bits_with_overhead = insp.avg_bits_with_overhead;
  for (const auto& [bits, n] : insp.bits_histogram) size.bits_histogram[bits] = n;
  report.size = size;
  report.compression = insp.compression_ratio;
  if (alloc_summary.contains("budget")) report.budget = measured_budget(alloc_summary, ckpt, insp);
  report.allocation = alloc_summary;
  report.layers = layer_table(run, plan, sens_path);
  read_train_log(run.out / "train_log.jsonl", report);
  if (fs::exists(run.out / "gptq_log.jsonl")) {
    // GPTQ: the proxy loss tr((W - Q) H (W - Q)^T) summed over modules, against RTN's.
    eval::ReportGptq g;
    std::istringstream ls(util::read_file((run.out / "gptq_log.jsonl").string()));
    for (std::string line; std::getline(ls, line);) {
      if (line.empty()) continue;
      const auto l = json::parse(line).at("gptq");
      for (const auto& m : l.at("modules"))
        g.proxy_loss += m.at("proxy_loss").get<double>(), g.rtn_proxy_loss += m.at("rtn_proxy_loss").get<double>();
      g.seconds += l.at("seconds").get<double>();
    }
    report.gptq = g;
  }
  if (!run.causal) {
    report.data = seed_data_name(r.str("evaluation.classification.path"));
    report.sensitivity_metric = r.strings("sensitivity.metrics").front();
    report.calibration_samples = r.integer("data.calibration.samples");
    report.calibration_sampling = r.str("data.calibration.sampling");
    report.evaluation_path = r.str("evaluation.classification.path");
    report.evaluation_samples =
        report.quantized.classification.empty() ? 0 : report.quantized.classification.front().second.n;
  }
  report.stages = run.stages.report();
  return report;
}

// report.json / .txt / .html and, for classifiers, the seeds' files (rank 0).
void write_report(const Run& run, const eval::RunReport& report, const quant::BitPlan& plan,
                  const std::string& sens_path) {
  const auto& r = run.r;
  const auto formats = r.strings("output.report_formats");
  auto want = [&](const std::string& f) { return std::find(formats.begin(), formats.end(), f) != formats.end(); };
  write_json(run.out / "report.json", eval::to_json(report));  // always: the machine-readable result
  const std::string text = eval::render_run_report_text(report);
  if (want("txt")) util::write_file_atomic((run.out / "report.txt").string(), text);
  if (want("html")) util::write_file_atomic((run.out / "report.html").string(), eval::render_run_report_html(report));
  if (!run.causal) {
    // The seeds' file layout as well: Sensitivities/layer_sensitivity_<MODEL>_<DATA>_<metric>.json/.txt
    // (per-block score) and Evaluation/eval_<MODEL>_<DATA>_<method>_<k>groups_<timestamp>.txt.
    if (!sens_path.empty() && fs::exists(sens_path))
      write_seed_sensitivity_file(run.out, sens_path, run.cfg, run.model_dir, report.data, report.sensitivity_metric);
    const std::string am = r.str("allocation.method");
    std::set<int> distinct;
    for (const auto& [n, m] : plan.modules) distinct.insert(m.bits);
    const int k = (am == "kmeans" || am == "percentile" || am == "hierarchical")
                      ? static_cast<int>(r.integer("allocation.groups"))
                      : static_cast<int>(distinct.size());
    if (!report.fp.classification.empty() && !report.quantized.classification.empty()) {
      auto in = eval::seed_eval_from_report(report, am, k, eval::seed_timestamp());
      in.model = fs::path(run.model_dir).lexically_normal().filename().string();
      in.data = report.data;
      eval::write_seed_evaluation(run.out.string(), in);
    }
  }
  std::cout << text;
  std::cout << "run folder: " << run.out.string() << " (report.json" << (want("txt") ? ", report.txt" : "")
            << (want("html") ? ", report.html" : "") << ")\n";
}

}  // namespace

namespace {

// A data file a stage will read: exists, is a file, holds something.
void check_data_file(const io::Recipe& r, const std::string& path, const std::string& key) {
  if (path.empty()) throw InputError(r.source() + ": " + key + " is empty (a data file is required here)");
  if (!fs::exists(path)) throw InputError(r.source() + ": " + key + " '" + path + "' does not exist");
  if (!fs::is_regular_file(path)) throw InputError(r.source() + ": " + key + " '" + path + "' is not a file");
  if (fs::file_size(path) == 0) throw InputError(r.source() + ": " + key + " '" + path + "' is empty");
}

}  // namespace

void preflight_recipe(const io::Recipe& r) {
  const std::string model_dir = r.str("model.path");
  if (model_dir.empty()) throw InputError(r.source() + ": model.path is required (a Hugging Face model folder)");
  const model::ModelFolder folder(model_dir);  // config.json, safetensors headers, layers
  const std::string method = r.str("allocation.method");
  const bool measures_sensitivity =
      r.str("sensitivity.file").empty() && method != "uniform" && method != "plan";
  if (measures_sensitivity || r.str("training.method") != "rtn")
    check_data_file(r, r.str("data.calibration.path"), "data.calibration.path");
  for (const auto& f : r.strings("evaluation.perplexity")) check_data_file(r, f, "evaluation.perplexity");
  if (!r.str("evaluation.classification.path").empty())
    check_data_file(r, r.str("evaluation.classification.path"), "evaluation.classification.path");
  if (method == "plan") {
    check_data_file(r, r.str("allocation.plan"), "allocation.plan");
    return;
  }
  // The budget against the sizes the menu can reach (any sensitivities: the limits do not
  // depend on them).
  const auto ao = alloc::alloc_options_from_recipe(r);
  if (!ao.budget || !r.str("sensitivity.file").empty()) return;
  const alloc::SizeModel sm(alloc::layout_from_folder(model_dir), alloc::size_options_from_recipe(r));
  alloc::allocate(sm, alloc::equal_sensitivity(sm.layout()), ao);
}

std::string run_pipeline(const io::Recipe& r, const std::string& out_dir) {
  const auto t_run = Clock::now();
  dist::Options dopt;
  dopt.backend = r.str("distributed.backend");
  dopt.timeout = std::chrono::seconds(r.integer("distributed.timeout_s"));
  auto comm = dist::Communicator::from_env(dopt);
  const fs::path out(out_dir);
  const std::string model_dir = r.str("model.path");
  if (model_dir.empty()) throw InputError(r.source() + ": model.path is required (a Hugging Face model folder)");
  if (quant::is_quantized_folder(model_dir))
    throw InputError("model.path '" + model_dir + "' is already quantized; mpqat run needs the float model");
  preflight_recipe(r);
  const model::ModelFolder folder(model_dir);
  const auto formats = r.strings("output.formats");
  const bool want_gguf = std::find(formats.begin(), formats.end(), "gguf") != formats.end();
  std::vector<io::GgufKV> gguf_vocab;
  if (want_gguf) {  // before any stage runs (the export comes last): model, tokenizer, vocabulary size
    quant::check_gguf_supported(folder.config(), model_dir);
    gguf_vocab = gguf_vocab_of_folder(model_dir, r.source() + ": output.formats gguf");
    quant::gguf_metadata(folder.config(), "", true, gguf_vocab, model_dir);
  }
  // Every stage holds at least one block and the embeddings / head: refuse now, not mid-run.
  model::check_block_fits(folder, model::parse_memory_limit(r.str("model.memory_limit"), "model.memory_limit"),
                          dist::resolve_device(r.str("model.device"), *comm, "model.device"), "model.memory_limit");
  if (fs::exists(out) && !fs::is_directory(out))
    throw InputError("output.dir '" + out_dir + "' exists and is a file, not a folder");
  auto holds_only_lock = [&] {
    for (const auto& e : fs::directory_iterator(out))
      if (e.path().filename() != util::FolderLock::kFileName) return false;
    return true;
  };
  if (fs::exists(out) && fs::is_directory(out) && !holds_only_lock() && !fs::exists(out / "stages.json") &&
      !r.flag("output.overwrite"))
    throw InputError("output folder '" + out_dir +
                     "' exists, is not empty and is not an mpqat run (set output.overwrite=true to use it)");
  // One run per folder: a second `mpqat run` on it stops here, before it writes anything.
  std::unique_ptr<util::FolderLock> lock;
  if (comm->is_main()) {
    lock = std::make_unique<util::FolderLock>(out.string(), "run folder");
    r.write_resolved(out.string());
  }
  comm->barrier();
  Run run{r,         *comm,    comm->is_main(), out, model_dir, file_identity(model_dir), r.str("data.calibration.path"),
          folder,    folder.config(), !folder.config().is_sequence_classifier(), StageCache(out, comm->is_main())};
  const std::string stop_after = r.str("output.stop_after");
  auto stopped = [&](const std::string& stage, const std::string& last_output) {
    if (stop_after != stage) return false;
    if (run.main) std::cout << "stopped after the " << stage << " stage (output.stop_after): " << last_output << "\n";
    comm->barrier();
    return true;
  };

  eval::ModelMetrics fp = stage_fp_eval(run);
  std::string sens_hash;
  const std::string sens_path = stage_sensitivity(run, sens_hash);
  if (stop_after == "sensitivity") {
    if (sens_path.empty())
      throw InputError(r.source() + ": output.stop_after is sensitivity but no sensitivity is measured "
                                    "(allocation.method plan); use allocation or later");
    if (run.main && !run.causal)  // the seeds' phase-1 files
      write_seed_sensitivity_file(out, sens_path, run.cfg, model_dir, seed_data_name(run.calib_path),
                                  r.strings("sensitivity.metrics").front());
    if (run.main) std::cout << sensitivity_text_path(sens_path);
    stopped("sensitivity", sens_path);
    return sens_path;
  }
  const alloc::SizeModel sm(alloc::layout_from_folder(model_dir), alloc::size_options_from_recipe(r));
  std::string plan_hash, qat_hash;
  const json alloc_summary = stage_allocation(run, sens_path, sens_hash, sm, plan_hash);
  const fs::path plan_path = out / "bitplan.json";
  if (stopped("allocation", plan_path.string())) return plan_path.string();
  const auto plan = quant::load_bit_plan(plan_path.string());
  stage_quantize(run, plan, plan_hash, qat_hash);
  std::optional<eval::ReportGguf> gguf;
  if (want_gguf && run.main) {
    // model.gguf from the checkpoint just written (cheap: redone on every run, never stale).
    quant::GgufExportOptions go;
    go.force = true;
    // Only K-quant modules are searched: without one, no importance matrix is measured.
    bool k_quants = false;
    for (const auto& t : model::llama_tensors(run.cfg)) {
      const auto m = plan.modules.find(t.linear);
      if (!t.linear.empty() && m != plan.modules.end() && m->second.quantized())
        k_quants = k_quants || quant::is_k_quant(quant::gguf_choice_for_spec(m->second.spec(), t.shape[1], go).type);
    }
    if (k_quants && r.flag("output.gguf_imatrix") && run.causal && !run.calib_path.empty()) {
      // The K-quant search's column weights, measured on the checkpoint the GGUF file holds.
      data::CalibrationOptions co;
      co.samples = r.integer("data.calibration.samples");
      co.seqlen = r.integer("data.calibration.seqlen");
      co.seed = static_cast<uint64_t>(r.integer("data.calibration.seed"));
      model::StreamingOptions st;
      st.device = run.device();
      st.mode = r.str("model.streaming");
      st.memory_limit = model::parse_memory_limit(r.str("model.memory_limit"), "model.memory_limit");
      const auto im = sensitivity::importance_of_folder((out / "checkpoint").string(), run.calib_path, co, st);
      sensitivity::write_importance((out / "imatrix.json").string(), im);
      go.importance = im.modules;
    }
    const auto rep = quant::export_gguf((out / "checkpoint").string(), gguf_vocab, (out / "model.gguf").string(), go);
    gguf = eval::ReportGguf{rep.path, rep.file_bytes, rep.file_bpw(), rep.linear_bpw(), {}, "gguf_export.txt"};
    for (const auto& t : rep.tensors)
      if (t.block_linear) ++gguf->linear_types[t.type];
    util::write_file_atomic((out / "gguf_export.txt").string(), quant::format_gguf_report(rep));
    std::cout << fmt::format("# GGUF for llama.cpp: {} ({} bytes; block linears {:.3f} bpw)\n", rep.path,
                             rep.file_bytes, rep.linear_bpw());
  }
  comm->barrier();
  if (stopped("quantize", (out / "checkpoint").string())) return (out / "checkpoint").string();
  eval::ModelMetrics qm = stage_reload_eval(run, qat_hash);

  eval::RunReport report = build_report(run, std::move(fp), std::move(qm), alloc_summary, plan, sens_path);
  report.gguf = gguf;
  report.seconds = std::chrono::duration<double>(Clock::now() - t_run).count();
  if (run.main) write_report(run, report, plan, sens_path);
  comm->barrier();
  return (out / "report.json").string();
}

}  // namespace mpqat::cli
