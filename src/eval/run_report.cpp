#include "mpqat/eval/run_report.h"

#include "mpqat/eval/svg_chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <utility>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::eval {

using nlohmann::json;

namespace {

std::optional<double> finite(const std::optional<double>& v) {
  if (v && std::isfinite(*v)) return v;
  return std::nullopt;
}

// ---------------------------------------------------------------- number formatting

// 4 decimals for ordinary magnitudes, 4 significant digits for very large or small ones.
std::string fnum(double v, int digits = 4) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  const double a = std::fabs(v);
  if (a != 0 && (a >= 1e6 || a < 1e-3)) return fmt::format("{:.{}g}", v, digits);
  return fmt::format("{:.{}f}", v, digits);
}

std::string fnum(const std::optional<double>& v, int digits = 4) { return v ? fnum(*v, digits) : "-"; }

// An integer field (bits, block, epochs), else "-".
std::string inum(const std::optional<int64_t>& v) { return v ? std::to_string(*v) : "-"; }

std::string pct(const std::optional<double>& v) { return v ? fmt::format("{:.2f}%", *v) : "-"; }

std::string seconds(const std::optional<double>& v) {
  if (!v) return "-";
  if (*v >= 100) return fmt::format("{:.0f}", *v);
  return fmt::format("{:.2f}", *v);
}

std::string bytes_text(const std::optional<double>& v) {
  if (!v || !std::isfinite(*v) || *v < 0) return "-";
  const auto b = static_cast<uint64_t>(std::llround(*v));
  return fmt::format("{} ({} bytes)", util::format_bytes(b), b);
}

std::string yes_no(const std::optional<bool>& v) {
  if (!v) return "-";
  return *v ? "yes" : "no";
}

// ---------------------------------------------------------------- metrics

bool lower_is_better(const std::string& name) {
  static const std::set<std::string> lower{"ppl", "perplexity", "nll", "loss", "mse", "bpc",
                                           "bpb", "error", "wer", "cer", "error_rate"};
  const auto words = util::split(util::to_lower(name), ' ');
  return lower.count(words.front()) || lower.count(words.back());
}

using MetricList = std::vector<std::pair<std::string, double>>;

// Numeric fields of a side that are not quality metrics.
bool not_a_metric(const std::string& k) {
  static const std::set<std::string> s{"params", "parameters", "seconds", "n", "tokens", "bits", "windows",
                                       "context", "samples", "support"};
  return s.count(k) || util::ends_with(k, "_stderr");
}

// A task's or a classifier's value: NaN marks a field its report lacked.
void add_present(MetricList& out, const std::string& name, double v) {
  if (!std::isnan(v)) out.emplace_back(name, v);
}

MetricList collect_metrics(const ModelMetrics& side) {
  MetricList out;
  for (const auto& [f, v] : side.ppl) out.emplace_back(f.empty() ? "ppl" : "ppl " + f, v);
  for (const auto& t : side.tasks) {
    add_present(out, t.task + " acc", t.acc);
    add_present(out, t.task + " acc_norm", t.acc_norm);
  }
  for (const auto& [name, c] : side.classification) {
    const std::string p = name.empty() ? "classification" : name;
    add_present(out, p + " accuracy", c.accuracy);
    add_present(out, p + " precision", c.headline_precision());
    add_present(out, p + " recall", c.headline_recall());
    add_present(out, p + " f1", c.headline_f1());
    if (c.binary) {  // the macro figures differ from the headline only then
      add_present(out, p + " macro_precision", c.macro_precision);
      add_present(out, p + " macro_recall", c.macro_recall);
      add_present(out, p + " macro_f1", c.macro_f1);
    }
  }
  for (const auto& [k, v] : side.other)
    if (!not_a_metric(k)) out.emplace_back(k, v);
  return out;
}

// ---------------------------------------------------------------- text tables


std::string key_values(const std::vector<std::pair<std::string, std::string>>& kv, const std::string& indent) {
  std::size_t w = 0;
  for (const auto& [k, v] : kv) w = std::max(w, k.size());
  std::string out;
  for (const auto& [k, v] : kv) out += indent + k + ":" + std::string(w - k.size() + 1, ' ') + v + "\n";
  return out;
}

