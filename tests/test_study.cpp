// `mpqat study` on the bundled model (checkpoints/kjv-llama): the cells a study section gives,
// the budgets' bytes against the written uniform checkpoints, equal bytes for the mixed plans,
// SGRA at equal steps, resuming, a failing cell, and the summary files.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <filesystem>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "mpqat/cli/study.h"
#include "mpqat/eval/study_report.h"
#include "mpqat/eval/svg_chart.h"
#include "mpqat/io/recipe.h"
#include "mpqat/train/steps.h"
#include "mpqat/util/error.h"
#include "run_command.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
const std::string kSource = MPQAT_SOURCE_DIR;

mpqat::io::Recipe kjv_recipe(std::vector<std::string> extra) {
  std::vector<std::string> o{"model.path=" + kSource + "/checkpoints/kjv-llama",
                             "data.calibration.path=" + kSource + "/checkpoints/kjv-llama/calib.txt",
                             "evaluation.perplexity=[" + kSource + "/checkpoints/kjv-llama/heldout.txt]",
                             "data.calibration.samples=12", "evaluation.context=128"};
  o.insert(o.end(), extra.begin(), extra.end());
  return mpqat::io::Recipe::from_file(kSource + "/recipes/quickstart.yaml", o);
}

json read_json(const fs::path& p) { return json::parse(mpqat::testing::slurp(p.string())); }

bool has(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }
}  // namespace

