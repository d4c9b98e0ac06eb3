// Inputs that used to give silently wrong numbers or late failures ([R1]): each is now one
// clear line and exit 2, before any computation.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "float_folder.h"
#include "mpqat/model/config.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/train/block_ap.h"
#include "mpqat/train/fault_injection.h"
#include "mpqat/util/error.h"
#include "run_command.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

const std::string kSource = MPQAT_SOURCE_DIR;
const std::string kModel = kSource + "/checkpoints/kjv-llama";

fs::path temp_dir(const std::string& name) { return mpqat::testing::fresh_temp_dir("rel", name); }

// A copy of the bundled model whose config.json declares `layers` layers.
fs::path with_layers(const std::string& name, int layers) {
  const auto d = temp_dir(name);
  for (const auto& e : fs::directory_iterator(kModel)) fs::copy(e.path(), d / e.path().filename());
  auto cfg = json::parse(mpqat::testing::slurp((d / "config.json").string()));
  cfg["num_hidden_layers"] = layers;
  fs::remove(d / "config.json");
  std::ofstream(d / "config.json") << cfg.dump(2);
  return d;
}

}  // namespace

TEST(Reliability, EvalRefusesAContextAboveTheModelsMaximum) {
  const auto cfg = json::parse(mpqat::testing::slurp(kModel + "/config.json"));
  const int64_t max_pos = cfg["max_position_embeddings"].get<int64_t>();
  auto r = mpqat::testing::run_mpqat("eval " + kModel + " --ppl " + kModel + "/heldout.txt --context " +
                                     std::to_string(max_pos * 2));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("exceeds the model's max_position_embeddings " + std::to_string(max_pos)), std::string::npos)
      << r.err;
  EXPECT_TRUE(r.out.find("ppl") == std::string::npos) << r.out;
}

// One rule for calibration lengths: refused when typed, capped when from a recipe default.
TEST(Reliability, SeqlenAboveTheModelsMaximumIsRefusedWhenGivenAndCappedOtherwise) {
  const auto cfg = model::load_model_config(kModel);
  const int64_t max_pos = cfg.max_position_embeddings;
  EXPECT_EQ(model::fit_seqlen(cfg, max_pos, true, "--seqlen"), max_pos);
  EXPECT_EQ(model::fit_seqlen(cfg, max_pos + 1, false, "data.calibration.seqlen"), max_pos);
  EXPECT_THROW(model::fit_seqlen(cfg, max_pos + 1, true, "--seqlen"), InputError);
  for (const std::string cmd : {"train", "quantize"}) {
    const auto plan = temp_dir("seqlen_" + cmd) / "plan.json";
    json mods = json::object();
    mods["model.layers.0.mlp.down_proj"] = {{"bits", 4}, {"group_size", 32}};
    std::ofstream(plan) << json{{"version", 1}, {"modules", mods}}.dump();
    auto r = mpqat::testing::run_mpqat(cmd + " " + kModel + " --plan " + plan.string() + " --calib " + kModel +
                                       "/calib.txt --seqlen " + std::to_string(max_pos * 2) +
                                       (cmd == "quantize" ? " --method gptq" : "") + " --out " +
                                       (plan.parent_path() / "out").string());
    EXPECT_EQ(r.code, 2) << cmd << ": " << r.err;
    EXPECT_NE(r.err.find("--seqlen " + std::to_string(max_pos * 2) + " exceeds the model's max_position_embeddings " +
                         std::to_string(max_pos)),
              std::string::npos)
        << cmd << ": " << r.err;
    fs::remove_all(plan.parent_path());
  }
}