// ---------------------------------------------------------------- shared derived values

struct SizeInfo {
  std::optional<double> fp_bytes, q_bytes, fp_bits, q_bits, q_bpw, compression, reduction_pct;
};

SizeInfo size_info(const RunReport& r) {
  SizeInfo s;
  auto as_double = [](const std::optional<uint64_t>& v) -> std::optional<double> {
    if (!v) return std::nullopt;
    return static_cast<double>(*v);
  };
  s.fp_bytes = as_double(r.fp.bytes);
  s.q_bytes = as_double(r.quantized.bytes);
  s.fp_bits = finite(r.fp.avg_bits);
  s.q_bits = finite(r.quantized.code_bits);
  if (!s.q_bits) s.q_bits = finite(r.quantized.avg_bits);  // reports before code_bits
  s.q_bpw = finite(r.quantized.bpw);
  s.compression = finite(r.compression);
  if (!s.compression && s.fp_bytes && s.q_bytes && *s.q_bytes > 0) s.compression = *s.fp_bytes / *s.q_bytes;
  if (s.fp_bytes && s.q_bytes && *s.fp_bytes > 0) s.reduction_pct = (1.0 - *s.q_bytes / *s.fp_bytes) * 100.0;
  return s;
}

std::string budget_text(const RunReport& r) {
  if (!r.budget) return "";
  const ReportBudget& b = *r.budget;
  const std::string& kind = b.kind;
  std::string out;
  if (b.value && (kind == "bytes" || util::ends_with(kind, "_bytes"))) out = kind + " <= " + bytes_text(b.value);
  else if (b.value)
    out = (kind.empty() ? std::string("budget") : kind) + " <= " + fmt::format("{:g}", *b.value) +
          (kind == "avg_bits" ? " bpw incl. scales/zeros/g_idx" : "");
  else out = kind.empty() ? "-" : kind;
  if (b.met) out += *b.met ? " (met)" : " (NOT met)";
  return out;
}

// The "Size" section: label, value.
std::vector<std::pair<std::string, std::string>> size_rows(const RunReport& r) {
  const SizeInfo s = size_info(r);
  std::vector<std::pair<std::string, std::string>> size;
  if (s.fp_bytes) size.emplace_back("FP model", bytes_text(s.fp_bytes));
  if (s.q_bytes) size.emplace_back("quantized model", bytes_text(s.q_bytes));
  if (s.reduction_pct) size.emplace_back("size reduction", pct(s.reduction_pct));
  if (s.compression) size.emplace_back("compression ratio", fmt::format("{:.3f}x", *s.compression));
  if (s.q_bpw) size.emplace_back("bpw", fmt::format("{:.3f} (all bytes of the quantized linears / their weights)", *s.q_bpw));
  if (s.q_bits)
    size.emplace_back("code bits", fmt::format("{:.3f}", *s.q_bits) +
                                                  (s.fp_bits ? fmt::format(" (FP {:.3g})", *s.fp_bits) : std::string()));
  if (!budget_text(r).empty()) size.emplace_back("budget", budget_text(r));
  if (r.gguf) {
    std::string types;
    for (const auto& [t, n] : r.gguf->linear_types) types += (types.empty() ? "" : ", ") + t + " x" + std::to_string(n);
    size.emplace_back("GGUF (llama.cpp)", fmt::format("{}: {} bytes, block linears {:.3f} bpw{}", r.gguf->path,
                                                      r.gguf->bytes, r.gguf->linear_bpw,
                                                      types.empty() ? "" : " (" + types + ")"));
  }
  return size;
}

std::map<int64_t, int> bits_histogram(const std::vector<ReportLayer>& layers) {
  std::map<int64_t, int> h;
  for (const auto& l : layers)
    if (l.bits) ++h[*l.bits];
  return h;
}

