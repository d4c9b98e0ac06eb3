// Llama model, loader, llama2.c converter, perplexity and generation.
// The stories260K tests check against numbers produced outside this project (llama2.c's own
// run.c output and an independent numpy perplexity, see shared/data/SOURCES.md).
#include <gtest/gtest.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "mpqat/cli/commands.h"
#include "mpqat/eval/generate.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/model/llama2c.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/config.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"
#include "test_util.h"
#include "float_folder.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

fs::path temp_dir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("test_llama", tag); }

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

json tiny_config_json() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", 32},
              {"intermediate_size", 48},
              {"num_hidden_layers", 3},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"vocab_size", 50},
              {"max_position_embeddings", 320},
              {"rms_norm_eps", 1e-5},
              {"tie_word_embeddings", false}};
}

template <typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}

// Writes `m` as a Hugging Face folder (config.json + model.safetensors).
void save_folder(model::LlamaForCausalLM& m, const json& cfg, const fs::path& dir) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << cfg.dump(2);
  mpqat::testing::write_f32_safetensors(m, dir);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Config

TEST(LlamaConfig, ParsesDefaultsAndDerivedFields) {
  auto c = model::parse_model_config(tiny_config_json(), "x/config.json");
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.kv_dim(), 16);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.qkv_bias);
  auto j = tiny_config_json();
  j.erase("num_key_value_heads");
  EXPECT_EQ(model::parse_model_config(j).num_key_value_heads, 4);

  auto q = tiny_config_json();
  q["architectures"] = {"Qwen2ForCausalLM"};
  q["model_type"] = "qwen2";
  auto qc = model::parse_model_config(q);
  EXPECT_TRUE(qc.qkv_bias);
  EXPECT_FALSE(qc.o_proj_bias);
  model::LlamaForCausalLM qm(qc);
  EXPECT_TRUE(qm.block(0)->self_attn->q_proj->has_bias());
  EXPECT_FALSE(qm.block(0)->self_attn->o_proj->has_bias());
}

TEST(LlamaConfig, ErrorsNameFileAndKey) {
  auto j = tiny_config_json();
  j.erase("hidden_size");
  auto msg = error_message([&] { model::parse_model_config(j, "m/config.json"); });
  EXPECT_NE(msg.find("m/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hidden_size"), std::string::npos) << msg;

  j = tiny_config_json();
  j["num_hidden_layers"] = "three";
  msg = error_message([&] { model::parse_model_config(j); });
  EXPECT_NE(msg.find("num_hidden_layers"), std::string::npos) << msg;

  j = tiny_config_json();
  j["architectures"] = {"GPTNeoXForCausalLM"};
  msg = error_message([&] { model::parse_model_config(j); });
  EXPECT_NE(msg.find("GPTNeoXForCausalLM"), std::string::npos) << msg;
  EXPECT_NE(msg.find("LlamaForCausalLM"), std::string::npos) << msg;  // lists the accepted

  j = tiny_config_json();
  j["num_key_value_heads"] = 3;
  EXPECT_THROW(model::parse_model_config(j), InputError);

  j = tiny_config_json();
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  EXPECT_THROW(model::parse_model_config(j), InputError);

  auto opt = json{{"architectures", {"OPTForCausalLM"}}, {"hidden_size", 32}, {"ffn_dim", 64},
                  {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 50},
                  {"max_position_embeddings", 64}};
  auto oc = model::parse_model_config(opt);
  EXPECT_EQ(oc.family, model::Family::OPT);
  EXPECT_THROW(model::LlamaForCausalLM{oc}, NotImplementedError);
}