TEST(Study, EqualizeEpochsKeepsTheTotalAndTheOrder) {
  using mpqat::train::equalize_epochs;
  EXPECT_EQ(equalize_epochs({2, 3, 4}, 6), (std::vector<int>{1, 2, 3}));  // shares 1.33, 2, 2.67
  EXPECT_EQ(equalize_epochs({4, 4, 4, 4}, 8), (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(equalize_epochs({1, 1, 10}, 3), (std::vector<int>{1, 1, 1}));  // the minimum of one
  // Every small case: sums to the total, each >= 1, order kept, within 1 of the exact share.
  for (int a = 1; a <= 5; ++a)
    for (int b = 1; b <= 5; ++b)
      for (int c = 1; c <= 5; ++c)
        for (int total = 3; total <= 15; ++total) {
          const std::vector<int> e{a, b, c};
          const auto out = equalize_epochs(e, total);
          int sum = 0;
          bool clamped = false;  // a share below one epoch is raised to one: the others shrink more
          for (int x : e) clamped = clamped || static_cast<double>(x) * total / (a + b + c) < 1;
          for (std::size_t i = 0; i < 3; ++i) {
            sum += out[i];
            EXPECT_GE(out[i], 1);
            const double share = static_cast<double>(e[i]) * total / (a + b + c);
            if (!clamped) EXPECT_LT(std::abs(out[i] - share), 1.0) << a << b << c << " " << total;
            for (std::size_t j = 0; j < 3; ++j)
              if (e[i] > e[j]) EXPECT_GE(out[i], out[j]) << a << b << c << " " << total;
          }
          EXPECT_EQ(sum, total);
        }
  EXPECT_THROW(equalize_epochs({2, 2, 2}, 2), mpqat::InputError);
  EXPECT_THROW(equalize_epochs({0, 2}, 4), mpqat::InputError);
}

TEST(Study, PlanGivesEveryCellOnceWithItsBudget) {
  const auto r = kjv_recipe({"study.allocation=[uniform, qbo, kmeans]", "study.training=[rtn, block-ap]",
                             "study.sgra=[off, on, equal-steps]", "study.budgets=[2, 3, 3.5]", "study.seeds=[0, 1]"});
  const auto plan = mpqat::cli::plan_study(r, "/tmp/study-plan");
  // Per seed: at 2 bits (the menu's lowest: only uniform fits) uniform and kmeans x (rtn + 3
  // Block-AP SGRA settings) = 8; at 3 bits uniform and qbo: 8; at 3.5 bits no uniform plan
  // exists and the preset does not repeat: qbo's 4.
  EXPECT_EQ(plan.cells.size(), 40u);
  ASSERT_EQ(plan.sensitivities.size(), 2u);
  EXPECT_TRUE(plan.sensitivities[0].fp_baseline);
  EXPECT_FALSE(plan.sensitivities[1].fp_baseline);
  std::set<std::string> names;
  for (const auto& c : plan.cells) {
    EXPECT_TRUE(names.insert(c.name).second) << c.name;
    EXPECT_FALSE(c.fp_baseline);
    if (c.allocation == "qbo") {
      ASSERT_TRUE(c.budget);
      EXPECT_EQ(c.budget_bytes, plan.budget_bytes.at(*c.budget));
      EXPECT_TRUE(has(c.overrides, "allocation.budget.bytes=" + std::to_string(c.budget_bytes))) << c.name;
    }
    if (c.allocation == "kmeans") EXPECT_FALSE(c.budget);
    if (c.training == "rtn") EXPECT_EQ(c.sgra, "off");
    EXPECT_EQ(c.sensitivity, "sens-n12-s" + std::to_string(c.seed)) << c.name;
    if (c.sgra == "equal-steps") EXPECT_TRUE(has(c.overrides, "allocation.sgra.equal_steps=true"));
    EXPECT_TRUE(has(c.overrides, "seed=" + std::to_string(c.seed)));
  }
  const uint64_t b3 = plan.budget_bytes.at(3.0), b35 = plan.budget_bytes.at(3.5);
  const uint64_t b4 = mpqat::cli::plan_study(kjv_recipe({"study.budgets=[4]"}), "/tmp/x").budget_bytes.at(4.0);
  EXPECT_LT(b3, b35);
  EXPECT_EQ(b35, (b3 + b4 + 1) / 2);  // halfway, rounded

  // The recipe's own sensitivity file: no sensitivity runs, every cell reads it, the first cell
  // evaluates the float model.
  const auto own = mpqat::cli::plan_study(
      kjv_recipe({"study.allocation=[uniform, qbo]", "study.training=[rtn]", "study.budgets=[3]", "study.seeds=[0, 1]",
                  "sensitivity.file=/data/s.json"}),
      "/tmp/x");
  EXPECT_TRUE(own.sensitivities.empty());
  ASSERT_EQ(own.cells.size(), 4u);
  for (std::size_t i = 0; i < own.cells.size(); ++i) {
    EXPECT_EQ(own.cells[i].fp_baseline, i == 0);
    EXPECT_TRUE(has(own.cells[i].overrides, "sensitivity.file=/data/s.json"));
    EXPECT_TRUE(has(own.cells[i].overrides, std::string("evaluation.fp_baseline=") + (i == 0 ? "true" : "false")));
  }

  // Refusals name the key and what is accepted.
  try {
    mpqat::cli::plan_study(kjv_recipe({"study.seeds=[]"}), "/tmp/x");
    FAIL() << "empty seeds accepted";
  } catch (const mpqat::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("study.seeds"), std::string::npos) << e.what();
  }
  try {
    mpqat::cli::plan_study(kjv_recipe({"evaluation.perplexity=[]"}), "/tmp/x");
    FAIL() << "a study without evaluation accepted";
  } catch (const mpqat::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("evaluation.perplexity"), std::string::npos) << e.what();
  }
  EXPECT_THROW(kjv_recipe({"study.sgra=[maybe]"}), mpqat::InputError);
  EXPECT_THROW(kjv_recipe({"study.budgets=[9]"}), mpqat::InputError);
}

