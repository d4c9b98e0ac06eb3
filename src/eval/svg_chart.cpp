// Inline SVG charts (include/mpqat/eval/svg_chart.h).
#include "mpqat/eval/svg_chart.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace mpqat::eval::svg {

namespace {
const char* const kPalette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};

const char* kStyle = R"css(
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}
th,td{padding:.25em .7em;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th{background:#f5f5f5}th:first-child,td:first-child{text-align:left}
table.meta td,table.meta th{text-align:left;border:none;background:none}
td.worse{color:#b00020}td.better{color:#1b7f2a}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:9em}
.card .v{font-size:1.4em;font-weight:600}.card .k{font-size:.8em;color:#666}
.scroll{overflow-x:auto}
figure{margin:1em 0}figcaption{font-size:.85em;color:#555}
svg.chart{width:100%;height:auto;background:#fff}
svg .plot{fill:#fff;stroke:#999}svg .grid{stroke:#e4e4e4}svg .band{fill:#f3f3f3}
svg text{font-family:inherit;font-size:11px;fill:#333}svg .axis{font-size:12px}
p.note{color:#666;font-style:italic}
)css";

// A short label for an axis value: integers as integers, else 4 significant digits.
std::string tick_text(double v) {
  if (std::fabs(v) < 1e15 && std::floor(v) == v) return fmt::format("{}", static_cast<long long>(v));
  return fmt::format("{:.4g}", v);
}

// An axis over [lo, hi]: its map to [0, 1] and about five ticks (decades on a log axis).
struct Axis {
  double lo = 0, hi = 1;
  bool log = false;
  double t(double v) const { return log ? std::log10(v) : v; }
  double unit(double v) const { return hi > lo ? (t(v) - t(lo)) / (t(hi) - t(lo)) : 0.5; }
  std::vector<std::pair<double, std::string>> ticks() const {
    std::vector<std::pair<double, std::string>> out;
    if (log) {
      const int d0 = static_cast<int>(std::floor(std::log10(lo))), d1 = static_cast<int>(std::ceil(std::log10(hi)));
      const int stride = std::max(1, (d1 - d0 + 5) / 6);
      for (int d = d0; d <= d1; d += stride) {
        const double v = std::pow(10.0, d);
        if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.emplace_back(v, fmt::format("1e{}", d));
      }
      if (out.size() < 2) out = {{lo, tick_text(lo)}, {hi, tick_text(hi)}};
      return out;
    }
    if (integers) {  // whole numbers only (epochs, counts)
      const double step = std::max(1.0, std::ceil((hi - lo) / 6));
      for (double v = std::ceil(lo); v <= hi + 1e-9; v += step) out.emplace_back(v, tick_text(v));
      return out;
    }
    for (int k = 0; k <= 4; ++k) {
      const double v = lo + (hi - lo) * k / 4;
      out.emplace_back(v, fmt::format("{:.5g}", v));
    }
    return out;
  }
  bool integers = false;
};

// The axis spanning `values` with 5% room on each side (log when asked and all are positive).
Axis span(const std::vector<double>& values, bool want_log) {
  Axis a;
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (double v : values) lo = std::min(lo, v), hi = std::max(hi, v);
  a.log = want_log && lo > 0;
  if (a.log) {
    const double pad = std::pow(hi / lo, 0.05);
    a.lo = lo / (hi > lo ? pad : 2);
    a.hi = hi * (hi > lo ? pad : 2);
  } else {
    const double pad = hi > lo ? (hi - lo) * 0.05 : std::max(std::fabs(lo) * 0.05, 1e-9);
    a.lo = lo - pad;
    a.hi = hi + pad;
  }
  return a;
}
}  // namespace

const char* series_colour(std::size_t i) { return kPalette[i % (sizeof(kPalette) / sizeof(kPalette[0]))]; }

const char* bits_colour(double bits) {
  if (bits <= 2) return "#d62728";
  if (bits <= 3) return "#ff7f0e";
  if (bits <= 4) return "#bcbd22";
  if (bits <= 5) return "#2ca02c";
  if (bits <= 6) return "#17becf";
  if (bits <= 8) return "#1f77b4";
  return "#7f7f7f";
}

std::string c(double v) { return fmt::format("{:.1f}", v); }

std::string escape(const std::string& s) {
  std::string out;
  out.reserve(s.size() + s.size() / 8);
  for (char ch : s) {
    switch (ch) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += ch;
    }
  }
  return out;
}

std::string open(const std::string& id, const std::string& title, const Frame& f) {
  return fmt::format(
      "<svg id=\"{0}\" class=\"chart\" viewBox=\"0 0 {1} {2}\" role=\"img\" aria-labelledby=\"{0}-title\">\n"
      "<title id=\"{0}-title\">{3}</title>\n"
      "<rect x=\"{4}\" y=\"{5}\" width=\"{6}\" height=\"{7}\" class=\"plot\"/>\n",
      id, c(f.W), c(f.H), escape(title), c(f.L), c(f.T), c(f.pw()), c(f.ph()));
}

std::string y_axis(const std::vector<std::pair<double, std::string>>& ticks, const std::function<double(double)>& y,
                   const Frame& f, const std::string& label) {
  std::string out;
  for (const auto& [v, text] : ticks) {
    const double yy = y(v);
    out += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" class=\"grid\"/>", c(f.L), c(yy),
                       c(f.L + f.pw()), c(yy));
    out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"end\">{}</text>\n", c(f.L - 6),
                       c(yy + 4), escape(text));
  }
  out += fmt::format("<text x=\"14\" y=\"{}\" class=\"axis\" transform=\"rotate(-90 14 {})\" "
                     "text-anchor=\"middle\">{}</text>\n",
                     c(f.T + f.ph() / 2), c(f.T + f.ph() / 2), escape(label));
  return out;
}

namespace {
double legend_width(const std::string& name) { return 28 + 7.0 * static_cast<double>(name.size()); }
}  // namespace

int legend_rows(const std::vector<std::string>& names, const Frame& f) {
  int rows = names.empty() ? 0 : 1;
  double x = f.L;
  for (const auto& n : names) {
    if (x > f.L && x + legend_width(n) > f.W - f.R) ++rows, x = f.L;
    x += legend_width(n);
  }
  return rows;
}

std::string legend(const std::vector<std::pair<std::string, std::string>>& items, const Frame& f) {
  std::vector<std::string> names;
  for (const auto& it : items) names.push_back(it.second);
  const int rows = legend_rows(names, f);
  std::string out;
  double x = f.L;
  int row = 0;
  for (const auto& [colour, name] : items) {
    if (x > f.L && x + legend_width(name) > f.W - f.R) ++row, x = f.L;
    const double y = f.T - 26 - 18.0 * (rows - 1 - row);
    out += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\" class=\"swatch\"/>", c(x),
                       c(y), colour);
    out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"legend\">{}</text>\n", c(x + 16), c(y + 10), escape(name));
    x += legend_width(name);
  }
  return out;
}

const char* series_dash(std::size_t i) { return (i / 8) % 2 == 1 ? "6 3" : ""; }

std::size_t label_stride(std::size_t n, double width, double min_gap) {
  if (n == 0) return 1;
  const double per = width / static_cast<double>(n);
  return std::max<std::size_t>(1, static_cast<std::size_t>(std::ceil(min_gap / std::max(per, 1e-9))));
}

std::string broken_path(const std::vector<std::optional<std::pair<double, double>>>& pts) {
  std::string d;
  bool pen = false;
  for (const auto& p : pts) {
    if (!p) {
      pen = false;
      continue;
    }
    d += fmt::format("{}{} {} ", pen ? "L" : "M", c(p->first), c(p->second));
    pen = true;
  }
  return d;
}

double nice_ceil(double v) {
  if (!(v > 0)) return 1;
  const double e = std::pow(10.0, std::floor(std::log10(v)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * e >= v * (1 - 1e-12)) return m * e;
  return 10 * e;
}

std::string note(const std::string& text) { return "<p class=\"note\">" + escape(text) + "</p>\n"; }

const char* page_style() { return kStyle; }

std::string line_chart(const LineChart& ch) {
  std::vector<double> xs, ys;
  for (const auto& s : ch.series)
    for (const auto& p : s.points)
      if (std::isfinite(p.x) && std::isfinite(p.y)) {
        xs.push_back(p.x);
        ys.push_back(p.y);
        if (p.err && std::isfinite(*p.err)) {
          ys.push_back(p.y + *p.err);
          if (!ch.log_y || p.y - *p.err > 0) ys.push_back(p.y - *p.err);
        }
      }
  if (xs.empty()) return note(ch.empty_note);
  Frame f;
  std::vector<std::string> names;
  for (const auto& sr : ch.series)
    if (!sr.points.empty()) names.push_back(sr.name);
  const int rows = legend_rows(names, f);
  f.T += 18.0 * std::max(0, rows - 1);
  f.H += 18.0 * std::max(0, rows - 1);
  Axis ax = span(xs, ch.log_x);
  const Axis ay = span(ys, ch.log_y);
  ax.integers = !ax.log && std::all_of(xs.begin(), xs.end(), [](double v) { return std::floor(v) == v; }) &&
                ax.hi - ax.lo <= 60;
  auto X = [&](double v) { return f.L + f.pw() * ax.unit(v); };
  auto Y = [&](double v) { return f.T + f.ph() * (1.0 - ay.unit(v)); };
  std::string out = open(ch.id, ch.title, f);
  out += y_axis(ay.ticks(), Y, f, ch.y_label + (ay.log ? " (log)" : ""));
  for (const auto& [v, text] : ax.ticks())
    out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"tick\" text-anchor=\"middle\">{}</text>\n", c(X(v)),
                       c(f.T + f.ph() + 14), escape(text));
  out += fmt::format("<text x=\"{}\" y=\"{}\" class=\"axis\" text-anchor=\"middle\">{}</text>\n", c(f.L + f.pw() / 2),
                     c(f.H - 8), escape(ch.x_label + (ax.log ? " (log)" : "")));
  std::vector<std::pair<std::string, std::string>> leg;
  for (std::size_t k = 0; k < ch.series.size(); ++k) {
    auto pts = ch.series[k].points;
    pts.erase(std::remove_if(pts.begin(), pts.end(),
                             [&](const LinePoint& p) {
                               return !std::isfinite(p.x) || !std::isfinite(p.y) || (ax.log && p.x <= 0) ||
                                      (ay.log && p.y <= 0);
                             }),
              pts.end());
    if (pts.empty()) continue;
    std::stable_sort(pts.begin(), pts.end(), [](const LinePoint& a, const LinePoint& b) { return a.x < b.x; });
    const char* colour = series_colour(k);
    const std::string dash = series_dash(k);
    std::vector<std::optional<std::pair<double, double>>> path;
    std::string marks;
    for (const auto& p : pts) {
      path.emplace_back(std::make_pair(X(p.x), Y(p.y)));
      if (p.err && *p.err > 0 && std::isfinite(*p.err)) {
        const double lo = ay.log ? std::max(p.y - *p.err, ay.lo) : p.y - *p.err;
        marks += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"{3}\" class=\"err\"/>",
                             c(X(p.x)), c(Y(lo)), c(Y(p.y + *p.err)), colour);
      }
      marks += fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{}\"><title>{}</title></circle>", c(X(p.x)),
                           c(Y(p.y)), colour,
                           escape(p.tip.empty() ? ch.series[k].name + ": " + tick_text(p.x) + ", " + tick_text(p.y)
                                                : p.tip));
    }
    out += fmt::format("<path d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"{} class=\"series\"/>\n",
                       broken_path(path), colour, dash.empty() ? "" : " stroke-dasharray=\"" + dash + "\"");
    out += marks + "\n";
    leg.emplace_back(colour, ch.series[k].name + (dash.empty() ? "" : " (dashed)"));
  }
  out += legend(leg, f);
  return out + "</svg>\n";
}

