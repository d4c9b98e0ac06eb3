// The report of `mpqat run`: metrics and their drops (text), the HTML page's charts and their
// absence, escaping, one bar per layer, minimal and malformed reports, and (when Chromium is
// installed) a headless render of the page.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>

#include "mpqat/eval/run_report.h"
#include "mpqat/util/error.h"

namespace fs = std::filesystem;
using namespace mpqat;
using namespace mpqat::eval;
using nlohmann::json;

namespace {

json full_report() {
  json r;
  r["model"] = "checkpoints/tiny-llama";
  r["recipe"] = "recipes/quickstart.yaml";
  r["created"] = "2026-01-01T00:00:00Z";
  r["mpqat_version"] = "0.1.0";
  r["fp"] = {{"ppl", {{"wikitext.txt", 5.0}, {"tinystories.txt", {{"ppl", 4.0}, {"nll", 1.386}, {"tokens", 100}}}}},
             {"tasks", {{"piqa", {{"acc", 0.80}, {"acc_norm", 0.70}, {"acc_stderr", 0.01}, {"n", 100}}}}},
             {"classification", {{"accuracy", 0.90}, {"precision", 0.88}, {"recall", 0.86}, {"f1", 0.87}}},
             {"bytes", 3400000},
             {"avg_bits", 16}};
  r["quantized"] = {{"ppl", {{"wikitext.txt", 6.0}, {"tinystories.txt", {{"ppl", 4.2}, {"nll", 1.435}}}}},
                    {"tasks", {{"piqa", {{"acc", 0.75}, {"acc_norm", 0.71}, {"acc_stderr", 0.01}, {"n", 100}}}}},
                    {"classification", {{"accuracy", 0.92}, {"precision", 0.88}, {"recall", 0.80}, {"f1", 0.83}}},
                    {"bytes", 1000000},
                    {"avg_bits", 4.5},
                    {"bpw", 4.8123}};
  r["budget"] = {{"kind", "avg_bits"}, {"value", 4.5}, {"met", true}};
  r["compression"] = 3.4;
  json layers = json::array();
  const char* mods[] = {"self_attn.q_proj", "self_attn.k_proj", "mlp.down_proj"};
  const int bits[] = {4, 8, 2};
  for (int b = 0; b < 3; ++b)
    for (int m = 0; m < 3; ++m) {
      if (b == 2 && m == 2) continue;  // 8 layers: not a multiple of the blocks
      layers.push_back({{"name", "model.layers." + std::to_string(b) + "." + mods[m]},
                        {"block", b},
                        {"bits", bits[(b + m) % 3]},
                        {"group_size", 128},
                        {"sensitivity", {{"fisher", 0.001 * std::pow(10.0, b + m)}, {"pwcca", 0.1 * (m + 1)}}}});
    }
  r["layers"] = layers;
  r["blocks"] = json::array();
  for (int b = 0; b < 3; ++b)
    r["blocks"].push_back({{"block", b},
                           {"epochs", 2},
                           {"start_val_mse", 0.02 * (b + 1)},
                           {"best_val_mse", 0.01 * (b + 1)},
                           {"end_val_mse", 0.011 * (b + 1)},
                           {"kept_rtn", b == 2},
                           {"seconds", 1.5},
                           {"val_curve", {0.015, 0.011}}});
  r["stages"] = json::array({{{"name", "sensitivity"}, {"seconds", 3.25}, {"reused", false}},
                             {{"name", "train"}, {"seconds", 10.0}, {"reused", true}}});
  return r;
}

// The text line whose first column is `name` (the metric rows start with the metric's name).
std::string line_of(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(name + "  ", 0) == 0) return line;
  return "";
}

std::size_t count(const std::string& s, const std::string& what) {
  std::size_t n = 0;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + what.size())) ++n;
  return n;
}

// The <svg ...>...</svg> element with this id, or "".
std::string svg_with_id(const std::string& html, const std::string& id) {
  const auto at = html.find("<svg id=\"" + id + "\"");
  if (at == std::string::npos) return "";
  return html.substr(at, html.find("</svg>", at) + 6 - at);
}

const MetricComparison* find_metric(const std::vector<MetricComparison>& ms, const std::string& name) {
  for (const auto& m : ms)
    if (m.name == name) return &m;
  return nullptr;
}

}  // namespace

