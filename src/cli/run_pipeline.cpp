// The `mpqat run` pipeline (include/mpqat/cli/run_pipeline.h, docs/pipeline.md).
#include "mpqat/cli/run_pipeline.h"
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
#include "mpqat/eval/multiple_choice.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/eval/report.h"
#include "mpqat/eval/run_report.h"
#include "mpqat/eval/seed_outputs.h"
#include "mpqat/eval/tasks.h"
#include "mpqat/io/recipe.h"
#include "mpqat/model/activation_cache.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/classifier_input.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/sensitivity/run_sensitivity.h"
#include "mpqat/train/block_ap.h"
#include "mpqat/train/e2e_qp.h"
#include "mpqat/train/options.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mpqat::cli {
namespace {

using Clock = std::chrono::steady_clock;

// Every configured evaluation of the model in `dir` (float or quantized).
json evaluate_folder(const std::string& dir, const io::Recipe& r, dist::Communicator& comm) {
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
  const auto& tok = folder.tokenizer();
  const int batch = static_cast<int>(r.integer("evaluation.batch_size"));
  json out = json::object();
  out["streamed"] = src->streaming();
  torch::NoGradGuard ng;
  if (src->shell().is_causal_lm()) {
    for (const auto& f : r.strings("evaluation.perplexity")) {
      const auto ids = tok.encode(util::read_file(f), true);
      int ctx = static_cast<int>(r.integer("evaluation.context"));
      const int dflt = eval::default_context(cfg);
      ctx = ctx <= 0 ? dflt : std::min(ctx, static_cast<int>(cfg.max_position_embeddings));
      const auto res = eval::evaluate_perplexity(logits, ids, ctx, batch, 0, device, &comm);
      const std::string name = fs::path(f).filename().string();
      out["ppl_files"][name] = res.ppl;
      out["nll_files"][name] = res.nll;
    }
    // One file: "ppl" is its number (the documented contract); several: a map by file name.
    if (out.contains("ppl_files")) {
      out["ppl"] = out["ppl_files"].size() == 1 ? out["ppl_files"].begin().value() : out["ppl_files"];
      out.erase("ppl_files");
      out.erase("nll_files");
    }
    const auto tasks = r.strings("evaluation.tasks");
    if (!tasks.empty()) {
      eval::MultipleChoiceOptions mo;
      mo.batch_size = batch;
      mo.max_length = cfg.max_position_embeddings;
      mo.limit = r.integer("evaluation.task_limit");
      mo.progress = false;
      mo.device = device;
      mo.comm = &comm;
      eval::EvalReport rep(dir);
      std::string tdir = r.str("evaluation.task_dir");
      if (tdir.empty()) tdir = "../shared/data/tasks";
      for (const auto& t : tasks) {
        const auto res = eval::evaluate_task(logits, tok, eval::load_task(t, tdir), mo);
        rep.add_multiple_choice(res);
        out["tasks"][res.task] = rep.json()["tasks"][res.task];
      }
    }
  } else {
    const std::string path = r.str("evaluation.classification.path");
    if (!path.empty()) {
      eval::ClassificationReadOptions ro;
      ro.text_field = r.str("evaluation.classification.text_field");
      ro.label_field = r.str("evaluation.classification.label_field");
      auto data = eval::read_classification_file(path, ro);
      const int64_t limit = r.integer("evaluation.classification.limit");
      if (limit > 0 && static_cast<int64_t>(data.texts.size()) > limit) {
        data.texts.resize(static_cast<size_t>(limit));
        data.labels.resize(static_cast<size_t>(limit));
      }
      if (cfg.num_labels != static_cast<int64_t>(data.label_names.size()))
        throw InputError("evaluation.classification.path '" + path + "' has " +
                         std::to_string(data.label_names.size()) + " labels but the model classifies into " +
                         std::to_string(cfg.num_labels));
      const auto enc = model::classifier_encoding(cfg, tok);
      eval::PredictOptions po;
      po.batch_size = std::max(batch, 8);
      po.max_length = enc.max_length;
      po.pad_id = enc.pad_id;
      po.keep_last_token = enc.keep_last_token;
      po.progress = false;
      po.device = device;
      po.comm = &comm;
      const eval::EncodeFn encode = [&](const std::string& t) { return tok.encode(t, enc.add_bos); };
      const auto metrics = eval::evaluate_classifier(logits, encode, data, po);
      out["classification"] = metrics.to_json();
    }
  }
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
    co.seqlen = std::min<int64_t>(seqlen, cfg.max_position_embeddings);
    co.seed = seed;
    const auto cal = data::load_token_calibration(path, tok, co);
    return train::stack_sequences(cal.sequences);
  }
  eval::ClassificationReadOptions ro;
  ro.text_field = r.str("data.calibration.text_field");
  ro.label_field = r.str("data.calibration.label_field");
  const auto cal = data::load_labelled_calibration(path, samples, data::parse_sampling(r.str("data.calibration.sampling")),
                                                   seed, ro);
  auto enc = model::classifier_encoding(cfg, tok);
  enc.max_length = std::min<int64_t>(seqlen, enc.max_length);
  const auto seqs = model::encode_for_classifier(tok, cal.texts, enc);
  int64_t L = 1;
  for (const auto& v : seqs) L = std::max<int64_t>(L, static_cast<int64_t>(v.size()));
  const int64_t pad = enc.pad_id;
  train::TokenBatch b;
  b.ids = torch::full({static_cast<int64_t>(seqs.size()), L}, pad, torch::kLong);
  b.mask = torch::zeros({static_cast<int64_t>(seqs.size()), L}, torch::kLong);
  for (size_t i = 0; i < seqs.size(); ++i)
    for (size_t t = 0; t < seqs[i].size(); ++t) {
      b.ids[static_cast<int64_t>(i)][static_cast<int64_t>(t)] = seqs[i][t];
      b.mask[static_cast<int64_t>(i)][static_cast<int64_t>(t)] = 1;
    }
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

}  // namespace

