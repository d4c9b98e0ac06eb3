// The seeds' output files, written beside mpqat's own so that users of the original BERT / OPT
// scripts find what they know (layout: docs/seed-outputs.md):
//   <out_root>/Sensitivities/layer_sensitivity_<MODEL>_<DATA>_<metric>.json  {"layer_0": v, ...}
//   <out_root>/Sensitivities/layer_sensitivity_<MODEL>_<DATA>_<metric>.txt   readable, ranked
//   <out_root>/Evaluation/eval_<MODEL>_<DATA>_<method>_<k>groups_<timestamp>.txt
// A seed "layer" is one transformer block (BERT encoder layer, OPT decoder layer). Files are
// written atomically; folders are created. No torch here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/eval/run_report.h"

namespace mpqat::eval {

// Classification metrics of one model as the seeds print them. NaN = not measured ("n/a").
struct SeedClassMetrics {
  double accuracy = 0.0, precision = 0.0, recall = 0.0, f1 = 0.0;
};

struct SeedEvalInput {
  std::string model;      // "BERT", "OPT-1.3B", "sst2-bert-tiny"
  std::string data;       // "IMDB", "SST2"
  std::string method;     // grouping: "kmeans", "percentile", "hierarchical", ...
  int groups = 0;         // k (the file name's "<k>groups")
  std::string timestamp;  // "20250113_142530" (seed_timestamp())
  SeedClassMetrics fp, quantized;
  uint64_t fp_bytes = 0, quantized_bytes = 0;  // 0 = unknown: size lines show "n/a"
  double avg_bits = 0.0;                       // code bits per linear weight; 0 = not shown
  double bpw = 0.0;                            // all bytes of the quantized linears / their weights; 0 = not shown
  std::vector<int> bits;                       // per layer (block) index; 0 = not quantized / unknown
  std::vector<double> sensitivity;             // per layer, optional (empty = not shown)
  std::string sensitivity_metric;              // "pwcca", "pwcca+cka", "fisher"; empty = not shown
  int64_t calibration_size = 0;                // 0 = not shown
  int64_t evaluation_size = 0;                 // 0 = not shown
  std::string sampling;                        // "stratified" | "random"; empty = not shown
};

// The current local time as the seeds stamp their files: "YYYYMMDD_HHMMSS".
std::string seed_timestamp();

// A name as it goes into a seed file name: characters other than letters, digits, '.', '-',
// '+' and '_' become '_'. Throws InputError naming `what` when the result is empty.
std::string seed_file_part(const std::string& name, const std::string& what);

// The JSON document ({"layer_0": v0, "layer_1": v1, ...} in layer order, 2-space indent;
// non-finite values become null) and the text (header, the values by layer, then the ranking,
// most sensitive first; ties keep layer order).
std::string seed_sensitivity_json(const std::vector<double>& per_layer);
std::string seed_sensitivity_text(const std::string& model, const std::string& data, const std::string& metric,
                                  const std::vector<double>& per_layer);

// Writes Sensitivities/layer_sensitivity_<model>_<data>_<metric>.json and .txt under out_root;
// returns the JSON file's path. Throws InputError for an empty per_layer or name.
std::string write_seed_sensitivity(const std::string& out_root, const std::string& model, const std::string& data,
                                   const std::string& metric, const std::vector<double>& per_layer);

// The evaluation report's text (pure; what write_seed_evaluation writes).
std::string seed_evaluation_text(const SeedEvalInput& in);

// Writes Evaluation/eval_<model>_<data>_<method>_<k>groups_<timestamp>.txt under out_root;
// returns its path. Throws InputError for an empty model, data, method or timestamp, or k < 1.
std::string write_seed_evaluation(const std::string& out_root, const SeedEvalInput& in);

// A `mpqat run` report (eval/run_report.h) as SeedEvalInput:
// - model: the last path component of `model`; data: `data` when the report has it, else the
//   name of the folder holding the evaluation file (`evaluation_path` or the name keying the
//   FP classification), upper-cased ("sst2" -> "SST2"), else "DATA";
// - fp / quantized: each side's first classifier with an accuracy: accuracy and the headline
//   precision, recall, f1; both sides must have one;
// - sizes: each side's bytes; avg_bits / bpw: the quantized side's;
// - bits per layer: over the layers of each block, the largest bits (equal to the bits when the
//   block is uniform); layers without a block are skipped;
// - sensitivity per layer: the mean over the block's layers of the metric `sensitivity_metric`
//   (when empty: the report's sensitivity_metric, else the first metric of the first layer);
// - calibration_size / sampling, evaluation_size: the report's, else the FP classifier's n.
// Throws InputError when either side's classification metrics are missing.
SeedEvalInput seed_eval_from_report(const RunReport& report, const std::string& method, int k,
                                    const std::string& timestamp, const std::string& sensitivity_metric = "");
// The same for a stored report.json (eval::run_report_from_json first).
SeedEvalInput seed_eval_from_report(const nlohmann::json& report, const std::string& method, int k,
                                    const std::string& timestamp, const std::string& sensitivity_metric = "");

}  // namespace mpqat::eval