std::string histogram_text(const std::map<int64_t, int>& h) {
  std::string out;
  for (const auto& [bits, n] : h) out += (out.empty() ? "" : ", ") + std::to_string(bits) + "-bit x" + std::to_string(n);
  return out;
}

// Sensitivity metric names over all layers (sorted), those with at least one value.
std::vector<std::string> sensitivity_metrics(const std::vector<ReportLayer>& layers) {
  std::set<std::string> names;
  for (const auto& l : layers)
    for (const auto& [k, v] : l.sensitivity)
      if (v) names.insert(k);
  return {names.begin(), names.end()};
}

std::optional<double> sensitivity_of(const ReportLayer& layer, const std::string& metric) {
  for (const auto& [k, v] : layer.sensitivity)
    if (k == metric) return v;
  return std::nullopt;
}

std::optional<double> gain_pct(const ReportBlock& b) {
  auto start = finite(b.start_val_mse);
  auto best = finite(b.best_val_mse);
  if (!start || !best || *start == 0) return std::nullopt;
  return (*start - *best) / *start * 100.0;
}

std::string block_label(const ReportBlock& b, std::size_t i) { return b.block ? std::to_string(*b.block) : std::to_string(i); }

std::string metric_note() {
  return "drop = quality lost: FP - quantized, or quantized - FP for ppl/nll/loss (lower is better);"
         " negative = improved";
}

}  // namespace

// ================================================================= public: metrics

std::vector<MetricComparison> compare_run_metrics(const RunReport& report) {
  const MetricList fp = collect_metrics(report.fp);
  const MetricList q = collect_metrics(report.quantized);
  std::vector<MetricComparison> out;
  std::map<std::string, std::size_t> index;
  auto slot = [&](const std::string& name) -> MetricComparison& {
    auto it = index.find(name);
    if (it != index.end()) return out[it->second];
    index[name] = out.size();
    out.push_back({});
    out.back().name = name;
    out.back().lower_is_better = lower_is_better(name);
    return out.back();
  };
  for (const auto& [name, v] : fp) slot(name).fp = v;
  for (const auto& [name, v] : q) slot(name).quantized = v;
  for (auto& m : out) {
    if (!m.fp || !m.quantized) continue;
    m.drop = m.lower_is_better ? *m.quantized - *m.fp : *m.fp - *m.quantized;
    if (*m.fp != 0) m.drop_pct = *m.drop / std::fabs(*m.fp) * 100.0;
  }
  return out;
}

std::vector<MetricComparison> compare_run_metrics(const json& report) {
  return compare_run_metrics(run_report_from_json(report));
}

std::string render_run_report_text(const json& report) { return render_run_report_text(run_report_from_json(report)); }

std::string render_run_report_html(const json& report) { return render_run_report_html(run_report_from_json(report)); }

std::string html_escape(const std::string& s) { return svg::escape(s); }

// ================================================================= text

namespace {

// The header lines: model, recipe, created, mpqat version.
std::vector<std::pair<std::string, std::string>> header_rows(const RunReport& r) {
  std::vector<std::pair<std::string, std::string>> head{{"model", r.model}};
  if (!r.recipe.empty()) head.emplace_back("recipe", r.recipe);
  if (!r.created.empty()) head.emplace_back("created", r.created);
  if (!r.mpqat_version.empty()) head.emplace_back("mpqat", r.mpqat_version);
  return head;
}

std::vector<std::string> layer_row(const ReportLayer& l, const std::vector<std::string>& sens) {
  std::vector<std::string> row{l.name, inum(l.block), inum(l.bits), inum(l.group_size)};
  for (const auto& m : sens) row.push_back(fnum(sensitivity_of(l, m)));
  return row;
}

std::vector<std::string> block_row(const ReportBlock& b, std::size_t i) {
  return {block_label(b, i),          inum(b.epochs),         fnum(b.start_val_mse), fnum(b.best_val_mse),
          fnum(b.end_val_mse),        pct(gain_pct(b)),       yes_no(b.kept_rtn),    seconds(b.seconds)};
}

// Stage rows (name indented for a part, seconds, peak anon MiB, reused) and the total of the stages.
std::vector<std::vector<std::string>> stage_rows(const std::vector<ReportStage>& stages, const std::string& indent,
                                                 double& total) {
  std::vector<std::vector<std::string>> rows;
  total = 0;
  for (const auto& st : stages) {
    const auto sec = finite(st.seconds);
    const bool part = !st.part_of.empty();  // inside the stage above: not summed
    if (sec && !part) total += *sec;
    const auto anon = finite(st.peak_anon_mib);
    rows.push_back({(part ? indent : "") + st.name, seconds(sec), anon ? fmt::format("{:.0f}", *anon) : "",
                    st.reused.value_or(false) ? "reused" : ""});
  }
  return rows;
}

}  // namespace

