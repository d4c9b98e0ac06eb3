// compute_sensitivity: the measurement behind `mpqat sensitivity` and `mpqat run`.
#include "mpqat/sensitivity/run_sensitivity.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "mpqat/data/calibration.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/io/recipe.h"
#include "mpqat/model/classifier_input.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/sensitivity/block_profile.h"
#include "mpqat/sensitivity/fisher.h"
#include "mpqat/sensitivity/output_sensitivity.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::sensitivity {

SensitivityRunOptions sensitivity_options_from_recipe(const io::Recipe& r, const std::string& default_cache_dir) {
  SensitivityRunOptions so;
  so.model = r.str("model.path");
  so.calib = r.str("data.calibration.path");
  so.samples = r.integer("data.calibration.samples");
  so.seqlen = r.integer("data.calibration.seqlen");
  so.seed = static_cast<uint64_t>(r.integer("data.calibration.seed"));
  so.sampling = r.str("data.calibration.sampling");
  so.text_field = r.str("data.calibration.text_field");
  so.label_field = r.str("data.calibration.label_field");
  so.metrics = r.strings("sensitivity.metrics");
  so.mode = r.str("sensitivity.mode");
  so.bits.clear();
  for (auto b : r.integers("allocation.bits"))
    if (b < 16) so.bits.push_back(static_cast<int>(b));
  so.probe_bits = static_cast<int>(r.integer("sensitivity.probe_bits"));
  if (std::find(so.bits.begin(), so.bits.end(), so.probe_bits) == so.bits.end()) so.bits.push_back(so.probe_bits);
  std::sort(so.bits.begin(), so.bits.end());
  so.group_sizes = {r.integer("sensitivity.group_size")};
  for (auto g : r.integers("allocation.group_sizes"))
    if (std::find(so.group_sizes.begin(), so.group_sizes.end(), g) == so.group_sizes.end()) so.group_sizes.push_back(g);
  so.svcca_k = static_cast<int>(r.integer("sensitivity.svcca_k"));
  so.svcca_variance = r.number("sensitivity.svcca_variance");
  so.max_rows = r.integer("sensitivity.max_rows");
  const std::string dir = r.str("sensitivity.cache_dir");
  so.cache = model::cache_options(r.str("sensitivity.cache_dtype"), r.str("sensitivity.cache_memory_limit"),
                                  dir.empty() ? default_cache_dir : dir,
                                  {"sensitivity.cache_dtype", "sensitivity.cache_memory_limit", "sensitivity.cache_dir"});
  return so;
}

namespace {

// Checks the options; returns whether Fisher is asked for and the CCA-family metrics named.
std::pair<bool, std::vector<std::string>> check_options(const SensitivityRunOptions& o) {
  if (o.mode != "profile" && o.mode != "layer-to-layer" && o.mode != "output")
    throw InputError("unknown sensitivity mode '" + o.mode + "' (accepted: output, profile / layer-to-layer)");
  if (o.metrics.empty()) throw InputError("--metrics is empty");
  bool need_fisher = false;
  std::vector<std::string> out_metrics;
  for (const auto& item : o.metrics)
    for (const auto& c : util::split(item, '+')) {
      if (c == "fisher") {
        need_fisher = true;
      } else if (sensitivity::is_output_metric(c)) {
        if (std::find(out_metrics.begin(), out_metrics.end(), c) == out_metrics.end()) out_metrics.push_back(c);
      } else {
        throw InputError("unknown sensitivity metric '" + c + "' in '" + item +
                         "' (accepted: fisher, cka, cca, svcca, pwcca, cka-rbf, cka-debiased; a+b combines)");
      }
    }
  if (o.bits.empty()) throw InputError("sensitivity: the candidate bit list is empty");
  if (o.group_sizes.empty()) throw InputError("sensitivity: the candidate group-size list is empty");
  for (auto b : o.bits) quant::traits_for_bits(b, "sensitivity bits");
  for (auto g : o.group_sizes) {
    quant::QuantSpec s;
    s.bits = 4;
    s.group_size = g;
    quant::validate_spec(s, "sensitivity group sizes");
  }
  if (std::find(o.bits.begin(), o.bits.end(), o.probe_bits) == o.bits.end())
    throw InputError("--probe-bits " + std::to_string(o.probe_bits) + " is not among the candidate bits");
  return {need_fisher, out_metrics};
}

}  // namespace

