// The command-line contract: subcommands, --help with defaults, --version, exit codes.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "run_command.h"

namespace fs = std::filesystem;
using mpqat::testing::run_mpqat;

namespace {

fs::path temp_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& s) {
  std::ofstream(p) << s;
}

}  // namespace

TEST(Cli, VersionAndHelp) {
  auto r = run_mpqat("--version");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("mpqat "), std::string::npos) << r.out;
  r = run_mpqat("--help");
  EXPECT_EQ(r.code, 0);
  for (const char* cmd : {"run", "sensitivity", "allocate", "train", "quantize", "eval", "inspect",
                          "convert", "similarity", "wizard", "launch", "study"}) {
    EXPECT_NE(r.out.find(std::string(cmd)), std::string::npos) << "--help lacks " << cmd;
  }
}

TEST(Cli, SubcommandHelpShowsDefaults) {
  auto r = run_mpqat("sensitivity --help");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("--samples"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("128"), std::string::npos) << "default of --samples not shown:\n" << r.out;
  r = run_mpqat("launch --help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("--nproc"), std::string::npos) << r.out;
}

TEST(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run_mpqat("").code, 2);                    // no subcommand
  EXPECT_EQ(run_mpqat("frobnicate").code, 2);          // unknown subcommand
  EXPECT_EQ(run_mpqat("run --no-such-flag").code, 2);  // unknown option
  const auto r = run_mpqat("--log-level loud run --dry-run x.yaml");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--log-level 'loud'"), std::string::npos) << r.err;
}

TEST(Cli, WizardWithoutAnswersExitsTwoNamingTheQuestion) {
  const auto r = run_mpqat("wizard --out /tmp/x.yaml");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("input ended at question"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "one line expected:\n" << r.err;
}

TEST(Cli, RunDryRunPrintsResolvedRecipe) {
  const fs::path d = temp_dir("mpqat_cli_run");
  const std::string m = std::string(MPQAT_SOURCE_DIR) + "/checkpoints/kjv-llama";
  write(d / "r.yaml", "model: {path: " + m + "}\ndata: {calibration: {path: " + m +
                          "/calib.txt}}\nallocation: {budget: {avg_bits: 3}}\n");
  const auto r = run_mpqat("run " + (d / "r.yaml").string() + " training.epochs=7 --dry-run");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("epochs: 7"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("lr_quant: 0.0001"), std::string::npos) << r.out;  // a default
  fs::remove_all(d);
}

TEST(Cli, MisspeltRecipeKeyFailsWithSuggestion) {
  const fs::path d = temp_dir("mpqat_cli_typo");
  write(d / "r.yaml", "model: {path: /m}\nallocation: {budget: {avg_bits: 3}}\ntraining:\n  lr_wieghts: 1e-5\n");
  const auto r = run_mpqat("run " + (d / "r.yaml").string() + " --dry-run");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown key 'lr_wieghts'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("did you mean 'training.lr_weights'"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  fs::remove_all(d);
}

TEST(Cli, RunWithMissingModelFolderFailsBeforeWritingAnything) {
  const fs::path d = temp_dir("mpqat_cli_out");
  write(d / "r.yaml", "model: {path: /nonexistent/model}\nallocation: {budget: {avg_bits: 3}}\n");
  const auto r = run_mpqat("run " + (d / "r.yaml").string() + " output.dir=" + (d / "out").string());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_FALSE(fs::exists(d / "out"));
  fs::remove_all(d);
}

TEST(Cli, MissingRecipeFile) {
  const auto r = run_mpqat("run /nonexistent/recipe.yaml --dry-run");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("/nonexistent/recipe.yaml"), std::string::npos) << r.err;
}

TEST(Cli, PrintSchemaMatchesDocs) {
  const auto r = run_mpqat("run --print-schema");
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string doc = mpqat::testing::slurp(std::string(MPQAT_SOURCE_DIR) + "/docs/recipes.md");
  EXPECT_NE(doc.find(r.out), std::string::npos)
      << "docs/recipes.md is out of date: paste the output of `mpqat run --print-schema`";
}