std::string render_run_report_text(const RunReport& r) {
  const auto metrics = compare_run_metrics(r);
  std::string out = "mpqat run report\n================\n";
  out += key_values(header_rows(r), "");

  out += "\nQuality: FP vs quantized\n";
  if (metrics.empty()) {
    out += "(no metrics in this report)\n";
  } else {
    std::vector<std::vector<std::string>> rows{{"metric", "fp", "quantized", "drop", "drop %"}};
    for (const auto& m : metrics)
      rows.push_back({m.name, fnum(m.fp), fnum(m.quantized), fnum(m.drop), pct(m.drop_pct)});
    out += util::text_table(rows);
    out += "(" + metric_note() + ")\n";
  }

  const auto size = size_rows(r);
  if (!size.empty()) out += "\nSize\n" + key_values(size, "  ");

  if (!r.layers.empty()) {
    const auto hist = bits_histogram(r.layers);
    out += fmt::format("\nBits per layer ({} layers{})\n", r.layers.size(),
                       hist.empty() ? std::string() : "; " + histogram_text(hist));
    const auto sens = sensitivity_metrics(r.layers);
    std::vector<std::vector<std::string>> rows{{"layer", "block", "bits", "group"}};
    for (const auto& m : sens) rows[0].push_back(m);
    for (const auto& l : r.layers) rows.push_back(layer_row(l, sens));
    out += util::text_table(rows);
  }

  if (!r.blocks.empty()) {
    out += "\nBlock training (validation MSE)\n";
    std::vector<std::vector<std::string>> rows{
        {"block", "epochs", "start mse", "best mse", "end mse", "gain %", "kept RTN", "seconds"}};
    for (std::size_t i = 0; i < r.blocks.size(); ++i) rows.push_back(block_row(r.blocks[i], i));
    out += util::text_table(rows);
  }

  if (!r.stages.empty()) {
    out += "\nTime and memory per stage\n";
    std::vector<std::vector<std::string>> rows{{"stage", "seconds", "peak anon MiB", "reused"}};
    double total = 0;
    for (auto& row : stage_rows(r.stages, "  ", total)) rows.push_back(std::move(row));
    rows.push_back({"total", seconds(total), "", ""});
    out += util::text_table(rows);
  }
  return out;
}

// ================================================================= HTML / SVG

