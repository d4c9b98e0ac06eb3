// The report of `mpqat run` as a typed struct: FP vs quantized metrics, model sizes, the budget,
// bits per layer, block training and time per stage. The pipeline fills it; report.json is its
// JSON form (schema: docs/reports.md), read back leniently in one place (run_report_from_json)
// by every reader (the renderers' callers, `mpqat study`, the seeds' evaluation file). Rendered
// as plain text and as one self-contained HTML page with inline SVG charts. Pure functions
// (nothing is read or written); no torch here.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mpqat/eval/scores.h"

namespace mpqat::eval {

// A model's evaluation, one side of the report ("fp" or "quantized"), and the file
// fp_eval.json / quantized_eval.json of `mpqat run` hold.
struct ModelMetrics {
  // Perplexity per evaluated file (its file name). One file with an empty name is the bare
  // number report.json's "ppl" holds when one file was evaluated.
  std::vector<std::pair<std::string, double>> ppl;
  std::vector<MultipleChoiceResult> tasks;  // in task-name order
  // The classifier's metrics; one entry with an empty name is the flat "classification"
  // object `mpqat run` writes, named entries the per-file objects of `mpqat eval`.
  std::vector<std::pair<std::string, ClassificationMetrics>> classification;
  // Any other numeric field of the side (e.g. "nll"), in name order.
  std::vector<std::pair<std::string, double>> other;
  std::optional<bool> streamed;           // evaluated one block at a time
  std::optional<uint64_t> bytes;          // FP: the unquantized weights; quantized: tensor bytes
  std::optional<double> avg_bits;         // code bits (kept for readers of older reports)
  std::optional<double> code_bits;        // code bits per weight of the block linears
  std::optional<double> bpw;              // every byte of the quantized linears / their weights
};

struct ReportLayer {
  std::string name;
  std::optional<int64_t> block;
  std::optional<int64_t> bits;
  std::optional<int64_t> group_size;
  // Metric -> value, in metric-name order; nullopt where the file had null (a NaN).
  std::vector<std::pair<std::string, std::optional<double>>> sensitivity;
};

struct ReportBlock {  // Block-AP's result for one block (train_log.jsonl)
  std::optional<int64_t> block, epochs, steps;
  std::optional<double> start_val_mse, best_val_mse, end_val_mse, seconds;
  std::optional<bool> kept_rtn;
  std::vector<double> val_curve;  // per-epoch validation MSE (NaN where the log had null)
};

struct ReportStage {  // one pipeline stage, or a measured part of the stage above (part_of)
  std::string name;
  std::string part_of;  // "" for a stage
  std::optional<double> seconds;
  std::optional<bool> reused;
  std::optional<double> peak_rss_mib, peak_anon_mib, peak_file_mib;
};

struct ReportBudget {
  std::string kind;  // the metric: file_bytes, tensor_bytes, linear_bytes, code_bits (docs/allocation.md)
  std::string text;  // the recipe's budget as written ("avg_bits=3.5", "bytes=196808")
  std::optional<double> value;      // the budget in that metric (written as an integer when whole)
  std::optional<uint64_t> actual;   // measured on the written checkpoint
  std::optional<uint64_t> predicted;
  std::optional<bool> met;          // actual <= value
};

struct ReportSize {
  uint64_t file_bytes = 0, tensor_bytes = 0, fp16_bytes = 0;
  double avg_bits_with_overhead = 0.0;
  std::map<int64_t, int64_t> bits_histogram;  // bits -> modules
};

struct ReportE2e {
  int64_t steps = 0, nan_steps = 0;
  double start_loss = 0.0, end_loss = 0.0, seconds = 0.0;
};

struct ReportGptq {  // GPTQ's proxy loss tr((W - Q) H (W - Q)^T) summed over modules
  double proxy_loss = 0.0, rtn_proxy_loss = 0.0, seconds = 0.0;
};

struct ReportGguf {  // output.formats: [gguf]
  std::string path;
  uint64_t bytes = 0;
  double bpw = 0.0, linear_bpw = 0.0;
  std::map<std::string, int64_t> linear_types;  // ggml type -> block linears written in it
  std::string table;  // the export's per-tensor table (gguf_export.txt in the run folder)
};

struct RunReport {
  std::string model;  // required
  std::string recipe, name, created, mpqat_version, architecture;
  struct Method {
    std::string allocation, training;
    bool e2e = false;
  };
  std::optional<Method> method;
  ModelMetrics fp, quantized;  // required (possibly empty)
  std::optional<ReportSize> size;
  std::optional<double> compression;  // FP bytes / quantized bytes
  std::optional<ReportBudget> budget;
  // The allocation stage's summary as it wrote it (alloc's document, docs/allocation.md):
  // carried into report.json, not read by the renderers.
  nlohmann::json allocation;
  std::vector<ReportLayer> layers;
  std::vector<ReportBlock> blocks;
  std::optional<ReportE2e> e2e;
  std::optional<ReportGptq> gptq;
  std::optional<ReportGguf> gguf;  // "exports": {"gguf": ..}
  // Classifiers (the seeds' setting): the data set's name, the sensitivity metric, the
  // calibration and evaluation sets.
  std::string data, sensitivity_metric;
  std::optional<int64_t> calibration_samples;
  std::string calibration_sampling;
  std::string evaluation_path;
  std::optional<int64_t> evaluation_samples;
  std::vector<ReportStage> stages;
  std::optional<double> seconds;  // the whole run's wall time
};

// ------------------------------------------------------------------ JSON form (report.json)

nlohmann::json to_json(const ModelMetrics& m);
nlohmann::json to_json(const ReportLayer& l);
nlohmann::json to_json(const ReportStage& s);
nlohmann::json to_json(const RunReport& r);

// Lenient readers: a missing key, a null or a value of another type reads as absent, so an
// older, partial or hand-written report still renders.
ModelMetrics model_metrics_from_json(const nlohmann::json& side);
std::vector<ReportLayer> report_layers_from_json(const nlohmann::json& layers);
// Throws InputError when the document is not an object or "model", "fp" or "quantized" is
// missing or of the wrong type.
RunReport run_report_from_json(const nlohmann::json& report);

// The mean perplexity over a side's files; absent without any.
std::optional<double> mean_ppl(const ModelMetrics& m);

// ------------------------------------------------------------------ metrics and rendering

// One quality metric of the FP and the quantized model, as the report shows it.
struct MetricComparison {
  std::string name;  // "ppl", "ppl wikitext.txt", "piqa acc_norm", "classification f1", "nll"
  std::optional<double> fp;
  std::optional<double> quantized;
  bool lower_is_better = false;  // ppl, perplexity, nll, loss, mse, bpc, bpb, error, wer, cer
  // Quality lost: fp - quantized, or quantized - fp when lower is better (so a ppl increase is
  // a positive drop); negative when quantization improved the metric. Absent unless both sides
  // are present.
  std::optional<double> drop;
  // drop / |fp| * 100; absent when drop is, or fp is 0.
  std::optional<double> drop_pct;
};

// Every metric of either side (perplexities, task acc / acc_norm, classification accuracy /
// precision / recall / f1 and, for a binary average, the macro ones, other numeric fields),
// FP's order first, then those only the quantized side has.
std::vector<MetricComparison> compare_run_metrics(const RunReport& report);

// The plain-text report (report.txt).
std::string render_run_report_text(const RunReport& report);

// One self-contained HTML page (report.html): no network access (inline CSS, inline SVG, no
// scripts or fonts). The same tables as the text report, plus three charts, each an <svg>
// with a <title>: id "chart-sensitivity" (per-layer sensitivity, one series per metric,
// normalised per metric to [0, 1]), "chart-bits" (one bar per layer) and "chart-loss" (start
// vs best validation MSE per block, log scale when the values span more than 100x). A chart
// whose data is absent is replaced by a one-line note. Every string from the report is escaped.
std::string render_run_report_html(const RunReport& report);

// A stored report.json re-rendered: run_report_from_json, then the renderers above.
std::vector<MetricComparison> compare_run_metrics(const nlohmann::json& report);
std::string render_run_report_text(const nlohmann::json& report);
std::string render_run_report_html(const nlohmann::json& report);

// The per-layer charts of report.html for other pages (study.html); a note instead of the
// chart when the layers hold no sensitivity / bits.
std::string layer_sensitivity_chart(const std::vector<ReportLayer>& layers, const std::string& id);
std::string layer_bits_chart(const std::vector<ReportLayer>& layers, const std::string& id, const std::string& title);

// Escapes & < > " ' for HTML text and attribute values (also valid inside inline SVG).
std::string html_escape(const std::string& s);

}  // namespace mpqat::eval
