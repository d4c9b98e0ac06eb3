// [M4] The seeds' layer-to-layer profile and layer statistics (sensitivity mode "profile").
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <random>

#include <nlohmann/json.hpp>

#include "mpqat/model/loader.h"
#include "mpqat/model/llama.h"
#include "mpqat/sensitivity/block_profile.h"
#include "mpqat/sensitivity/layer_profile.h"
#include "mpqat/sensitivity/sensitivity_json.h"
#include "mpqat/util/error.h"

using namespace mpqat;
using nlohmann::json;

namespace {

std::shared_ptr<model::TransformerModel> tiny(uint64_t seed) {
  const json j{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
               {"intermediate_size", 48}, {"num_hidden_layers", 3}, {"num_attention_heads", 4},
               {"num_key_value_heads", 2}, {"vocab_size", 64}, {"max_position_embeddings", 64},
               {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
  torch::manual_seed(seed);
  return model::build_model(model::parse_model_config(j, "tiny"));
}

std::vector<std::vector<int32_t>> seqs(int n, int len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> s(n, std::vector<int32_t>(len));
  for (auto& q : s)
    for (auto& t : q) t = static_cast<int32_t>(rng() % 64);
  return s;
}

}  // namespace

TEST(BlockProfile, PassThroughBlockChangesNothingAndStatsMatchTorch) {
  auto m = tiny(1);
  {
    torch::NoGradGuard ng;
    // Block 1 writes nothing into the residual stream: its output equals its input.
    m->block(1)->linear("self_attn.o_proj")->weight.zero_();
    m->block(1)->linear("mlp.down_proj")->weight.zero_();
  }
  const auto data = seqs(4, 16, 3);
  sensitivity::BlockProfileOptions o;
  o.metrics = {"cka", "pwcca", "cka-debiased"};
  o.max_rows = 48;
  const auto p = sensitivity::block_profile(*m, data, o);
  ASSERT_EQ(p.change.size(), 3u);
  EXPECT_NEAR(p.change[1].at("cka"), 0.0, 1e-9);
  EXPECT_NEAR(p.change[1].at("cka-debiased"), 0.0, 1e-9);
  EXPECT_NEAR(p.change[1].at("pwcca"), 0.0, 1e-6);
  EXPECT_GT(p.change[0].at("cka"), 1e-4);  // a real block changes its input
  EXPECT_EQ(p.rows, 64);
  EXPECT_EQ(p.sampled_rows, 48);
  // Statistics of block 2's output against a direct torch computation.
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> outs;
  for (const auto& s : data) {
    auto ids = torch::tensor(std::vector<int64_t>(s.begin(), s.end()), torch::kLong).unsqueeze(0);
    auto ctx = m->context(ids, {});
    auto h = m->embed(ids, ctx);
    for (int64_t i = 0; i < 3; ++i) h = m->run_block(i, h, ctx);
    outs.push_back(h.reshape({-1, 32}));
  }
  auto y = torch::cat(outs).to(torch::kDouble);
  EXPECT_NEAR(p.stats[2].mean, y.mean().item<double>(), 1e-6);
  EXPECT_NEAR(p.stats[2].std, y.std(false).item<double>(), 1e-5);
  EXPECT_NEAR(p.stats[2].max_abs, y.abs().max().item<double>(), 1e-6);
  const double thr = 1e-3 * p.stats[2].max_abs;
  // Sparsity is counted on fp16 copies; allow the entries within fp16 rounding of the threshold.
  EXPECT_NEAR(p.stats[2].sparsity, y.abs().lt(thr).to(torch::kDouble).mean().item<double>(), 0.02);
  EXPECT_GE(p.stats[2].sparsity, 0.0);
  EXPECT_LE(p.stats[2].sparsity, 1.0);
}

TEST(BlockProfile, SeededAndRejectsUnknownMetrics) {
  auto m = tiny(2);
  const auto data = seqs(3, 12, 5);
  sensitivity::BlockProfileOptions o;
  o.metrics = {"svcca", "cka"};
  o.svcca_k = 8;
  o.max_rows = 30;
  const auto a = sensitivity::block_profile(*m, data, o);
  const auto b = sensitivity::block_profile(*m, data, o);
  for (size_t i = 0; i < a.change.size(); ++i) EXPECT_EQ(a.change[i], b.change[i]);
  o.metrics = {"cosine"};
  try {
    sensitivity::block_profile(*m, data, o);
    ADD_FAILURE();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("cosine"), std::string::npos);
  }
}

TEST(BlockProfile, StatsAreWrittenUnderBlocksInSensitivityJson) {
  sensitivity::SensitivityReport r;
  r.num_hidden_layers = 1;
  r.mode = "profile";
  sensitivity::ModuleEntry e;
  e.name = "model.layers.0.mlp.down_proj";
  e.block = 0;
  e.score = 0.25;
  e.metrics["cka"] = 0.25;
  r.modules.push_back(e);
  sensitivity::BlockStats st;
  st.mean = 0.5;
  st.std = 2.0;
  st.max_abs = 9.0;
  st.sparsity = 0.125;
  st.change["cka"] = 0.25;
  r.block_stats.push_back(st);
  const auto j = sensitivity::sensitivity_to_json(r);
  const auto& s = j["blocks"]["0"]["stats"];
  EXPECT_DOUBLE_EQ(s["mean"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(s["std"].get<double>(), 2.0);
  EXPECT_DOUBLE_EQ(s["max_abs"].get<double>(), 9.0);
  EXPECT_DOUBLE_EQ(s["sparsity"].get<double>(), 0.125);
  EXPECT_DOUBLE_EQ(s["change"]["cka"].get<double>(), 0.25);
}

TEST(BlockProfile, CarriesAttentionStatisticsIntoTheReport) {
  auto m = tiny(4);
  const auto data = seqs(2, 10, 7);
  sensitivity::BlockProfileOptions o;
  o.metrics = {"cka"};
  const auto p = sensitivity::block_profile(*m, data, o);
  const auto direct = sensitivity::attention_profile(*m, data);
  ASSERT_EQ(p.stats.size(), direct.size());
  for (size_t i = 0; i < direct.size(); ++i) {
    EXPECT_EQ(p.stats[i].attention.rows, 20);
    EXPECT_EQ(p.stats[i].attention.head_entropy, direct[i].head_entropy);
    EXPECT_EQ(p.stats[i].attention.specialisation, direct[i].specialisation);
  }
  sensitivity::SensitivityReport r;
  r.modules.push_back({"model.layers.0.self_attn.q_proj", 0, 1.0, {}, {}});
  r.block_stats = p.stats;
  const auto j = sensitivity::sensitivity_to_json(r);
  const auto& a = j["blocks"]["0"]["stats"]["attention"];
  EXPECT_DOUBLE_EQ(a["entropy"].get<double>(), direct[0].entropy);
  EXPECT_EQ(a["head_entropy"].size(), 4u);
  EXPECT_EQ(a["rows"].get<int64_t>(), 20);
}