TEST(Study, RunsAtEqualBytesResumesAndSummarises) {
  const auto dir = mpqat::testing::fresh_temp_dir("Study", "rtn");
  const auto r = kjv_recipe({"study.allocation=[uniform, qbo]", "study.training=[rtn]", "study.budgets=[3]",
                             "study.seeds=[0, 1]", "output.formats=[safetensors]"});
  mpqat::cli::StudyOptions o;
  o.exe = MPQAT_BINARY;
  mpqat::cli::run_study(r, dir.string(), o);
  const json study = read_json(dir / "study.json");
  ASSERT_EQ(study["rows"].size(), 4u) << study.dump();
  const uint64_t budget = study["budget_bytes"]["3"].get<uint64_t>();
  std::map<std::string, double> ppl;
  for (const auto& row : study["rows"]) {
    const uint64_t bytes = row["bytes"].get<uint64_t>();
    if (row["allocation"] == "uniform") {
      EXPECT_EQ(bytes, budget) << "the size model's uniform bytes are the written checkpoint's";
    } else {
      EXPECT_LE(bytes, budget);
      EXPECT_GE(static_cast<double>(bytes), 0.995 * static_cast<double>(budget)) << "not at equal bytes";
    }
    EXPECT_GT(row["ppl"].get<double>(), 1.0);
    EXPECT_GT(row["bpw"].get<double>(), row["code_bits"].get<double>());
    ppl[row["cell"].get<std::string>()] = row["ppl"].get<double>();
  }
  EXPECT_EQ(ppl.size(), 4u);
  ASSERT_TRUE(study.contains("fp"));
  EXPECT_GT(study["fp"]["ppl"].get<double>(), 1.0);
  // The two seeds calibrate on different samples: their sensitivity files differ.
  EXPECT_NE(mpqat::testing::slurp((dir / "sensitivity/sens-n12-s0/sensitivity.json").string()),
            mpqat::testing::slurp((dir / "sensitivity/sens-n12-s1/sensitivity.json").string()));

  const std::string md = mpqat::testing::slurp((dir / "study.md").string());
  EXPECT_NE(md.find("| uniform + RTN | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find("| QBO + RTN | 2 |"), std::string::npos) << md;
  EXPECT_NE(md.find(" ± "), std::string::npos) << md;
  const std::string html = mpqat::testing::slurp((dir / "study.html").string());
  for (const char* id : {"study-quality-ppl", "study-sensitivity", "study-bits-0", "study-time"})
    EXPECT_NE(html.find(std::string("id=\"") + id + "\""), std::string::npos) << id;
  EXPECT_EQ(html.find("<script"), std::string::npos);

  // Resume: nothing runs again; a cell whose marker is gone runs again, the others stay.
  const auto report0 = dir / "cells" / "qbo-rtn-b3-n12-s0" / "report.json";
  const auto report1 = dir / "cells" / "qbo-rtn-b3-n12-s1" / "report.json";
  const auto t0 = fs::last_write_time(report0), t1 = fs::last_write_time(report1);
  mpqat::cli::run_study(r, dir.string(), o);
  EXPECT_EQ(fs::last_write_time(report0), t0);
  fs::remove(dir / "done" / "qbo-rtn-b3-n12-s1.json");
  mpqat::cli::run_study(r, dir.string(), o);
  EXPECT_EQ(fs::last_write_time(report0), t0);
  EXPECT_NE(fs::last_write_time(report1), t1);
  EXPECT_EQ(read_json(dir / "study.json")["rows"].size(), 4u);

  // A changed recipe reruns the cells it changes (here all: the base recipe differs).
  const auto r2 = kjv_recipe({"study.allocation=[uniform]", "study.training=[rtn]", "study.budgets=[3]",
                              "study.seeds=[0]", "evaluation.context=64"});
  mpqat::cli::run_study(r2, dir.string(), o);
  const json s2 = read_json(dir / "study.json");
  ASSERT_EQ(s2["rows"].size(), 1u);
  EXPECT_NE(s2["rows"][0]["ppl"].get<double>(), ppl["uniform-rtn-b3-n12-s0"]) << "context 64 was not evaluated";
}

TEST(Study, SgraAtEqualStepsTrainsAsManyStepsAsTheUniformSchedule) {
  const auto dir = mpqat::testing::fresh_temp_dir("Study", "sgra");
  const auto r = kjv_recipe({"study.allocation=[uniform]", "study.training=[block-ap]",
                             "study.sgra=[off, on, equal-steps]", "study.budgets=[3]", "study.seeds=[0]",
                             "training.epochs=2", "allocation.sgra.epochs=[1, 4]", "allocation.sgra.patience=[10, 10]",
                             "evaluation.fp_baseline=false"});
  mpqat::cli::StudyOptions o;
  o.exe = MPQAT_BINARY;
  mpqat::cli::run_study(r, dir.string(), o);
  const json study = read_json(dir / "study.json");
  ASSERT_EQ(study["rows"].size(), 3u);
  std::map<std::string, json> by;
  for (const auto& row : study["rows"]) by[row["sgra"].get<std::string>()] = row;
  const int64_t off = by["off"]["epochs"].get<int64_t>(), on = by["on"]["epochs"].get<int64_t>(),
                eq = by["equal-steps"]["epochs"].get<int64_t>();
  EXPECT_EQ(off, 8);  // 4 blocks x 2 epochs
  EXPECT_EQ(eq, off);
  EXPECT_EQ(by["equal-steps"]["steps"].get<int64_t>(), by["off"]["steps"].get<int64_t>());
  EXPECT_GT(on, off) << "SGRA [1, 4] gave no block more than 2 epochs: the test does not separate the schedules";
  // Per block, equal steps keeps SGRA's order: the block with most SGRA epochs gets the most.
  const json on_rep = read_json(dir / "cells" / "uniform-block-ap-sgra-b3-n12-s0" / "report.json");
  const json eq_rep = read_json(dir / "cells" / "uniform-block-ap-sgra-eq-b3-n12-s0" / "report.json");
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t j = 0; j < 4; ++j)
      if (on_rep["blocks"][i]["epochs"] > on_rep["blocks"][j]["epochs"])
        EXPECT_GE(eq_rep["blocks"][i]["epochs"], eq_rep["blocks"][j]["epochs"]);
  const std::string html = mpqat::testing::slurp((dir / "study.html").string());
  EXPECT_NE(html.find("id=\"study-convergence\""), std::string::npos);
}

TEST(Study, AFailingCellNamesItsLogAndKeepsTheFinishedRows) {
  const auto dir = mpqat::testing::fresh_temp_dir("Study", "fail");
  const auto r = kjv_recipe({"study.allocation=[uniform]", "study.training=[rtn, block-ap]", "study.sgra=[off]",
                             "study.budgets=[3]", "study.seeds=[0]", "training.batch_size=100",
                             "evaluation.fp_baseline=false"});
  mpqat::cli::StudyOptions o;
  o.exe = MPQAT_BINARY;
  try {
    mpqat::cli::run_study(r, dir.string(), o);
    FAIL() << "a Block-AP cell with a batch larger than the data ran";
  } catch (const mpqat::InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("uniform-block-ap-b3-n12-s0 failed"), std::string::npos) << m;
    EXPECT_NE(m.find("logs/uniform-block-ap-b3-n12-s0.log"), std::string::npos) << m;
    EXPECT_NE(m.find("training.batch_size"), std::string::npos) << m;  // the cell's own error line
    EXPECT_EQ(m.find('\n'), std::string::npos) << "not one line: " << m;
  }
  const json study = read_json(dir / "study.json");
  ASSERT_EQ(study["rows"].size(), 1u);
  EXPECT_EQ(study["rows"][0]["training"], "rtn");
}

