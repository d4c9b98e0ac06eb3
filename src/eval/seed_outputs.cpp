#include "mpqat/eval/seed_outputs.h"

#include "mpqat/eval/run_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::eval {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A metric value as the seeds print it: 6 decimals ("0.912300"); scientific for magnitudes
// that 6 decimals would lose or bloat; "n/a" when not finite.
std::string val6(double v) {
  if (!std::isfinite(v)) return "n/a";
  const double a = std::fabs(v);
  if (a != 0 && (a < 1e-4 || a >= 1e7)) return fmt::format("{:.6e}", v);
  return fmt::format("{:.6f}", v);
}

std::string mib(uint64_t bytes) { return fmt::format("{:.2f}", static_cast<double>(bytes) / (1024.0 * 1024.0)); }

// Creates `dir` (and parents); Error naming it on failure.
void make_dir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create folder {}: {}", dir.string(), ec.message()));
}

// The seeds' reading of an accuracy drop (000: "Accuracy Drop Interpretation").
// Judged on the percentage as printed (2 decimals), so 5.00% reads as "Large", not "Very large".
std::string impact(double drop_pct) {
  if (!std::isfinite(drop_pct)) return "n/a";
  drop_pct = std::round(drop_pct * 100.0) / 100.0;
  if (drop_pct < 1.0) return "Excellent (< 1%)";
  if (drop_pct < 2.0) return "Good (1-2%)";
  if (drop_pct < 3.0) return "Moderate (2-3%): consider increasing bits";
  if (drop_pct <= 5.0) return "Large (3-5%): more bits, more groups, or QAT";
  return "Very large (> 5%): change the approach";
}

// ------------------------------------------------------------ from the run report

// The side's classifier: its first entry with an accuracy, and the name it has ("" when flat).
const std::pair<std::string, ClassificationMetrics>* classification_of(const ModelMetrics& side) {
  for (const auto& c : side.classification)
    if (!std::isnan(c.second.accuracy)) return &c;
  return nullptr;
}

SeedClassMetrics metrics_of(const ClassificationMetrics& c) {
  SeedClassMetrics m;
  m.accuracy = c.accuracy;
  m.precision = c.headline_precision();
  m.recall = c.headline_recall();
  m.f1 = c.headline_f1();
  return m;
}

// The data set's name from a path: its folder's name, else its stem; upper-cased.
std::string data_name_from_path(const std::string& path) {
  const fs::path p(path);
  std::string name = p.parent_path().filename().string();
  if (name.empty() || name == "." || name == "..") name = p.stem().string();
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::toupper(c); });
  return name;
}

}  // namespace

std::string seed_timestamp() { return util::local_timestamp(); }

std::string seed_file_part(const std::string& name, const std::string& what) {
  std::string out;
  for (unsigned char c : util::trim(name))
    out += (std::isalnum(c) || c == '.' || c == '-' || c == '+' || c == '_') ? static_cast<char>(c) : '_';
  if (out.empty() || out == "." || out == "..")
    throw InputError(fmt::format("seed outputs: {} '{}' is empty (give a name of letters, digits, . - + _)", what, name));
  return out;
}

// ------------------------------------------------------------ sensitivities

std::string seed_sensitivity_json(const std::vector<double>& per_layer) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < per_layer.size(); ++i) {
    const std::string key = fmt::format("layer_{}", i);
    if (std::isfinite(per_layer[i])) j[key] = per_layer[i];
    else j[key] = nullptr;
  }
  return j.dump(2) + "\n";
}

std::string seed_sensitivity_text(const std::string& model, const std::string& data, const std::string& metric,
                                  const std::vector<double>& per_layer) {
  std::string out = fmt::format("Layer sensitivity: {} on {}, metric {}\n", model, data, metric);
  out += "Higher = more sensitive to quantization (allocate more bits).\n";
  out += fmt::format("layers: {}\n", per_layer.size());
  out += "\n# Sensitivity by layer\n";
  for (std::size_t i = 0; i < per_layer.size(); ++i) out += fmt::format("layer_{}: {}\n", i, val6(per_layer[i]));
  // Ranking: most sensitive first; ties keep layer order; non-finite values last.
  std::vector<std::size_t> idx(per_layer.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
    const bool fa = std::isfinite(per_layer[a]), fb = std::isfinite(per_layer[b]);
    if (fa != fb) return fa;
    return fa && per_layer[a] > per_layer[b];
  });
  out += "\n# Ranking (most sensitive first)\n";
  out += fmt::format("{:>4}  {:<10} {:>14}\n", "rank", "layer", "sensitivity");
  for (std::size_t k = 0; k < idx.size(); ++k)
    out += fmt::format("{:>4}  {:<10} {:>14}\n", k + 1, fmt::format("layer_{}", idx[k]), val6(per_layer[idx[k]]));
  return out;
}

