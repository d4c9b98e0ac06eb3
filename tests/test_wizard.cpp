// `mpqat wizard`: the question-and-answer session driven by scripted answers (one per line),
// the recipe it writes (read back with the recipe loader), re-asking on bad answers, early EOF.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "mpqat/cli/wizard.h"
#include "mpqat/io/recipe.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"
#include "run_command.h"

namespace fs = std::filesystem;
using mpqat::InputError;
using mpqat::cli::run_wizard;
using mpqat::cli::WizardIO;
using mpqat::cli::WizardOptions;
using mpqat::cli::WizardResult;
using mpqat::io::Recipe;

namespace {

// A model folder with a config.json, a 10-row train split and a 6-row dev split.
struct Fixture {
  fs::path dir, model, train, dev, out;
  explicit Fixture(const std::string& tag) {
    dir = fs::temp_directory_path() / ("mpqat_wizard_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    model = dir / "tiny-bert";
    fs::create_directories(model);
    std::ofstream(model / "config.json")
        << R"({"architectures": ["BertForSequenceClassification"], "model_type": "bert",
               "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
               "num_attention_heads": 4, "vocab_size": 40, "max_position_embeddings": 64,
               "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
               "pad_token_id": 0, "num_labels": 2})";
    train = dir / "train.tsv";
    dev = dir / "dev.tsv";
    std::ofstream t(train);
    t << "sentence\tlabel\n";
    for (int i = 0; i < 10; ++i) t << "example " << i << "\t" << i % 2 << "\n";
    std::ofstream d(dev);
    d << "sentence\tlabel\n";
    for (int i = 0; i < 6; ++i) d << "test " << i << "\t" << i % 2 << "\n";
    out = dir / "recipes" / "wizard.yaml";
  }
  ~Fixture() { fs::remove_all(dir); }

  WizardOptions options() const {
    WizardOptions o;
    o.out_path = out.string();
    o.model_default = model.string();
    o.calibration_default = train.string();
    o.evaluation_default = dev.string();
    return o;
  }
};

struct Session {
  WizardResult result;
  std::string transcript;
};

Session drive(const std::string& answers, const WizardOptions& o) {
  std::istringstream in(answers);
  std::ostringstream out;
  WizardIO io{in, out, false};
  Session s;
  try {
    s.result = run_wizard(io, o);
  } catch (...) {
    ADD_FAILURE() << "wizard threw; transcript:\n" << out.str();
    throw;
  }
  s.transcript = out.str();
  return s;
}

std::string lines(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& l : v) s += l + "\n";
  return s;
}

bool contains(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

}  // namespace

TEST(Wizard, AllDefaultsWriteTheSeedsRecipe) {
  Fixture f("defaults");
  // Phase 3 asks 13 questions; every answer is Enter.
  const Session s = drive(std::string(13, '\n'), f.options());
  EXPECT_FALSE(s.result.run_requested);
  ASSERT_TRUE(fs::is_regular_file(f.out)) << s.transcript;
  EXPECT_EQ(mpqat::util::read_file(f.out.string()), s.result.yaml);
  EXPECT_TRUE(contains(s.transcript, "run " + f.out.string())) << s.transcript;
  // The sizes were capped by the files' row counts, with a warning.
  const std::string& t = s.transcript;
  EXPECT_TRUE(contains(t, "holds 10 examples: using 10 instead of 5000")) << t;
  EXPECT_TRUE(contains(t, "holds 6 examples: using 6 instead of 5000")) << t;
  EXPECT_TRUE(contains(t, "found BertForSequenceClassification: 2 layers")) << t;

  const Recipe r = Recipe::from_file(f.out.string());
  EXPECT_EQ(r.str("model.path"), f.model.string());
  EXPECT_EQ(r.str("data.calibration.path"), f.train.string());
  EXPECT_EQ(r.str("data.calibration.text_field"), "sentence");
  EXPECT_EQ(r.str("data.calibration.label_field"), "label");
  EXPECT_EQ(r.integer("data.calibration.samples"), 10);
  EXPECT_EQ(r.str("data.calibration.sampling"), "stratified");
  EXPECT_EQ(r.strings("sensitivity.metrics"), (std::vector<std::string>{"pwcca", "cka"}));
  EXPECT_EQ(r.str("sensitivity.unit"), "block");
  EXPECT_EQ(r.str("evaluation.classification.path"), f.dev.string());
  EXPECT_EQ(r.integer("evaluation.classification.limit"), 6);
  EXPECT_EQ(r.str("allocation.method"), "kmeans");
  EXPECT_EQ(r.str("allocation.unit"), "block");
  EXPECT_EQ(r.integer("allocation.groups"), 3);
  EXPECT_EQ(r.integers("allocation.preset"), (std::vector<int64_t>{16, 8, 4}));
  EXPECT_EQ(r.str("training.method"), "rtn");
  EXPECT_EQ(r.str("output.dir"), "runs/{name}-{timestamp}");
  EXPECT_EQ(r.str("output.name"), "tiny-bert");
  EXPECT_FALSE(r.is_set("sensitivity.file"));
}