TEST(RunReport, MetricDropsAreComputedPerDirection) {
  const auto ms = compare_run_metrics(full_report());
  const auto* acc = find_metric(ms, "piqa acc");
  ASSERT_NE(acc, nullptr);
  EXPECT_FALSE(acc->lower_is_better);
  EXPECT_NEAR(*acc->drop, 0.05, 1e-12);
  EXPECT_NEAR(*acc->drop_pct, 6.25, 1e-9);
  const auto* ppl = find_metric(ms, "ppl wikitext.txt");
  ASSERT_NE(ppl, nullptr);
  EXPECT_TRUE(ppl->lower_is_better);
  EXPECT_NEAR(*ppl->drop, 1.0, 1e-12);  // 5 -> 6 is a loss of quality
  EXPECT_NEAR(*ppl->drop_pct, 20.0, 1e-9);
  const auto* nested = find_metric(ms, "ppl tinystories.txt");  // an `mpqat eval` perplexity object
  ASSERT_NE(nested, nullptr);
  EXPECT_NEAR(*nested->drop_pct, 5.0, 1e-9);
  const auto* cls = find_metric(ms, "classification accuracy");
  ASSERT_NE(cls, nullptr);
  EXPECT_NEAR(*cls->drop, -0.02, 1e-12);  // improved
  EXPECT_EQ(find_metric(ms, "piqa acc_stderr"), nullptr);
  EXPECT_EQ(find_metric(ms, "piqa n"), nullptr);
  EXPECT_EQ(ms.size(), 2u + 2u + 4u);  // 2 ppl, 2 piqa, 4 classification; bytes/avg_bits are not metrics
}

TEST(RunReport, TextShowsEveryMetricWithItsDrop) {
  const std::string t = render_run_report_text(full_report());
  struct Row {
    const char* name;
    const char* fp;
    const char* q;
    const char* drop;
    const char* pct;
  };
  for (const Row& r : {Row{"piqa acc", "0.8000", "0.7500", "0.0500", "6.25%"},
                       Row{"piqa acc_norm", "0.7000", "0.7100", "-0.0100", "-1.43%"},
                       Row{"ppl wikitext.txt", "5.0000", "6.0000", "1.0000", "20.00%"},
                       Row{"ppl tinystories.txt", "4.0000", "4.2000", "0.2000", "5.00%"},
                       Row{"classification accuracy", "0.9000", "0.9200", "-0.0200", "-2.22%"},
                       Row{"classification precision", "0.8800", "0.8800", "0.0000", "0.00%"},
                       Row{"classification recall", "0.8600", "0.8000", "0.0600", "6.98%"},
                       Row{"classification f1", "0.8700", "0.8300", "0.0400", "4.60%"}}) {
    const std::string line = line_of(t, r.name);
    ASSERT_FALSE(line.empty()) << "no row for " << r.name << " in\n" << t;
    std::istringstream cells(line.substr(std::string(r.name).size()));
    std::string fp, q, drop, pct;
    cells >> fp >> q >> drop >> pct;
    EXPECT_EQ(fp, r.fp) << line;
    EXPECT_EQ(q, r.q) << line;
    EXPECT_EQ(drop, r.drop) << line;
    EXPECT_EQ(pct, r.pct) << line;
  }
  EXPECT_EQ(t.find("stderr"), std::string::npos);
  EXPECT_EQ(t.rfind("mpqat run report\n================\nmodel:   checkpoints/tiny-llama\nrecipe:  recipes/quickstart.yaml\n", 0), 0u) << t;
  EXPECT_NE(t.find("compression ratio: 3.400x"), std::string::npos) << t;
  EXPECT_NE(t.find("size reduction:    70.59%"), std::string::npos) << t;
  EXPECT_NE(t.find("code bits:         4.500 (FP 16)"), std::string::npos) << t;
  EXPECT_NE(t.find("bpw:               4.812 (all bytes of the quantized linears / their weights)"), std::string::npos)
      << t;
  EXPECT_NE(t.find("avg_bits <= 4.5 bpw incl. scales/zeros/g_idx (met)"), std::string::npos) << t;
  EXPECT_NE(t.find("3.24 MiB (3400000 bytes)"), std::string::npos) << t;
  // layer table: header with both sensitivity metrics, one row per layer
  EXPECT_NE(t.find("Bits per layer (8 layers; 2-bit x3, 4-bit x3, 8-bit x2)"), std::string::npos) << t;
  EXPECT_NE(line_of(t, "model.layers.1.mlp.down_proj").find("  1     4    128"), std::string::npos) << t;
  EXPECT_EQ(count(t, "model.layers."), 8u);
  // blocks and stages
  EXPECT_NE(line_of(t, "block").find("kept RTN"), std::string::npos);
  EXPECT_NE(t.find("50.00%"), std::string::npos);  // gain of every block: 0.02 -> 0.01
  EXPECT_NE(line_of(t, "train").find("reused"), std::string::npos);
  EXPECT_NE(line_of(t, "total").find("13.25"), std::string::npos) << t;
}