std::string write_seed_sensitivity(const std::string& out_root, const std::string& model, const std::string& data,
                                   const std::string& metric, const std::vector<double>& per_layer) {
  if (per_layer.empty())
    throw InputError("seed outputs: no layer sensitivities to write for metric '" + metric + "' (need one per layer)");
  const std::string stem = fmt::format("layer_sensitivity_{}_{}_{}", seed_file_part(model, "model name"),
                                       seed_file_part(data, "data name"), seed_file_part(metric, "metric name"));
  const fs::path dir = fs::path(out_root) / "Sensitivities";
  make_dir(dir);
  const std::string json_path = (dir / (stem + ".json")).string();
  util::write_file_atomic(json_path, seed_sensitivity_json(per_layer));
  util::write_file_atomic((dir / (stem + ".txt")).string(), seed_sensitivity_text(model, data, metric, per_layer));
  return json_path;
}

// ------------------------------------------------------------ evaluation

std::string seed_evaluation_text(const SeedEvalInput& in) {
  std::string out = "# Mixed-Precision Quantization Evaluation\n";
  out += fmt::format("model: {}\n", in.model);
  out += fmt::format("dataset: {}\n", in.data);
  out += fmt::format("clustering: {}\n", in.method);
  out += fmt::format("num_groups: {}\n", in.groups);
  out += fmt::format("timestamp: {}\n", in.timestamp);
  if (!in.sensitivity_metric.empty()) out += fmt::format("sensitivity_metric: {}\n", in.sensitivity_metric);
  if (in.calibration_size > 0) out += fmt::format("calibration_size: {}\n", in.calibration_size);
  if (!in.sampling.empty()) out += fmt::format("sampling: {}\n", in.sampling);
  if (in.evaluation_size > 0) out += fmt::format("evaluation_size: {}\n", in.evaluation_size);

  auto block = [](const char* title, const SeedClassMetrics& m) {
    return fmt::format("\n# {}\naccuracy: {}\nprecision: {}\nrecall: {}\nf1_score: {}\n", title, val6(m.accuracy),
                       val6(m.precision), val6(m.recall), val6(m.f1));
  };
  out += block("FP32 Baseline (Before Quantization)", in.fp);
  out += block("After Mixed-Precision Quantization", in.quantized);

  // Drops: fp - quantized (positive = quality lost); the accuracy's also relative to FP.
  const double acc_drop = in.fp.accuracy - in.quantized.accuracy;
  const double acc_pct = in.fp.accuracy != 0 ? acc_drop / std::fabs(in.fp.accuracy) * 100.0 : kNaN;
  out += "\n# Accuracy Drops\n";
  out += fmt::format("accuracy_drop: {}", val6(acc_drop));
  if (std::isfinite(acc_pct)) out += fmt::format(" ({:.2f}%)", acc_pct);
  out += "\n";
  out += fmt::format("precision_drop: {}\n", val6(in.fp.precision - in.quantized.precision));
  out += fmt::format("recall_drop: {}\n", val6(in.fp.recall - in.quantized.recall));
  out += fmt::format("f1_drop: {}\n", val6(in.fp.f1 - in.quantized.f1));
  out += fmt::format("impact: {}\n", impact(acc_pct));

  out += "\n# Compression Metrics\n";
  const bool sizes = in.fp_bytes > 0 && in.quantized_bytes > 0;
  out += fmt::format("original_size_mb: {}\n", in.fp_bytes > 0 ? mib(in.fp_bytes) : "n/a");
  out += fmt::format("quantized_size_mb: {}\n", in.quantized_bytes > 0 ? mib(in.quantized_bytes) : "n/a");
  out += fmt::format("original_bytes: {}\n", in.fp_bytes > 0 ? std::to_string(in.fp_bytes) : "n/a");
  out += fmt::format("quantized_bytes: {}\n", in.quantized_bytes > 0 ? std::to_string(in.quantized_bytes) : "n/a");
  if (sizes) {
    const double fp = static_cast<double>(in.fp_bytes), q = static_cast<double>(in.quantized_bytes);
    out += fmt::format("compression_ratio: {:.3f}x\n", fp / q);
    out += fmt::format("size_reduction_pct: {:.2f}%\n", (1.0 - q / fp) * 100.0);
  } else {
    out += "compression_ratio: n/a\nsize_reduction_pct: n/a\n";
  }
  if (in.avg_bits > 0) out += fmt::format("average_bits: {:.3f}  # code bits per linear weight\n", in.avg_bits);
  if (in.bpw > 0) out += fmt::format("bpw: {:.3f}  # all bytes of the quantized linears (codes, scales, zeros, g_idx) / their weights\n", in.bpw);

  out += "\n# Bit Allocation Summary\n";
  std::map<int, int, std::greater<int>> count;
  for (int b : in.bits) ++count[b];
  for (const auto& [b, c] : count) {
    const double share = 100.0 * c / static_cast<double>(in.bits.size());
    if (b > 0) out += fmt::format("{}-bit: {} layer{} ({:.1f}%)\n", b, c, c == 1 ? "" : "s", share);
    else out += fmt::format("not quantized: {} layer{} ({:.1f}%)\n", c, c == 1 ? "" : "s", share);
  }

  out += "\n# Layer-wise Bit Assignment\n";
  for (std::size_t i = 0; i < in.bits.size(); ++i) {
    out += fmt::format("layer_{}: ", i);
    out += in.bits[i] > 0 ? fmt::format("{} bits", in.bits[i]) : std::string("not quantized");
    if (i < in.sensitivity.size()) out += fmt::format(" (sensitivity: {})", val6(in.sensitivity[i]));
    out += "\n";
  }
  return out;
}

