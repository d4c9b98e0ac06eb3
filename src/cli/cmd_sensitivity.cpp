// `mpqat sensitivity`: per-module / per-block sensitivity -> sensitivity.json + ranking .txt
// (docs/formats.md "sensitivity.json"). Metrics: fisher (Omega table, score = Omega at the probe
// bits and first group size) and the CCA family in output mode (1 - similarity of a module's
// full-precision and probe-quantized outputs); "a+b" combines metrics by mean normalised rank.
// The first metric listed is the "score". The layer-to-layer profile mode is not built yet.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "mpqat/cli/commands.h"
#include "mpqat/data/calibration.h"
#include "mpqat/data/hf_tokenizer.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/sensitivity/fisher.h"
#include "mpqat/sensitivity/output_sensitivity.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/sensitivity/sensitivity_json.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {

void add_sensitivity_command(CLI::App& app) {
  struct Opts {
    std::string model, calib, out, sampling = "random", group_sizes = "128", bits = "2,3,4,5,6,8";
    int64_t samples = 128, seqlen = 512;
    uint64_t seed = 0;
    int probe_bits = 3, svcca_k = 20;
    int64_t max_rows = 4096;
    double svcca_variance = 0.99;
    std::string mode = "output";
    std::vector<std::string> metrics = {"fisher"};
    bool quiet = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("sensitivity", "Measure per-layer / per-module sensitivity "
                                                "(Fisher, SVCCA, PWCCA, CKA) -> sensitivity.json");
  sub->add_option("model", o->model, "model folder")->required();
  sub->add_option("--calib", o->calib, "calibration text / JSONL (causal LMs) or TSV / CSV / JSONL "
                                       "with labels (classifiers)")->required();
  sub->add_option("--samples", o->samples, "calibration sequences / examples");
  sub->add_option("--seqlen", o->seqlen, "tokens per sequence (classifiers: truncation length)");
  sub->add_option("--metrics", o->metrics, "fisher, cka, cca, svcca, pwcca, cka-rbf, cka-debiased; "
                                           "a+b = mean normalised rank; the first is the score")
      ->delimiter(',');
  sub->add_option("--mode", o->mode, "CCA family: output (1 - sim of FP vs quantized module output)");
  sub->add_option("--max-rows", o->max_rows, "tokens subsampled for cca, svcca, pwcca, cka-rbf, cka-debiased");
  sub->add_option("--svcca-k", o->svcca_k, "SVCCA: top-k directions (0 = by --svcca-variance)");
  sub->add_option("--svcca-variance", o->svcca_variance, "SVCCA: variance fraction kept when k is 0");
  sub->add_option("--bits", o->bits, "candidate bit-widths of the omega table");
  sub->add_option("--group-sizes", o->group_sizes, "candidate group sizes, e.g. 32,128 (-1 = per row); "
                                                   "the first is the score's");
  sub->add_option("--probe-bits", o->probe_bits, "bits of the scalar score (omega at probe:first group)");
  sub->add_option("--sampling", o->sampling, "classifiers: random or stratified")
      ->check(CLI::IsMember({"random", "stratified"}));
  sub->add_option("--seed", o->seed, "calibration sampling seed");
  sub->add_flag("--quiet", o->quiet, "no progress bar");
  sub->add_option("--out", o->out, "output sensitivity.json (the ranking goes next to it as .txt)")->required();
  sub->callback([o] {
    auto ints = [](const std::string& s, const std::string& what) {
      std::vector<int64_t> v;
      for (const auto& t : util::split(s, ',')) {
        try {
          std::size_t used = 0;
          v.push_back(std::stoll(util::trim(t), &used));
          if (used != util::trim(t).size()) throw std::invalid_argument("x");
        } catch (const std::exception&) {
          throw InputError(what + " '" + s + "' must be comma-separated integers");
        }
      }
      if (v.empty()) throw InputError(what + " is empty");
      return v;
    };
    if (o->mode == "profile") throw NotImplementedError("sensitivity --mode profile (layer-to-layer similarity)");
    if (o->mode != "output") throw InputError("unknown --mode '" + o->mode + "' (accepted: output)");
    if (o->metrics.empty()) throw InputError("--metrics is empty");
    bool need_fisher = false;
    std::vector<std::string> out_metrics;
    for (const auto& item : o->metrics)
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
    std::vector<int> bits;
    for (auto b : ints(o->bits, "--bits")) {
      quant::traits_for_bits(static_cast<int>(b), "--bits");
      bits.push_back(static_cast<int>(b));
    }
    const auto groups = ints(o->group_sizes, "--group-sizes");
    for (auto g : groups) {
      quant::QuantSpec s;
      s.bits = 4;
      s.group_size = g;
      quant::validate_spec(s, "--group-sizes");
    }
    if (std::find(bits.begin(), bits.end(), o->probe_bits) == bits.end())
      throw InputError("--probe-bits " + std::to_string(o->probe_bits) + " is not among --bits " + o->bits);

    auto comm = dist::Communicator::from_env();
    model::ModelFolder folder(o->model);
    const auto& cfg = folder.config();
    auto m = model::load_any_model(folder);
    const auto& tok = folder.tokenizer();
    const bool progress = !o->quiet && comm->is_main();

    sensitivity::SensitivityReport rep;
    rep.model_path = std::filesystem::absolute(o->model).string();
    rep.architecture = cfg.architecture;
    rep.num_hidden_layers = m->num_blocks();
    rep.calib_path = o->calib;
    rep.seqlen = o->seqlen;
    rep.seed = o->seed;
    rep.metrics = o->metrics;
    rep.probe_bits = o->probe_bits;
    rep.group_size = groups.front();
    rep.world_size = comm->world_size();

    std::vector<std::vector<int32_t>> seqs;
    std::vector<int64_t> labels;
    if (m->is_causal_lm()) {
      if (o->seqlen > cfg.max_position_embeddings)
        throw InputError("--seqlen " + std::to_string(o->seqlen) + " exceeds the model's max_position_embeddings " +
                         std::to_string(cfg.max_position_embeddings));
      data::CalibrationOptions co;
      co.samples = o->samples;
      co.seqlen = o->seqlen;
      co.seed = o->seed;
      const auto calib = data::load_token_calibration(o->calib, tok, co);
      if (calib.consecutive && comm->is_main())
        spdlog::warn("{} holds {} tokens, fewer than {} x {}: using {} consecutive sequences", o->calib,
                     calib.total_tokens, o->samples, o->seqlen, calib.sequences.size());
      rep.samples = static_cast<int64_t>(calib.sequences.size());
      seqs = calib.sequences;
    } else {
      const auto calib = data::load_labelled_calibration(o->calib, o->samples, data::parse_sampling(o->sampling),
                                                         o->seed);
      if (m->num_labels() != static_cast<int64_t>(calib.label_names.size()))
        throw InputError("'" + o->calib + "' has " + std::to_string(calib.label_names.size()) + " labels but " +
                         o->model + " classifies into " + std::to_string(m->num_labels()));
      bool add_bos = tok.bos_id() >= 0;
      if (const auto* bpe = dynamic_cast<const data::HfBpeTokenizer*>(&tok)) add_bos = bpe->default_add_bos();
      const int64_t max_len = std::min<int64_t>(o->seqlen, cfg.max_position_embeddings);
      std::vector<std::vector<int32_t>>& ids = seqs;
      labels = calib.labels;
      for (const auto& t : calib.texts) {
        auto v = tok.encode(t, add_bos);
        if (static_cast<int64_t>(v.size()) > max_len) {
          const int32_t last = v.back();
          v.resize(static_cast<std::size_t>(max_len));
          if (tok.kind() == "wordpiece") v.back() = last;  // BERT inputs end in [SEP]
        }
        if (v.empty()) v.push_back(std::max<int32_t>(0, static_cast<int32_t>(cfg.pad_token_id)));
        ids.push_back(std::move(v));
      }
      rep.samples = static_cast<int64_t>(ids.size());
      rep.sampling = o->sampling;
    }
    sensitivity::FisherResult fr;
    if (need_fisher)
      fr = m->is_causal_lm() ? sensitivity::fisher_causal_lm(*m, seqs, comm.get(), progress)
                             : sensitivity::fisher_classifier(*m, seqs, labels, comm.get(), progress);
    sensitivity::OutputSensitivity osens;
    if (!out_metrics.empty()) {
      sensitivity::OutputSensitivityOptions so;
      so.metrics = out_metrics;
      so.probe_bits = o->probe_bits;
      so.group_size = groups.front();
      so.svcca_k = o->svcca_k;
      so.svcca_variance = o->svcca_variance;
      so.max_rows = o->max_rows;
      so.seed = o->seed;
      osens = sensitivity::output_sensitivity(*m, seqs, so);
    }

    const auto lin = m->named_linears();
    const std::string score_key = std::to_string(o->probe_bits) + ":" + std::to_string(groups.front());
    std::map<std::string, std::vector<double>> value;  // metric -> per module
    for (std::size_t k = 0; k < lin.size(); ++k) {
      sensitivity::ModuleEntry e;
      e.name = lin[k].first;
      for (int64_t b = 0; b < m->num_blocks(); ++b)
        if (util::starts_with(e.name, m->block_prefix(b))) e.block = b;
      if (need_fisher) {
        e.omega = sensitivity::omega_table(lin[k].second->weight, fr.fisher[k], bits, groups);
        value["fisher"].push_back(e.omega.at(score_key));
      }
      rep.modules.push_back(std::move(e));
    }
    for (const auto& [name, v] : osens.metric) value[name] = v;
    for (const auto& item : o->metrics) {
      if (value.count(item)) continue;
      std::vector<std::vector<double>> parts;
      for (const auto& c : util::split(item, '+')) parts.push_back(value.at(c));
      value[item] = sensitivity::mean_normalised_rank(parts);
    }
    for (std::size_t k = 0; k < rep.modules.size(); ++k) {
      for (const auto& [name, v] : value) rep.modules[k].metrics[name] = v[k];
      rep.modules[k].score = value.at(o->metrics.front())[k];
    }
    rep.score_metric = o->metrics.front();
    rep.mode = o->mode;
    if (comm->is_main()) {
      const auto txt = sensitivity::write_sensitivity(rep, o->out);
      std::cout << sensitivity::sensitivity_ranking_text(rep);
      std::cout << "wrote " << o->out << " and " << txt << "\n";
    }
    comm->barrier();
  });
}

}  // namespace mpqat::cli
