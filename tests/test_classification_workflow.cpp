// [M8] The seeds' classification workflow end to end: a tiny BERT and a tiny OPT sentiment
// classifier, trained in the test with `mpqat fit classifier`, go through `mpqat run`
// (PWCCA+CKA sensitivity -> K-means groups -> RTN -> reload -> eval). The report carries every
// field, the seed-compatible files are written, and P/R/F1 match a hand count.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "mpqat/eval/classification.h"
#include "mpqat/model/model_input.h"
#include "report_checks.h"
#include "run_command.h"
#include "sentiment_fixture.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path make_workdir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("clswf", tag); }

// Writes vocab.txt, config.json, train.tsv (240 rows) and dev.tsv (120 rows) and trains.
fs::path train_classifier(const fs::path& d, const json& cfg) {
  using namespace mpqat::testing;
  {
    std::ofstream v(d / "vocab.txt");
    for (const auto& w : sentiment_vocab()) v << w << "\n";
    std::ofstream(d / "config.json") << cfg.dump();
    std::vector<std::string> texts;
    std::vector<int64_t> labels;
    sentiment_data(360, 5, texts, labels);
    std::ofstream tr(d / "train.tsv"), va(d / "dev.tsv");
    tr << "sentence\tlabel\n";
    va << "sentence\tlabel\n";
    for (size_t i = 0; i < texts.size(); ++i) (i < 240 ? tr : va) << texts[i] << "\t" << labels[i] << "\n";
  }
  const std::string s = d.string();
  const auto r = run_mpqat("fit classifier --config " + s + "/config.json --tokenizer " + s + "/vocab.txt --train " + s +
                           "/train.tsv --out " + s + "/model --epochs 6 --lr 3e-3 --batch-size 16 --warmup 10 --log-every 0");
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  return d / "model";
}

void run_workflow(const std::string& tag, const json& cfg) {
  const auto d = make_workdir(tag);
  const auto model = train_classifier(d, cfg);
  const std::string s = d.string();
  std::ofstream(d / "recipe.yaml") << "model: {path: " << model.string() << "}\n"
                                   << "data:\n  calibration: {path: " << s << "/train.tsv, samples: 64, seqlen: 32, sampling: stratified, text_field: sentence}\n"
                                   << "sensitivity: {metrics: [pwcca+cka, pwcca, cka, svcca, fisher], unit: block, group_size: 32}\n"
                                   << "allocation: {method: kmeans, unit: block, groups: 2, preset: [8, 4], group_sizes: [32]}\n"
                                   << "training: {method: rtn}\n"
                                   << "evaluation:\n  classification: {path: " << s << "/dev.tsv}\n"
                                   << "output: {dir: " << s << "/run}\n";
  const auto r = mpqat::testing::run_mpqat("run " + s + "/recipe.yaml");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const json rep = json::parse(mpqat::testing::slurp(s + "/run/report.json"));
  mpqat::testing::expect_report_round_trips(s + "/run");
  for (const char* side : {"fp", "quantized"}) {
    ASSERT_TRUE(rep[side].contains("classification")) << side;
    for (const char* k : {"accuracy", "precision", "recall", "f1", "confusion"})
      EXPECT_TRUE(rep[side]["classification"].contains(k)) << side << " " << k;
    EXPECT_GT(rep[side]["classification"]["accuracy"].get<double>(), 0.85) << side;  // separable data
  }
  EXPECT_LT(rep["quantized"]["bytes"].get<uint64_t>(), rep["fp"]["bytes"].get<uint64_t>());
  EXPECT_GT(rep["compression"].get<double>(), 1.0);
  ASSERT_EQ(rep["layers"].size() % 2, 0u);
  std::set<int> bits;
  for (const auto& l : rep["layers"]) {
    bits.insert(l["bits"].get<int>());
    for (const char* m : {"pwcca+cka", "pwcca", "cka", "svcca", "fisher"}) EXPECT_TRUE(l["sensitivity"].contains(m)) << m;
  }
  EXPECT_EQ(bits, (std::set<int>{4, 8}));  // two blocks, two groups: the preset's widths
  // Seed-compatible files.
  int sens_files = 0, eval_files = 0;
  for (const auto& e : fs::recursive_directory_iterator(d / "run")) {
    const auto name = e.path().filename().string();
    if (name.rfind("layer_sensitivity_model_", 0) == 0 && e.path().extension() == ".json") {
      ++sens_files;
      const auto j = json::parse(mpqat::testing::slurp(e.path().string()));
      EXPECT_TRUE(j.contains("layer_0") && j.contains("layer_1")) << j.dump();
    }
    if (name.rfind("eval_model_", 0) == 0 && name.find("_kmeans_2groups_") != std::string::npos) {
      ++eval_files;
      const auto t = mpqat::testing::slurp(e.path().string());
      for (const char* k : {"accuracy", "precision", "recall", "f1", "compression", "layer_0", "layer_1"})
        EXPECT_NE(t.find(k), std::string::npos) << k;
    }
  }
  EXPECT_EQ(sens_files, 1);
  EXPECT_EQ(eval_files, 1);
  // QAT on the classifier: Block-AP on padded, masked calibration examples.
  const auto q = mpqat::testing::run_mpqat("run " + s + "/recipe.yaml training.method=block-ap training.epochs=2 "
                                           "allocation.sgra.enabled=false output.dir=" + s + "/run_qat");
  ASSERT_EQ(q.code, 0) << q.out << q.err;
  const json qrep = json::parse(mpqat::testing::slurp(s + "/run_qat/report.json"));
  mpqat::testing::expect_report_round_trips(s + "/run_qat");
  ASSERT_EQ(qrep["blocks"].size(), 2u);
  // Block-AP keeps a block's best state (never worse than RTN, by construction), so that alone
  // proves nothing: training must have lowered the validation error of at least one block by 1%.
  int improved = 0;
  for (const auto& b : qrep["blocks"]) {
    EXPECT_LE(b["end_val_mse"].get<double>(), b["start_val_mse"].get<double>() * (1 + 1e-9)) << b.dump();
    if (b["end_val_mse"].get<double>() < 0.99 * b["start_val_mse"].get<double>()) ++improved;
  }
  EXPECT_GE(improved, 1) << qrep["blocks"].dump();
  EXPECT_GT(qrep["quantized"]["classification"]["accuracy"].get<double>(), 0.85);
  fs::remove_all(d);
}

}  // namespace