TEST(LlamaRope, ScalingRules) {
  auto j = tiny_config_json();
  j["hidden_size"] = 128;
  j["num_attention_heads"] = 2;  // head_dim 64
  j["num_key_value_heads"] = 2;
  j["rope_theta"] = 500000.0;
  auto base = model::rope_inv_freq(model::parse_model_config(j));
  ASSERT_EQ(base.size(0), 32);
  for (int i = 0; i < 32; ++i)
    EXPECT_NEAR(base[i].item<double>(), std::pow(500000.0, -2.0 * i / 64.0),
                1e-6 * std::pow(500000.0, -2.0 * i / 64.0));

  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  auto lin = model::rope_inv_freq(model::parse_model_config(j));
  EXPECT_TRUE(torch::allclose(lin, base / 4.0));

  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  auto l3 = model::rope_inv_freq(model::parse_model_config(j));
  int high = 0, low = 0, mid = 0;
  for (int i = 0; i < 32; ++i) {
    const double f = base[i].item<double>(), g = l3[i].item<double>();
    const double wavelen = 2 * M_PI / f;
    if (wavelen < 8192.0 / 4.0) {
      EXPECT_FLOAT_EQ(g, f);  // high frequencies untouched
      ++high;
    } else if (wavelen > 8192.0) {
      EXPECT_NEAR(g, f / 8.0, 1e-6 * f);  // low frequencies slowed by factor
      ++low;
    } else {
      // smooth interpolation between f / factor and f
      const double s = (8192.0 / wavelen - 1.0) / 3.0;
      EXPECT_NEAR(g, (1 - s) * f / 8.0 + s * f, 1e-5 * f);
      ++mid;
    }
  }
  EXPECT_GT(high, 0);
  EXPECT_GT(low, 0);
  EXPECT_GT(mid, 0);
}

// ---------------------------------------------------------------------------------------------
// RoPE permutation: HF rotate-half attention on permuted weights == llama2.c interleaved attention

TEST(LlamaRope, PermutedWeightsMatchInterleavedReference) {
  torch::manual_seed(7);
  const int64_t C = 24, H = 4, Hkv = 2, hd = 6, T = 5;
  auto j = tiny_config_json();
  j["hidden_size"] = C;
  j["num_attention_heads"] = H;
  j["num_key_value_heads"] = Hkv;
  auto cfg = model::parse_model_config(j);
  auto wq = torch::randn({H * hd, C}), wk = torch::randn({Hkv * hd, C});
  auto wv = torch::randn({Hkv * hd, C}), wo = torch::randn({C, H * hd});
  auto x = torch::randn({1, T, C});

  // Reference in double, llama2.c style: rotate pairs (2i, 2i+1) by pos * theta^(-2i/hd).
  auto X = x[0].to(torch::kDouble);
  auto rot = [&](torch::Tensor m) {  // (T, n*hd) double
    auto a = m.accessor<double, 2>();
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < m.size(1); c += 2) {
        const int64_t i = (c % hd) / 2;
        const double ang = t * std::pow(10000.0, -2.0 * i / hd);
        const double v0 = a[t][c], v1 = a[t][c + 1];
        a[t][c] = v0 * std::cos(ang) - v1 * std::sin(ang);
        a[t][c + 1] = v0 * std::sin(ang) + v1 * std::cos(ang);
      }
    return m;
  };
  auto q = rot(X.matmul(wq.to(torch::kDouble).t()).contiguous());
  auto k = rot(X.matmul(wk.to(torch::kDouble).t()).contiguous());
  auto v = X.matmul(wv.to(torch::kDouble).t());
  auto att = torch::zeros({T, H * hd}, torch::kDouble);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / (H / Hkv);
    auto qh = q.narrow(1, h * hd, hd), kh = k.narrow(1, g * hd, hd), vh = v.narrow(1, g * hd, hd);
    auto s = qh.matmul(kh.t()) / std::sqrt(double(hd));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t u = t + 1; u < T; ++u) s[t][u] = -INFINITY;
    att.narrow(1, h * hd, hd).copy_(torch::softmax(s, -1).matmul(vh));
  }
  auto ref = att.matmul(wo.to(torch::kDouble).t());  // (T, C)

  model::LlamaAttentionImpl attn(cfg);
  {
    torch::NoGradGuard ng;
    auto pq = model::permute_rope_rows(wq.contiguous().data_ptr<float>(), H, hd, C);
    auto pk = model::permute_rope_rows(wk.contiguous().data_ptr<float>(), Hkv, hd, C);
    attn.q_proj->weight.copy_(torch::from_blob(pq.data(), {H * hd, C}));
    attn.k_proj->weight.copy_(torch::from_blob(pk.data(), {Hkv * hd, C}));
    attn.v_proj->weight.copy_(wv);
    attn.o_proj->weight.copy_(wo);
  }
  model::RotaryEmbedding rope(cfg);
  auto [cos, sin] = rope.get(0, T, torch::kCPU);
  torch::NoGradGuard ng;
  auto out = attn.forward(x, cos, sin)[0].to(torch::kDouble);
  EXPECT_LT((out - ref).abs().max().item<double>(), 1e-4 * (1 + ref.abs().max().item<double>()));

  // Without the permutation the result must differ (the test can fail).
  attn.q_proj->weight.copy_(wq);
  attn.k_proj->weight.copy_(wk);
  auto wrong = attn.forward(x, cos, sin)[0].to(torch::kDouble);
  EXPECT_GT((wrong - ref).abs().max().item<double>(), 1e-2);
}

