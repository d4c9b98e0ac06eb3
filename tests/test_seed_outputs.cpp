// The seeds' output files (docs/seed-outputs.md): file names as the seeds' patterns, JSON keys
// layer_0..layer_{n-1} in layer order, the ranking, the evaluation report's drops and sizes,
// P/R/F1 printed as given, SeedEvalInput from a run report, atomic writes leaving no temp files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unistd.h>

#include "mpqat/eval/seed_outputs.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using namespace mpqat;
using namespace mpqat::eval;
using nlohmann::json;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("mpqat_seed_outputs_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Every file under `dir`, as names relative to it.
std::vector<std::string> files_under(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out.push_back(fs::relative(e.path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

// The value after "key: " on its line, or "" when absent.
std::string line_value(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ": ", 0) == 0) return line.substr(key.size() + 2);
  return "";
}

SeedEvalInput sample_input() {
  SeedEvalInput in;
  in.model = "BERT";
  in.data = "IMDB";
  in.method = "kmeans";
  in.groups = 3;
  in.timestamp = "20250113_142530";
  in.fp = {0.9123, 0.9154, 0.9092, 0.9123};
  in.quantized = {0.9045, 0.9072, 0.9018, 0.9045};
  in.fp_bytes = 4900000;
  in.quantized_bytes = 2000000;
  in.bits = {4, 8, 16, 8};
  in.sensitivity = {0.1, 0.2, 0.9, 0.3};
  in.sensitivity_metric = "pwcca";
  in.calibration_size = 5000;
  in.evaluation_size = 872;
  in.sampling = "stratified";
  return in;
}

}  // namespace

TEST(SeedOutputs, SensitivityFilesNamedAsTheSeedsWithLayerKeysInOrder) {
  TempDir t;
  std::vector<double> s(12);
  for (int i = 0; i < 12; ++i) s[i] = 0.01 * (i + 1);
  const std::string p = write_seed_sensitivity(t.path.string(), "BERT", "IMDB", "pwcca", s);
  EXPECT_EQ(p, (t.path / "Sensitivities" / "layer_sensitivity_BERT_IMDB_pwcca.json").string());
  EXPECT_EQ(files_under(t.path), (std::vector<std::string>{"Sensitivities/layer_sensitivity_BERT_IMDB_pwcca.json",
                                                            "Sensitivities/layer_sensitivity_BERT_IMDB_pwcca.txt"}));
  const std::string text = slurp(p);
  const json j = json::parse(text);
  ASSERT_TRUE(j.is_object());
  ASSERT_EQ(j.size(), 12u);
  for (int i = 0; i < 12; ++i) EXPECT_DOUBLE_EQ(j.at("layer_" + std::to_string(i)).get<double>(), s[i]) << i;
  // Written in layer order (layer_2 before layer_10), as Python's json.dump keeps insertion order.
  EXPECT_LT(text.find("\"layer_2\""), text.find("\"layer_10\""));
  EXPECT_LT(text.find("\"layer_9\""), text.find("\"layer_10\""));
}

TEST(SeedOutputs, SensitivityTextRanksMostSensitiveFirst) {
  const std::string t = seed_sensitivity_text("OPT-125M", "IMDB", "cka", {0.2, 0.5, 0.1, 0.5});
  EXPECT_NE(t.find("OPT-125M on IMDB, metric cka"), std::string::npos);
  EXPECT_EQ(line_value(t, "layer_1"), "0.500000");
  const auto rank = t.substr(t.find("# Ranking"));
  // 0.5 (layer_1), 0.5 (layer_3: a tie keeps layer order), 0.2 (layer_0), 0.1 (layer_2).
  const auto p1 = rank.find("layer_1"), p3 = rank.find("layer_3"), p0 = rank.find("layer_0"), p2 = rank.find("layer_2");
  EXPECT_LT(p1, p3);
  EXPECT_LT(p3, p0);
  EXPECT_LT(p0, p2);
  EXPECT_NE(rank.find("   1  layer_1"), std::string::npos);
  EXPECT_NE(rank.find("   4  layer_2"), std::string::npos);
}

TEST(SeedOutputs, NonFiniteSensitivityIsNullAndRankedLast) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const json j = json::parse(seed_sensitivity_json({0.3, nan, 0.1}));
  EXPECT_TRUE(j.at("layer_1").is_null());
  const std::string t = seed_sensitivity_text("M", "D", "pwcca", {0.3, nan, 0.1});
  EXPECT_NE(t.find("   3  layer_1"), std::string::npos);
  EXPECT_EQ(line_value(t, "layer_1"), "n/a");
}

