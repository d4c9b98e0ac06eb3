// `mpqat sensitivity`: per-module / per-block sensitivity -> sensitivity.json + ranking .txt
// (docs/formats.md "sensitivity.json"). Metrics: fisher (Omega table, score = Omega at the probe
// bits and first group size) and the CCA family in output mode (1 - similarity of a module's
// full-precision and probe-quantized outputs); "a+b" combines metrics by mean normalised rank.
// The first metric listed is the "score". --mode profile: the seeds' layer-to-layer profile (block_profile.h).
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
#include "mpqat/model/activation_cache.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/sensitivity/fisher.h"
#include "mpqat/sensitivity/output_sensitivity.h"
#include "mpqat/sensitivity/run_sensitivity.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/sensitivity/sensitivity_json.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {

void add_sensitivity_command(CLI::App& app) {
  struct Opts {
    std::string model, calib, out, sampling = "random", group_sizes = "128,32,64,256,-1", bits = "2,3,4,5,6,8";
    int64_t samples = 128, seqlen = 512;
    uint64_t seed = 0;
    int probe_bits = 3, svcca_k = 20;
    int64_t max_rows = 4096;
    double svcca_variance = 0.99;
    std::string mode = "output";
    std::vector<std::string> metrics = {"fisher"};
    bool quiet = false;
    std::string device = "auto", cache_dtype = "float32", cache_limit = "4GiB", cache_dir;
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
  sub->add_option("--mode", o->mode, "CCA family: output (1 - sim of FP vs quantized module output) or profile (the seeds' layer-to-layer: 1 - sim of block input vs output, plus layer statistics)");
  sub->add_option("--max-rows", o->max_rows, "tokens subsampled for cca, svcca, pwcca, cka-rbf, cka-debiased");
  sub->add_option("--svcca-k", o->svcca_k, "SVCCA: top-k directions (0 = by --svcca-variance)");
  sub->add_option("--svcca-variance", o->svcca_variance, "SVCCA: variance fraction kept when k is 0");
  sub->add_option("--bits", o->bits, "candidate bit-widths of the omega table");
  sub->add_option("--group-sizes", o->group_sizes, "candidate group sizes (-1 = per row); the first is the "
                                                   "score's. Default: every supported size, so any allocation menu finds its omegas");
  sub->add_option("--probe-bits", o->probe_bits, "bits of the scalar score (omega at probe:first group)");
  sub->add_option("--sampling", o->sampling, "classifiers: random or stratified")
      ->check(CLI::IsMember({"random", "stratified"}));
  sub->add_option("--seed", o->seed, "calibration sampling seed");
  sub->add_flag("--quiet", o->quiet, "no progress bar");
  sub->add_option("--device", o->device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  sub->add_option("--cache-dtype", o->cache_dtype,
                  "dtype of the cached block inputs and gradients (float32 keeps Fisher exact; bfloat16 halves them)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}))
      ->capture_default_str();
  sub->add_option("--cache-memory-limit", o->cache_limit, "activation caches past this size go to --cache-dir")
      ->capture_default_str();
  sub->add_option("--cache-dir", o->cache_dir, "folder for caches past the limit (default: the system temp folder)");
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
    sensitivity::SensitivityRunOptions so;
    so.model = o->model;
    so.calib = o->calib;
    so.samples = o->samples;
    so.seqlen = o->seqlen;
    so.seed = o->seed;
    so.sampling = o->sampling;
    so.metrics = o->metrics;
    so.mode = o->mode;
    so.bits.clear();
    for (auto b : ints(o->bits, "--bits")) so.bits.push_back(static_cast<int>(b));
    so.group_sizes = ints(o->group_sizes, "--group-sizes");
    so.probe_bits = o->probe_bits;
    so.svcca_k = o->svcca_k;
    so.svcca_variance = o->svcca_variance;
    so.max_rows = o->max_rows;
    so.progress = !o->quiet;
    so.cache = model::cache_options(o->cache_dtype, o->cache_limit, o->cache_dir,
                                    {"--cache-dtype", "--cache-memory-limit", "--cache-dir"});
    auto comm = dist::Communicator::from_env();
    so.device = dist::resolve_device(o->device, *comm, "--device");
    const auto rep = sensitivity::compute_sensitivity(so, comm.get());
    if (comm->is_main()) {
      const auto txt = sensitivity::write_sensitivity(rep, o->out);
      std::cout << sensitivity::sensitivity_ranking_text(rep);
      std::cout << "wrote " << o->out << " and " << txt << "\n";
    }
    comm->barrier();
  });
}

}  // namespace mpqat::cli