// ---------------------------------------------------------------------------------------------
// Loader: round trip, streaming, KV cache, errors

TEST(LlamaLoader, RoundTripStreamingAndCache) {
  torch::manual_seed(3);
  for (bool tied : {false, true}) {
    auto j = tiny_config_json();
    j["tie_word_embeddings"] = tied;
    auto cfg = model::parse_model_config(j);
    model::LlamaForCausalLM ref(cfg);
    ref.reset_parameters();
    const auto dir = temp_dir(tied ? "rt_tied" : "rt");
    save_folder(ref, j, dir);

    model::ModelFolder folder(dir.string());
    auto m = model::load_model(folder, {torch::kCPU, /*strict=*/true});
    auto ids = torch::randint(0, cfg.vocab_size, {2, 17}, torch::kLong);
    torch::NoGradGuard ng;
    auto expect = ref.forward(ids);
    auto full = m->forward(ids);
    EXPECT_TRUE(torch::equal(full, expect));
    auto streamed = model::forward_streaming(folder, ids);
    EXPECT_LT((streamed - full).abs().max().item<double>(), 1e-6);

    // Block-by-block API == forward
    auto h = m->embed(ids);
    for (int64_t i = 0; i < m->num_blocks(); ++i) h = m->run_block(i, h);
    EXPECT_TRUE(torch::equal(m->head(h), full));

    // KV cache: prefix then one token at a time == one pass
    model::KVCache cache;
    auto a = m->forward(ids.narrow(1, 0, 9), &cache);
    std::vector<torch::Tensor> parts{a};
    for (int64_t t = 9; t < 17; ++t) parts.push_back(m->forward(ids.narrow(1, t, 1), &cache));
    EXPECT_LT((torch::cat(parts, 1) - full).abs().max().item<double>(), 1e-5);

    // Long sequences take the chunked-attention path (chunks of 128 queries); a cached prefix
    // followed by a multi-token continuation must still equal one full pass.
    auto long_ids = torch::randint(0, cfg.vocab_size, {1, 300}, torch::kLong);
    auto long_full = m->forward(long_ids);
    model::KVCache c2;
    auto p1 = m->forward(long_ids.narrow(1, 0, 133), &c2);
    auto p2 = m->forward(long_ids.narrow(1, 133, 167), &c2);
    EXPECT_LT((torch::cat({p1, p2}, 1) - long_full).abs().max().item<double>(), 1e-5);
    EXPECT_EQ(c2.length(), 300);

    // Causality: changing a later token does not change earlier logits
    auto ids2 = ids.clone();
    ids2[0][10] = (ids2[0][10].item<int64_t>() + 1) % cfg.vocab_size;
    auto full2 = m->forward(ids2);
    EXPECT_TRUE(torch::equal(full2.narrow(1, 0, 10), full.narrow(1, 0, 10)));
    EXPECT_FALSE(torch::equal(full2.narrow(1, 10, 1), full.narrow(1, 10, 1)));
    fs::remove_all(dir);
  }
}

