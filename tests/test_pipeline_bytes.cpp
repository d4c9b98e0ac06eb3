// allocate -> quantize -> inspect through the CLI on stories260K: the allocator's predicted
// sizes must equal what the written checkpoint holds, to the byte.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "mpqat/model/llama2c.h"
#include "run_command.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using mpqat::testing::run_mpqat;

namespace {

// A synthetic sensitivity.json (docs/formats.md): scores that vary by layer and module, so
// the solver must mix bit-widths.
void write_sensitivity(const fs::path& path) {
  const char* mods[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                        "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
  json m = json::object();
  for (int l = 0; l < 5; ++l) {
    for (int k = 0; k < 7; ++k) {
      m["model.layers." + std::to_string(l) + "." + mods[k]] = {{"score", 1.0 + 7.0 * l + k * k}};
    }
  }
  std::ofstream(path) << json{{"format", "mpqat.sensitivity"}, {"version", 1}, {"modules", m}}.dump();
}

uint64_t folder_safetensors_bytes(const fs::path& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") n += fs::file_size(e.path());
  }
  return n;
}

}  // namespace

TEST(PipelineBytes, PredictedEqualsWrittenCheckpoint) {
  const std::string shared = mpqat::testing::shared_dir();
  if (shared.empty()) GTEST_SKIP() << "../shared/data absent: stories260K is needed";
  const fs::path d = fs::temp_directory_path() / ("mpqat_bytes_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  const fs::path src = fs::path(shared) / "data/models/stories260K";
  mpqat::model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(),
                             (d / "fp").string());
  write_sensitivity(d / "sens.json");

  for (const std::string budget : {"avg_bits=3.5", "compression=3", "bytes=200KB"}) {
    SCOPED_TRACE(budget);
    const fs::path plan = d / "plan.json", out = d / "q";
    fs::remove_all(out);
    auto r = run_mpqat("allocate --model " + (d / "fp").string() + " --sensitivity " +
                       (d / "sens.json").string() + " --budget " + budget +
                       " --bits 2,3,4,8 --group-sizes 32,64 --out " + plan.string() + " --json");
    ASSERT_EQ(r.code, 0) << r.err;
    const json a = json::parse(r.out);
    r = run_mpqat("quantize " + (d / "fp").string() + " --plan " + plan.string() +
                  " --method rtn --out " + out.string());
    ASSERT_EQ(r.code, 0) << r.err;
    r = run_mpqat("inspect " + out.string() + " --json");
    ASSERT_EQ(r.code, 0) << r.err;
    const json ins = json::parse(r.out);

    const json p = json::parse(std::ifstream(plan));
    // Every module's bits and bytes as planned.
    std::map<std::string, json> by_name;
    for (const auto& m : ins["modules"]) by_name[m["name"].get<std::string>()] = m;
    for (auto it = p["modules"].begin(); it != p["modules"].end(); ++it) {
      ASSERT_TRUE(by_name.count(it.key())) << it.key();
      EXPECT_EQ(by_name[it.key()]["bits"], it.value()["bits"]) << it.key();
      if (it.value().contains("predicted_bytes")) {
        EXPECT_EQ(by_name[it.key()]["bytes"], it.value()["predicted_bytes"]) << it.key();
      }
    }
    EXPECT_EQ(ins["total_bytes"].get<uint64_t>(), a["tensor_bytes"].get<uint64_t>());
    EXPECT_EQ(folder_safetensors_bytes(out), a["predicted_bytes"].get<uint64_t>());
    EXPECT_TRUE(a["fits"].get<bool>());
    EXPECT_LE(a["predicted_metric_bytes"].get<uint64_t>(), a["budget_bytes"].get<uint64_t>());
  }
  fs::remove_all(d);
}

TEST(PipelineBytes, DryRunShowsPlannedAllocation) {
  const std::string shared = mpqat::testing::shared_dir();
  if (shared.empty()) GTEST_SKIP() << "../shared/data absent: stories260K is needed";
  const fs::path d = fs::temp_directory_path() / ("mpqat_dry_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  const fs::path src = fs::path(shared) / "data/models/stories260K";
  mpqat::model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(),
                             (d / "fp").string());
  write_sensitivity(d / "sens.json");
  std::ofstream(d / "r.yaml") << "model: {path: " << (d / "fp").string() << "}\n"
                              << "sensitivity: {file: " << (d / "sens.json").string() << "}\n"
                              << "allocation: {method: qbo, budget: {avg_bits: 3.0}, "
                                 "group_sizes: [32]}\n"
                              << "training: {method: rtn}\nevaluation: {perplexity: []}\n";
  auto r = run_mpqat("run " + (d / "r.yaml").string() + " --dry-run");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("# planned allocation (qbo)"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("model.layers.4.mlp.down_proj"), std::string::npos) << r.out;
  // An impossible budget is refused before any work, naming both limits.
  r = run_mpqat("run " + (d / "r.yaml").string() + " allocation.budget.avg_bits=0.5 --dry-run");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_NE(r.err.find("budget"), std::string::npos) << r.err;
  fs::remove_all(d);
}