TEST(Study, SummaryStatistics) {
  const auto s = mpqat::eval::stat_of({1.0, 2.0, 3.0});
  EXPECT_DOUBLE_EQ(s.mean, 2.0);
  EXPECT_DOUBLE_EQ(s.std, 1.0);  // sample standard deviation
  EXPECT_DOUBLE_EQ(mpqat::eval::stat_of({5.0}).std, 0.0);
  json study{{"rows", json::array()}};
  for (int seed : {0, 1})
    study["rows"].push_back({{"variant", "QBO + RTN"}, {"allocation", "qbo"}, {"training", "rtn"}, {"sgra", "off"},
                             {"budget_bits", 3}, {"samples", 8}, {"seed", seed}, {"bytes", 100 + seed},
                             {"ppl", 10.0 + 2 * seed}, {"bpw", 3.5}, {"code_bits", 3.0}, {"train_seconds", 1.0}});
  const auto g = mpqat::eval::summarize_study(study);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].seeds.size(), 2u);
  EXPECT_DOUBLE_EQ(g[0].ppl.mean, 11.0);
  EXPECT_NEAR(g[0].ppl.std, std::sqrt(2.0), 1e-12);
}

TEST(Study, KilledStudyResumesWithoutRedoingFinishedCells) {
  // `mpqat study` killed (its whole process group, as Ctrl-C does) after its first finished cell;
  // the same command then finishes the rest and leaves the finished cell alone.
  const auto dir = mpqat::testing::fresh_temp_dir("Study", "kill");
  const std::string args = "study " + kSource + "/recipes/quickstart.yaml model.path=" + kSource +
                           "/checkpoints/kjv-llama data.calibration.path=" + kSource +
                           "/checkpoints/kjv-llama/calib.txt 'evaluation.perplexity=[" + kSource +
                           "/checkpoints/kjv-llama/heldout.txt]' data.calibration.samples=12 evaluation.context=128 "
                           "'study.allocation=[uniform, qbo]' 'study.training=[rtn]' 'study.budgets=[3, 4]' "
                           "evaluation.fp_baseline=false --out " + dir.string();
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setpgid(0, 0);
    const std::string cmd = std::string(MPQAT_BINARY) + " " + args + " > " + (dir / "first.log").string() + " 2>&1";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  setpgid(pid, pid);
  const auto first = dir / "done" / "uniform-rtn-b3-n12-s0.json";
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!fs::exists(first) && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ::kill(-pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(fs::exists(first)) << mpqat::testing::slurp((dir / "first.log").string());
  ASSERT_FALSE(fs::exists(dir / "done" / "qbo-rtn-b4-n12-s0.json")) << "the study finished before it was killed";
  const auto report = dir / "cells" / "uniform-rtn-b3-n12-s0" / "report.json";
  const auto t = fs::last_write_time(report);
  const auto r = mpqat::testing::run_mpqat(args);
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("uniform + RTN @ 3 bits, n12 seed 0 (done earlier)"), std::string::npos) << r.out;
  EXPECT_EQ(fs::last_write_time(report), t);
  EXPECT_EQ(read_json(dir / "study.json")["rows"].size(), 4u);
}