namespace {

using svg::bits_colour;
using svg::broken_path;
using svg::c;
using svg::Frame;
using svg::label_stride;
using svg::legend;
using svg::nice_ceil;
using svg::note;
using svg::series_colour;
using svg::y_axis;

// Alternating bands for the blocks under a per-layer chart, with block labels under the axis.
// Without block numbers the layers are labelled by index.
std::string layer_axis(const std::vector<ReportLayer>& layers, const Frame& f, const std::string& label) {
  const std::size_t n = layers.size();
  const double step = f.pw() / static_cast<double>(n);
  std::string out;
  // runs of equal "block"
  std::vector<std::pair<std::size_t, std::size_t>> runs;  // [begin, end)
  std::vector<std::string> names;
  bool have_blocks = false;
  for (std::size_t i = 0; i < n;) {
    const std::string b = inum(layers[i].block);
    have_blocks = have_blocks || layers[i].block.has_value();
    std::size_t j = i + 1;
    while (j < n && layers[j].block == layers[i].block) ++j;
    runs.emplace_back(i, j);
    names.push_back(b);
    i = j;
  }
  if (have_blocks) {
    std::size_t stride = label_stride(runs.size(), f.pw(), 28);
    for (std::size_t k = 0; k < runs.size(); ++k) {
      const double x0 = f.L + runs[k].first * step, x1 = f.L + runs[k].second * step;
      if (k % 2 == 1)
        out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"band\"/>", c(x0), c(f.T),
                           c(x1 - x0), c(f.ph()));
      if (k % stride == 0)
        out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>\n",
                           c((x0 + x1) / 2), c(f.T + f.ph() + 14), html_escape(names[k]));
    }
  } else {
    std::size_t stride = label_stride(n, f.pw(), 28);
    for (std::size_t i = 0; i < n; i += stride)
      out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>\n",
                         c(f.L + (i + 0.5) * step), c(f.T + f.ph() + 14), i);
  }
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">{}</text>\n",
                     c(f.L + f.pw() / 2), c(f.H - 8),
                     html_escape(have_blocks ? label + " (grouped by block)" : label + " (index)"));
  return out;
}

// (1) per-layer sensitivity, one series per metric, each normalised to [0, 1] (min-max; on
// log10 values when a metric is positive and spans more than 100x).
std::string chart_sensitivity(const std::vector<ReportLayer>& layers, const std::string& id = "chart-sensitivity") {
  const auto metrics = sensitivity_metrics(layers);
  if (metrics.empty()) return note("No per-layer sensitivity in this report: sensitivity chart omitted.");
  const Frame f;
  const std::size_t n = layers.size();
  const double step = f.pw() / static_cast<double>(n);
  std::string out = svg::open(id, "Per-layer sensitivity by metric (normalised per metric to [0, 1])", f);
  out += layer_axis(layers, f, "layer");
  auto y = [&](double v) { return f.T + f.ph() * (1.0 - v); };
  out += y_axis({{0, "0"}, {0.25, "0.25"}, {0.5, "0.5"}, {0.75, "0.75"}, {1, "1"}}, y, f, "normalised sensitivity");
  std::vector<std::pair<std::string, std::string>> leg;
  for (std::size_t m = 0; m < metrics.size(); ++m) {
    std::vector<std::optional<double>> raw(n);
    double lo = INFINITY, hi = -INFINITY;
    bool positive = true;
    for (std::size_t i = 0; i < n; ++i) {
      raw[i] = finite(sensitivity_of(layers[i], metrics[m]));
      if (!raw[i]) continue;
      lo = std::min(lo, *raw[i]);
      hi = std::max(hi, *raw[i]);
      positive = positive && *raw[i] > 0;
    }
    if (!(lo <= hi)) continue;  // no finite value
    const bool logv = positive && hi / lo > 100;
    auto t = [&](double v) { return logv ? std::log10(v) : v; };
    const double tlo = t(lo), thi = t(hi);
    std::vector<std::optional<std::pair<double, double>>> pts(n);
    std::string marks;
    for (std::size_t i = 0; i < n; ++i) {
      if (!raw[i]) continue;
      const double v = thi > tlo ? (t(*raw[i]) - tlo) / (thi - tlo) : 0.5;
      pts[i] = std::make_pair(f.L + (i + 0.5) * step, y(v));
      if (n <= 80)
        marks += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{}\"><title>{}: {} {}</title></circle>",
                             c(pts[i]->first), c(pts[i]->second), series_colour(m),
                             html_escape(layers[i].name), html_escape(metrics[m]), fnum(*raw[i]));
    }
    out += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" class=\"series\"/>\n",
                       broken_path(pts), series_colour(m));
    out += marks + "\n";
    leg.emplace_back(series_colour(m), metrics[m] + (logv ? " (log)" : ""));
  }
  out += legend(leg, f);
  return out + "</svg>\n";
}

