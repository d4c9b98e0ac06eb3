// `mpqat run` end to end on the bundled model (checkpoints/kjv-llama, in the repository): every
// stage runs, the checkpoint is reloaded from disk and evaluated, the report holds the contract
// fields, the budget is met, and a re-run reuses finished stages.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

#include "mpqat/io/gguf.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "report_checks.h"
#include "run_command.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {
const std::string kSource = MPQAT_SOURCE_DIR;
}

TEST(RunPipeline, QuickstartRecipeOnTheBundledModel) {
  const fs::path out = fs::temp_directory_path() / ("mpqat_run_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const std::string base = "run " + kSource + "/recipes/quickstart.yaml model.path=" + kSource +
                           "/checkpoints/kjv-llama data.calibration.path=" + kSource +
                           "/checkpoints/kjv-llama/calib.txt 'evaluation.perplexity=[" + kSource +
                           "/checkpoints/kjv-llama/heldout.txt]' data.calibration.samples=12 training.epochs=1 "
                           "allocation.sgra.enabled=false 'output.formats=[safetensors, gguf]' output.dir=" + out.string();
  auto r = mpqat::testing::run_mpqat(base);
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  for (const char* f : {"recipe.yaml", "sensitivity.json", "sensitivity.txt", "bitplan.json", "train_log.jsonl",
                        "report.json", "report.txt", "report.html", "checkpoint/config.json", "stages.json"})
    EXPECT_TRUE(fs::exists(out / f)) << f;
  const json rep = json::parse(mpqat::testing::slurp((out / "report.json").string()));
  mpqat::testing::expect_report_round_trips(out);
  const double fp_ppl = rep["fp"]["ppl"].get<double>();
  const double q_ppl = rep["quantized"]["ppl"].get<double>();
  EXPECT_GT(fp_ppl, 1.0);
  EXPECT_GT(q_ppl, fp_ppl * 0.95);  // quantization does not make it much better
  EXPECT_LT(q_ppl, fp_ppl * 3.0);   // nor wreck it at ~3 bits
  // The quantized numbers describe the checkpoint on disk.
  const auto insp = mpqat::quant::inspect_checkpoint((out / "checkpoint").string());
  EXPECT_EQ(rep["quantized"]["bytes"].get<uint64_t>(), insp.total_bytes);
  EXPECT_DOUBLE_EQ(rep["quantized"]["avg_bits"].get<double>(), insp.avg_bits);
  EXPECT_LT(rep["quantized"]["bytes"].get<uint64_t>(), rep["fp"]["bytes"].get<uint64_t>());
  ASSERT_TRUE(rep.contains("budget"));
  EXPECT_TRUE(rep["budget"]["met"].get<bool>());
  EXPECT_LE(rep["budget"]["actual"].get<uint64_t>(), rep["budget"]["value"].get<uint64_t>());
  EXPECT_EQ(rep["layers"].size(), 28u);  // 4 blocks x 7 linears
  // output.formats gguf: model.gguf beside the checkpoint, its size in the report.
  ASSERT_TRUE(rep.contains("exports")) << rep.dump();
  EXPECT_EQ(rep["exports"]["gguf"]["bytes"].get<uint64_t>(), fs::file_size(out / "model.gguf"));
  EXPECT_GE(mpqat::io::read_gguf_header((out / "model.gguf").string()).tensors.size(), 2u + 4u * 9u);  // + output if untied
  EXPECT_EQ(rep["blocks"].size(), 4u);
  for (const auto& b : rep["blocks"]) EXPECT_LT(b["end_val_mse"].get<double>(), b["start_val_mse"].get<double>());
  const std::string html = mpqat::testing::slurp((out / "report.html").string());
  EXPECT_NE(html.find("chart-bits"), std::string::npos);
  EXPECT_NE(html.find("chart-loss"), std::string::npos);
  // `mpqat eval` on the written checkpoint gives the report's number: one evaluation serves both.
  {
    const auto e = mpqat::testing::run_mpqat("eval " + (out / "checkpoint").string() + " --ppl " + kSource +
                                             "/checkpoints/kjv-llama/heldout.txt --context 256 --json");
    ASSERT_EQ(e.code, 0) << e.err;
    EXPECT_DOUBLE_EQ(json::parse(e.out)["ppl"].get<double>(), q_ppl);
    const auto f = mpqat::testing::run_mpqat("eval " + kSource + "/checkpoints/kjv-llama --ppl " + kSource +
                                             "/checkpoints/kjv-llama/heldout.txt --context 256 --json");
    ASSERT_EQ(f.code, 0) << f.err;
    EXPECT_DOUBLE_EQ(json::parse(f.out)["ppl"].get<double>(), fp_ppl);
  }

  // Re-run with a changed evaluation setting: only the evaluations run again.
  r = mpqat::testing::run_mpqat(base + " evaluation.context=128");
  ASSERT_EQ(r.code, 0) << r.err;
  const json rep2 = json::parse(mpqat::testing::slurp((out / "report.json").string()));
  std::map<std::string, bool> reused;
  for (const auto& s : rep2["stages"]) reused[s["name"].get<std::string>()] = s["reused"].get<bool>();
  EXPECT_FALSE(reused.at("fp_eval"));
  EXPECT_TRUE(reused.at("sensitivity"));
  EXPECT_TRUE(reused.at("allocation"));
  EXPECT_TRUE(reused.at("quantize"));
  EXPECT_FALSE(reused.at("reload_eval"));

  // A stage's output changed by someone else since it was written (here: bitplan.json rewritten,
  // as a second run on the folder once did): that stage is computed again, not trusted.
  const json st = json::parse(mpqat::testing::slurp((out / "stages.json").string()));
  ASSERT_TRUE(st["allocation"].contains("outputs")) << st.dump();
  {
    const json plan = json::parse(mpqat::testing::slurp((out / "bitplan.json").string()));
    std::ofstream(out / "bitplan.json") << plan.dump() << "\n";  // other bytes, same plan
  }
  r = mpqat::testing::run_mpqat(base + " evaluation.context=128");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.err.find("stage allocation: '" + (out / "bitplan.json").string() + "' changed since this stage wrote it"),
            std::string::npos)
      << r.err;
  const json rep3 = json::parse(mpqat::testing::slurp((out / "report.json").string()));
  reused.clear();
  for (const auto& s : rep3["stages"]) reused[s["name"].get<std::string>()] = s["reused"].get<bool>();
  EXPECT_TRUE(reused.at("sensitivity"));
  EXPECT_FALSE(reused.at("allocation"));

  // An infeasible budget: one clear line, exit 2.
  r = mpqat::testing::run_mpqat(base + " allocation.budget.avg_bits=0.5 output.dir=" + (out / "x").string());
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("budget"), std::string::npos) << r.err;
  fs::remove_all(out);
}