TEST(Study, ChartsStayReadableWithManyVariants) {
  namespace svg = mpqat::eval::svg;
  svg::LineChart ch;
  ch.id = "c";
  ch.title = "t";
  for (int k = 0; k < 12; ++k) {
    svg::LineSeries s{"a long variant name number " + std::to_string(k), {}};
    for (int e = 1; e <= 4; ++e) s.points.push_back({static_cast<double>(e), 1.0 / (e + k), std::nullopt, ""});
    ch.series.push_back(s);
  }
  const std::string out = svg::line_chart(ch);
  EXPECT_EQ(out.find("viewBox=\"0 0 900.0 320.0\""), std::string::npos) << "the legend did not get rows of its own";
  EXPECT_NE(out.find("stroke-dasharray"), std::string::npos) << "series past the palette are not told apart";
  EXPECT_NE(out.find(">3</text>"), std::string::npos) << "epochs are not labelled as whole numbers";
  EXPECT_EQ(out.find(">1.75</text>"), std::string::npos);
  svg::BarChart b;
  b.id = "b";
  b.bars = {{"x", 2.0, 0.5}, {"y", 3.0, std::nullopt}};
  const std::string bars = svg::bar_chart(b);
  EXPECT_NE(bars.find("class=\"err\""), std::string::npos);
  EXPECT_NE(bars.find("2 ± 0.5"), std::string::npos);
}