TEST(Reliability, ConfigAndWeightsWithDifferentLayerCountsAreRefused) {
  const auto cfg = json::parse(mpqat::testing::slurp(kModel + "/config.json"));
  const int layers = cfg["num_hidden_layers"].get<int>();
  const auto fewer = with_layers("fewer", layers - 1);
  auto r = mpqat::testing::run_mpqat("eval " + fewer.string() + " --ppl " + kModel + "/heldout.txt --context 64");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("belongs to layer " + std::to_string(layers - 1)), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("num_hidden_layers " + std::to_string(layers - 1)), std::string::npos) << r.err;
  const auto more = with_layers("more", layers + 1);
  r = mpqat::testing::run_mpqat("eval " + more.string() + " --ppl " + kModel + "/heldout.txt --context 64");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("no tensor of layer " + std::to_string(layers)), std::string::npos) << r.err;
  fs::remove_all(fewer);
  fs::remove_all(more);
}

TEST(Reliability, NonFiniteWeightsAreRefusedAtLoadNamingTheTensor) {
  const json cfg{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
                 {"intermediate_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                 {"num_key_value_heads", 2}, {"vocab_size", 64}, {"max_position_embeddings", 64},
                 {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
  torch::manual_seed(3);
  auto m = model::build_model(model::parse_model_config(cfg, "tiny"));
  {
    torch::NoGradGuard ng;
    m->linear("model.layers.1.mlp.up_proj")->weight[3][5] = std::numeric_limits<float>::quiet_NaN();
  }
  const auto d = temp_dir("nan");
  std::ofstream(d / "config.json") << cfg.dump(2);
  mpqat::testing::write_f32_safetensors(*m, d);
  model::ModelFolder folder(d.string());
  try {
    model::load_any_model(folder);
    FAIL() << "a NaN weight was loaded";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("'model.layers.1.mlp.up_proj.weight' holds NaN or Inf"), std::string::npos)
        << e.what();
  }
  fs::remove_all(d);
}

TEST(Reliability, DryRunChecksTheModelTheDataAndTheBudget) {
  const std::string base = "run " + kSource + "/recipes/quickstart.yaml model.path=" + kModel +
                           " data.calibration.path=" + kModel + "/calib.txt 'evaluation.perplexity=[" + kModel +
                           "/heldout.txt]' --dry-run";
  auto r = mpqat::testing::run_mpqat(base);
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("# checked: model folder, data files, budget"), std::string::npos);
  r = mpqat::testing::run_mpqat(base + " model.path=/nonexistent/model");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("'/nonexistent/model' does not exist"), std::string::npos) << r.err;
  r = mpqat::testing::run_mpqat(base + " data.calibration.path=/nonexistent/calib.txt");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("data.calibration.path '/nonexistent/calib.txt' does not exist"), std::string::npos) << r.err;
  r = mpqat::testing::run_mpqat(base + " allocation.budget.avg_bits=0.5");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("below the smallest size this menu can reach"), std::string::npos) << r.err;
  // A real run checks the same before its first stage: nothing is computed or written.
  const auto out = temp_dir("dry") / "run";
  const std::string real = "run " + kSource + "/recipes/quickstart.yaml model.path=" + kModel +
                           " data.calibration.path=/nonexistent/calib.txt output.dir=" + out.string();
  r = mpqat::testing::run_mpqat(real);
  EXPECT_EQ(r.code, 2);
  EXPECT_FALSE(fs::exists(out)) << "the run wrote into its folder before checking its inputs";
  fs::remove_all(out.parent_path());
}

