// Inline SVG charts for the self-contained HTML reports (report.html of `mpqat run`,
// study.html of `mpqat study`): one frame, axes, legends and paths, and two generic charts (lines
// over a numeric x, bars by category). No scripts, no fonts, no network; every string escaped.
// Light: no torch, no JSON.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace mpqat::eval::svg {

// Colour of series i (a fixed palette of 8, repeated).
const char* series_colour(std::size_t i);
// Colour of a bit-width (2 red ... 8 blue, float grey).
const char* bits_colour(double bits);
// A coordinate as SVG text (one decimal).
std::string c(double v);
// Escapes & < > " ' for HTML text and attribute values.
std::string escape(const std::string& s);

// The frame of every chart: a viewBox of W x H, the plot inside the margins.
struct Frame {
  double W = 900, H = 320, L = 64, R = 16, T = 40, B = 44;
  double pw() const { return W - L - R; }
  double ph() const { return H - T - B; }
};

// <svg id=... class="chart"> with its <title> and the plot rectangle (close with "</svg>\n").
std::string open(const std::string& id, const std::string& title, const Frame& f);
// Horizontal grid lines with their labels on the left; `y` maps a value to a coordinate.
std::string y_axis(const std::vector<std::pair<double, std::string>>& ticks, const std::function<double(double)>& y,
                   const Frame& f, const std::string& label);
// Legend entries (colour, name) left to right above the plot, wrapped into rows of the frame's
// width (legend_rows says how many; a frame with more rows needs T += 18 per extra row).
std::string legend(const std::vector<std::pair<std::string, std::string>>& items, const Frame& f);
int legend_rows(const std::vector<std::string>& names, const Frame& f);
// Dash pattern of series i: solid for the palette's first round, dashed after (so 16 series
// stay apart); "" = solid.
const char* series_dash(std::size_t i);
// Every k-th of n labels over `width`, so that labels are at least `min_gap` apart.
std::size_t label_stride(std::size_t n, double width, double min_gap);
// A polyline path through the points, broken where a point is missing.
std::string broken_path(const std::vector<std::optional<std::pair<double, double>>>& pts);
// The least of 1, 2, 2.5, 5 x 10^k at or above v (1 for v <= 0).
double nice_ceil(double v);
// A one-line italic note (a chart replaced for want of data).
std::string note(const std::string& text);
// The reports' shared CSS (inside <style>).
const char* page_style();

// Lines over a numeric x: each series a list of points (with an optional +- error bar), drawn in
// x order. The axes span the data (with a margin); log10 axes when asked and every value is
// positive. Returns note(empty_note) when no series has a point.
struct LinePoint {
  double x = 0, y = 0;
  std::optional<double> err;  // half-length of the error bar
  std::string tip;            // hover text
};
struct LineSeries {
  std::string name;
  std::vector<LinePoint> points;
};
struct LineChart {
  std::string id, title, x_label, y_label, empty_note = "No data: chart omitted.";
  bool log_x = false, log_y = false;
  std::vector<LineSeries> series;
};
std::string line_chart(const LineChart& chart);

// Bars by category (one per value, labelled under the axis), from 0.
struct Bar {
  std::string label;
  double value = 0;
  std::optional<double> err;  // half-length of the error bar
};
struct BarChart {
  std::string id, title, y_label, empty_note = "No data: chart omitted.";
  std::vector<Bar> bars;
  bool from_zero = true;  // false: the axis spans the values (differences of a few percent show)
};
std::string bar_chart(const BarChart& chart);

}  // namespace mpqat::eval::svg