SensitivityReport compute_sensitivity(const SensitivityRunOptions& o, dist::Communicator* comm) {
  const auto [need_fisher, out_metrics] = check_options(o);
  const bool profile = o.mode == "profile" || o.mode == "layer-to-layer";
  const auto& bits = o.bits;
  const auto& groups = o.group_sizes;

  model::ModelFolder folder(o.model);
  const auto& cfg = folder.config();
  // One block at a time from the mapped checkpoint, whatever the model's size.
  auto src = model::folder_blocks(folder, o.device);
  auto& shell = src->shell();
  const auto& tok = folder.tokenizer();
  const bool progress = o.progress && (!comm || comm->is_main());

  sensitivity::SensitivityReport rep;
  rep.model_path = std::filesystem::absolute(o.model).string();
  rep.architecture = cfg.architecture;
  rep.num_hidden_layers = src->num_blocks();
  rep.calib_path = o.calib;
  rep.seqlen = o.seqlen;
  rep.seed = o.seed;
  rep.metrics = o.metrics;
  rep.probe_bits = o.probe_bits;
  rep.group_size = groups.front();
  rep.world_size = comm ? comm->world_size() : 1;

  std::vector<std::vector<int32_t>> seqs;
  std::vector<int64_t> labels;
  if (shell.is_causal_lm()) {
    data::CalibrationOptions co;
    co.samples = o.samples;
    co.seqlen = model::fit_seqlen(cfg, o.seqlen, /*given=*/true, "--seqlen");
    co.seed = o.seed;
    const auto calib = data::load_token_calibration(o.calib, tok, co);
    if (calib.consecutive && (!comm || comm->is_main()))
      spdlog::warn("{} holds {} tokens, fewer than {} x {}: using {} consecutive sequences", o.calib,
                   calib.total_tokens, o.samples, o.seqlen, calib.sequences.size());
    rep.samples = static_cast<int64_t>(calib.sequences.size());
    seqs = calib.sequences;
  } else {
    data::ClassificationReadOptions ro;
    ro.text_field = o.text_field;
    ro.label_field = o.label_field;
    const auto calib = data::load_labelled_calibration(o.calib, o.samples, data::parse_sampling(o.sampling),
                                                       o.seed, ro);
    if (cfg.num_labels != static_cast<int64_t>(calib.label_names.size()))
      throw InputError("'" + o.calib + "' has " + std::to_string(calib.label_names.size()) + " labels but " +
                       o.model + " classifies into " + std::to_string(cfg.num_labels));
    auto enc = model::classifier_encoding(cfg, tok);
    enc.max_length = std::min<int64_t>(o.seqlen, enc.max_length);
    seqs = model::encode_for_classifier(tok, calib.texts, enc);
    labels = calib.labels;
    rep.samples = static_cast<int64_t>(seqs.size());
    rep.sampling = o.sampling;
  }
  // Fisher: module order and Omega tables, block by block (the top block comes first).
  std::vector<sensitivity::ModuleEntry> modules;
  std::vector<std::vector<sensitivity::ModuleEntry>> per_block(static_cast<size_t>(src->num_blocks()));
  const std::string score_key = std::to_string(o.probe_bits) + ":" + std::to_string(groups.front());
  if (need_fisher) {
    sensitivity::StreamedFisherOptions fo;
    fo.cache = o.cache;
    fo.comm = comm;
    fo.progress = progress;
    sensitivity::fisher_streamed(
        *src, seqs, labels,
        [&](int64_t i, model::Block& blk, const std::vector<torch::Tensor>& fisher) {
          const auto lin = blk.linears();
          for (size_t k = 0; k < lin.size(); ++k) {
            sensitivity::ModuleEntry e;
            e.name = src->block_prefix(i) + lin[k].first;
            e.block = i;
            e.omega = sensitivity::omega_table(lin[k].second->weight, fisher[k], bits, groups);
            per_block[static_cast<size_t>(i)].push_back(std::move(e));
          }
        },
        fo);
  } else {
    for (int64_t i = 0; i < src->num_blocks(); ++i)
      for (const auto& rel : model::family_block_linear_names(cfg)) {
        sensitivity::ModuleEntry e;
        e.name = src->block_prefix(i) + rel;
        e.block = i;
        per_block[static_cast<size_t>(i)].push_back(std::move(e));
      }
  }
  for (auto& b : per_block)
    for (auto& e : b) rep.modules.push_back(std::move(e));

  sensitivity::OutputSensitivity osens;
  if (!out_metrics.empty() && profile) {
    // The seeds' layer-to-layer profile: every module of block i gets block i's change.
    sensitivity::BlockProfileOptions po;
    po.metrics = out_metrics;
    po.svcca_k = o.svcca_k;
    po.svcca_variance = o.svcca_variance;
    po.max_rows = o.max_rows;
    po.seed = o.seed;
    po.cache = o.cache;
    const auto bp = sensitivity::block_profile(*src, seqs, po);
    rep.block_stats = bp.stats;
    for (const auto& e : rep.modules) {
      osens.names.push_back(e.name);
      for (const auto& metric : out_metrics)
        osens.metric[metric].push_back(bp.change[static_cast<size_t>(e.block)].at(metric));
    }
  } else if (!out_metrics.empty()) {
    sensitivity::OutputSensitivityOptions so;
    so.metrics = out_metrics;
    so.probe_bits = o.probe_bits;
    so.group_size = groups.front();
    so.svcca_k = o.svcca_k;
    so.svcca_variance = o.svcca_variance;
    so.max_rows = o.max_rows;
    so.seed = o.seed;
    so.cache = o.cache;
    osens = sensitivity::output_sensitivity(*src, seqs, so);
  }

  std::map<std::string, std::vector<double>> value;  // metric -> per module
  if (need_fisher)
    for (const auto& e : rep.modules) value["fisher"].push_back(e.omega.at(score_key));
  for (const auto& [name, v] : osens.metric) value[name] = v;
  for (const auto& item : o.metrics) {
    if (value.count(item)) continue;
    std::vector<std::vector<double>> parts;
    for (const auto& c : util::split(item, '+')) parts.push_back(value.at(c));
    value[item] = sensitivity::mean_normalised_rank(parts);
  }
  for (std::size_t k = 0; k < rep.modules.size(); ++k) {
    for (const auto& [name, v] : value) rep.modules[k].metrics[name] = v[k];
    rep.modules[k].score = value.at(o.metrics.front())[k];
  }
  rep.score_metric = o.metrics.front();
  rep.mode = o.mode;
  return rep;
}

}  // namespace mpqat::sensitivity