std::string bar_chart(const BarChart& ch) {
  std::vector<double> vals;
  for (const auto& b : ch.bars)
    if (std::isfinite(b.value)) {
      vals.push_back(b.value);
      if (b.err && std::isfinite(*b.err)) vals.push_back(b.value + *b.err), vals.push_back(b.value - *b.err);
    }
  if (vals.empty()) return note(ch.empty_note);
  Frame f;
  std::size_t longest = 0;
  for (const auto& b : ch.bars) longest = std::max(longest, b.label.size());
  // Labels turned by 30 degrees under the bars: room for the longest (about 6.5 px a character).
  const double extra = std::min(220.0, 24 + 3.25 * static_cast<double>(longest)) - f.B;
  f.B += std::max(0.0, extra);
  f.H += std::max(0.0, extra);
  double lo = 0, hi = 0;
  if (ch.from_zero) {
    hi = nice_ceil(*std::max_element(vals.begin(), vals.end()));
  } else {
    const Axis a = span(vals, false);
    lo = a.lo, hi = a.hi;
  }
  auto Y = [&](double v) { return f.T + f.ph() * (1.0 - (std::max(lo, v) - lo) / (hi - lo)); };
  std::vector<std::pair<double, std::string>> ticks;
  for (int k = 0; k <= 4; ++k) ticks.emplace_back(lo + (hi - lo) * k / 4, fmt::format("{:.4g}", lo + (hi - lo) * k / 4));
  std::string out = open(ch.id, ch.title, f);
  out += y_axis(ticks, Y, f, ch.y_label);
  const double step = f.pw() / static_cast<double>(ch.bars.size());
  const double w = std::max(step * 0.7, 0.5);
  for (std::size_t i = 0; i < ch.bars.size(); ++i) {
    const auto& b = ch.bars[i];
    const double x = f.L + (static_cast<double>(i) + 0.5) * step;
    if (std::isfinite(b.value)) {
      out += fmt::format("<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{}: {}{}</title></rect>\n",
                         c(x - w / 2), c(Y(b.value)), c(w), c(Y(lo) - Y(b.value)), series_colour(i), escape(b.label),
                         fmt::format("{:.5g}", b.value), b.err ? fmt::format(" ± {:.3g}", *b.err) : "");
      if (b.err && *b.err > 0)
        out += fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#333\" class=\"err\"/>\n", c(x),
                           c(Y(b.value - *b.err)), c(Y(b.value + *b.err)));
    }
    const double ty = f.T + f.ph() + 12;
    out += fmt::format("<text x=\"{0}\" y=\"{1}\" class=\"tick\" text-anchor=\"end\" transform=\"rotate(-30 {0} {1})\">{2}</text>\n",
                       c(x), c(ty), escape(b.label));
  }
  return out + "</svg>\n";
}

}  // namespace mpqat::eval::svg
