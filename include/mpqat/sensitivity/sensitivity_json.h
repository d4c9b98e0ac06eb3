// sensitivity.json and its readable ranking ([M4]); schema in docs/formats.md "sensitivity.json"
// (what alloc::parse_sensitivity reads). No torch here.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/sensitivity/layer_profile.h"  // AttentionStats (no torch)

namespace mpqat::sensitivity {

struct ModuleEntry {
  std::string name;  // full linear name
  int64_t block = 0;
  double score = 0.0;                    // higher = more sensitive
  std::map<std::string, double> omega;   // "<bits>:<group>" / "16" -> expected loss increase
                                         // (Fisher only; left out of the file when empty)
  std::map<std::string, double> metrics; // every measured metric ("fisher", "cka", "pwcca+cka")
};

// Statistics of one block's output hidden states (mode profile; docs/sensitivity.md).
struct BlockStats {
  double mean = 0.0, std = 0.0, max_abs = 0.0, sparsity = 0.0;
  std::map<std::string, double> change;  // metric -> 1 - similarity(block input, block output)
  AttentionStats attention;              // seed 003 attention entropy; rows == 0: none measured
};

struct SensitivityReport {
  // model
  std::string model_path, architecture;
  int64_t num_hidden_layers = 0;
  // calibration provenance
  std::string calib_path;
  int64_t samples = 0, seqlen = 0;
  uint64_t seed = 0;
  std::vector<std::string> metrics;
  std::string mode = "output";
  std::string score_metric = "fisher";  // which of the metrics "score" is
  int probe_bits = 3;
  int64_t group_size = 128;     // the group of the score (the first candidate group)
  std::string sampling;         // classifiers: random | stratified; empty for token windows
  int world_size = 1;
  std::vector<ModuleEntry> modules;  // model order
  std::vector<BlockStats> block_stats;  // mode profile: per block (written as blocks[i].stats)
};

// The whole document. Blocks: per block index, score and omega summed over its modules. No
// timestamp, so the file is byte-stable for a fixed seed.
nlohmann::json sensitivity_to_json(const SensitivityReport& r);

// Modules ranked by score, most sensitive first, then blocks ranked the same way.
std::string sensitivity_ranking_text(const SensitivityReport& r);

// Writes `json_path` (atomically) and the ranking next to it (`json_path` with ".json"
// replaced by ".txt", or ".txt" appended). Returns the ranking's path.
std::string write_sensitivity(const SensitivityReport& r, const std::string& json_path);

}  // namespace mpqat::sensitivity