TEST(SeedOutputs, BadNamesAndEmptyInputsAreInputErrors) {
  TempDir t;
  EXPECT_THROW(write_seed_sensitivity(t.path.string(), "BERT", "IMDB", "pwcca", {}), InputError);
  EXPECT_THROW(write_seed_sensitivity(t.path.string(), " ", "IMDB", "pwcca", {1.0}), InputError);
  auto in = sample_input();
  in.groups = 0;
  EXPECT_THROW(write_seed_evaluation(t.path.string(), in), InputError);
  in = sample_input();
  in.timestamp = "";
  EXPECT_THROW(write_seed_evaluation(t.path.string(), in), InputError);
  // Path separators never escape the folder.
  EXPECT_EQ(seed_file_part("runs/OPT 1.3B", "model"), "runs_OPT_1.3B");
  EXPECT_EQ(seed_file_part("pwcca+cka", "metric"), "pwcca+cka");
}

TEST(SeedOutputs, EvaluationFileNamedAsTheSeeds) {
  TempDir t;
  const std::string p = write_seed_evaluation(t.path.string(), sample_input());
  EXPECT_EQ(p, (t.path / "Evaluation" / "eval_BERT_IMDB_kmeans_3groups_20250113_142530.txt").string());
  EXPECT_EQ(files_under(t.path),
            (std::vector<std::string>{"Evaluation/eval_BERT_IMDB_kmeans_3groups_20250113_142530.txt"}));
}

TEST(SeedOutputs, EvaluationReportHasTheSeedsSectionsDropsAndSizes) {
  const std::string t = seed_evaluation_text(sample_input());
  for (const char* h : {"# FP32 Baseline (Before Quantization)", "# After Mixed-Precision Quantization",
                        "# Accuracy Drops", "# Compression Metrics", "# Layer-wise Bit Assignment"})
    EXPECT_NE(t.find(h), std::string::npos) << h;
  // The seed's own example (001): fp 0.9123 -> 0.9045 is a drop of 0.0078, 0.85% of FP.
  EXPECT_EQ(line_value(t, "accuracy"), "0.912300");  // the first accuracy line is FP's
  EXPECT_NE(t.find("accuracy: 0.904500"), std::string::npos);
  EXPECT_EQ(line_value(t, "accuracy_drop"), "0.007800 (0.85%)");
  EXPECT_EQ(line_value(t, "precision_drop"), "0.008200");
  EXPECT_EQ(line_value(t, "recall_drop"), "0.007400");
  EXPECT_EQ(line_value(t, "f1_drop"), "0.007800");
  EXPECT_EQ(line_value(t, "impact"), "Excellent (< 1%)");
  // P/R/F1 printed as given (no recomputation from accuracy).
  EXPECT_NE(t.find("precision: 0.915400"), std::string::npos);
  EXPECT_NE(t.find("recall: 0.901800"), std::string::npos);
  EXPECT_NE(t.find("f1_score: 0.912300"), std::string::npos);
  // 4,900,000 -> 2,000,000 bytes: 2.45x, 59.18% smaller; MB = 2^20 bytes.
  EXPECT_EQ(line_value(t, "compression_ratio"), "2.450x");
  EXPECT_EQ(line_value(t, "size_reduction_pct"), "59.18%");
  EXPECT_EQ(line_value(t, "original_size_mb"), "4.67");
  EXPECT_EQ(line_value(t, "quantized_size_mb"), "1.91");
  EXPECT_EQ(line_value(t, "original_bytes"), "4900000");
  // Layer by layer, with the sensitivity; and the bit summary, widest first.
  EXPECT_EQ(line_value(t, "layer_0"), "4 bits (sensitivity: 0.100000)");
  EXPECT_EQ(line_value(t, "layer_2"), "16 bits (sensitivity: 0.900000)");
  EXPECT_EQ(line_value(t, "16-bit"), "1 layer (25.0%)");
  EXPECT_EQ(line_value(t, "8-bit"), "2 layers (50.0%)");
  EXPECT_LT(t.find("16-bit:"), t.find("8-bit:"));
  EXPECT_EQ(line_value(t, "sensitivity_metric"), "pwcca");
  EXPECT_EQ(line_value(t, "calibration_size"), "5000");
  EXPECT_EQ(line_value(t, "sampling"), "stratified");
  EXPECT_EQ(line_value(t, "evaluation_size"), "872");
  EXPECT_EQ(line_value(t, "num_groups"), "3");
}