TEST(LlamaLoader, NamesAndSetLinear) {
  auto cfg = model::parse_model_config(tiny_config_json());
  model::LlamaForCausalLM m(cfg);
  std::set<std::string> names;
  for (const auto& item : m.named_parameters(true)) names.insert(item.key());
  EXPECT_TRUE(names.count("model.embed_tokens.weight"));
  EXPECT_TRUE(names.count("model.layers.2.self_attn.q_proj.weight"));
  EXPECT_TRUE(names.count("model.layers.0.mlp.down_proj.weight"));
  EXPECT_TRUE(names.count("model.layers.1.post_attention_layernorm.weight"));
  EXPECT_TRUE(names.count("model.norm.weight"));
  EXPECT_TRUE(names.count("lm_head.weight"));
  EXPECT_EQ(names.size(), 3u + 3u * 9u);
  auto q = model::quantizable_linear_names(cfg);
  ASSERT_EQ(q.size(), 21u);
  EXPECT_EQ(q[3], "model.layers.0.self_attn.o_proj");
  EXPECT_EQ(m.named_linears()[8].first, "model.layers.1.self_attn.k_proj");

  struct Zero : model::LinearImpl {
    using LinearImpl::LinearImpl;
    torch::Tensor forward(const torch::Tensor& x) override { return torch::zeros_like(LinearImpl::forward(x)); }
  };
  m.reset_parameters();
  auto blk = m.block(1);
  auto z = std::make_shared<Zero>(48, 32, false);
  blk->set_linear("mlp.down_proj", z);
  EXPECT_EQ(blk->mlp->down_proj.get(), z.get());
  EXPECT_EQ(blk->named_modules()["mlp.down_proj"].get(), z.get());
  EXPECT_THROW(blk->set_linear("mlp.up_proj", z), Error);  // wrong shape
  EXPECT_THROW(blk->linear("mlp.nope"), InputError);
}

