// One sensitivity measurement end to end, as `mpqat sensitivity` and `mpqat run` do it: stream the
// model block by block, sample calibration data (token windows for causal LMs, labelled examples for
// classifiers), compute Fisher (Omega tables) and / or the CCA family in output mode, combine
// "a+b" metrics by mean normalised rank, and return the report (sensitivity_json.h writes it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpqat/model/activation_cache.h"
#include "mpqat/sensitivity/sensitivity_json.h"

namespace mpqat::dist {
class Communicator;
}
namespace mpqat::io {
class Recipe;
}

namespace mpqat::sensitivity {

struct SensitivityRunOptions {
  std::string model;  // float model folder
  std::string calib;  // text / JSONL (causal LMs) or TSV / CSV / JSONL with labels (classifiers)
  int64_t samples = 128, seqlen = 512;
  uint64_t seed = 0;
  std::string sampling = "random";  // classifiers: random | stratified
  std::string text_field = "sentence", label_field = "label";  // classifiers' columns
  std::vector<std::string> metrics = {"fisher"};  // the first is the score
  std::string mode = "output";
  std::vector<int> bits = {2, 3, 4, 5, 6, 8};
  std::vector<int64_t> group_sizes = {128};  // the first is the score's
  int probe_bits = 3;
  int svcca_k = 20;
  double svcca_variance = 0.99;
  int64_t max_rows = 4096;
  bool progress = false;
  // Blocks are loaded one at a time onto `device`; the activation caches live in host memory up
  // to cache.memory_limit, past it in files under cache.dir (docs/sensitivity.md, "Memory").
  torch::Device device = torch::kCPU;
  model::CacheOptions cache;
};

// The recipe's data.calibration.* and sensitivity.* keys (the candidate bits and groups from
// allocation.bits / group_sizes, the probe bits always among them); sensitivity.cache_dir "" =
// `default_cache_dir`. The device is the caller's (it needs the communicator).
SensitivityRunOptions sensitivity_options_from_recipe(const io::Recipe& r, const std::string& default_cache_dir);

// Validates the options (InputError naming the bad value and the accepted ones), then measures.
// Every rank computes the same report (Fisher is all-reduced).
SensitivityReport compute_sensitivity(const SensitivityRunOptions& o, dist::Communicator* comm = nullptr);

}  // namespace mpqat::sensitivity