TEST(SeedOutputs, DropsBothWaysAndMissingValues) {
  auto in = sample_input();
  in.fp = {0.80, 0.70, 0.60, 0.65};
  in.quantized = {0.76, 0.75, 0.50, std::numeric_limits<double>::quiet_NaN()};
  in.quantized_bytes = 0;
  in.sensitivity.clear();
  const std::string t = seed_evaluation_text(in);
  EXPECT_EQ(line_value(t, "accuracy_drop"), "0.040000 (5.00%)");
  EXPECT_EQ(line_value(t, "impact"), "Large (3-5%): more bits, more groups, or QAT");
  EXPECT_EQ(line_value(t, "precision_drop"), "-0.050000");  // quantization improved precision
  EXPECT_EQ(line_value(t, "recall_drop"), "0.100000");
  EXPECT_EQ(line_value(t, "f1_drop"), "n/a");
  EXPECT_EQ(line_value(t, "compression_ratio"), "n/a");
  EXPECT_EQ(line_value(t, "quantized_size_mb"), "n/a");
  EXPECT_EQ(line_value(t, "layer_0"), "4 bits");
}

TEST(SeedOutputs, AtomicWritesLeaveNoTempFilesAndReplaceOldOnes) {
  TempDir t;
  write_seed_sensitivity(t.path.string(), "OPT", "SST2", "svcca", {1.0, 2.0});
  write_seed_sensitivity(t.path.string(), "OPT", "SST2", "svcca", {3.0, 4.0, 5.0});
  auto in = sample_input();
  write_seed_evaluation(t.path.string(), in);
  in.quantized.accuracy = 0.5;
  const std::string p = write_seed_evaluation(t.path.string(), in);
  EXPECT_EQ(files_under(t.path), (std::vector<std::string>{"Evaluation/eval_BERT_IMDB_kmeans_3groups_20250113_142530.txt",
                                                            "Sensitivities/layer_sensitivity_OPT_SST2_svcca.json",
                                                            "Sensitivities/layer_sensitivity_OPT_SST2_svcca.txt"}));
  EXPECT_EQ(json::parse(slurp(t.path / "Sensitivities" / "layer_sensitivity_OPT_SST2_svcca.json")).size(), 3u);
  EXPECT_NE(slurp(p).find("accuracy: 0.500000"), std::string::npos);
}

TEST(SeedOutputs, TimestampLooksLikeTheSeeds) {
  const std::string ts = seed_timestamp();
  ASSERT_EQ(ts.size(), 15u);
  EXPECT_EQ(ts[8], '_');
  for (std::size_t i = 0; i < ts.size(); ++i) {
    if (i == 8) continue;
    EXPECT_TRUE(std::isdigit(static_cast<unsigned char>(ts[i]))) << ts;
  }
}