TEST(RunPipeline, StopAfterSensitivityWritesOnlyThatStage) {
  const fs::path out = fs::temp_directory_path() / ("mpqat_run_stop_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const auto r = mpqat::testing::run_mpqat("run " + kSource + "/recipes/quickstart.yaml model.path=" + kSource +
                                           "/checkpoints/kjv-llama data.calibration.path=" + kSource +
                                           "/checkpoints/kjv-llama/calib.txt 'evaluation.perplexity=[" + kSource +
                                           "/checkpoints/kjv-llama/heldout.txt]' data.calibration.samples=8 "
                                           "evaluation.fp_baseline=false output.stop_after=sensitivity output.dir=" +
                                           out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(out / "sensitivity.json"));
  EXPECT_FALSE(fs::exists(out / "bitplan.json"));
  EXPECT_FALSE(fs::exists(out / "checkpoint"));
  EXPECT_NE(r.out.find("stopped after the sensitivity stage"), std::string::npos) << r.out;
  fs::remove_all(out);
}

TEST(RunPipeline, RefusesAForeignNonEmptyOutputFolder) {
  const fs::path out = fs::temp_directory_path() / ("mpqat_run_foreign_" + std::to_string(::getpid()));
  fs::create_directories(out);
  std::ofstream(out / "precious.txt") << "keep me";
  const auto r = mpqat::testing::run_mpqat("run " + kSource + "/recipes/quickstart.yaml model.path=" + kSource +
                                           "/checkpoints/kjv-llama output.dir=" + out.string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("not an mpqat run"), std::string::npos) << r.err;
  EXPECT_EQ(mpqat::testing::slurp((out / "precious.txt").string()), "keep me");
  fs::remove_all(out);
}

// One run per folder: while another process holds the run folder, `mpqat run` on it exits 2 at
// once, naming the folder and the holder's pid, and writes nothing there. An output.dir that is
// a file is exit 2 too.
TEST(RunPipeline, ABusyRunFolderIsRefusedAtOnce) {
  const fs::path out = fs::temp_directory_path() / ("mpqat_run_busy_" + std::to_string(::getpid()));
  fs::remove_all(out);
  const std::string cmd = "run " + kSource + "/recipes/quickstart.yaml model.path=" + kSource +
                          "/checkpoints/kjv-llama data.calibration.path=" + kSource +
                          "/checkpoints/kjv-llama/calib.txt output.dir=" + out.string();
  {
    mpqat::util::FolderLock held(out.string(), "run folder");  // as a running `mpqat run` holds it
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = mpqat::testing::run_mpqat(cmd);
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 30.0);
    EXPECT_NE(r.err.find("in use by another mpqat process (pid " + std::to_string(::getpid()) + ")"),
              std::string::npos)
        << r.err;
    EXPECT_FALSE(fs::exists(out / "recipe.yaml"));
    // A second lock in this process is refused the same way (flock is per open file).
    EXPECT_THROW(mpqat::util::FolderLock(out.string(), "run folder"), mpqat::InputError);
  }
  // Released (the holder ended): the lock is taken over.
  EXPECT_NO_THROW(mpqat::util::FolderLock(out.string(), "run folder"));
  fs::remove_all(out);
  std::ofstream(out.string()) << "a file";
  const auto r = mpqat::testing::run_mpqat(cmd);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("is a file, not a folder"), std::string::npos) << r.err;
  fs::remove(out);
}

TEST(RunPipeline, UniformRtnNeedsNoCalibrationData) {
  // Preflight does not ask for calibration data for uniform bits with RTN; no stage may either.
  const auto out = mpqat::testing::fresh_temp_dir("RunPipeline", "uniform_rtn");
  const auto r = mpqat::testing::run_mpqat(
      "run " + kSource + "/recipes/quickstart.yaml model.path=" + kSource + "/checkpoints/kjv-llama 'evaluation.perplexity=[" +
      kSource + "/checkpoints/kjv-llama/heldout.txt]' evaluation.fp_baseline=false allocation.method=uniform "
      "allocation.uniform_bits=4 allocation.budget.avg_bits=0 training.method=rtn allocation.sgra.enabled=false "
      "data.calibration.path= output.overwrite=true output.dir=" + out.string());
  ASSERT_EQ(r.code, 0) << r.err;
  const json rep = json::parse(mpqat::testing::slurp((out / "report.json").string()));
  EXPECT_DOUBLE_EQ(rep["quantized"]["code_bits"].get<double>(), 4.0);
  EXPECT_FALSE(fs::exists(out / "sensitivity.json"));
  fs::remove_all(out);
}