TEST(Wizard, BadAnswersAreAskedAgainWithTheAllowedValues) {
  Fixture f("bad");
  const std::string answers = lines({
      (f.dir / "nowhere").string(),  // not a folder
      f.dir.string(),                // a folder without config.json
      "",                            // the default model folder
      "7", "both",                   // phase: out of range, then by name
      "", "",                        // calibration file and size
      "sometimes", "2",              // sampling: random
      "", "",                        // metrics, evaluation file
      "", "",                        // evaluation size, grouping
      "5", "4",                      // groups
      "",                            // 4-group preset: [32, 16, 8, 4]
      "",                            // output folder
      "maybe", "n"});
  const Session s = drive(answers, f.options());
  const std::string& t = s.transcript;
  EXPECT_TRUE(contains(t, "is not a folder; give a model folder that holds config.json")) << t;
  EXPECT_TRUE(contains(t, "has no config.json")) << t;
  EXPECT_TRUE(contains(t, "'7' is not a choice here; allowed: 1, 2, 3 "
                          "(or sensitivity, quantize, both)")) << t;
  EXPECT_TRUE(contains(t, "'sometimes' is not a choice here; allowed: 1, 2 "
                          "(or stratified, random)")) << t;
  EXPECT_TRUE(contains(t, "'5' is not allowed; answer 3 or 4")) << t;
  EXPECT_TRUE(contains(t, "'maybe' is not allowed; answer y or n")) << t;
  const Recipe r = Recipe::from_file(f.out.string());
  EXPECT_EQ(r.str("data.calibration.sampling"), "random");
  EXPECT_EQ(r.integer("allocation.groups"), 4);
  EXPECT_EQ(r.integers("allocation.preset"), (std::vector<int64_t>{32, 16, 8, 4}));
}

TEST(Wizard, InputEndingEarlyNamesTheQuestion) {
  Fixture f("eof");
  std::istringstream in("\n\n");  // model folder, phase; then nothing
  std::ostringstream out;
  WizardIO io{in, out, false};
  try {
    run_wizard(io, f.options());
    FAIL() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "wizard: input ended at question 'calibration data'");
  }
  EXPECT_FALSE(fs::exists(f.out)) << "nothing is written before the last question";
  // Even the last question needs its answer.
  std::istringstream in2(std::string(12, '\n'));
  WizardIO io2{in2, out, false};
  try {
    run_wizard(io2, f.options());
    FAIL() << "no InputError";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), "wizard: input ended at question 'run it now?'");
  }
}

TEST(Wizard, CustomPresetLandsInAllocationPreset) {
  Fixture f("custom");
  // Typed straight into the preset question.
  std::string answers =
      lines({"", "", "", "", "", "", "", "", "percentile", "3", "8,4,2", "", "y"});
  Session s = drive(answers, f.options());
  EXPECT_TRUE(s.result.run_requested);
  Recipe r = Recipe::from_file(f.out.string());
  EXPECT_EQ(r.integers("allocation.preset"), (std::vector<int64_t>{8, 4, 2}));
  EXPECT_EQ(r.str("allocation.method"), "percentile");

  // Through the "custom" entry: a bit-width outside the menu and a wrong count are refused.
  answers = lines({"", "", "", "", "", "", "", "", "3", "", "custom", "24,12,6", "16,8",
                   "16 8 3", "", ""});
  s = drive(answers, f.options());
  EXPECT_TRUE(contains(s.transcript, "'24' is not an allowed bit-width; give 3 bit-widths, most "
                                     "sensitive group first, each one of 2, 3, 4, 5, 6, 8, 16, 32"))
      << s.transcript;
  EXPECT_TRUE(contains(s.transcript, "'16,8' has 2 bit-widths for 3 groups")) << s.transcript;
  r = Recipe::from_file(f.out.string());
  EXPECT_EQ(r.integers("allocation.preset"), (std::vector<int64_t>{16, 8, 3}));
  EXPECT_EQ(r.str("allocation.method"), "hierarchical");
}

TEST(Wizard, MetricsSizesAndSvccaTopK) {
  Fixture f("metrics");
  const std::string answers = lines({"", "", "", "custom", "0", "7", "", "5", "12", "", "4",
                                     "", "", "", "out dir", "no"});
  // custom calibration size: 0 refused, 7 taken; metrics 5 = all three, top-k 12;
  // evaluation size 4 = all.
  const Session s = drive(answers, f.options());
  EXPECT_TRUE(contains(s.transcript, "'0' is not a whole number >= 1")) << s.transcript;
  const Recipe r = Recipe::from_file(f.out.string());
  EXPECT_EQ(r.integer("data.calibration.samples"), 7);
  EXPECT_EQ(r.strings("sensitivity.metrics"), (std::vector<std::string>{"pwcca", "svcca", "cka"}));
  EXPECT_EQ(r.integer("sensitivity.svcca_k"), 12);
  EXPECT_EQ(r.integer("evaluation.classification.limit"), 0);
  EXPECT_EQ(r.str("output.dir"), "out dir");
  EXPECT_EQ(mpqat::cli::shell_quote("my recipe's.yaml"), "'my recipe'\\''s.yaml'");
  EXPECT_EQ(mpqat::cli::shell_quote("runs/r.yaml"), "runs/r.yaml");
}