TEST(SeedOutputs, FromRunReport) {
  json r;
  r["model"] = "checkpoints/sst2-bert-tiny";
  r["fp"] = {{"classification", {{"glue_sst2_dev", {{"accuracy", 0.80}, {"precision", 0.81}, {"recall", 0.79},
                                                      {"f1", 0.80}, {"n", 872}}}}},
             {"bytes", 2400000}};
  r["quantized"] = {{"classification", {{"accuracy", 0.78}, {"precision", 0.77}, {"recall", 0.76}, {"f1_score", 0.75}}},
                    {"bytes", 800000},
                    {"avg_bits", 5.25}};
  r["calibration"] = {{"samples", 5000}, {"sampling", "stratified"}};
  r["evaluation"] = {{"path", "../shared/data/classification/sst2/glue_sst2_dev.tsv"}};
  r["layers"] = json::array();
  // Block 0: uniform 4 bits; block 1: mixed 8 and 4 bits -> 8 (the largest); no block 2 entries;
  // block 3: 16 bits; a head without a block is skipped.
  auto add = [&](const std::string& n, int block, int bits, double pw, double cka) {
    r["layers"].push_back({{"name", n}, {"block", block}, {"bits", bits}, {"group_size", 128},
                           {"sensitivity", {{"pwcca", pw}, {"cka", cka}}}});
  };
  add("bert.encoder.layer.0.attention.self.query", 0, 4, 0.1, 1.0);
  add("bert.encoder.layer.0.output.dense", 0, 4, 0.3, 3.0);
  add("bert.encoder.layer.1.attention.self.query", 1, 8, 0.5, 5.0);
  add("bert.encoder.layer.1.output.dense", 1, 4, 0.7, 7.0);
  add("bert.encoder.layer.3.output.dense", 3, 16, 0.9, 9.0);
  r["layers"].push_back({{"name", "classifier"}, {"bits", 8}});

  auto in = seed_eval_from_report(r, "kmeans", 3, "20260101_000000");
  EXPECT_EQ(in.model, "sst2-bert-tiny");
  EXPECT_EQ(in.data, "SST2");
  EXPECT_EQ(in.method, "kmeans");
  EXPECT_EQ(in.groups, 3);
  EXPECT_DOUBLE_EQ(in.fp.accuracy, 0.80);
  EXPECT_DOUBLE_EQ(in.fp.precision, 0.81);
  EXPECT_DOUBLE_EQ(in.quantized.f1, 0.75);
  EXPECT_EQ(in.fp_bytes, 2400000u);
  EXPECT_EQ(in.quantized_bytes, 800000u);
  EXPECT_DOUBLE_EQ(in.avg_bits, 5.25);
  EXPECT_EQ(in.bits, (std::vector<int>{4, 8, 0, 16}));
  ASSERT_EQ(in.sensitivity.size(), 4u);
  EXPECT_EQ(in.sensitivity_metric, "cka");  // nlohmann orders keys: "cka" < "pwcca"
  EXPECT_DOUBLE_EQ(in.sensitivity[0], 2.0);
  EXPECT_DOUBLE_EQ(in.sensitivity[1], 6.0);
  EXPECT_TRUE(std::isnan(in.sensitivity[2]));
  EXPECT_EQ(in.calibration_size, 5000);
  EXPECT_EQ(in.sampling, "stratified");
  EXPECT_EQ(in.evaluation_size, 872);

  // A chosen metric, and the report's "data" name.
  r["data"] = "SST-2";
  in = seed_eval_from_report(r, "percentile", 4, "20260101_000000", "pwcca");
  EXPECT_EQ(in.data, "SST-2");
  EXPECT_EQ(in.sensitivity_metric, "pwcca");
  EXPECT_DOUBLE_EQ(in.sensitivity[1], 0.6);
  const std::string t = seed_evaluation_text(in);
  EXPECT_EQ(line_value(t, "layer_2"), "not quantized (sensitivity: n/a)");
  EXPECT_EQ(line_value(t, "accuracy_drop"), "0.020000 (2.50%)");
  EXPECT_EQ(line_value(t, "compression_ratio"), "3.000x");
}

TEST(SeedOutputs, FromRunReportNeedsClassificationOnBothSides) {
  json r{{"model", "m"}, {"fp", {{"classification", {{"accuracy", 0.9}}}}}, {"quantized", json::object()}};
  try {
    seed_eval_from_report(r, "kmeans", 3, "20260101_000000");
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("quantized.classification"), std::string::npos) << e.what();
  }
  EXPECT_THROW(seed_eval_from_report(json{{"fp", json::object()}}, "kmeans", 3, "t"), InputError);
  // Without sizes, data or layers the input is still usable.
  r["quantized"] = {{"classification", {{"accuracy", 0.85}}}};
  const auto in = seed_eval_from_report(r, "kmeans", 3, "20260101_000000");
  EXPECT_EQ(in.data, "DATA");
  EXPECT_TRUE(in.bits.empty());
  EXPECT_TRUE(std::isnan(in.fp.precision));
  EXPECT_EQ(line_value(seed_evaluation_text(in), "precision"), "n/a");
}