TEST(RunReport, MetricOnOneSideOnlyHasNoDrop) {
  json r{{"model", "m"}, {"fp", {{"ppl", 5.55}}}, {"quantized", {{"ppl", 7.08}, {"nll", 1.96}}}};
  const auto ms = compare_run_metrics(r);
  ASSERT_EQ(ms.size(), 2u);
  EXPECT_EQ(ms[0].name, "ppl");
  EXPECT_NEAR(*ms[0].drop_pct, (7.08 - 5.55) / 5.55 * 100, 1e-9);
  EXPECT_EQ(ms[1].name, "nll");
  EXPECT_FALSE(ms[1].fp.has_value());
  EXPECT_FALSE(ms[1].drop.has_value());
  const std::string t = render_run_report_text(r);
  std::istringstream nll(line_of(t, "nll"));
  std::string name, fp, q, drop, pct;
  nll >> name >> fp >> q >> drop >> pct;
  EXPECT_EQ(fp + " " + q + " " + drop + " " + pct, "- 1.9600 - -") << t;
}

TEST(RunReport, MinimalReportRenders) {
  const json r{{"model", "m"}, {"fp", json::object()}, {"quantized", json::object()}};
  std::string t, h;
  ASSERT_NO_THROW(t = render_run_report_text(r));
  ASSERT_NO_THROW(h = render_run_report_html(r));
  EXPECT_NE(t.find("model: m"), std::string::npos);
  EXPECT_NE(t.find("no metrics"), std::string::npos);
  EXPECT_NE(h.find("</html>"), std::string::npos);
  // optional fields of the wrong type are skipped, not thrown on
  json odd = r;
  odd["layers"] = "none";
  odd["blocks"] = json::array({1, "x", json::object()});
  odd["stages"] = json::array({{{"name", 3}, {"seconds", "fast"}}});
  odd["budget"] = 4.5;
  odd["quantized"]["bytes"] = "big";
  odd["fp"]["tasks"] = {{"piqa", {{"acc", "high"}}}};
  EXPECT_NO_THROW(render_run_report_text(odd));
  EXPECT_NO_THROW(render_run_report_html(odd));
}

TEST(RunReport, MissingRequiredFieldIsAnInputError) {
  EXPECT_THROW(render_run_report_text(json{{"fp", json::object()}, {"quantized", json::object()}}), InputError);
  EXPECT_THROW(render_run_report_html(json{{"model", "m"}, {"quantized", json::object()}}), InputError);
  EXPECT_THROW(render_run_report_text(json{{"model", "m"}, {"fp", json::object()}, {"quantized", 3}}), InputError);
  EXPECT_THROW(render_run_report_text(json::array()), InputError);
  try {
    render_run_report_text(json{{"model", "m"}, {"fp", json::object()}});
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'quantized'"), std::string::npos) << e.what();
  }
}

