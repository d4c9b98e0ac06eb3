// study.md and study.html of `mpqat study` (docs/study.md), rendered from study.json: rows of
// one `mpqat run` each, summarised per variant and budget as mean +- standard deviation over
// seeds. Pure functions; no torch here.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpqat::eval {

// Mean and sample standard deviation (n - 1; 0 for one value) of the values present.
struct Stat {
  std::size_t n = 0;
  double mean = 0, std = 0;
};
Stat stat_of(const std::vector<double>& values);

// The rows of one variant at one budget and calibration size, over seeds.
struct StudyGroup {
  std::string variant, allocation, training, sgra;
  std::optional<double> budget_bits;  // none: clustering presets
  int64_t samples = 0;
  std::vector<int64_t> seeds;
  Stat bytes, bpw, code_bits, ppl, train_seconds, steps;
  std::vector<std::pair<std::string, Stat>> tasks;  // task -> acc
  std::optional<Stat> accuracy, f1;                 // classification
  std::optional<double> budget_bytes;
};
// Groups in the rows' first-appearance order.
std::vector<StudyGroup> summarize_study(const nlohmann::json& study);

// A budget in uniform bits as the cell names and study.json's "budget_bytes" keys write it: "3",
// "3.5" (one rule for the writer and the readers).
std::string budget_text(double bits);
// An evaluation's "ppl" (a number, or a map by file name when several files are scored): the
// number, or the files' mean; absent for anything else.
std::optional<double> mean_ppl(const nlohmann::json& ppl);

std::string render_study_markdown(const nlohmann::json& study);
// One self-contained page (inline SVG, no scripts): the tables of study.md and the charts
// "study-quality-*" (each metric against checkpoint bytes, one line per variant),
// "study-sensitivity", "study-bits-<k>" (per-layer bits of each mixed variant), "study-time"
// (training seconds per variant), "study-convergence" (validation MSE relative to each block's
// start, per epoch) and, with several calibration sizes, "study-samples".
std::string render_study_html(const nlohmann::json& study);

}  // namespace mpqat::eval