// (2) bits per layer: one bar per layer that has bits, coloured by bits.
std::string chart_bits(const std::vector<ReportLayer>& layers, const std::string& id = "chart-bits",
                       const std::string& title = "Bits per layer") {
  std::size_t with_bits = 0;
  double max_bits = 0;
  for (const auto& l : layers)
    if (l.bits) {
      ++with_bits;
      max_bits = std::max(max_bits, static_cast<double>(*l.bits));
    }
  if (with_bits == 0) return note("No per-layer bits in this report: bits chart omitted.");
  const Frame f;
  const std::size_t n = layers.size();
  const double step = f.pw() / static_cast<double>(n);
  const double top = std::max(8.0, max_bits);
  auto y = [&](double v) { return f.T + f.ph() * (1.0 - std::max(0.0, v) / top); };
  std::string out = svg::open(id, title, f);
  out += layer_axis(layers, f, "layer");
  std::set<double> levels{0, top};
  for (const auto& l : layers)
    if (l.bits) levels.insert(static_cast<double>(*l.bits));
  std::vector<std::pair<double, std::string>> ticks;
  double last = -1e9;
  for (double v : levels)  // skip labels that would overlap
    if (y(last) - y(v) >= 12 || ticks.empty()) {
      ticks.emplace_back(v, fmt::format("{:g}", v));
      last = v;
    }
  out += y_axis(ticks, y, f, "bits");
  const double w = std::max(step * 0.8, 0.5);
  for (std::size_t i = 0; i < n; ++i) {
    if (!layers[i].bits) continue;
    const double b = static_cast<double>(*layers[i].bits);
    const double x = f.L + (i + 0.5) * step - w / 2;
    std::string tip = layers[i].name + ": " + inum(layers[i].bits) + " bits";
    if (layers[i].group_size) tip += ", group " + inum(layers[i].group_size);
    out += fmt::format("<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{}</title></rect>\n",
                       c(x), c(y(b)), fmt::format("{:.2f}", w), c(y(0) - y(b)), bits_colour(b), html_escape(tip));
  }
  std::set<double> present;
  for (const auto& l : layers)
    if (l.bits) present.insert(static_cast<double>(*l.bits));
  std::vector<std::pair<std::string, std::string>> leg;
  for (double v : present) leg.emplace_back(bits_colour(v), fmt::format("{:g}", v) + "-bit");
  out += legend(leg, f);
  return out + "</svg>\n";
}