TEST(LlamaLoader, MissingOrMisshapedTensorIsInputError) {
  torch::manual_seed(1);
  auto j = tiny_config_json();
  auto cfg = model::parse_model_config(j);
  model::LlamaForCausalLM ref(cfg);
  ref.reset_parameters();
  const auto dir = temp_dir("bad");
  save_folder(ref, j, dir);
  j["intermediate_size"] = 40;  // checkpoint says 48
  std::ofstream(dir / "config.json") << j.dump();
  model::ModelFolder folder(dir.string());
  auto msg = error_message([&] { model::load_model(folder); });
  EXPECT_NE(msg.find("model.layers.0.mlp.gate_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[40, 32]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;

  j["intermediate_size"] = 48;
  j["num_hidden_layers"] = 4;  // layer 3 absent
  std::ofstream(dir / "config.json") << j.dump();
  msg = error_message([&] {
    model::ModelFolder folder2(dir.string());  // refused here: the config and the weights disagree
    model::load_model(folder2);
  });
  EXPECT_NE(msg.find("model.layers.3."), std::string::npos) << msg;
  EXPECT_THROW(model::ModelFolder((dir / "nope").string()), InputError);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// llama2.c converter

TEST(Llama2c, RejectsTruncatedAndGarbageFiles) {
  const auto dir = temp_dir("l2c");
  // A synthetic checkpoint: dim 8, hidden 12, 1 layer, 2 heads, 1 kv head, vocab 5, seq 4.
  model::Llama2cHeader h;
  h.dim = 8, h.hidden_dim = 12, h.n_layers = 1, h.n_heads = 2, h.n_kv_heads = 1, h.vocab_size = 5, h.seq_len = 4;
  const uint64_t want = h.expected_file_size();
  // 28 + 4 * (40 + 8 + 64 + 32 + 32 + 64 + 8 + 96 + 96 + 96 + 8 + 2 * 4 * 2)
  EXPECT_EQ(want, 28u + 4u * (40 + 8 + 64 + 32 + 32 + 64 + 8 + 96 + 96 + 96 + 8 + 16));
  int32_t hdr[7] = {8, 12, 1, 2, 1, 5, 4};
  std::vector<char> body(want - 28, 0);
  {
    std::ofstream f(dir / "ok.bin", std::ios::binary);
    f.write(reinterpret_cast<char*>(hdr), 28);
    f.write(body.data(), static_cast<std::streamsize>(body.size()));
  }
  EXPECT_EQ(model::read_llama2c_header((dir / "ok.bin").string()).kv_dim(), 4);
  {
    std::ofstream f(dir / "short.bin", std::ios::binary);
    f.write(reinterpret_cast<char*>(hdr), 28);
    f.write(body.data(), static_cast<std::streamsize>(body.size() - 12));
  }
  auto msg = error_message([&] { model::read_llama2c_header((dir / "short.bin").string()); });
  EXPECT_NE(msg.find("short.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::to_string(want)), std::string::npos) << msg;
  EXPECT_NE(msg.find(std::to_string(want - 12)), std::string::npos) << msg;
  int32_t bad[7] = {8, 12, 1, 3, 1, 5, 4};  // 3 heads do not divide 8
  {
    std::ofstream f(dir / "bad.bin", std::ios::binary);
    f.write(reinterpret_cast<char*>(bad), 28);
  }
  EXPECT_THROW(model::read_llama2c_header((dir / "bad.bin").string()), InputError);
  {
    std::ofstream f(dir / "tiny.bin", std::ios::binary);
    f.write("abc", 3);
  }
  EXPECT_THROW(model::read_llama2c_header((dir / "tiny.bin").string()), InputError);
  fs::remove_all(dir);
}

namespace {

class Stories260K : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    shared_ = mpqat::testing::shared_dir();
    if (shared_.empty()) return;
    dir_ = temp_dir("stories") / "stories260K";
    const auto src = fs::path(shared_) / "data/models/stories260K";
    model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(), dir_.string());
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_.parent_path());
  }
  void SetUp() override {
    if (shared_.empty()) GTEST_SKIP() << "shared data not found (set MPQAT_SHARED_DIR or put it at ../shared)";
  }
  static std::string shared_;
  static fs::path dir_;
};
std::string Stories260K::shared_;
fs::path Stories260K::dir_;

}  // namespace

TEST_F(Stories260K, ConvertedFolderLayout) {
  EXPECT_TRUE(fs::exists(dir_ / "config.json"));
  EXPECT_TRUE(fs::exists(dir_ / "model.safetensors"));
  EXPECT_TRUE(fs::exists(dir_ / "tokenizer.bin"));
  EXPECT_TRUE(fs::exists(dir_ / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(dir_.string() + ".tmp"));
  model::ModelFolder f(dir_.string());
  const auto& c = f.config();
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(f.contains("lm_head.weight"));
  // Refuses to overwrite without force, and a truncated copy of the real file.
  const auto src = fs::path(shared_) / "data/models/stories260K";
  auto msg = error_message([&] {
    model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(), dir_.string());
  });
  EXPECT_NE(msg.find("--force"), std::string::npos) << msg;
  const auto tdir = temp_dir("trunc");
  {
    auto bytes = read_file(src / "stories260K.bin");
    std::ofstream(tdir / "t.bin", std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size() - 100));
  }
  msg = error_message([&] {
    model::convert_llama2c((tdir / "t.bin").string(), (src / "tok512.bin").string(), (tdir / "out").string());
  });
  EXPECT_NE(msg.find("t.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("bytes"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(tdir / "out"));
  fs::remove_all(tdir);
}

TEST_F(Stories260K, GreedyMatchesLlama2cRun) {
  model::ModelFolder f(dir_.string());
  auto m = model::load_model(f);
  eval::GenerateOptions g;
  g.greedy = true;
  g.max_new_tokens = 200;  // run.c -n 200: positions 0..199 each print one sampled token
  auto r = eval::generate(*m, f.tokenizer(), "", g);
  const auto expect = read_file(fs::path(shared_) / "reference/stories260K_greedy_200.txt");
  EXPECT_EQ(r.text, expect);
  EXPECT_EQ(r.new_tokens, 200);
  EXPECT_EQ(r.ids.front(), 1);

  // Without the KV cache the same tokens come out.
  g.use_cache = false;
  g.max_new_tokens = 40;
  auto r2 = eval::generate(*m, f.tokenizer(), "", g);
  EXPECT_EQ(r2.ids, std::vector<int32_t>(r.ids.begin(), r.ids.begin() + 41));

  // A prompt is echoed, as run.c prints it.
  g.use_cache = true;
  g.max_new_tokens = 5;
  auto r3 = eval::generate(*m, f.tokenizer(), "Once upon a time", g);
  EXPECT_EQ(r3.text.rfind("Once upon a time", 0), 0u) << r3.text;

  // Each generated token's log-probability and margin are those of a full forward pass over the
  // sequence without the cache (log_softmax, top-1 minus top-2 logit).
  ASSERT_EQ(r2.logprobs.size(), 40u);
  ASSERT_EQ(r2.margins.size(), 40u);
  torch::NoGradGuard ng;
  auto x = torch::tensor(std::vector<int64_t>(r2.ids.begin(), r2.ids.end() - 1), torch::kLong).unsqueeze(0);
  auto logits = m->forward(x).squeeze(0).to(torch::kDouble);  // (T, V)
  auto lsm = torch::log_softmax(logits, -1);
  for (int64_t i = 0; i < 40; ++i) {
    const int64_t pos = r2.prompt_tokens - 1 + i;
    const int32_t id = r2.ids[static_cast<size_t>(pos + 1)];
    EXPECT_NEAR(r2.logprobs[static_cast<size_t>(i)], lsm[pos][id].item<double>(), 1e-4) << i;
    auto top2 = std::get<0>(logits[pos].topk(2));
    EXPECT_NEAR(r2.margins[static_cast<size_t>(i)], (top2[0] - top2[1]).item<double>(), 1e-4) << i;
    EXPECT_GE(r2.margins[static_cast<size_t>(i)], 0.0);
  }
}

TEST_F(Stories260K, PerplexityMatchesReferenceViaCli) {
  const auto text = fs::path(shared_) / "data/text/tinystories/validation_part1.txt";
  CLI::App app;
  cli::add_eval_command(app);
  std::vector<std::string> args = {"eval", dir_.string(), "--ppl", text.string(), "--context", "512",
                                   "--batch-size", "4", "--json"};
  std::vector<const char*> argv = {"mpqat"};
  for (const auto& a : args) argv.push_back(a.c_str());
  ::testing::internal::CaptureStdout();
  app.parse(static_cast<int>(argv.size()), argv.data());
  const auto out = ::testing::internal::GetCapturedStdout();
  const auto j = json::parse(out);  // exactly one object
  EXPECT_EQ(j["tokens"].get<int64_t>(), 269816);
  EXPECT_EQ(j["windows"].get<int64_t>(), 526);
  EXPECT_EQ(j["context"].get<int>(), 512);
  EXPECT_NEAR(j["nll"].get<double>(), 1.59429, 1e-4 * 1.59429);
  EXPECT_NEAR(j["ppl"].get<double>(), 4.9248, 1e-4 * 4.9248);
}

TEST_F(Stories260K, StreamingEqualsFullAndConvertCli) {
  model::ModelFolder f(dir_.string());
  auto m = model::load_model(f);
  auto ids = torch::randint(0, 512, {2, 64}, torch::kLong);
  torch::NoGradGuard ng;
  auto full = m->forward(ids);
  EXPECT_LT((model::forward_streaming(f, ids) - full).abs().max().item<double>(), 1e-6);

  const auto src = fs::path(shared_) / "data/models/stories260K";
  const auto out = temp_dir("cli") / "m";
  CLI::App app;
  cli::add_convert_command(app);
  std::vector<std::string> args = {"convert", "llama2c", (src / "stories260K.bin").string(), "--tokenizer",
                                   (src / "tok512.bin").string(), "--out", out.string()};
  std::vector<const char*> argv = {"mpqat"};
  for (const auto& a : args) argv.push_back(a.c_str());
  ::testing::internal::CaptureStdout();
  app.parse(static_cast<int>(argv.size()), argv.data());
  ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(read_file(out / "model.safetensors"), read_file(dir_ / "model.safetensors"));
  fs::remove_all(out.parent_path());
}
