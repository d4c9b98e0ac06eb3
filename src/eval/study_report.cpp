// study.md / study.html (include/mpqat/eval/study_report.h).
#include "mpqat/eval/study_report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "mpqat/eval/json_access.h"
#include "mpqat/eval/run_report.h"
#include "mpqat/eval/svg_chart.h"
#include "mpqat/util/strings.h"

namespace mpqat::eval {

using nlohmann::json;
using json_access::field;
using json_access::number;

Stat stat_of(const std::vector<double>& v) {
  Stat s;
  s.n = v.size();
  if (v.empty()) return s;
  for (double x : v) s.mean += x;
  s.mean /= static_cast<double>(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(ss / static_cast<double>(v.size() - 1));
  }
  return s;
}

namespace {

std::string group_key(const json& row) {
  const auto b = number(row, "budget_bits");
  return fmt::format("{}|{}|{}", json_access::string_of(field(row, "variant")), b ? budget_text(*b) : "-",
                     number(row, "samples").value_or(0));
}

// "7.123 +- 0.045" (the +- part only with several seeds).
std::string pm(const Stat& s, int digits = 3) {
  if (s.n == 0) return "-";
  if (s.n == 1) return fmt::format("{:.{}f}", s.mean, digits);
  return fmt::format("{:.{}f} ± {:.{}f}", s.mean, digits, s.std, digits);
}

std::optional<double> fp_ppl(const json& study) { return mean_ppl(field(field(study, "fp"), "ppl")); }

// The float model's numbers: "ppl 6.145, 520064 bytes in fp16" (accuracy / F1 for classifiers).
std::string fp_text(const json& study) {
  const json& fp = field(study, "fp");
  std::vector<std::string> parts;
  if (auto p = fp_ppl(study)) parts.push_back(fmt::format("ppl {:.3f}", *p));
  const json& cls = field(fp, "classification");
  if (auto a = number(cls, "accuracy")) parts.push_back(fmt::format("accuracy {:.4f}", *a));
  if (auto f = number(cls, "f1")) parts.push_back(fmt::format("F1 {:.4f}", *f));
  const json& tasks = field(fp, "tasks");
  if (tasks.is_object())
    for (const auto& [t, v] : tasks.items())
      if (auto a = number(v, "acc")) parts.push_back(fmt::format("{} acc {:.4f}", t, *a));
  if (parts.empty()) return "";
  if (auto b = number(fp, "bytes")) parts.push_back(fmt::format("{:.0f} bytes in fp16", *b));
  return fmt::format("{}", fmt::join(parts, ", "));
}

// The uniform group of the same budget, size, training and SGRA (the row's reference), if any.
const StudyGroup* reference(const std::vector<StudyGroup>& gs, const StudyGroup& g) {
  for (const auto& r : gs)
    if (r.allocation == "uniform" && r.training == g.training && r.sgra == g.sgra && r.budget_bits == g.budget_bits &&
        r.samples == g.samples)
      return &r;
  return nullptr;
}

using Table = std::vector<std::vector<std::string>>;

// One table per (calibration size, budget): the rows of the summary.
std::vector<std::pair<std::string, Table>> tables(const json& study, const std::vector<StudyGroup>& gs) {
  std::set<int64_t> sizes;
  for (const auto& g : gs) sizes.insert(g.samples);
  std::vector<std::optional<double>> budgets;
  for (const auto& g : gs)
    if (std::find(budgets.begin(), budgets.end(), g.budget_bits) == budgets.end()) budgets.push_back(g.budget_bits);
  bool have_ppl = false, have_cls = false;
  std::vector<std::string> task_names;
  for (const auto& g : gs) {
    have_ppl = have_ppl || g.ppl.n > 0;
    have_cls = have_cls || g.accuracy.has_value();
    for (const auto& [t, s] : g.tasks)
      if (std::find(task_names.begin(), task_names.end(), t) == task_names.end()) task_names.push_back(t);
  }
  std::vector<std::pair<std::string, Table>> out;
  for (int64_t n : sizes)
    for (const auto& b : budgets) {
      Table t;
      std::vector<std::string> head{"variant", "seeds", "bytes", "vs budget", "bpw", "code bits"};
      if (have_ppl) head.insert(head.end(), {"ppl", "vs uniform"});
      for (const auto& tn : task_names) head.push_back(tn + " acc");
      if (have_cls) head.insert(head.end(), {"accuracy", "F1"});
      head.insert(head.end(), {"train s", "steps"});
      t.push_back(head);
      for (const auto& g : gs) {
        if (g.samples != n || g.budget_bits != b) continue;
        std::vector<std::string> row{g.variant, std::to_string(g.seeds.size()), fmt::format("{:.0f}", g.bytes.mean)};
        row.push_back(g.budget_bytes ? fmt::format("{:+.2f}%", (g.bytes.mean / *g.budget_bytes - 1) * 100) : "");
        row.push_back(fmt::format("{:.3f}", g.bpw.mean));
        row.push_back(fmt::format("{:.3f}", g.code_bits.mean));
        if (have_ppl) {
          row.push_back(pm(g.ppl));
          const StudyGroup* ref = reference(gs, g);
          row.push_back(ref && ref != &g && ref->ppl.n && g.ppl.n ? fmt::format("{:.3f}x", g.ppl.mean / ref->ppl.mean) : "");
        }
        for (const auto& tn : task_names) {
          auto it = std::find_if(g.tasks.begin(), g.tasks.end(), [&](const auto& p) { return p.first == tn; });
          row.push_back(it == g.tasks.end() ? "-" : pm(it->second, 4));
        }
        if (have_cls) {
          row.push_back(g.accuracy ? pm(*g.accuracy, 4) : "-");
          row.push_back(g.f1 ? pm(*g.f1, 4) : "-");
        }
        row.push_back(fmt::format("{:.1f}", g.train_seconds.mean));
        row.push_back(g.steps.n ? fmt::format("{:.0f}", g.steps.mean) : "-");
        t.push_back(row);
      }
      if (t.size() == 1) continue;
      std::string title = b ? "at the bytes of uniform " + budget_text(*b) + "-bit" : "clustering presets (no budget)";
      const json& bb = field(field(study, "budget_bytes"), b ? budget_text(*b).c_str() : "");
      if (b && bb.is_number()) title += fmt::format(" ({} bytes)", bb.get<uint64_t>());
      if (sizes.size() > 1) title += fmt::format(", {} calibration sequences", n);
      out.emplace_back(title, std::move(t));
    }
  return out;
}

std::string md_table(const Table& t) {
  std::string s = "| " + fmt::format("{}", fmt::join(t[0], " | ")) + " |\n|";
  for (std::size_t i = 0; i < t[0].size(); ++i) s += i == 0 ? "---|" : "---:|";
  s += "\n";
  for (std::size_t r = 1; r < t.size(); ++r) s += "| " + fmt::format("{}", fmt::join(t[r], " | ")) + " |\n";
  return s;
}

const char* kRowsNote =
    "Each row: mean over seeds (± sample standard deviation with several seeds). bytes = the checkpoint's "
    "safetensors files; vs budget = against the uniform checkpoint's bytes the mixed plans were given; bpw = all "
    "bytes of the quantized linears (codes, scales, zeros, g_idx) × 8 / their weights; code bits = code bits per "
    "weight; vs uniform = ppl against uniform bits with the same training and SGRA at the same bytes; train s = the "
    "quantize stage (RTN, GPTQ or Block-AP); steps = Block-AP optimisation steps over all blocks (SGRA (equal "
    "steps) matches the uniform schedule's total).";

}  // namespace

std::string budget_text(double bits) { return fmt::format("{:g}", bits); }

std::optional<double> mean_ppl(const json& p) {
  if (p.is_number()) return p.get<double>();
  if (!p.is_object() || p.empty()) return std::nullopt;
  double s = 0;
  for (const auto& [k, v] : p.items()) {
    if (!v.is_number()) return std::nullopt;
    s += v.get<double>();
  }
  return s / static_cast<double>(p.size());
}

std::vector<StudyGroup> summarize_study(const json& study) {
  std::vector<StudyGroup> gs;
  std::map<std::string, std::size_t> index;
  struct Acc {
    std::vector<double> bytes, bpw, code_bits, ppl, secs, steps, acc, f1;
    std::vector<std::pair<std::string, std::vector<double>>> tasks;
  };
  std::vector<Acc> acc;
  const json& rows = field(study, "rows");
  if (!rows.is_array()) return gs;
  for (const auto& row : rows) {
    const std::string key = group_key(row);
    auto it = index.find(key);
    if (it == index.end()) {
      StudyGroup g;
      g.variant = json_access::string_of(field(row, "variant"));
      g.allocation = json_access::string_of(field(row, "allocation"));
      g.training = json_access::string_of(field(row, "training"));
      g.sgra = json_access::string_of(field(row, "sgra"));
      g.budget_bits = number(row, "budget_bits");
      g.budget_bytes = number(row, "budget_bytes");
      g.samples = static_cast<int64_t>(number(row, "samples").value_or(0));
      it = index.emplace(key, gs.size()).first;
      gs.push_back(g);
      acc.emplace_back();
    }
    auto& a = acc[it->second];
    gs[it->second].seeds.push_back(static_cast<int64_t>(number(row, "seed").value_or(0)));
    auto add = [&](std::vector<double>& v, const json& x) {
      if (auto d = number(x)) v.push_back(*d);
    };
    add(a.bytes, field(row, "bytes"));
    add(a.bpw, field(row, "bpw"));
    add(a.code_bits, field(row, "code_bits"));
    add(a.ppl, field(row, "ppl"));
    add(a.secs, field(row, "train_seconds"));
    add(a.steps, field(row, "steps"));
    add(a.acc, field(field(row, "classification"), "accuracy"));
    add(a.f1, field(field(row, "classification"), "f1"));
    const json& tasks = field(row, "tasks");
    if (tasks.is_object())
      for (const auto& [t, v] : tasks.items()) {
        auto ti = std::find_if(a.tasks.begin(), a.tasks.end(), [&](const auto& p) { return p.first == t; });
        if (ti == a.tasks.end()) ti = a.tasks.insert(a.tasks.end(), {t, {}});
        add(ti->second, v);
      }
  }
  for (std::size_t i = 0; i < gs.size(); ++i) {
    auto& g = gs[i];
    const auto& a = acc[i];
    g.bytes = stat_of(a.bytes), g.bpw = stat_of(a.bpw), g.code_bits = stat_of(a.code_bits), g.ppl = stat_of(a.ppl);
    g.train_seconds = stat_of(a.secs), g.steps = stat_of(a.steps);
    for (const auto& [t, v] : a.tasks) g.tasks.emplace_back(t, stat_of(v));
    if (!a.acc.empty()) g.accuracy = stat_of(a.acc);
    if (!a.f1.empty()) g.f1 = stat_of(a.f1);
  }
  return gs;
}

std::string render_study_markdown(const json& study) {
  const auto gs = summarize_study(study);
  std::string out = "# mpqat study: " + json_access::string_of(field(study, "model")) + "\n\n";
  out += fmt::format("Recipe `{}`; machine: {}; written {}.\n\n", json_access::string_of(field(study, "recipe")),
                     json_access::string_of(field(study, "machine")), json_access::string_of(field(study, "created")));
  const std::string fp = fp_text(study);
  if (!fp.empty()) out += "FP (unquantized): " + fp + ".\n\n";
  for (const auto& [title, t] : tables(study, gs)) out += "## " + title + "\n\n" + md_table(t) + "\n";
  out += std::string(kRowsNote) + "\n";
  return out;
}

namespace {

std::string html_table(const Table& t) {
  std::string s = "<div class=\"scroll\"><table>\n<tr>";
  for (const auto& h : t[0]) s += "<th>" + svg::escape(h) + "</th>";
  s += "</tr>\n";
  for (std::size_t r = 1; r < t.size(); ++r) {
    s += "<tr>";
    for (const auto& c : t[r]) s += "<td>" + svg::escape(c) + "</td>";
    s += "</tr>\n";
  }
  return s + "</table></div>\n";
}

std::string figure(const std::string& chart, const std::string& caption) {
  return "<figure>\n" + chart + "<figcaption>" + svg::escape(caption) + "</figcaption>\n</figure>\n";
}

// One quality metric against bytes, one line per variant (and calibration size when several).
std::string quality_chart(const std::vector<StudyGroup>& gs, const std::string& id, const std::string& label,
                          const std::function<std::optional<Stat>(const StudyGroup&)>& metric, bool several_sizes) {
  svg::LineChart ch;
  ch.id = id;
  ch.title = label + " against checkpoint bytes, one line per variant";
  ch.x_label = "checkpoint bytes";
  ch.y_label = label;
  std::map<std::string, std::size_t> series;
  for (const auto& g : gs) {
    const auto m = metric(g);
    if (!m || m->n == 0) continue;
    const std::string name = g.variant + (several_sizes ? fmt::format(" (n{})", g.samples) : "");
    auto it = series.find(name);
    if (it == series.end()) {
      it = series.emplace(name, ch.series.size()).first;
      ch.series.push_back({name, {}});
    }
    svg::LinePoint p;
    p.x = g.bytes.mean, p.y = m->mean;
    if (m->n > 1) p.err = m->std;
    p.tip = fmt::format("{}{}: {:.0f} bytes, {} {}", g.variant,
                        g.budget_bits ? " @ " + budget_text(*g.budget_bits) + " bits" : "", g.bytes.mean, label, pm(*m, 4));
    ch.series[it->second].points.push_back(p);
  }
  return svg::line_chart(ch);
}

}  // namespace

std::string render_study_html(const json& study) {
  const auto gs = summarize_study(study);
  const json& rows = field(study, "rows");
  std::set<int64_t> sizes;
  for (const auto& g : gs) sizes.insert(g.samples);
  const bool several = sizes.size() > 1;
  // The budget most variants were run at: the time and convergence charts compare there.
  std::optional<double> main_budget;
  {
    std::map<double, std::size_t> count;
    for (const auto& g : gs)
      if (g.budget_bits) ++count[*g.budget_bits];
    std::size_t best = 0;
    for (const auto& [b, n] : count)
      if (n > best) best = n, main_budget = b;
  }
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  out += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  out += "<title>mpqat study: " + svg::escape(json_access::string_of(field(study, "model"))) + "</title>\n";
  out += std::string("<style>") + svg::page_style() + "</style>\n</head>\n<body>\n";
  out += "<h1>mpqat study</h1>\n<table class=\"meta\">\n";
  for (const char* k : {"model", "recipe", "machine", "created"})
    out += fmt::format("<tr><th>{}</th><td>{}</td></tr>\n", k, svg::escape(json_access::string_of(field(study, k))));
  const std::string fp = fp_text(study);
  if (!fp.empty()) out += "<tr><th>FP</th><td>" + svg::escape(fp) + "</td></tr>\n";
  out += "</table>\n";

  out += "<h2>Quality against size</h2>\n";
  bool any_quality = false;
  auto quality = [&](const std::string& id, const std::string& label,
                     const std::function<std::optional<Stat>(const StudyGroup&)>& m) {
    bool present = false;
    for (const auto& g : gs) present = present || (m(g) && m(g)->n > 0);
    if (!present) return;
    any_quality = true;
    out += figure(quality_chart(gs, id, label, m, several),
                  "Mean over seeds (bars: ± one standard deviation). Points of one line are its budgets; the "
                  "clustering presets are single points.");
  };
  quality("study-quality-ppl", "perplexity", [](const StudyGroup& g) { return std::optional<Stat>(g.ppl); });
  if (main_budget) {  // at one size the variants side by side (the size is nearly equal by design)
    svg::BarChart pb;
    pb.id = "study-ppl-variants";
    pb.title = "Perplexity per variant at the bytes of uniform " + budget_text(*main_budget) + "-bit (mean ± std over seeds)";
    pb.y_label = "perplexity";
    pb.from_zero = false;
    for (const auto& g : gs)
      if (g.budget_bits == main_budget && g.samples == *sizes.begin() && g.ppl.n > 0)
        pb.bars.push_back({g.variant, g.ppl.mean, g.ppl.n > 1 ? std::optional<double>(g.ppl.std) : std::nullopt});
    if (!pb.bars.empty())
      out += figure(svg::bar_chart(pb), "The axis starts near the lowest value: read the numbers, not the bar lengths.");
  }
  std::set<std::string> tasks;
  for (const auto& g : gs)
    for (const auto& [t, s] : g.tasks) tasks.insert(t);
  for (const auto& t : tasks)
    quality("study-quality-" + t, t + " accuracy", [t](const StudyGroup& g) -> std::optional<Stat> {
      for (const auto& [n, s] : g.tasks)
        if (n == t) return s;
      return std::nullopt;
    });
  quality("study-quality-accuracy", "classification accuracy", [](const StudyGroup& g) { return g.accuracy; });
  if (!any_quality) out += svg::note("No quality metric in the rows: quality charts omitted.");

  out += "<h2>Summary</h2>\n";
  for (const auto& [title, t] : tables(study, gs)) out += "<h3>" + svg::escape(title) + "</h3>\n" + html_table(t);
  out += "<p class=\"note\">" + svg::escape(kRowsNote) + "</p>\n";

  // Per-layer charts from the first seed's rows (they carry "layers"): the bits depend on the
  // allocation and the budget only, so one chart per mixed allocation method, at the main budget
  // when it ran there.
  out += "<h2>Per layer</h2>\n";
  const json* sens_layers = nullptr;
  std::map<std::string, const json*> mixed;  // allocation -> row
  std::vector<std::string> mixed_order;
  if (rows.is_array())
    for (const auto& r : rows) {
      const json& layers = field(r, "layers");
      if (!layers.is_array()) continue;
      bool has_sens = false;
      for (const auto& l : layers) has_sens = has_sens || field(l, "sensitivity").is_object();
      if (has_sens && !sens_layers) sens_layers = &layers;
      const std::string a = json_access::string_of(field(r, "allocation"));
      if (a == "uniform") continue;
      auto it = mixed.find(a);
      if (it == mixed.end()) {
        mixed[a] = &r;
        mixed_order.push_back(a);
      } else if (number(r, "budget_bits") == main_budget && number(*it->second, "budget_bits") != main_budget) {
        it->second = &r;
      }
    }
  out += figure(layer_sensitivity_chart(report_layers_from_json(sens_layers ? *sens_layers : json::array()), "study-sensitivity"),
                "Per-layer sensitivity of the first calibration set, each metric scaled to [0, 1].");
  for (std::size_t k = 0; k < mixed_order.size(); ++k) {
    const json& r = *mixed.at(mixed_order[k]);
    const auto b = number(r, "budget_bits");
    const std::string title = json_access::string_of(field(r, "variant")) +
                              (b ? ": bits per layer at the bytes of uniform " + budget_text(*b) + "-bit" : ": bits per layer");
    out += figure(layer_bits_chart(report_layers_from_json(field(r, "layers")), fmt::format("study-bits-{}", k), title),
                  "First seed. Bits given to each layer, in model order (the same for every training method).");
  }
  if (mixed_order.empty()) out += svg::note("No mixed-precision variant in this study: bits charts omitted.");

  out += "<h2>Training</h2>\n";
  svg::BarChart time;
  time.id = "study-time";
  time.title = "Training time per variant (quantize stage, mean over seeds)";
  time.y_label = "seconds";
  for (const auto& g : gs)
    if ((!main_budget || g.budget_bits == main_budget) && g.samples == *sizes.begin())
      time.bars.push_back({g.variant, g.train_seconds.mean,
                           g.train_seconds.n > 1 ? std::optional<double>(g.train_seconds.std) : std::nullopt});
  out += figure(svg::bar_chart(time), main_budget ? "At the bytes of uniform " + budget_text(*main_budget) + "-bit."
                                                  : "Mean over seeds.");
  svg::LineChart conv;
  conv.id = "study-convergence";
  conv.title = "Block-AP convergence: validation MSE relative to each block's start, mean over blocks";
  conv.x_label = "epoch";
  conv.y_label = "val MSE / start";
  conv.empty_note = "No Block-AP rows: convergence chart omitted.";
  std::set<std::string> conv_seen;
  if (rows.is_array())
    for (const auto& r : rows) {
      const json& curve = field(r, "val_curve");
      const auto b = number(r, "budget_bits");
      if (!curve.is_array() || curve.empty() || (b && main_budget && *b != *main_budget)) continue;
      const std::string v = json_access::string_of(field(r, "variant"));
      if (!conv_seen.insert(v).second) continue;
      svg::LineSeries s{v, {}};
      for (std::size_t e = 0; e < curve.size(); ++e)
        if (auto y = number(curve[e])) s.points.push_back({static_cast<double>(e + 1), *y, std::nullopt, ""});
      conv.series.push_back(std::move(s));
    }
  out += figure(svg::line_chart(conv), "First seed" + (main_budget ? ", at the bytes of uniform " + budget_text(*main_budget) + "-bit" : std::string()) +
                                           ". Blocks that stopped early keep their last epoch out of the mean.");
  if (several) {
    svg::LineChart ns;
    ns.id = "study-samples";
    ns.title = "Perplexity against calibration size";
    ns.x_label = "calibration sequences";
    ns.y_label = "perplexity";
    ns.log_x = true;
    std::map<std::string, std::size_t> idx;
    for (const auto& g : gs) {
      if (g.ppl.n == 0 || (main_budget && g.budget_bits && *g.budget_bits != *main_budget)) continue;
      auto it = idx.find(g.variant);
      if (it == idx.end()) {
        it = idx.emplace(g.variant, ns.series.size()).first;
        ns.series.push_back({g.variant, {}});
      }
      ns.series[it->second].points.push_back(
          {static_cast<double>(g.samples), g.ppl.mean, g.ppl.n > 1 ? std::optional<double>(g.ppl.std) : std::nullopt, ""});
    }
    out += figure(svg::line_chart(ns), "Mean over seeds" + (main_budget ? " at the bytes of uniform " + budget_text(*main_budget) + "-bit." : std::string(".")));
  }
  out += "</body>\n</html>\n";
  return out;
}

}  // namespace mpqat::eval