TEST(Reliability, BlockApResumeStartsOverWhenTheModelChanged) {
  const json cfg{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
                 {"intermediate_size", 64}, {"num_hidden_layers", 3}, {"num_attention_heads", 4},
                 {"num_key_value_heads", 2}, {"vocab_size", 64}, {"max_position_embeddings", 64},
                 {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
  const auto dir = temp_dir("resume");
  auto write_model = [&](uint64_t seed) {
    torch::manual_seed(seed);
    auto m = model::build_model(model::parse_model_config(cfg, "tiny"));
    std::ofstream(dir / "config.json") << cfg.dump(2);
    mpqat::testing::write_f32_safetensors(*m, dir);
  };
  write_model(7);
  quant::BitPlan plan;
  for (int i = 0; i < 3; ++i)
    for (const auto& rel : model::family_block_linear_names(model::parse_model_config(cfg, "tiny"))) {
      quant::ModulePlan mp;
      mp.bits = 3;
      mp.group_size = 32;
      plan.modules["model.layers." + std::to_string(i) + "." + rel] = mp;
    }
  std::vector<std::vector<int32_t>> seqs(6, std::vector<int32_t>(16));
  for (size_t i = 0; i < seqs.size(); ++i)
    for (size_t t = 0; t < 16; ++t) seqs[i][t] = static_cast<int32_t>((i * 13 + t * 7) % 64);
  const auto data = train::stack_sequences(seqs);
  train::BlockApOptions o;
  o.epochs = 1;
  o.batch_size = 2;
  o.state_dir = (dir.parent_path() / (dir.filename().string() + "_state")).string();
  {
    train::FaultInjection f;
    f.after_block = [](int64_t b) {
      if (b == 0) throw std::runtime_error("simulated kill after block 0");
    };
    train::ScopedFaults faults(f);
    model::ModelFolder folder(dir.string());
    EXPECT_THROW(train::block_ap(folder, plan, data, o), std::runtime_error);
  }
  write_model(8);  // the weights at the same path change
  model::ModelFolder changed(dir.string());
  const auto resumed = train::block_ap(changed, plan, data, o);
  for (const auto& l : resumed.logs) EXPECT_FALSE(l.resumed) << "block " << l.block << " came from the old model";
  auto fresh_opts = o;
  fresh_opts.state_dir.clear();
  const auto fresh = train::block_ap(changed, plan, data, fresh_opts);
  ASSERT_EQ(fresh.logs.size(), resumed.logs.size());
  for (size_t b = 0; b < fresh.logs.size(); ++b) EXPECT_EQ(fresh.logs[b].end_val_mse, resumed.logs[b].end_val_mse);
  fs::remove_all(o.state_dir);
  fs::remove_all(dir);
}

TEST(Reliability, MessagesNameTheInputAndTheKey) {
  const auto d = temp_dir("msgs");
  // Duplicate keys in a recipe: the key and both lines.
  std::ofstream(d / "dup.yaml") << "model:\n  path: " << kModel << "\ntraining:\n  epochs: 2\n  epochs: 3\n";
  auto r = mpqat::testing::run_mpqat("run " + (d / "dup.yaml").string() + " --dry-run");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("key 'training.epochs' is given twice (lines 4 and 5)"), std::string::npos) << r.err;
  // An unknown command word.
  r = mpqat::testing::run_mpqat("frobnicate " + kModel);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown command 'frobnicate'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("quantize"), std::string::npos) << r.err;
  // An evaluation file shorter than one window: the file and the flag.
  std::ofstream(d / "short.txt") << "In the beginning";
  r = mpqat::testing::run_mpqat("eval " + kModel + " --ppl " + (d / "short.txt").string() + " --context 64");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--ppl '" + (d / "short.txt").string() + "'"), std::string::npos) << r.err;
  // Validation sequences that leave nothing to train on: an error, not a silent adjustment.
  std::ofstream(d / "r.yaml") << "model:\n  path: " << kModel
                              << "\ndata:\n  validation_samples: 8\nallocation:\n  budget:\n    avg_bits: 3\n";
  std::ofstream(d / "plan.json") << R"({"version": 1, "modules": {"model.layers.0.mlp.down_proj": {"bits": 4, "group_size": 32}}})";
  r = mpqat::testing::run_mpqat("train " + kModel + " --plan " + (d / "plan.json").string() + " --calib " + kModel +
                                "/calib.txt --samples 8 --seqlen 64 --recipe " + (d / "r.yaml").string() + " --out " +
                                (d / "q").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("data.validation_samples 8 leaves nothing to train on"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(d / "q"));
  fs::remove_all(d);
}