TEST(Study, CellsRunOnSeveralRanks) {
  // --ranks 2: each cell is `mpqat launch -n 2 -- run ...` (Gloo on CPU); the numbers are the
  // one-rank numbers (evaluation windows are split across ranks, sums in fp64).
  const auto one = mpqat::testing::fresh_temp_dir("Study", "ranks1");
  const auto two = mpqat::testing::fresh_temp_dir("Study", "ranks2");
  const auto r = kjv_recipe({"study.allocation=[uniform]", "study.training=[rtn]", "study.budgets=[3]",
                             "study.seeds=[0]"});
  mpqat::cli::StudyOptions o;
  o.exe = MPQAT_BINARY;
  mpqat::cli::run_study(r, one.string(), o);
  o.ranks = 2;
  mpqat::cli::run_study(r, two.string(), o);
  const json a = read_json(one / "study.json"), b = read_json(two / "study.json");
  ASSERT_EQ(b["rows"].size(), 1u);
  EXPECT_NEAR(b["rows"][0]["ppl"].get<double>(), a["rows"][0]["ppl"].get<double>(), 1e-9);
  EXPECT_NEAR(b["fp"]["ppl"].get<double>(), a["fp"]["ppl"].get<double>(), 1e-9);
  EXPECT_EQ(b["rows"][0]["bytes"], a["rows"][0]["bytes"]);
  const std::string log = mpqat::testing::slurp((two / "logs" / "uniform-rtn-b3-n12-s0.log").string());
  EXPECT_NE(log.find("# mpqat launch -n 2 -- run "), std::string::npos) << log;
}

TEST(Study, ClassifierStudyReportsAccuracyAndF1) {
  // The seeds' own setting: a sequence classifier (the bundled SST-2 BERT) on GLUE SST-2 dev.
  const std::string shared = mpqat::testing::shared_dir();
  if (shared.empty() || !fs::exists(shared + "/data/classification/sst2/glue_sst2_dev.tsv"))
    GTEST_SKIP() << "needs ../shared/data/classification/sst2 (set MPQAT_SHARED_DIR)";
  const auto dir = mpqat::testing::fresh_temp_dir("Study", "cls");
  const auto r = mpqat::io::Recipe::from_file(
      kSource + "/recipes/seeds-kmeans-3groups.yaml",
      {"model.path=" + kSource + "/checkpoints/sst2-bert-tiny",
       "data.calibration.path=" + shared + "/data/classification/sst2/alps_train.tsv",
       "evaluation.classification.path=" + shared + "/data/classification/sst2/glue_sst2_dev.tsv",
       "data.calibration.samples=64", "evaluation.classification.limit=200", "study.allocation=[uniform, kmeans]",
       "study.training=[rtn]", "study.budgets=[4]"});
  mpqat::cli::StudyOptions o;
  o.exe = MPQAT_BINARY;
  mpqat::cli::run_study(r, dir.string(), o);
  const json study = read_json(dir / "study.json");
  ASSERT_EQ(study["rows"].size(), 2u);
  for (const auto& row : study["rows"]) {
    ASSERT_TRUE(row.contains("classification")) << row.dump();
    EXPECT_GT(row["classification"]["accuracy"].get<double>(), 0.5);
    EXPECT_FALSE(row.contains("ppl"));
  }
  EXPECT_TRUE(study["rows"][1]["budget_bits"].is_null()) << "the preset has no budget";
  const std::string md = mpqat::testing::slurp((dir / "study.md").string());
  EXPECT_NE(md.find("| accuracy | F1 |"), std::string::npos) << md;
  EXPECT_NE(md.find("FP (unquantized): accuracy "), std::string::npos) << md;
  EXPECT_NE(md.find("## clustering presets (no budget)"), std::string::npos) << md;
  const std::string html = mpqat::testing::slurp((dir / "study.html").string());
  EXPECT_NE(html.find("id=\"study-quality-accuracy\""), std::string::npos);
}
