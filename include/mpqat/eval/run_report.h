// The report of `mpqat run`: FP vs quantized metrics with their drops, model sizes, average
// bits and compression, bits per layer, block training and time per stage, rendered from one
// JSON document (schema: docs/reports.md) as plain text and as one self-contained HTML page
// with inline SVG charts. Pure functions (nothing is read or written); no torch here.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace mpqat::eval {

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

// Every metric found under "fp" and "quantized" (ppl, tasks, classification, other numeric
// fields; see docs/reports.md), FP's order first, then those only the quantized side has.
// Throws InputError when "model", "fp" or "quantized" is missing or of the wrong type.
std::vector<MetricComparison> compare_run_metrics(const nlohmann::json& report);

// The plain-text report (report.txt). Throws InputError as compare_run_metrics; optional
// fields of the wrong type are shown as "-" or skipped, never thrown on.
std::string render_run_report_text(const nlohmann::json& report);

// One self-contained HTML page (report.html): no network access (inline CSS, inline SVG, no
// scripts or fonts). The same tables as the text report, plus three charts, each an <svg>
// with a <title>: id "chart-sensitivity" (per-layer sensitivity, one series per metric,
// normalised per metric to [0, 1]), "chart-bits" (one bar per layer) and "chart-loss" (start
// vs best validation MSE per block, log scale when the values span more than 100x). A chart
// whose data is absent is replaced by a one-line note. Every string from the report is escaped.
std::string render_run_report_html(const nlohmann::json& report);

// The per-layer charts of report.html for other pages (study.html): `layers` as report.json's
// "layers" array; a note instead of the chart when it holds no sensitivity / bits.
std::string layer_sensitivity_chart(const nlohmann::json& layers, const std::string& id);
std::string layer_bits_chart(const nlohmann::json& layers, const std::string& id, const std::string& title);

// Escapes & < > " ' for HTML text and attribute values (also valid inside inline SVG).
std::string html_escape(const std::string& s);

}  // namespace mpqat::eval