// (3) validation MSE per block: start (before training) vs best; log scale when the values
// span more than 100x.
std::string chart_loss(const std::vector<ReportBlock>& blocks) {
  std::vector<std::optional<double>> start, best;
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& b : blocks) {
      start.push_back(finite(b.start_val_mse));
      best.push_back(finite(b.best_val_mse));
      for (const auto& v : {start.back(), best.back()})
        if (v) {
          lo = std::min(lo, *v);
          hi = std::max(hi, *v);
        }
    }
  if (!(lo <= hi)) return note("No block training losses in this report: loss chart omitted.");
  const bool logy = lo > 0 && hi / lo > 100;
  const Frame f;
  const std::size_t n = blocks.size();
  const double step = f.pw() / static_cast<double>(n);
  std::vector<std::pair<double, std::string>> ticks;
  std::function<double(double)> y;
  if (logy) {
    const double dlo = std::floor(std::log10(lo)), dhi = std::max(std::ceil(std::log10(hi)), dlo + 1);
    y = [=](double v) { return f.T + f.ph() * (1.0 - (std::log10(v) - dlo) / (dhi - dlo)); };
    const int stride = std::max(1, static_cast<int>(std::ceil((dhi - dlo) / 8)));
    for (int d = static_cast<int>(dlo); d <= static_cast<int>(dhi); d += stride)
      ticks.emplace_back(std::pow(10.0, d), fmt::format("1e{}", d));
  } else {
    const double ymin = std::min(0.0, lo), ymax = nice_ceil(hi);
    y = [=](double v) { return f.T + f.ph() * (1.0 - (v - ymin) / (ymax - ymin)); };
    for (int k = 0; k <= 4; ++k) {
      const double v = ymin + (ymax - ymin) * k / 4;
      ticks.emplace_back(v, fnum(v, 3));
    }
  }
  std::string out = svg::open("chart-loss", std::string("Validation MSE per block: start vs best") +
                                               (logy ? " (log scale)" : ""), f);
  out += y_axis(ticks, y, f, logy ? "val MSE (log)" : "val MSE");
  const std::size_t stride = label_stride(n, f.pw(), 28);
  for (std::size_t i = 0; i < n; i += stride)
    out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>\n",
                       c(f.L + (i + 0.5) * step), c(f.T + f.ph() + 14), block_label(blocks[i], i));
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">block</text>\n",
                     c(f.L + f.pw() / 2), c(f.H - 8));
  const std::pair<const char*, const std::vector<std::optional<double>>*> series[] = {{"start", &start},
                                                                                    {"best", &best}};
  const char* colours[] = {"#7f7f7f", "#1f77b4"};
  for (int s = 0; s < 2; ++s) {
    std::vector<std::optional<std::pair<double, double>>> pts(n);
    std::string marks;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& v = (*series[s].second)[i];
      if (!v || (logy && *v <= 0)) continue;
      pts[i] = std::make_pair(f.L + (i + 0.5) * step, y(*v));
      const bool kept = blocks[i].kept_rtn.value_or(false);
      marks += fmt::format(
          "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\" stroke=\"{}\"><title>block {} {}: {}{}</title></circle>",
          c(pts[i]->first), c(pts[i]->second), s == 1 && kept ? "#ffffff" : colours[s], colours[s],
          block_label(blocks[i], i), series[s].first, fnum(*v),
          kept ? " (kept RTN)" : "");
    }
    out += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" class=\"series\"/>\n",
                       broken_path(pts), colours[s]);
    out += marks + "\n";
  }
  out += legend({{colours[0], "start (before training)"}, {colours[1], "best (hollow: kept RTN)"}}, f);
  return out + "</svg>\n";
}

std::string td(const std::string& s, const char* cls = nullptr) {
  return cls ? fmt::format("<td class=\"{}\">{}</td>", cls, html_escape(s)) : "<td>" + html_escape(s) + "</td>";
}

std::string th_row(const std::vector<std::string>& cells) {
  std::string out = "<tr>";
  for (const auto& h : cells) out += "<th>" + html_escape(h) + "</th>";
  return out + "</tr>\n";
}


}  // namespace