TEST(Wizard, PhaseOneAndPhaseTwoAskTheirOwnQuestions) {
  Fixture f("phases");
  // Phase 1: model, phase, calibration x4 (metrics 6 = Fisher), output, run.
  Session s = drive(lines({"", "1", "", "", "", "6", "", ""}), f.options());
  Recipe r = Recipe::from_file(f.out.string());
  EXPECT_EQ(r.strings("sensitivity.metrics"), (std::vector<std::string>{"fisher"}));
  EXPECT_EQ(r.str("evaluation.classification.path"), "");
  EXPECT_FALSE(contains(s.transcript, "-- grouping")) << s.transcript;
  EXPECT_EQ(r.str("output.stop_after"), "sensitivity");

  // Phase 2: the sensitivity file of phase 1 instead of calibration data.
  const fs::path sens = f.dir / "sensitivity.json";
  std::ofstream(sens) << "{}";
  s = drive(lines({"", "quantize", (f.dir / "missing.json").string(), sens.string(), "", "", "",
                   "", "", "", ""}),
            f.options());
  EXPECT_TRUE(contains(s.transcript, "is not a file; give the sensitivity.json of phase 1"))
      << s.transcript;
  r = Recipe::from_file(f.out.string());
  EXPECT_EQ(r.str("sensitivity.file"), sens.string());
  EXPECT_EQ(r.str("data.calibration.path"), "");
  EXPECT_EQ(r.str("evaluation.classification.path"), f.dev.string());
  EXPECT_FALSE(contains(s.transcript, "-- calibration")) << s.transcript;
}

TEST(Wizard, EvaluationFileMustDifferFromCalibration) {
  Fixture f("leak");
  const Session s = drive(lines({"", "", "", "", "", "", f.train.string(), "", "", "", "", "",
                                 "", "", ""}),
                          f.options());
  EXPECT_TRUE(contains(s.transcript, "is the calibration file too")) << s.transcript;
  EXPECT_EQ(Recipe::from_file(f.out.string()).str("evaluation.classification.path"),
            f.dev.string());
}

TEST(Wizard, InspectDataFileCountsExamples) {
  Fixture f("inspect");
  auto info = mpqat::cli::inspect_data_file(f.train.string());
  EXPECT_EQ(info.format, "tsv");
  EXPECT_EQ(info.rows, 10);
  EXPECT_EQ(info.columns, (std::vector<std::string>{"sentence", "label"}));
  std::ofstream(f.dir / "d.jsonl") << "{\"text\": \"a\", \"label\": 1}\n\n"
                                      "{\"text\": \"b\", \"label\": 0}\n";
  info = mpqat::cli::inspect_data_file((f.dir / "d.jsonl").string());
  EXPECT_EQ(info.rows, 2);
  EXPECT_EQ(info.columns, (std::vector<std::string>{"label", "text"}));
  info = mpqat::cli::inspect_data_file((f.dir / "nothing.tsv").string());
  EXPECT_FALSE(info.readable);
}

// The binary end to end: answers piped in (no TTY), the recipe written, exit 0; and EOF on an
// empty stdin is exit 2 with one line naming the question.
TEST(Wizard, CliReadsAnswersFromAPipe) {
  Fixture f("cli");
  const auto eof = mpqat::testing::run_mpqat("wizard --out " + f.out.string());
  EXPECT_EQ(eof.code, 2) << eof.err;
  EXPECT_EQ(eof.err, "mpqat: error: wizard: input ended at question 'model folder'\n");

  const fs::path answers = f.dir / "answers.txt";
  std::ofstream(answers) << lines({f.model.string(), "", f.train.string(), "", "", "",
                                   f.dev.string(), "", "", "", "", "", "n"});
  const std::string cmd = std::string(MPQAT_BINARY) + " wizard --out " + f.out.string() + " <" +
                          answers.string() + " >" + (f.dir / "out.txt").string() + " 2>&1";
  const int status = std::system(cmd.c_str());
  const std::string transcript = mpqat::testing::slurp((f.dir / "out.txt").string());
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << transcript;
  EXPECT_TRUE(contains(transcript, "mpqat run " + f.out.string())) << transcript;
  EXPECT_EQ(Recipe::from_file(f.out.string()).str("model.path"), f.model.string());
}