TEST(RunReport, HtmlHasTheThreeChartsWhenDataIsPresent) {
  const std::string h = render_run_report_html(full_report());
  for (const char* id : {"chart-sensitivity", "chart-bits", "chart-loss"}) {
    const std::string svg = svg_with_id(h, id);
    ASSERT_FALSE(svg.empty()) << id;
    EXPECT_NE(svg.find("<title"), std::string::npos) << id;
  }
  EXPECT_EQ(count(h, "<svg"), 3u);
  EXPECT_EQ(count(h, "</svg>"), 3u);
  EXPECT_EQ(count(h, "chart omitted"), 0u);
  // one series per sensitivity metric; fisher spans 1e-3..1 (> 100x) so it is drawn on log10
  const std::string sens = svg_with_id(h, "chart-sensitivity");
  EXPECT_EQ(count(sens, "class=\"series\""), 2u);
  EXPECT_NE(sens.find("fisher (log)"), std::string::npos);
  EXPECT_NE(sens.find(">pwcca<"), std::string::npos);
  // losses 0.01..0.06 span 6x: linear
  EXPECT_EQ(svg_with_id(h, "chart-loss").find("log scale"), std::string::npos);
  // the same tables as the text
  EXPECT_NE(h.find("<td>piqa acc</td><td>0.8000</td><td>0.7500</td><td class=\"worse\">0.0500</td>"
                   "<td class=\"worse\">6.25%</td>"),
            std::string::npos);
  EXPECT_NE(h.find("<td>classification accuracy</td><td>0.9000</td><td>0.9200</td><td class=\"better\">"),
            std::string::npos);
  EXPECT_EQ(count(h, "<td>model.layers."), 8u);
}

TEST(RunReport, LossChartUsesLogScaleWhenLossesSpanMoreThan100x) {
  json r = full_report();
  r["blocks"][0]["start_val_mse"] = 5.0;
  r["blocks"][2]["best_val_mse"] = 0.001;
  const std::string svg = svg_with_id(render_run_report_html(r), "chart-loss");
  EXPECT_NE(svg.find("(log scale)"), std::string::npos);
  EXPECT_NE(svg.find(">1e-3<"), std::string::npos);
  EXPECT_NE(svg.find(">1e1<"), std::string::npos);
}

TEST(RunReport, ChartsAreOmittedWithANoteWhenTheirDataIsAbsent) {
  json r = full_report();
  r.erase("layers");
  r.erase("blocks");
  const std::string h = render_run_report_html(r);
  for (const char* id : {"chart-sensitivity", "chart-bits", "chart-loss"})
    EXPECT_EQ(h.find(std::string("id=\"") + id + "\""), std::string::npos) << id;
  EXPECT_EQ(count(h, "<svg"), 0u);
  EXPECT_EQ(count(h, "chart omitted"), 3u);
  // layers with bits but no sensitivity: only the sensitivity chart goes
  r = full_report();
  for (auto& l : r["layers"]) l.erase("sensitivity");
  const std::string h2 = render_run_report_html(r);
  EXPECT_EQ(h2.find("id=\"chart-sensitivity\""), std::string::npos);
  EXPECT_NE(h2.find("id=\"chart-bits\""), std::string::npos);
  EXPECT_NE(h2.find("id=\"chart-loss\""), std::string::npos);
  EXPECT_EQ(count(h2, "chart omitted"), 1u);
}

TEST(RunReport, OneBarPerLayer) {
  json r = full_report();
  EXPECT_EQ(count(svg_with_id(render_run_report_html(r), "chart-bits"), "class=\"bar\""), 8u);
  json many = json::array();
  for (int i = 0; i < 300; ++i)
    many.push_back({{"name", "model.layers." + std::to_string(i / 7) + ".proj"}, {"block", i / 7}, {"bits", 2 + i % 3}});
  r["layers"] = many;
  const std::string h = render_run_report_html(r);
  EXPECT_EQ(count(svg_with_id(h, "chart-bits"), "class=\"bar\""), 300u);
  EXPECT_EQ(count(h, "class=\"bar\""), 300u);  // nothing else carries the class
}