std::string run_pipeline(const io::Recipe& r, const std::string& out_dir) {
  const auto t_run = Clock::now();
  dist::Options dopt;
  dopt.backend = r.str("distributed.backend");
  dopt.timeout = std::chrono::seconds(r.integer("distributed.timeout_s"));
  auto comm = dist::Communicator::from_env(dopt);
  const bool main = comm->is_main();
  const fs::path out(out_dir);
  const std::string model_dir = r.str("model.path");
  if (model_dir.empty()) throw InputError(r.source() + ": model.path is required (a Hugging Face model folder)");
  if (quant::is_quantized_folder(model_dir))
    throw InputError("model.path '" + model_dir + "' is already quantized; mpqat run needs the float model");
  const model::ModelFolder folder(model_dir);
  const auto& cfg = folder.config();
  const bool causal = !cfg.is_sequence_classifier();
  // Every stage holds at least one block and the embeddings / head: refuse now, not mid-run.
  model::check_block_fits(folder, model::parse_memory_limit(r.str("model.memory_limit"), "model.memory_limit"),
                          dist::resolve_device(r.str("model.device"), *comm, "model.device"), "model.memory_limit");

  if (fs::exists(out) && fs::is_directory(out) && !fs::is_empty(out) && !fs::exists(out / "stages.json") &&
      !r.flag("output.overwrite"))
    throw InputError("output folder '" + out_dir +
                     "' exists, is not empty and is not an mpqat run (set output.overwrite=true to use it)");
  if (main) {
    fs::create_directories(out);
    r.write_resolved(out.string());
  }
  comm->barrier();
  StageCache stages(out, main);
  const std::string model_id = file_identity(model_dir);
  const std::string calib_path = r.str("data.calibration.path");
  auto eval_inputs = [&] {
    std::string s = keys_text(r, {"evaluation.", "model.device"});
    for (const auto& f : r.strings("evaluation.perplexity")) s += file_identity(f);
    s += file_identity(r.str("evaluation.classification.path"));
    return s;
  };

  // 1. FP baseline.
  json fp = json::object();
  if (r.flag("evaluation.fp_baseline")) {
    stages.begin("fp_eval");
    const std::string h = fnv(model_id + eval_inputs());
    const bool reuse = stages.reusable("fp_eval", h, {out / "fp_eval.json"});
    if (reuse) {
      fp = read_json(out / "fp_eval.json");
    } else {
      spdlog::info("stage fp_eval: evaluating the float model");
      fp = evaluate_folder(model_dir, r, *comm);
      if (main) write_json(out / "fp_eval.json", fp);
    }
    stages.done("fp_eval", h, reuse);
  }

  // 2. Sensitivity.
  std::string sens_path = r.str("sensitivity.file");
  const auto alloc_bits = r.integers("allocation.bits");
  std::vector<int64_t> groups{r.integer("sensitivity.group_size")};
  for (auto g : r.integers("allocation.group_sizes"))
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  std::string sens_hash;
  const bool need_sens = r.str("allocation.method") != "plan";
  if (!sens_path.empty()) {
    sens_hash = fnv(file_identity(sens_path));
  } else if (need_sens) {
    stages.begin("sensitivity");
    if (calib_path.empty())
      throw InputError(r.source() + ": data.calibration.path is required for the sensitivity stage (or set sensitivity.file)");
    sens_hash = fnv(model_id + file_identity(calib_path) +
                    keys_text(r, {"data.calibration.", "sensitivity.", "allocation.bits", "allocation.group_sizes"}));
    sens_path = (out / "sensitivity.json").string();
    const bool reuse = stages.reusable("sensitivity", sens_hash, {sens_path});
    if (!reuse) {
      spdlog::info("stage sensitivity: {} on {}", fmt::format("{}", fmt::join(r.strings("sensitivity.metrics"), ", ")), calib_path);
      sensitivity::SensitivityRunOptions so;
      so.model = model_dir;
      so.calib = calib_path;
      so.samples = r.integer("data.calibration.samples");
      so.seqlen = std::min<int64_t>(r.integer("data.calibration.seqlen"), cfg.max_position_embeddings);
      so.seed = static_cast<uint64_t>(r.integer("data.calibration.seed"));
      so.sampling = r.str("data.calibration.sampling");
      so.text_field = r.str("data.calibration.text_field");
      so.label_field = r.str("data.calibration.label_field");
      so.metrics = r.strings("sensitivity.metrics");
      so.mode = r.str("sensitivity.mode");
      so.bits.assign(alloc_bits.begin(), alloc_bits.end());
      so.bits.erase(std::remove_if(so.bits.begin(), so.bits.end(), [](int b) { return b >= 16; }), so.bits.end());
      so.probe_bits = static_cast<int>(r.integer("sensitivity.probe_bits"));
      if (std::find(so.bits.begin(), so.bits.end(), so.probe_bits) == so.bits.end()) so.bits.push_back(so.probe_bits);
      std::sort(so.bits.begin(), so.bits.end());
      so.group_sizes = groups;
      so.svcca_k = static_cast<int>(r.integer("sensitivity.svcca_k"));
      so.svcca_variance = r.number("sensitivity.svcca_variance");
      so.max_rows = r.integer("sensitivity.max_rows");
      so.device = dist::resolve_device(r.str("model.device"), *comm, "model.device");
      so.cache = model::cache_options(r.str("sensitivity.cache_dtype"), r.str("sensitivity.cache_memory_limit"),
                                      r.str("sensitivity.cache_dir").empty() ? out.string() : r.str("sensitivity.cache_dir"),
                                      {"sensitivity.cache_dtype", "sensitivity.cache_memory_limit", "sensitivity.cache_dir"});
      const auto rep = sensitivity::compute_sensitivity(so, comm.get());
      if (main) sensitivity::write_sensitivity(rep, sens_path);
      comm->barrier();
    }
    stages.done("sensitivity", sens_hash, reuse);
  }

  const std::string stop_after = r.str("output.stop_after");
  auto stop_here = [&](const std::string& stage, const std::string& last_output) {
    if (stop_after != stage) return false;
    if (main) std::cout << "stopped after the " << stage << " stage (output.stop_after): " << last_output << "\n";
    comm->barrier();
    return true;
  };
  if (stop_after == "sensitivity") {
    if (sens_path.empty())
      throw InputError(r.source() + ": output.stop_after is sensitivity but no sensitivity is measured "
                                    "(allocation.method plan); use allocation or later");
    if (main && !causal) {
      // The seeds' phase-1 files.
      write_seed_sensitivity_file(out, sens_path, cfg, model_dir, seed_data_name(calib_path),
                                  r.strings("sensitivity.metrics").front());
    }
    if (main) std::cout << sensitivity_text_path(sens_path);
    stop_here("sensitivity", sens_path);
    return sens_path;
  }

  // 3. Allocation.
  const fs::path plan_path = out / "bitplan.json";
  const auto ao = alloc::alloc_options_from_recipe(r);
  alloc::SizeOptions szo;
  szo.float_dtype = float_dtype_of(r);
  szo.max_shard_bytes = util::parse_bytes(r.str("output.shard_size"), "output.shard_size");
  const alloc::SizeModel sm(alloc::layout_from_folder(model_dir), szo);
  std::string plan_hash;
  json alloc_summary;
  {
    stages.begin("allocation");
    plan_hash = fnv(sens_hash + model_id + keys_text(r, {"allocation.", "output.float_dtype", "output.shard_size"}) +
                    file_identity(r.str("allocation.plan")));
    const bool reuse = stages.reusable("allocation", plan_hash, {plan_path, out / "allocation.json"});
    if (reuse) {
      alloc_summary = read_json(out / "allocation.json");
    } else {
      spdlog::info("stage allocation: {}", r.str("allocation.method"));
      const alloc::Sensitivity sens = sens_path.empty() ? alloc::Sensitivity{} : alloc::load_sensitivity(sens_path);
      const auto res = alloc::allocate(sm, sens, ao);
      alloc_summary = alloc::summary_json(res);
      if (main) {
        alloc::write_plan(plan_path.string(), res, sm, ao);
        util::write_file_atomic((out / "bitplan.txt").string(), alloc::result_text(res));
        write_json(out / "allocation.json", alloc_summary);
      }
      comm->barrier();
    }
    stages.done("allocation", plan_hash, reuse);
  }
  if (stop_here("allocation", plan_path.string())) return plan_path.string();
  const auto plan = quant::load_bit_plan(plan_path.string());

  // 4. Quantization (RTN or Block-AP [+ E2E-QP]) -> checkpoint.
  const fs::path ckpt = out / "checkpoint";
  const std::string method = r.str("training.method");
  const bool e2e = r.flag("training.e2e.enabled");
  const std::string qat_hash =
      fnv(plan_hash + model_id + file_identity(calib_path) +
          keys_text(r, {"training.", "data.calibration.", "data.validation_samples", "seed", "output.float_dtype",
                        "output.shard_size"}));
  json train_logs = json::array();
  {
    stages.begin("quantize");
    std::vector<fs::path> outs{ckpt / "config.json"};
    if (method == "block-ap") outs.push_back(out / "train_log.jsonl");
    const bool reuse = stages.reusable("quantize", qat_hash, outs);
    if (!reuse) {
      stages.forget("reload_eval");
      quant::SaveOptions so;
      so.source_dir = model_dir;
      so.float_dtype = float_dtype_of(r);
      so.max_shard_bytes = szo.max_shard_bytes;
      so.plan = &plan;
      so.force = true;
      quant::InitOptions init;
      init.clip_search = r.str("training.init") == "mse";
      if (method == "rtn") {
        spdlog::info("stage quantize: RTN");
        so.method = init.clip_search ? "rtn+clip" : "rtn";
        if (main) {
          const auto q = quant::rtn_quantize_blocks(folder, plan, init);
          quant::save_quantized_checkpoint(*q.shell, q.config, q.blocks, ckpt.string(), so);
        }
      } else {
        if (calib_path.empty())
          throw InputError(r.source() + ": data.calibration.path is required for training.method block-ap");
        spdlog::info("stage quantize: Block-AP{}", e2e ? " + E2E-QP" : "");
        const int64_t samples = r.integer("data.calibration.samples");
        const auto data = calibration_batch(folder, r, samples, r.integer("data.calibration.seqlen"),
                                            static_cast<uint64_t>(r.integer("data.calibration.seed")));
        auto bo = train::block_ap_options_from_recipe(r, data.size());
        bo.state_dir = (out / "train_state").string();
        bo.device = dist::resolve_device(r.str("model.device"), *comm, "model.device");
        bo.comm = comm.get();
        stages.part_begin("block_ap");
        auto res = train::block_ap(folder, plan, data, bo);
        stages.part_done();
        if (e2e) {
          if (!causal) throw InputError(r.source() + ": training.e2e needs a causal LM (next-token loss)");
          const auto edata = calibration_batch(folder, r, r.integer("training.e2e.samples"),
                                               r.integer("training.e2e.seqlen"),
                                               static_cast<uint64_t>(r.integer("data.calibration.seed")) + 1);
          const auto eo = train::e2e_options_from_recipe(r);
          stages.part_begin("e2e_qp");
          train::e2e_qp(res, edata, eo, comm.get());
          stages.part_done();
        }
        so.method = e2e ? "block-ap+e2e-qp" : "block-ap";
        if (main) {
          stages.part_begin("save");
          quant::save_quantized_checkpoint(*res.shell, res.config, res.blocks, ckpt.string(), so);
          stages.part_done();
          util::write_file_atomic((out / "train_log.jsonl").string(), train::train_log_jsonl(res));
          std::cout << train::summary_table(res);
          fs::remove_all(bo.state_dir);
        }
      }
      comm->barrier();
    }
    stages.done("quantize", qat_hash, reuse);
  }
  if (stop_here("quantize", ckpt.string())) return ckpt.string();
  if (fs::exists(out / "train_log.jsonl")) {
    std::istringstream ls(util::read_file((out / "train_log.jsonl").string()));
    for (std::string line; std::getline(ls, line);)
      if (!line.empty()) train_logs.push_back(json::parse(line));
  }

  // 5. Reload through the loader and evaluate.
  json qm = json::object();
  {
    stages.begin("reload_eval");
    const std::string h = fnv(qat_hash + file_identity(ckpt.string()) + eval_inputs());
    const bool reuse = stages.reusable("reload_eval", h, {out / "quantized_eval.json"});
    if (reuse) {
      qm = read_json(out / "quantized_eval.json");
    } else {
      spdlog::info("stage reload_eval: loading {} and evaluating", ckpt.string());
      qm = evaluate_folder(ckpt.string(), r, *comm);
      if (main) write_json(out / "quantized_eval.json", qm);
    }
    stages.done("reload_eval", h, reuse);
  }

  // 6. Report.
  const auto insp = quant::inspect_checkpoint(ckpt.string());
  json report;
  report["model"] = model_dir;
  report["recipe"] = r.source();
  report["name"] = r.str("output.name");
  {
    const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    report["created"] = buf;
  }
  report["mpqat_version"] = MPQAT_VERSION;
  report["architecture"] = cfg.architecture;
  report["method"] = {{"allocation", r.str("allocation.method")}, {"training", method}, {"e2e", e2e}};
  fp["bytes"] = insp.fp16_bytes;
  report["fp"] = fp;
  qm["bytes"] = insp.total_bytes;
  qm["avg_bits"] = insp.avg_bits;
  report["quantized"] = qm;
  report["size"] = {{"file_bytes", folder_safetensors_bytes(ckpt.string())},
                    {"tensor_bytes", insp.total_bytes},
                    {"fp16_bytes", insp.fp16_bytes},
                    {"avg_bits_with_overhead", insp.avg_bits_with_overhead},
                    {"bits_histogram", insp.bits_histogram}};
  report["compression"] = insp.compression_ratio;
  if (alloc_summary.contains("budget")) {
    const uint64_t budget = alloc_summary.value("budget_bytes", uint64_t{0});
    const std::string metric = alloc_summary.value("budget_metric", "");
    const uint64_t actual = metric == "file_bytes" ? folder_safetensors_bytes(ckpt.string())
                                             : alloc_summary.value("predicted_metric_bytes", uint64_t{0});
    report["budget"] = {{"kind", metric},
                        {"text", alloc_summary["budget"]},
                        {"value", budget},
                        {"actual", actual},
                        {"met", actual <= budget}};
  }
  report["allocation"] = alloc_summary;
  // Layers: plan bits + sensitivity metrics per module.
  json sens_modules = json::object();
  if (!sens_path.empty() && fs::exists(sens_path)) {
    const auto sj = read_json(sens_path);
    if (sj.contains("modules")) sens_modules = sj["modules"];
  }
  json layers = json::array();
  for (int64_t b = 0; b < cfg.num_hidden_layers; ++b)
    for (const auto& rel : model::family_block_linear_names(cfg)) {
      const std::string name = model::family_block_prefix(cfg, b) + rel;
      json e{{"name", name}, {"block", b}};
      auto it = plan.modules.find(name);
      e["bits"] = it == plan.modules.end() ? 16 : it->second.bits;
      if (it != plan.modules.end() && it->second.quantized()) e["group_size"] = it->second.group_size;
      if (sens_modules.contains(name) && sens_modules[name].contains("metrics"))
        e["sensitivity"] = sens_modules[name]["metrics"];
      layers.push_back(e);
    }
  report["layers"] = layers;
  json blocks = json::array();
  for (const auto& l : train_logs)
    if (l.contains("block"))
      blocks.push_back({{"block", l["block"]},
                        {"epochs", l["epochs_run"]},
                        {"start_val_mse", l["start_val_mse"]},
                        {"best_val_mse", l["best_val_mse"]},
                        {"end_val_mse", l["end_val_mse"]},
                        {"kept_rtn", l["kept_rtn"]},
                        {"seconds", l["seconds"]},
                        {"val_curve", l["val_curve"]}});
    else if (l.contains("e2e"))
      report["e2e"] = l["e2e"];
  if (!blocks.empty()) report["blocks"] = blocks;
  if (!causal) {
    report["data"] = seed_data_name(r.str("evaluation.classification.path"));
    report["sensitivity_metric"] = r.strings("sensitivity.metrics").front();
    report["calibration"] = {{"samples", r.integer("data.calibration.samples")},
                             {"sampling", r.str("data.calibration.sampling")}};
    report["evaluation"] = {{"path", r.str("evaluation.classification.path")},
                            {"samples", qm.contains("classification") ? qm["classification"].value("n", 0) : 0}};
  }
  report["stages"] = stages.report();
  report["seconds"] = std::chrono::duration<double>(Clock::now() - t_run).count();
  const fs::path rj = out / "report.json";
  if (main) {
    const auto formats = r.strings("output.report_formats");
    auto want = [&](const std::string& f) { return std::find(formats.begin(), formats.end(), f) != formats.end(); };
    write_json(rj, report);  // always: the machine-readable result
    const std::string text = eval::render_run_report_text(report);
    if (want("txt")) util::write_file_atomic((out / "report.txt").string(), text);
    if (want("html")) util::write_file_atomic((out / "report.html").string(), eval::render_run_report_html(report));
    if (!causal) {
      // The seeds' file layout as well: Sensitivities/layer_sensitivity_<MODEL>_<DATA>_<metric>.json/.txt
      // (per-block score) and Evaluation/eval_<MODEL>_<DATA>_<method>_<k>groups_<timestamp>.txt.
      const std::string dname = report["data"].get<std::string>();
      if (!sens_path.empty() && fs::exists(sens_path))
        write_seed_sensitivity_file(out, sens_path, cfg, model_dir, dname, report["sensitivity_metric"].get<std::string>());
      const std::string am = r.str("allocation.method");
      std::set<int> distinct;
      for (const auto& [n, m] : plan.modules) distinct.insert(m.bits);
      const int k = (am == "kmeans" || am == "percentile" || am == "hierarchical") ? static_cast<int>(r.integer("allocation.groups"))
                                                                                    : static_cast<int>(distinct.size());
      if (fp.contains("classification") && qm.contains("classification")) {
        auto in = eval::seed_eval_from_report(report, am, k, eval::seed_timestamp());
        in.model = fs::path(model_dir).lexically_normal().filename().string();
        in.data = dname;
        eval::write_seed_evaluation(out.string(), in);
      }
    }
    std::cout << text;
    std::cout << "run folder: " << out.string() << " (report.json"
              << (want("txt") ? ", report.txt" : "") << (want("html") ? ", report.html" : "") << ")\n";
  }
  comm->barrier();
  return rj.string();
}

}  // namespace mpqat::cli
