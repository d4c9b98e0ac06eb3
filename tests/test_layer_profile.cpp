// [M4] Seed 003's attention statistics (sensitivity/layer_profile.h) and the attention observer
// hook they use (model/attention_observer.h).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

#include "mpqat/model/attention_observer.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model.h"
#include "mpqat/sensitivity/layer_profile.h"
#include "mpqat/util/error.h"

using namespace mpqat;
using nlohmann::json;

namespace {

json llama_json(int64_t max_pos) {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
              {"intermediate_size", 48}, {"num_hidden_layers", 3}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 64}, {"max_position_embeddings", max_pos},
              {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
}

json opt_json() {
  return json{{"architectures", {"OPTForCausalLM"}}, {"model_type", "opt"}, {"hidden_size", 32}, {"ffn_dim", 48},
              {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 64},
              {"max_position_embeddings", 40}, {"word_embed_proj_dim", 32}, {"do_layer_norm_before", true},
              {"activation_function", "relu"}, {"pad_token_id", 1}, {"bos_token_id", 2}, {"eos_token_id", 2}};
}

json bert_json() {
  return json{{"architectures", {"BertForSequenceClassification"}}, {"model_type", "bert"}, {"hidden_size", 32},
              {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
              {"vocab_size", 64}, {"max_position_embeddings", 40}, {"type_vocab_size", 2},
              {"layer_norm_eps", 1e-12}, {"hidden_act", "gelu"}, {"pad_token_id", 0}, {"num_labels", 3}};
}

std::shared_ptr<model::TransformerModel> build(const json& j, uint64_t seed) {
  torch::manual_seed(seed);
  return model::build_model(model::parse_model_config(j, "tiny"));
}

std::vector<std::vector<int32_t>> seqs(const std::vector<int>& lengths, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> s;
  for (int len : lengths) {
    std::vector<int32_t> q(static_cast<size_t>(len));
    for (auto& t : q) t = static_cast<int32_t>(3 + rng() % 60);
    s.push_back(q);
  }
  return s;
}

// Zero query projections: every score is 0, so each row attends uniformly to the keys it may read.
void zero_queries(model::TransformerModel& m, const std::string& rel) {
  torch::NoGradGuard ng;
  for (int64_t i = 0; i < m.num_blocks(); ++i) {
    auto q = m.block(i)->linear(rel);
    q->weight.zero_();
    if (q->bias.defined()) q->bias.zero_();
  }
}

// Mean over all rows of ln(keys read), the entropy of uniform attention.
double mean_log_keys(const std::vector<int>& lengths, bool causal) {
  double sum = 0.0, rows = 0.0;
  for (int len : lengths)
    for (int r = 0; r < len; ++r) {
      sum += std::log(static_cast<double>(causal ? r + 1 : len));
      rows += 1.0;
    }
  return sum / rows;
}

void expect_uniform(const std::vector<sensitivity::AttentionStats>& st, int64_t blocks, int64_t heads,
                    const std::vector<int>& lengths, bool causal) {
  ASSERT_EQ(static_cast<int64_t>(st.size()), blocks);
  const double expected = mean_log_keys(lengths, causal);
  int64_t rows = 0;
  for (int len : lengths) rows += len;
  for (const auto& s : st) {
    ASSERT_EQ(static_cast<int64_t>(s.head_entropy.size()), heads);
    EXPECT_EQ(s.rows, rows);
    for (double e : s.head_entropy) EXPECT_NEAR(e, expected, 1e-5);
    EXPECT_NEAR(s.entropy, expected, 1e-5);
    EXPECT_NEAR(s.max_entropy, expected, 1e-12);
    EXPECT_NEAR(s.entropy_std, 0.0, 1e-5);
    EXPECT_NEAR(s.specialisation, 0.0, 1e-5);
  }
}

}  // namespace

TEST(LayerProfile, UniformAttentionEntropyIsMeanLogRowLengthLlama) {
  auto m = build(llama_json(256), 1);
  zero_queries(*m, "self_attn.q_proj");
  const std::vector<int> lengths = {150, 20};  // 150 > Llama's 128-query chunk: two observer calls
  expect_uniform(sensitivity::attention_profile(*m, seqs(lengths, 4)), 3, 4, lengths, /*causal=*/true);
}

TEST(LayerProfile, UniformAttentionEntropyOptIsCausalBertIsNot) {
  const std::vector<int> lengths = {17, 9};
  auto opt = build(opt_json(), 2);
  zero_queries(*opt, "self_attn.q_proj");
  expect_uniform(sensitivity::attention_profile(*opt, seqs(lengths, 5)), 2, 4, lengths, /*causal=*/true);
  auto bert = build(bert_json(), 3);
  zero_queries(*bert, "attention.self.query");
  expect_uniform(sensitivity::attention_profile(*bert, seqs(lengths, 6)), 2, 4, lengths, /*causal=*/false);
}

TEST(LayerProfile, RecorderMatchesDirectEntropyOfAttend) {
  torch::manual_seed(7);
  const int64_t B = 2, H = 3, T = 6, D = 4;
  auto q = torch::randn({B, H, T, D}) * 2.0, k = torch::randn({B, H, T, D}), v = torch::randn({B, H, T, D});
  auto causal = torch::full({T, T}, -std::numeric_limits<float>::infinity()).triu(1);  // (T, T)
  for (bool masked : {true, false}) {
    sensitivity::AttentionRecorder rec(2);
    torch::Tensor out;
    {
      auto watching = rec.watch(1);
      out = model::attend(q, k, v, masked ? causal : torch::Tensor());
    }
    EXPECT_EQ(model::attention_observer(), nullptr);
    auto scores = torch::matmul(q, k.transpose(-2, -1)).to(torch::kDouble);
    if (masked) scores = scores + causal.to(torch::kDouble);
    auto p = torch::softmax(scores, -1);
    auto row_ent = -(p * torch::log(p.clamp_min(1e-300))).sum(-1);  // (B, H, T)
    auto keys = masked ? torch::arange(1, T + 1, torch::kDouble) : torch::full({T}, double(T), torch::kDouble);
    const double sum_log_keys = B * keys.log().sum().item<double>();
    const auto st = rec.result();
    ASSERT_EQ(st.size(), 2u);
    EXPECT_EQ(st[0].rows, 0);  // not watched
    EXPECT_TRUE(st[0].head_entropy.empty());
    ASSERT_EQ(st[1].head_entropy.size(), static_cast<size_t>(H));
    EXPECT_EQ(st[1].rows, B * T);
    double mean = 0.0;
    for (int64_t h = 0; h < H; ++h) {
      const double sum_h = row_ent.select(1, h).sum().item<double>();
      EXPECT_NEAR(st[1].head_entropy[static_cast<size_t>(h)], sum_h / (B * T), 1e-5) << h;
      EXPECT_NEAR(st[1].head_specialisation[static_cast<size_t>(h)], 1.0 - sum_h / sum_log_keys, 1e-5) << h;
      mean += sum_h / (B * T) / H;
    }
    EXPECT_NEAR(st[1].entropy, mean, 1e-5);
    EXPECT_NEAR(st[1].max_entropy, sum_log_keys / (B * T), 1e-12);
    double var = 0.0;
    for (double e : st[1].head_entropy) var += (e - mean) * (e - mean) / H;
    EXPECT_NEAR(st[1].entropy_std, std::sqrt(var), 1e-5);
    EXPECT_GT(st[1].entropy_std, 0.0);
    EXPECT_GT(st[1].specialisation, 0.0);
    EXPECT_LT(st[1].specialisation, 1.0);
  }
  sensitivity::AttentionRecorder rec(2);
  EXPECT_THROW(rec.watch(2), Error);
  EXPECT_THROW(rec.watch(-1), Error);
}

TEST(LayerProfile, ObserverIsOffByDefaultNestsAndDoesNotChangeResults) {
  EXPECT_EQ(model::attention_observer(), nullptr);
  auto m = build(llama_json(64), 9);
  const auto data = seqs({12}, 1);
  auto ids = torch::tensor(std::vector<int64_t>(data[0].begin(), data[0].end()), torch::kLong).unsqueeze(0);
  torch::NoGradGuard ng;
  const auto plain = m->forward(ids, {});
  int outer = 0, inner = 0;
  torch::Tensor observed;
  {
    model::ScopedAttentionObserver a([&](const at::Tensor&) { ++outer; });
    {
      model::ScopedAttentionObserver b([&](const at::Tensor& p) {
        ++inner;
        observed = p;
      });
      EXPECT_TRUE(torch::equal(m->forward(ids, {}), plain));
    }
    m->forward(ids, {});
  }
  EXPECT_EQ(model::attention_observer(), nullptr);
  EXPECT_EQ(inner, 3);  // one call per block
  EXPECT_EQ(outer, 3);  // restored after the inner scope
  ASSERT_TRUE(observed.defined());
  EXPECT_EQ(observed.sizes().vec(), (std::vector<int64_t>{1, 4, 12, 12}));
  EXPECT_TRUE(torch::allclose(observed.sum(-1), torch::ones({1, 4, 12})));
}

TEST(LayerProfile, DeterministicAndRejectsNoSequences) {
  const auto data = seqs({10, 14}, 3);
  auto a = build(llama_json(64), 11);
  auto b = build(llama_json(64), 11);
  const auto pa = sensitivity::attention_profile(*a, data);
  const auto pb = sensitivity::attention_profile(*b, data);
  ASSERT_EQ(pa.size(), pb.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    EXPECT_EQ(pa[i].head_entropy, pb[i].head_entropy);
    EXPECT_EQ(pa[i].specialisation, pb[i].specialisation);
    EXPECT_GT(pa[i].entropy, 0.0);
    EXPECT_LE(pa[i].entropy, pa[i].max_entropy + 1e-9);
  }
  try {
    sensitivity::attention_profile(*a, {});
    ADD_FAILURE() << "no sequences accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("no calibration sequences"), std::string::npos) << e.what();
  }
}