TEST(ClassificationWorkflow, TinyBertThroughSensitivityClusteringRtnEval) {
  run_workflow("bert", mpqat::testing::bert_json(static_cast<int64_t>(mpqat::testing::sentiment_vocab().size())));
}

TEST(ClassificationWorkflow, TinyOptThroughSensitivityClusteringRtnEval) {
  run_workflow("opt", mpqat::testing::opt_json(true, static_cast<int64_t>(mpqat::testing::sentiment_vocab().size())));
}

// The one padded-batch builder (fit, the pipeline's labelled calibration, classification).
TEST(ClassificationWorkflow, PadRightPadsAfterEachSequenceAndMasksTheTokens) {
  const auto in = mpqat::model::pad_right({{5, 6, 7}, {}, {8}}, 9);
  ASSERT_EQ(in.ids.sizes(), (std::vector<int64_t>{3, 3}));
  const std::vector<int64_t> ids = {5, 6, 7, 9, 9, 9, 8, 9, 9}, mask = {1, 1, 1, 0, 0, 0, 1, 0, 0};
  for (int64_t k = 0; k < 9; ++k) {
    EXPECT_EQ(in.ids.view(-1)[k].item<int64_t>(), ids[static_cast<size_t>(k)]) << k;
    EXPECT_EQ(in.mask.view(-1)[k].item<int64_t>(), mask[static_cast<size_t>(k)]) << k;
  }
  EXPECT_EQ(mpqat::model::pad_right({}, 0).ids.sizes(), (std::vector<int64_t>{0, 1}));  // T is at least 1
}

TEST(ClassificationWorkflow, PrecisionRecallF1MatchAHandCount) {
  // 15 examples: true 0 -> predicted 0 x5, 1 x2; true 1 -> predicted 0 x1, 1 x7.
  const auto m = mpqat::eval::metrics_from_confusion({{5, 2}, {1, 7}});
  EXPECT_DOUBLE_EQ(m.accuracy, 12.0 / 15.0);
  ASSERT_TRUE(m.binary);
  EXPECT_DOUBLE_EQ(m.binary_precision, 7.0 / 9.0);  // tp / (tp + fp)
  EXPECT_DOUBLE_EQ(m.binary_recall, 7.0 / 8.0);     // tp / (tp + fn)
  EXPECT_NEAR(m.binary_f1, 14.0 / 17.0, 1e-12);     // 2 tp / (2 tp + fp + fn)
  EXPECT_NEAR(m.macro_precision, (5.0 / 6.0 + 7.0 / 9.0) / 2, 1e-12);
  EXPECT_NEAR(m.macro_recall, (5.0 / 7.0 + 7.0 / 8.0) / 2, 1e-12);
}