std::string write_seed_evaluation(const std::string& out_root, const SeedEvalInput& in) {
  if (in.groups < 1)
    throw InputError(fmt::format("seed outputs: number of groups is {} (need k >= 1)", in.groups));
  const std::string name = fmt::format("eval_{}_{}_{}_{}groups_{}.txt", seed_file_part(in.model, "model name"),
                                       seed_file_part(in.data, "data name"), seed_file_part(in.method, "method"),
                                       in.groups, seed_file_part(in.timestamp, "timestamp"));
  const fs::path dir = fs::path(out_root) / "Evaluation";
  make_dir(dir);
  const std::string path = (dir / name).string();
  util::write_file_atomic(path, seed_evaluation_text(in));
  return path;
}

// ------------------------------------------------------------ from report.json

SeedEvalInput seed_eval_from_report(const RunReport& report, const std::string& method, int k,
                                    const std::string& timestamp, const std::string& sensitivity_metric) {
  SeedEvalInput in;
  in.model = fs::path(report.model).filename().string();
  if (in.model.empty()) in.model = fs::path(report.model).parent_path().filename().string();
  in.method = method;
  in.groups = k;
  in.timestamp = timestamp;

  const auto* fpc = classification_of(report.fp);
  const auto* qc = classification_of(report.quantized);
  if (!fpc || !qc)
    throw InputError(std::string("run report: \"") + (!fpc ? "fp" : "quantized") +
                     ".classification\" with \"accuracy\" is missing (the seeds' evaluation needs a classifier's "
                     "metrics on both sides)");
  in.fp = metrics_of(fpc->second);
  in.quantized = metrics_of(qc->second);
  in.fp_bytes = report.fp.bytes.value_or(0);
  in.quantized_bytes = report.quantized.bytes.value_or(0);
  if (report.quantized.avg_bits) in.avg_bits = *report.quantized.avg_bits;
  if (report.quantized.bpw) in.bpw = *report.quantized.bpw;

  if (!report.data.empty()) in.data = report.data;
  else if (!report.evaluation_path.empty()) in.data = data_name_from_path(report.evaluation_path);
  else if (!fpc->first.empty()) in.data = data_name_from_path(fpc->first);
  if (in.data.empty()) in.data = "DATA";

  if (report.calibration_samples) in.calibration_size = *report.calibration_samples;
  in.sampling = report.calibration_sampling;
  if (report.evaluation_samples) in.evaluation_size = *report.evaluation_samples;
  else if (fpc->second.n > 0) in.evaluation_size = fpc->second.n;

  // Per block: the largest bits of its modules, and the mean of their sensitivity.
  std::string metric = sensitivity_metric;
  if (metric.empty()) metric = report.sensitivity_metric;
  if (metric.empty() && !report.layers.empty())
    for (const auto& [name, v] : report.layers.front().sensitivity)
      if (v) {
        metric = name;
        break;
      }
  std::map<int64_t, int> bits;
  std::map<int64_t, std::pair<double, int>> sens;  // block -> (sum, count)
  bool any_sens = false;
  for (const auto& e : report.layers) {
    if (!e.block || *e.block < 0 || *e.block > 1000000) continue;
    const int64_t b = *e.block;
    auto& mx = bits[b];
    if (e.bits) mx = std::max(mx, static_cast<int>(*e.bits));
    for (const auto& [name, v] : e.sensitivity)
      if (v && (name == metric || (name == "sensitivity" && e.sensitivity.size() == 1))) {  // or a bare number
        auto& acc = sens[b];
        acc.first += *v;
        ++acc.second;
        any_sens = true;
      }
  }
  if (!bits.empty()) {
    const auto n = static_cast<std::size_t>(bits.rbegin()->first + 1);
    in.bits.assign(n, 0);
    for (const auto& [b, v] : bits) in.bits[static_cast<std::size_t>(b)] = v;
    if (any_sens) {
      in.sensitivity.assign(n, kNaN);
      for (const auto& [b, acc] : sens)
        in.sensitivity[static_cast<std::size_t>(b)] = acc.first / static_cast<double>(acc.second);
      in.sensitivity_metric = metric;
    }
  }
  if (in.sensitivity_metric.empty()) in.sensitivity_metric = metric;
  return in;
}

SeedEvalInput seed_eval_from_report(const json& report, const std::string& method, int k, const std::string& timestamp,
                                    const std::string& sensitivity_metric) {
  return seed_eval_from_report(run_report_from_json(report), method, k, timestamp, sensitivity_metric);
}

}  // namespace mpqat::eval