TEST(RunReport, StringsAreEscaped) {
  EXPECT_EQ(html_escape("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
  EXPECT_EQ(html_escape(""), "");
  json r = full_report();
  r["model"] = "<script>alert(1)</script> & co";
  r["recipe"] = "x\"><img onerror=1>";
  r["layers"][0]["name"] = "layer<0>";
  r["layers"][0]["sensitivity"]["<m>"] = 1.0;
  r["stages"][0]["name"] = "<stage>";
  r["fp"]["tasks"]["<t>"] = {{"acc", 0.5}};
  const std::string h = render_run_report_html(r);
  EXPECT_EQ(h.find("<script"), std::string::npos);
  EXPECT_EQ(h.find("<img"), std::string::npos);
  EXPECT_EQ(h.find("layer<0>"), std::string::npos);
  EXPECT_EQ(h.find("<m>"), std::string::npos);
  EXPECT_EQ(h.find("<stage>"), std::string::npos);
  EXPECT_EQ(h.find("<t>"), std::string::npos);
  EXPECT_NE(h.find("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"), std::string::npos);
  EXPECT_NE(h.find("layer&lt;0&gt;"), std::string::npos);
  EXPECT_NE(h.find("x&quot;&gt;&lt;img onerror=1&gt;"), std::string::npos);
}

TEST(RunReport, HtmlNeedsNoNetwork) {
  const std::string h = render_run_report_html(full_report());
  for (const char* bad : {"http:", "https:", "<script", "<link", "src=", "url(", "@import"})
    EXPECT_EQ(h.find(bad), std::string::npos) << bad;
  EXPECT_NE(h.find("<meta charset=\"utf-8\">"), std::string::npos);
  EXPECT_NE(h.find("<style>"), std::string::npos);
}

TEST(RunReport, ChromiumRendersTheCharts) {
  std::string exe;
  for (const char* name : {"chromium", "chromium-browser"})
    if (std::system((std::string("which ") + name + " >/dev/null 2>&1").c_str()) == 0) {
      exe = name;
      break;
    }
  if (exe.empty()) GTEST_SKIP() << "neither chromium nor chromium-browser is installed: headless rendering not checked";
  const fs::path dir = fs::temp_directory_path() / ("mpqat_run_report_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path page = dir / "report.html";
  std::ofstream(page) << render_run_report_html(full_report());
  const std::string cmd = "timeout 60 " + exe + " --headless --no-sandbox --disable-gpu --no-first-run" +
                          " --user-data-dir='" + (dir / "profile").string() + "' --dump-dom 'file://" +
                          page.string() + "' 2>/dev/null";
  std::string dom;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) dom.append(buf, n);
    ::pclose(p);
  }
  fs::remove_all(dir);
  ASSERT_FALSE(dom.empty()) << "no DOM from: " << cmd;
  for (const char* id : {"chart-sensitivity", "chart-bits", "chart-loss"})
    EXPECT_NE(dom.find(std::string("<svg id=\"") + id + "\""), std::string::npos) << id;
  EXPECT_EQ(count(dom, "class=\"bar\""), 8u);
}

TEST(RunReport, TypedReportAndItsJsonRenderAlike) {
  // The pipeline renders the struct it filled; a reader re-renders report.json: the same text.
  const RunReport typed = run_report_from_json(full_report());
  const json written = to_json(typed);
  EXPECT_EQ(to_json(run_report_from_json(written)).dump(), written.dump());  // a second read-write changes nothing (NaN: null)
  EXPECT_EQ(render_run_report_text(typed), render_run_report_text(written));
  EXPECT_EQ(render_run_report_html(typed), render_run_report_html(written));
  // What the typed fields hold: the per-file objects of `mpqat eval` give their ppl, a flat
  // classification is one unnamed classifier, the sensitivity keeps its metrics.
  ASSERT_EQ(typed.fp.ppl.size(), 2u);
  EXPECT_EQ(typed.fp.ppl[0].first, "tinystories.txt");
  EXPECT_DOUBLE_EQ(typed.fp.ppl[0].second, 4.0);
  ASSERT_EQ(typed.fp.classification.size(), 1u);
  EXPECT_EQ(typed.fp.classification[0].first, "");
  ASSERT_EQ(typed.layers.size(), 8u);
  ASSERT_EQ(typed.layers[0].sensitivity.size(), 2u);
  EXPECT_EQ(typed.layers[0].sensitivity[1].first, "pwcca");
  EXPECT_EQ(typed.blocks[2].kept_rtn, std::optional<bool>(true));
}

TEST(RunReport, ADivergedModelShowsNanAndAByteBudgetShowsBytes) {
  RunReport r;
  r.model = "m";
  r.fp.ppl = {{"", 5.0}};
  r.quantized.ppl = {{"", std::nan("")}};
  r.budget = ReportBudget{"file_bytes", "bytes=196808", 196808.0, 196544, 196600, true};
  const std::string text = render_run_report_text(r);
  EXPECT_NE(line_of(text, "ppl").find("nan"), std::string::npos) << text;
  EXPECT_NE(text.find("file_bytes <= 192 KiB (196808 bytes) (met)"), std::string::npos) << text;
  // In report.json the budget value is an integer, as the byte count it is.
  EXPECT_TRUE(to_json(r)["budget"]["value"].is_number_unsigned());
}