std::string render_run_report_html(const RunReport& r) {
  const auto metrics = compare_run_metrics(r);
  std::string out;
  out += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  out += "<title>mpqat run report: " + html_escape(r.model) + "</title>\n";
  out += std::string("<style>") + svg::page_style() + "</style>\n</head>\n<body>\n";
  out += "<h1>mpqat run report</h1>\n<table class=\"meta\">\n";
  for (const auto& [k, v] : header_rows(r)) out += "<tr><th>" + k + "</th><td>" + html_escape(v) + "</td></tr>\n";
  out += "</table>\n";

  // headline cards
  const SizeInfo s = size_info(r);
  std::string cards;
  auto card = [&](const std::string& k, const std::string& v) {
    cards += "<div class=\"card\"><div class=\"v\">" + html_escape(v) + "</div><div class=\"k\">" + html_escape(k) +
             "</div></div>\n";
  };
  if (s.compression) card("compression", fmt::format("{:.2f}x", *s.compression));
  if (s.q_bpw) card("bpw", fmt::format("{:.2f}", *s.q_bpw));
  if (s.q_bits) card("code bits", fmt::format("{:.2f}", *s.q_bits));
  if (s.q_bytes) card("quantized size", util::format_bytes(static_cast<uint64_t>(std::llround(std::max(0.0, *s.q_bytes)))));
  if (!budget_text(r).empty()) card("budget", budget_text(r));
  for (const auto& m : metrics)
    if (m.fp && m.quantized) {
      card(m.name + " (FP -> quantized)", fnum(*m.fp, 3) + " -> " + fnum(*m.quantized, 3));
      break;
    }
  if (!cards.empty()) out += "<div class=\"cards\">\n" + cards + "</div>\n";

  out += "<h2>Quality: FP vs quantized</h2>\n";
  if (metrics.empty()) {
    out += note("No metrics in this report.");
  } else {
    out += "<table class=\"metrics\">\n" + th_row({"metric", "fp", "quantized", "drop", "drop %"});
    for (const auto& m : metrics) {
      const char* cls = !m.drop ? nullptr : (*m.drop > 0 ? "worse" : (*m.drop < 0 ? "better" : nullptr));
      out += "<tr>" + td(m.name) + td(fnum(m.fp)) + td(fnum(m.quantized)) + td(fnum(m.drop), cls) +
             td(pct(m.drop_pct), cls) + "</tr>\n";
    }
    out += "</table>\n<p class=\"note\">" + html_escape(metric_note()) + "</p>\n";
  }

  const auto size = size_rows(r);
  if (!size.empty()) {
    out += "<h2>Size</h2>\n<table class=\"size\">\n";
    for (const auto& [k, v] : size) out += "<tr>" + td(k) + td(v) + "</tr>\n";
    out += "</table>\n";
  }

  out += "<h2>Charts</h2>\n";
  out += "<figure>\n" + chart_sensitivity(r.layers) +
         "<figcaption>Each metric scaled to [0, 1] over the layers (min-max; on log10 values when a metric "
         "spans more than 100x). Higher = more sensitive.</figcaption>\n</figure>\n";
  out += "<figure>\n" + chart_bits(r.layers) + "<figcaption>Bits given to each layer, in model order.</figcaption>\n</figure>\n";
  out += "<figure>\n" + chart_loss(r.blocks) +
         "<figcaption>Validation MSE of each block's output before training (start) and at its best epoch."
         "</figcaption>\n</figure>\n";

  auto table_rows = [&](const std::vector<std::string>& cells) {
    std::string row = "<tr>";
    for (const auto& c : cells) row += td(c);
    return row + "</tr>\n";
  };
  if (!r.layers.empty()) {
    const auto hist = bits_histogram(r.layers);
    out += fmt::format("<h2>Bits per layer</h2>\n<p>{} layers{}</p>\n", r.layers.size(),
                       hist.empty() ? std::string() : html_escape(": " + histogram_text(hist)));
    const auto sens = sensitivity_metrics(r.layers);
    std::vector<std::string> head{"layer", "block", "bits", "group"};
    head.insert(head.end(), sens.begin(), sens.end());
    out += "<div class=\"scroll\"><table class=\"layers\">\n" + th_row(head);
    for (const auto& l : r.layers) out += table_rows(layer_row(l, sens));
    out += "</table></div>\n";
  }

  if (!r.blocks.empty()) {
    out += "<h2>Block training</h2>\n<table class=\"blocks\">\n" +
           th_row({"block", "epochs", "start val MSE", "best val MSE", "end val MSE", "gain %", "kept RTN", "seconds"});
    for (std::size_t i = 0; i < r.blocks.size(); ++i) out += table_rows(block_row(r.blocks[i], i));
    out += "</table>\n";
  }

  if (!r.stages.empty()) {
    out += "<h2>Time and memory per stage</h2>\n<table class=\"stages\">\n" +
           th_row({"stage", "seconds", "peak anon MiB", "reused"});
    double total = 0;
    for (const auto& row : stage_rows(r.stages, "\u00a0\u00a0", total)) out += table_rows(row);
    out += "<tr><th>total</th><th>" + seconds(total) + "</th><th></th><th></th></tr>\n</table>\n";
  }
  out += "</body>\n</html>\n";
  return out;
}

std::string layer_sensitivity_chart(const std::vector<ReportLayer>& layers, const std::string& id) {
  return chart_sensitivity(layers, id);
}

std::string layer_bits_chart(const std::vector<ReportLayer>& layers, const std::string& id, const std::string& title) {
  return chart_bits(layers, id, title);
}

}  // namespace mpqat::eval
