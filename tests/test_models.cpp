// OPT and BERT models and the architecture-neutral TransformerModel interface.
// Numerics are checked against an independent reference forward written here in fp64 with
// per-row, per-head 2-D products, explicit softmax / LayerNorm / GELU (no model code reused),
// against invariances (padding, causality) and, when MPQAT_HF_PARITY_DIR is set, against
// logits computed by transformers itself (tools/check_hf_parity.py writes that folder).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "mpqat/io/safetensors.h"
#include "mpqat/model/bert.h"
#include "mpqat/model/config.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model.h"
#include "mpqat/model/opt.h"
#include "mpqat/util/error.h"
#include "float_folder.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;
using torch::indexing::Slice;

namespace {

fs::path temp_dir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("test_models", tag); }

json opt_json() {
  return json{{"architectures", {"OPTForCausalLM"}},
              {"model_type", "opt"},
              {"hidden_size", 32},
              {"ffn_dim", 48},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"vocab_size", 50},
              {"max_position_embeddings", 40},
              {"word_embed_proj_dim", 32},
              {"do_layer_norm_before", true},
              {"activation_function", "relu"},
              {"pad_token_id", 1},
              {"bos_token_id", 2},
              {"eos_token_id", 2}};
}

json opt350_json() {  // post-LN with project_in / project_out, untied head
  auto j = opt_json();
  j["do_layer_norm_before"] = false;
  j["word_embed_proj_dim"] = 16;
  j["tie_word_embeddings"] = false;
  return j;
}

json opt_cls_json() {
  auto j = opt_json();
  j["architectures"] = {"OPTForSequenceClassification"};
  j["id2label"] = {{"0", "neg"}, {"1", "neu"}, {"2", "pos"}};
  return j;
}

json bert_json() {
  return json{{"architectures", {"BertForSequenceClassification"}},
              {"model_type", "bert"},
              {"hidden_size", 32},
              {"intermediate_size", 48},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"vocab_size", 50},
              {"max_position_embeddings", 40},
              {"type_vocab_size", 2},
              {"layer_norm_eps", 1e-12},
              {"hidden_act", "gelu"},
              {"pad_token_id", 0},
              {"num_labels", 3}};
}

json llama_json() {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
              {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 50}, {"max_position_embeddings", 64}};
}

// Random model with weights large enough that every part of the network moves the output.
model::ModelPtr random_model(const json& j, uint64_t seed) {
  torch::manual_seed(seed);
  auto m = model::build_model(model::parse_model_config(j));
  torch::NoGradGuard ng;
  for (auto& item : m->named_parameters(true)) {
    const auto& n = item.key();
    auto& p = item.value();
    const bool norm = n.find("Norm") != std::string::npos || n.find("norm") != std::string::npos;
    if (norm && n.size() > 6 && n.compare(n.size() - 6, 6, "weight") == 0) p.normal_(1.0, 0.2);
    else p.normal_(0.0, 0.2);
  }
  return m;
}

// Token ids in [3, V): 0, 1, 2 are pad / special ids in these configs.
torch::Tensor random_ids(int64_t B, int64_t T, int64_t V = 50) {
  return torch::randint(3, V, {B, T}, torch::kLong);
}

// fp32 model vs fp64 reference on logits of magnitude ~3 (measured error ~1e-6; a tanh-GELU
// instead of the exact one already moves BERT by 2e-4).
constexpr double kRefTol = 2e-5;

double max_abs(const torch::Tensor& a) { return a.abs().max().item<double>(); }
double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return max_abs(a.to(torch::kDouble) - b.to(torch::kDouble));
}

// ---------------------------------------------------------------------------------------------
// Independent fp64 reference (reads parameters by their HF names)

using Params = std::map<std::string, torch::Tensor>;

Params params_of(torch::nn::Module& m) {
  Params p;
  for (const auto& item : m.named_parameters(true)) p[item.key()] = item.value().detach().to(torch::kDouble);
  return p;
}

torch::Tensor lin(const Params& P, const std::string& name, const torch::Tensor& x, bool bias = true) {
  auto y = x.mm(P.at(name + ".weight").t());
  if (bias) y = y + P.at(name + ".bias").unsqueeze(0);
  return y;
}

// x (T, C): explicit biased variance
torch::Tensor ln(const Params& P, const std::string& name, const torch::Tensor& x, double eps) {
  auto mu = x.sum(1, true) / x.size(1);
  auto d = x - mu;
  auto var = (d * d).sum(1, true) / x.size(1);
  return d / (var + eps).sqrt() * P.at(name + ".weight").unsqueeze(0) + P.at(name + ".bias").unsqueeze(0);
}

// q, k, v (T, C) for one row; allowed(t, s) decides visibility. Returns (T, C).
template <typename Allowed>
torch::Tensor ref_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t H,
                            Allowed allowed) {
  const int64_t T = q.size(0), C = q.size(1), D = C / H;
  auto out = torch::zeros({T, C}, torch::kDouble);
  for (int64_t h = 0; h < H; ++h) {
    auto qh = q.narrow(1, h * D, D), kh = k.narrow(1, h * D, D), vh = v.narrow(1, h * D, D);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> w(static_cast<size_t>(T), 0.0);
      double mx = -std::numeric_limits<double>::infinity();
      for (int64_t s = 0; s < T; ++s) {
        if (!allowed(t, s)) continue;
        w[s] = (qh[t] * kh[s]).sum().item<double>() / std::sqrt(static_cast<double>(D));
        mx = std::max(mx, w[s]);
      }
      double z = 0;
      for (int64_t s = 0; s < T; ++s) {
        w[s] = allowed(t, s) ? std::exp(w[s] - mx) : 0.0;
        z += w[s];
      }
      auto acc = torch::zeros({D}, torch::kDouble);
      for (int64_t s = 0; s < T; ++s)
        if (w[s] != 0.0) acc = acc + vh[s] * (w[s] / z);
      out.index_put_({t, Slice(h * D, (h + 1) * D)}, acc);
    }
  }
  return out;
}

torch::Tensor ref_act(const std::string& name, const torch::Tensor& x) {
  if (name == "relu") return torch::where(x > 0, x, torch::zeros_like(x));
  if (name == "gelu") return 0.5 * x * (1.0 + torch::erf(x / std::sqrt(2.0)));
  throw std::runtime_error("ref_act: " + name);
}

// OPT, one row at a time. mask (B, T) 0/1. Returns the causal LM logits (B, T, V) or, for
// classification, (B, num_labels) using the last token before the first pad.
torch::Tensor ref_opt(const Params& P, const json& j, const torch::Tensor& ids, const torch::Tensor& mask) {
  const int64_t B = ids.size(0), T = ids.size(1), H = j["num_attention_heads"], L = j["num_hidden_layers"];
  const bool pre = j["do_layer_norm_before"], cls = j["architectures"][0] == "OPTForSequenceClassification";
  const bool tied = !j.contains("tie_word_embeddings") || j["tie_word_embeddings"].get<bool>();
  const bool proj = j["word_embed_proj_dim"] != j["hidden_size"];
  const std::string act = j["activation_function"];
  const double eps = 1e-5;
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    auto x = torch::zeros({T, static_cast<int64_t>(j["hidden_size"])}, torch::kDouble);
    int64_t count = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t mt = mask[b][t].item<int64_t>();
      count += mt;
      const int64_t pos = count * mt - 1 + 2;
      auto e = P.at("model.decoder.embed_tokens.weight")[ids[b][t].item<int64_t>()].unsqueeze(0);
      if (proj) e = lin(P, "model.decoder.project_in", e, false);
      x[t] = e[0] + P.at("model.decoder.embed_positions.weight")[pos];
    }
    auto allowed = [&](int64_t t, int64_t s) { return s <= t && mask[b][s].item<int64_t>() != 0; };
    for (int64_t l = 0; l < L; ++l) {
      const std::string p = "model.decoder.layers." + std::to_string(l) + ".";
      auto a = pre ? ln(P, p + "self_attn_layer_norm", x, eps) : x;
      auto att = ref_attention(lin(P, p + "self_attn.q_proj", a), lin(P, p + "self_attn.k_proj", a),
                               lin(P, p + "self_attn.v_proj", a), H, allowed);
      x = x + lin(P, p + "self_attn.out_proj", att);
      if (!pre) x = ln(P, p + "self_attn_layer_norm", x, eps);
      auto f = pre ? ln(P, p + "final_layer_norm", x, eps) : x;
      x = x + lin(P, p + "fc2", ref_act(act, lin(P, p + "fc1", f)));
      if (!pre) x = ln(P, p + "final_layer_norm", x, eps);
    }
    if (pre) x = ln(P, "model.decoder.final_layer_norm", x, eps);
    if (proj) x = lin(P, "model.decoder.project_out", x, false);
    if (cls) {
      int64_t last = T - 1;
      for (int64_t t = 0; t < T; ++t)
        if (ids[b][t].item<int64_t>() == j["pad_token_id"].get<int64_t>()) {
          last = t - 1;
          break;
        }
      rows.push_back(lin(P, "score", x.narrow(0, last, 1), false)[0]);
    } else {
      rows.push_back(tied ? x.mm(P.at("model.decoder.embed_tokens.weight").t()) : lin(P, "lm_head", x, false));
    }
  }
  return torch::stack(rows);
}

torch::Tensor ref_bert(const Params& P, const json& j, const torch::Tensor& ids, const torch::Tensor& mask) {
  const int64_t B = ids.size(0), T = ids.size(1), H = j["num_attention_heads"], L = j["num_hidden_layers"];
  const double eps = j["layer_norm_eps"];
  const std::string act = j["hidden_act"];
  std::vector<torch::Tensor> rows;
  for (int64_t b = 0; b < B; ++b) {
    auto x = torch::zeros({T, static_cast<int64_t>(j["hidden_size"])}, torch::kDouble);
    for (int64_t t = 0; t < T; ++t)
      x[t] = P.at("bert.embeddings.word_embeddings.weight")[ids[b][t].item<int64_t>()] +
             P.at("bert.embeddings.position_embeddings.weight")[t] +
             P.at("bert.embeddings.token_type_embeddings.weight")[0];
    x = ln(P, "bert.embeddings.LayerNorm", x, eps);
    auto allowed = [&](int64_t, int64_t s) { return mask[b][s].item<int64_t>() != 0; };
    for (int64_t l = 0; l < L; ++l) {
      const std::string p = "bert.encoder.layer." + std::to_string(l) + ".";
      auto att = ref_attention(lin(P, p + "attention.self.query", x), lin(P, p + "attention.self.key", x),
                               lin(P, p + "attention.self.value", x), H, allowed);
      x = ln(P, p + "attention.output.LayerNorm", lin(P, p + "attention.output.dense", att) + x, eps);
      auto f = ref_act(act, lin(P, p + "intermediate.dense", x));
      x = ln(P, p + "output.LayerNorm", lin(P, p + "output.dense", f) + x, eps);
    }
    auto pooled = lin(P, "bert.pooler.dense", x.narrow(0, 0, 1)).tanh();
    rows.push_back(lin(P, "classifier", pooled)[0]);
  }
  return torch::stack(rows);
}

// Writes `m` as a Hugging Face folder; `rename` maps parameter names to checkpoint names.
void save_folder(torch::nn::Module& m, const json& cfg, const fs::path& dir,
                 const std::function<std::string(const std::string&)>& rename = nullptr) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << cfg.dump(2);
  mpqat::testing::write_f32_safetensors(m, dir, rename);
}

template <typename E, typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception of the expected type>";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// (a) independent reference

TEST(OPTModel, MatchesReferencePreLN) {
  auto j = opt_json();
  auto m = random_model(j, 11);
  auto ids = random_ids(2, 9);
  auto mask = torch::ones({2, 9}, torch::kLong);
  torch::NoGradGuard ng;
  auto out = m->forward(ids, torch::Tensor());
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 9, 50}));
  auto ref = ref_opt(params_of(*m), j, ids, mask);
  EXPECT_GT(max_abs(ref), 0.5);
  EXPECT_LT(max_diff(out, ref), kRefTol) << "max |ref| " << max_abs(ref);
}

TEST(OPTModel, MatchesReferencePostLNWithProjections) {
  auto j = opt350_json();
  auto m = random_model(j, 12);
  auto* opt = dynamic_cast<model::OPTForCausalLM*>(m.get());
  ASSERT_NE(opt, nullptr);
  ASSERT_NE(opt->model->decoder->project_in, nullptr);
  EXPECT_EQ(opt->model->decoder->final_layer_norm, nullptr);
  ASSERT_NE(opt->lm_head(), nullptr);
  auto ids = random_ids(2, 8);
  torch::NoGradGuard ng;
  auto out = m->forward(ids, torch::Tensor());
  auto ref = ref_opt(params_of(*m), j, ids, torch::ones({2, 8}, torch::kLong));
  EXPECT_LT(max_diff(out, ref), kRefTol) << "max |ref| " << max_abs(ref);
}

TEST(OPTModel, LeftPaddingShiftsPositionsLikeReference) {
  auto j = opt_json();
  auto m = random_model(j, 13);
  auto ids = random_ids(2, 8);
  auto mask = torch::ones({2, 8}, torch::kLong);
  mask.index_put_({1, Slice(0, 3)}, 0);  // row 1: 3 pads on the left
  ids.index_put_({1, Slice(0, 3)}, 1);
  torch::NoGradGuard ng;
  auto out = m->forward(ids, mask);
  auto ref = ref_opt(params_of(*m), j, ids, mask);
  EXPECT_LT(max_diff(out[0], ref[0]), kRefTol);
  EXPECT_LT(max_diff(out[1].narrow(0, 3, 5), ref[1].narrow(0, 3, 5)), kRefTol);
  // Left-padded row == the same tokens alone (positions restart at the first real token).
  auto alone = m->forward(ids[1].narrow(0, 3, 5).unsqueeze(0), torch::Tensor());
  EXPECT_LT(max_diff(out[1].narrow(0, 3, 5), alone[0]), 1e-5);
}

TEST(OPTModel, SequenceClassificationMatchesReference) {
  auto j = opt_cls_json();
  auto m = random_model(j, 14);
  EXPECT_FALSE(m->is_causal_lm());
  EXPECT_EQ(m->num_labels(), 3);
  auto ids = random_ids(3, 7);
  auto mask = torch::ones({3, 7}, torch::kLong);
  ids.index_put_({1, Slice(4, 7)}, 1);  // right padding with pad_token_id 1
  mask.index_put_({1, Slice(4, 7)}, 0);
  ids.index_put_({2, Slice(6, 7)}, 1);
  mask.index_put_({2, Slice(6, 7)}, 0);
  torch::NoGradGuard ng;
  auto out = m->forward(ids, mask);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{3, 3}));
  auto ref = ref_opt(params_of(*m), j, ids, mask);
  EXPECT_GT(max_abs(ref), 0.1);
  EXPECT_LT(max_diff(out, ref), kRefTol) << out << ref;
  auto idx = model::OPTForSequenceClassification::last_token_index(ids, mask, 1);
  EXPECT_EQ(idx[0].item<int64_t>(), 6);
  EXPECT_EQ(idx[1].item<int64_t>(), 3);
  EXPECT_EQ(idx[2].item<int64_t>(), 5);
}

TEST(BertModel, MatchesReferenceWithPadding) {
  auto j = bert_json();
  auto m = random_model(j, 15);
  auto ids = random_ids(3, 6);
  auto mask = torch::ones({3, 6}, torch::kLong);
  ids.index_put_({2, Slice(3, 6)}, 0);
  mask.index_put_({2, Slice(3, 6)}, 0);
  torch::NoGradGuard ng;
  auto out = m->forward(ids, mask);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{3, 3}));
  auto ref = ref_bert(params_of(*m), j, ids, mask);
  EXPECT_GT(max_abs(ref), 0.1);
  EXPECT_LT(max_diff(out, ref), kRefTol) << out << ref;
  // Without a mask every token is attended.
  auto nomask = m->forward(ids, torch::Tensor());
  auto ref2 = ref_bert(params_of(*m), j, ids, torch::ones({3, 6}, torch::kLong));
  EXPECT_LT(max_diff(nomask, ref2), kRefTol);
  EXPECT_GT(max_diff(nomask[2], out[2]), 1e-3);  // the mask matters
}

// ---------------------------------------------------------------------------------------------
// (b) invariances

TEST(Invariance, ClassifiersIgnoreRightPadding) {
  for (const auto& j : {opt_cls_json(), bert_json()}) {
    auto m = random_model(j, 21);
    const int64_t pad = j["pad_token_id"];
    auto ids = random_ids(2, 6);
    torch::NoGradGuard ng;
    auto base = m->forward(ids, torch::Tensor());
    auto padded = torch::cat({ids, torch::full({2, 4}, pad, torch::kLong)}, 1);  // (2, 10)
    auto mask = torch::cat({torch::ones({2, 6}, torch::kLong), torch::zeros({2, 4}, torch::kLong)}, 1);
    auto out = m->forward(padded, mask);
    EXPECT_LT(max_diff(out, base), 1e-5) << j["architectures"][0];
    // Padding one row of a batch does not touch the other.
    auto ids2 = torch::cat({torch::cat({ids[0], torch::full({4}, pad, torch::kLong)}).unsqueeze(0),
                            random_ids(1, 10)});
    auto mask2 = torch::ones({2, 10}, torch::kLong);
    mask2.index_put_({0, Slice(6, 10)}, 0);
    EXPECT_LT(max_diff(m->forward(ids2, mask2)[0], base[0]), 1e-5);
  }
}

TEST(Invariance, CausalOPTIgnoresLaterTokensAndRightPadding) {
  for (const auto& j : {opt_json(), opt350_json()}) {
    auto m = random_model(j, 22);
    auto ids = random_ids(2, 10);
    torch::NoGradGuard ng;
    auto full = m->forward(ids, torch::Tensor());
    for (int64_t t : {0, 4, 8}) {
      auto ids2 = ids.clone();
      ids2.index_put_({Slice(), Slice(t + 1, 10)}, random_ids(2, 9 - t));
      ids2.index_put_({Slice(), t + 1}, (ids.index({Slice(), t + 1}) - 3 + 1) % 47 + 3);
      auto out = m->forward(ids2, torch::Tensor());
      EXPECT_LT(max_diff(out.narrow(1, 0, t + 1), full.narrow(1, 0, t + 1)), 1e-6);
      EXPECT_GT(max_diff(out.narrow(1, t + 1, 1), full.narrow(1, t + 1, 1)), 1e-4);
    }
    auto padded = torch::cat({ids, torch::ones({2, 3}, torch::kLong)}, 1);
    auto mask = torch::cat({torch::ones({2, 10}, torch::kLong), torch::zeros({2, 3}, torch::kLong)}, 1);
    EXPECT_LT(max_diff(m->forward(padded, mask).narrow(1, 0, 10), full), 1e-5);
  }
}

TEST(Invariance, BlockByBlockEqualsForward) {
  for (const auto& j : {opt_json(), opt350_json(), opt_cls_json(), bert_json(), llama_json()}) {
    auto m = random_model(j, 23);
    auto ids = random_ids(2, 7);
    auto mask = torch::ones({2, 7}, torch::kLong);
    mask.index_put_({1, Slice(5, 7)}, 0);
    torch::NoGradGuard ng;
    auto ctx = m->context(ids, mask);
    auto h = m->embed(ids, ctx);
    for (int64_t i = 0; i < m->num_blocks(); ++i) h = m->block(i)->run(h, ctx);
    EXPECT_TRUE(torch::equal(m->head(h, ctx), m->forward(ids, mask))) << j["architectures"][0];
  }
}

TEST(Invariance, LlamaThroughInterfaceAcceptsRightPaddingOnly) {
  auto m = random_model(llama_json(), 24);
  auto* llama = dynamic_cast<model::LlamaForCausalLM*>(m.get());
  ASSERT_NE(llama, nullptr);
  auto ids = random_ids(2, 8);
  torch::NoGradGuard ng;
  auto mask = torch::ones({2, 8}, torch::kLong);
  mask.index_put_({1, Slice(6, 8)}, 0);
  EXPECT_TRUE(torch::equal(m->forward(ids, mask), llama->forward(ids)));
  mask.index_put_({0, 0}, 0);
  EXPECT_THROW(m->forward(ids, mask), NotImplementedError);
  EXPECT_TRUE(m->is_causal_lm());
  EXPECT_EQ(m->num_labels(), 0);
}

// ---------------------------------------------------------------------------------------------
// (c) save / load

TEST(ModelLoader, RoundTripBitwiseEqual) {
  int k = 0;
  for (const auto& j : {opt_json(), opt350_json(), opt_cls_json(), bert_json(), llama_json()}) {
    auto m = random_model(j, 31);
    const auto dir = temp_dir("rt" + std::to_string(k++));
    save_folder(*m, j, dir);
    auto loaded = model::load_any_model(model::ModelFolder(dir.string()), {torch::kCPU, /*strict=*/true});
    EXPECT_EQ(loaded->config().architecture, j["architectures"][0].get<std::string>());
    auto ids = random_ids(2, 9);
    auto mask = torch::ones({2, 9}, torch::kLong);
    mask.index_put_({0, Slice(7, 9)}, 0);
    torch::NoGradGuard ng;
    EXPECT_TRUE(torch::equal(loaded->forward(ids, mask), m->forward(ids, mask))) << j["architectures"][0];
    for (const auto& p : loaded->parameters()) EXPECT_FALSE(p.requires_grad());
    // One block loaded alone runs like the model's own.
    auto ctx = loaded->context(ids, mask);
    auto h = loaded->embed(ids, ctx);
    auto blk = model::load_any_block(model::ModelFolder(dir.string()), 1);
    EXPECT_TRUE(torch::equal(blk->run(h, ctx), loaded->run_block(1, h, ctx)));
    EXPECT_THROW(model::load_any_block(model::ModelFolder(dir.string()), 2), InputError);
    fs::remove_all(dir);
  }
}

TEST(ModelLoader, AcceptsLegacyBertAndOPTModelNames) {
  auto j = bert_json();
  auto m = random_model(j, 32);
  const auto dir = temp_dir("legacy");
  // BertModel-style checkpoint: LayerNorm.gamma / beta and no "bert." prefix (heads keep theirs).
  save_folder(*m, j, dir, [](const std::string& n) {
    std::string s = n;
    if (s.size() > 16 && s.compare(s.size() - 16, 16, "LayerNorm.weight") == 0) s = s.substr(0, s.size() - 6) + "gamma";
    if (s.size() > 14 && s.compare(s.size() - 14, 14, "LayerNorm.bias") == 0) s = s.substr(0, s.size() - 4) + "beta";
    if (s.compare(0, 5, "bert.") == 0) s = s.substr(5);
    return s;
  });
  model::ModelFolder folder(dir.string());
  EXPECT_FALSE(folder.contains("bert.embeddings.LayerNorm.weight"));
  EXPECT_TRUE(folder.contains("embeddings.LayerNorm.gamma"));
  auto loaded = model::load_any_model(folder, {torch::kCPU, true});
  auto ids = random_ids(2, 5);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(loaded->forward(ids, torch::Tensor()), m->forward(ids, torch::Tensor())));

  auto jo = opt_json();
  auto mo = random_model(jo, 33);
  const auto dir2 = temp_dir("optmodel");
  save_folder(*mo, jo, dir2, [](const std::string& n) { return n.substr(6); });  // "decoder.*"
  auto lo = model::load_any_model(model::ModelFolder(dir2.string()), {torch::kCPU, true});
  EXPECT_TRUE(torch::equal(lo->forward(ids, torch::Tensor()), mo->forward(ids, torch::Tensor())));
  fs::remove_all(dir);
  fs::remove_all(dir2);
}

TEST(ModelLoader, MissingStrictAndMisshapedTensors) {
  auto j = opt_cls_json();
  auto m = random_model(j, 34);
  const auto dir = temp_dir("bad");
  save_folder(*m, j, dir, [](const std::string& n) { return n == "score.weight" ? "classifier.weight" : n; });
  model::ModelFolder folder(dir.string());
  auto msg = error_message<InputError>([&] { model::load_any_model(folder); });
  EXPECT_NE(msg.find("score.weight"), std::string::npos) << msg;
  // Extra tensor under strict
  auto j2 = opt_json();  // causal LM reading the classifier's checkpoint: score.weight unused
  save_folder(*m, j2, dir);
  model::ModelFolder folder2(dir.string());
  EXPECT_NO_THROW(model::load_any_model(folder2));
  msg = error_message<InputError>([&] { model::load_any_model(folder2, {torch::kCPU, true}); });
  EXPECT_NE(msg.find("score.weight"), std::string::npos) << msg;
  // Wrong shape: config says ffn_dim 40
  j2["ffn_dim"] = 40;
  std::ofstream(dir / "config.json") << j2.dump();
  msg = error_message<InputError>([&] { model::load_any_model(model::ModelFolder(dir.string())); });
  EXPECT_NE(msg.find("model.decoder.layers.0.fc1.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[40, 32]"), std::string::npos) << msg;
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// (d) names and set_linear

TEST(ModelNames, NamedLinearsAreHFNames) {
  const std::vector<std::string> opt_expect = {
      "model.decoder.layers.0.self_attn.q_proj", "model.decoder.layers.0.self_attn.k_proj",
      "model.decoder.layers.0.self_attn.v_proj", "model.decoder.layers.0.self_attn.out_proj",
      "model.decoder.layers.0.fc1",              "model.decoder.layers.0.fc2",
      "model.decoder.layers.1.self_attn.q_proj", "model.decoder.layers.1.self_attn.k_proj",
      "model.decoder.layers.1.self_attn.v_proj", "model.decoder.layers.1.self_attn.out_proj",
      "model.decoder.layers.1.fc1",              "model.decoder.layers.1.fc2"};
  const std::vector<std::string> bert_expect = {
      "bert.encoder.layer.0.attention.self.query",   "bert.encoder.layer.0.attention.self.key",
      "bert.encoder.layer.0.attention.self.value",   "bert.encoder.layer.0.attention.output.dense",
      "bert.encoder.layer.0.intermediate.dense",     "bert.encoder.layer.0.output.dense",
      "bert.encoder.layer.1.attention.self.query",   "bert.encoder.layer.1.attention.self.key",
      "bert.encoder.layer.1.attention.self.value",   "bert.encoder.layer.1.attention.output.dense",
      "bert.encoder.layer.1.intermediate.dense",     "bert.encoder.layer.1.output.dense"};
  for (const auto& [j, expect] : {std::make_pair(opt_cls_json(), opt_expect), std::make_pair(bert_json(), bert_expect)}) {
    auto cfg = model::parse_model_config(j);
    auto m = model::build_model(cfg);
    std::vector<std::string> got;
    for (const auto& [n, l] : m->named_linears()) {
      got.push_back(n);
      auto [out, in] = model::block_linear_shape(cfg, n.substr(m->block_prefix(0).size()));
      EXPECT_EQ(l->out_features(), out) << n;
      EXPECT_EQ(l->in_features(), in) << n;
    }
    EXPECT_EQ(got, expect);
    EXPECT_EQ(model::quantizable_linear_names(cfg), expect);
    // Every linear is a parameter pair under its name.
    auto params = m->named_parameters(true);
    for (const auto& n : expect) {
      EXPECT_TRUE(params.contains(n + ".weight")) << n;
      EXPECT_TRUE(params.contains(n + ".bias")) << n;
    }
  }
  // Full parameter lists (HF names)
  auto opt = model::build_model(model::parse_model_config(opt_cls_json()));
  std::set<std::string> names;
  for (const auto& item : opt->named_parameters(true)) names.insert(item.key());
  EXPECT_TRUE(names.count("model.decoder.embed_tokens.weight"));
  EXPECT_TRUE(names.count("model.decoder.embed_positions.weight"));
  EXPECT_TRUE(names.count("model.decoder.final_layer_norm.bias"));
  EXPECT_TRUE(names.count("model.decoder.layers.1.self_attn_layer_norm.weight"));
  EXPECT_TRUE(names.count("model.decoder.layers.1.final_layer_norm.weight"));
  EXPECT_TRUE(names.count("score.weight"));
  EXPECT_EQ(names.size(), 2u + 2u + 1u + 2u * 16u);
  EXPECT_EQ(opt->named_parameters()["model.decoder.embed_positions.weight"].size(0), 42);
  auto bert = model::build_model(model::parse_model_config(bert_json()));
  names.clear();
  for (const auto& item : bert->named_parameters(true)) names.insert(item.key());
  for (const char* n : {"bert.embeddings.word_embeddings.weight", "bert.embeddings.position_embeddings.weight",
                        "bert.embeddings.token_type_embeddings.weight", "bert.embeddings.LayerNorm.weight",
                        "bert.encoder.layer.1.attention.output.LayerNorm.bias",
                        "bert.encoder.layer.0.output.LayerNorm.weight", "bert.pooler.dense.weight",
                        "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"})
    EXPECT_TRUE(names.count(n)) << n;
  EXPECT_EQ(names.size(), 3u + 2u + 2u * 16u + 2u + 2u);
}

TEST(ModelNames, SetLinearSwapsEverywhere) {
  struct Zero : model::LinearImpl {
    using LinearImpl::LinearImpl;
    torch::Tensor forward(const torch::Tensor& x) override { return torch::zeros_like(LinearImpl::forward(x)); }
  };
  for (const auto& [j, name, rel] :
       {std::make_tuple(opt_json(), std::string("model.decoder.layers.1.fc2"), std::string("fc2")),
        std::make_tuple(bert_json(), std::string("bert.encoder.layer.1.attention.self.value"),
                        std::string("attention.self.value")),
        std::make_tuple(llama_json(), std::string("model.layers.1.mlp.down_proj"), std::string("mlp.down_proj"))}) {
    auto m = random_model(j, 41);
    auto ids = random_ids(1, 6);
    torch::NoGradGuard ng;
    auto before = m->forward(ids, torch::Tensor());
    auto old = m->linear(name);
    auto z = std::make_shared<Zero>(old->in_features(), old->out_features(), old->has_bias());
    m->set_linear(name, z);
    EXPECT_EQ(m->linear(name).get(), z.get());
    EXPECT_EQ(m->block(1)->linear(rel).get(), z.get());
    EXPECT_EQ(m->named_modules()[name].get(), z.get()) << name;
    int found = 0;
    for (const auto& [n, l] : m->named_linears())
      if (n == name) found += l.get() == z.get();
    EXPECT_EQ(found, 1);
    EXPECT_GT(max_diff(m->forward(ids, torch::Tensor()), before), 1e-4);
    // swap back restores the output exactly
    m->set_linear(name, old);
    EXPECT_TRUE(torch::equal(m->forward(ids, torch::Tensor()), before));
    auto wrong = std::make_shared<model::LinearImpl>(old->in_features() + 1, old->out_features(), true);
    EXPECT_THROW(m->set_linear(name, wrong), Error);
    EXPECT_THROW(m->set_linear(name + "x", old), InputError);
    EXPECT_THROW(m->linear("nope.0.fc1"), InputError);
    EXPECT_THROW(m->block(1)->linear("nope"), InputError);
    EXPECT_THROW(m->block(2), Error);
  }
}

// ---------------------------------------------------------------------------------------------
// (e) config errors

TEST(ModelConfigErrors, OPTAndBert) {
  auto j = opt_json();
  j.erase("ffn_dim");
  auto msg = error_message<InputError>([&] { model::parse_model_config(j, "o/config.json"); });
  EXPECT_NE(msg.find("o/config.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("ffn_dim"), std::string::npos) << msg;

  j = opt_json();
  j["activation_function"] = "mish";
  msg = error_message<InputError>([&] { model::parse_model_config(j, "o/config.json"); });
  EXPECT_NE(msg.find("activation_function"), std::string::npos) << msg;

  j = opt_cls_json();
  j.erase("id2label");
  EXPECT_EQ(model::parse_model_config(j).num_labels, 2);  // transformers' default
  j["num_labels"] = 5;
  EXPECT_EQ(model::parse_model_config(j).num_labels, 5);
  j["num_labels"] = 0;
  msg = error_message<InputError>([&] { model::parse_model_config(j); });
  EXPECT_NE(msg.find("num_labels"), std::string::npos) << msg;
  EXPECT_EQ(model::parse_model_config(opt_json()).num_labels, 0);

  auto b = bert_json();
  b["architectures"] = {"BertForMaskedLM"};
  msg = error_message<NotImplementedError>([&] { model::build_model(model::parse_model_config(b)); });
  EXPECT_NE(msg.find("BertForMaskedLM"), std::string::npos) << msg;
  b = bert_json();
  b["position_embedding_type"] = "relative_key";
  msg = error_message<NotImplementedError>([&] { model::build_model(model::parse_model_config(b)); });
  EXPECT_NE(msg.find("relative_key"), std::string::npos) << msg;
  b = bert_json();
  b["hidden_act"] = 3;
  msg = error_message<InputError>([&] { model::parse_model_config(b, "b/config.json"); });
  EXPECT_NE(msg.find("hidden_act"), std::string::npos) << msg;
  b = bert_json();
  b["num_attention_heads"] = 5;
  EXPECT_THROW(model::parse_model_config(b), InputError);

  // Llama classes refuse other families; the factory dispatches.
  EXPECT_THROW(model::LlamaForCausalLM(model::parse_model_config(opt_json())), NotImplementedError);
  EXPECT_THROW(model::OPTForCausalLM(model::parse_model_config(bert_json())), InputError);

  // Run-time input errors
  auto m = random_model(opt_json(), 51);
  torch::NoGradGuard ng;
  msg = error_message<InputError>([&] { m->forward(random_ids(1, 41), torch::Tensor()); });
  EXPECT_NE(msg.find("max_position_embeddings"), std::string::npos) << msg;
  EXPECT_THROW(m->forward(random_ids(1, 5), torch::ones({1, 4}, torch::kLong)), InputError);
  auto mb = random_model(bert_json(), 52);
  EXPECT_THROW(mb->forward(random_ids(1, 41), torch::Tensor()), InputError);
}

TEST(ModelConfigErrors, ConfigJsonRoundTrip) {
  for (const auto& j : {opt350_json(), opt_cls_json(), bert_json()}) {
    auto c = model::parse_model_config(j);
    auto c2 = model::parse_model_config(model::model_config_to_json(c));
    EXPECT_EQ(c2.architecture, c.architecture);
    EXPECT_EQ(c2.intermediate_size, c.intermediate_size);
    EXPECT_EQ(c2.word_embed_proj_dim, c.word_embed_proj_dim);
    EXPECT_EQ(c2.do_layer_norm_before, c.do_layer_norm_before);
    EXPECT_EQ(c2.final_layer_norm, c.final_layer_norm);
    EXPECT_EQ(c2.tie_word_embeddings, c.tie_word_embeddings);
    EXPECT_EQ(c2.num_labels, c.num_labels);
    EXPECT_EQ(c2.pad_token_id, c.pad_token_id);
    EXPECT_EQ(c2.rms_norm_eps, c.rms_norm_eps);
    EXPECT_EQ(c2.hidden_act, c.hidden_act);
    // num_parameters agrees with the built model
    auto m = model::create_model(c);
    int64_t n = 0;
    for (const auto& p : m->parameters()) n += p.numel();
    EXPECT_EQ(c.num_parameters(), n) << c.architecture;
  }
}

// ---------------------------------------------------------------------------------------------
// Parity with transformers (folder written by tools/check_hf_parity.py on a machine that has it)

namespace {

// Minimal .npy reader: little-endian float32 ('<f4') or int64 ('<i8'), C order.
torch::Tensor read_npy(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path.string());
  char magic[6];
  in.read(magic, 6);
  if (std::memcmp(magic, "\x93NUMPY", 6) != 0) throw std::runtime_error(path.string() + ": not a .npy file");
  unsigned char ver[2];
  in.read(reinterpret_cast<char*>(ver), 2);
  uint32_t hlen = 0;
  if (ver[0] == 1) {
    unsigned char b[2];
    in.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    in.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  torch::ScalarType st;
  if (header.find("'<f4'") != std::string::npos) st = torch::kFloat;
  else if (header.find("'<i8'") != std::string::npos) st = torch::kLong;
  else throw std::runtime_error(path.string() + ": dtype must be <f4 or <i8: " + header);
  if (header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path.string() + ": Fortran order not supported");
  const auto a = header.find("'shape': (");
  const auto e = header.find(')', a);
  std::vector<int64_t> shape;
  std::string dims = header.substr(a + 10, e - a - 10);
  size_t p = 0;
  while (p < dims.size()) {
    while (p < dims.size() && (dims[p] == ' ' || dims[p] == ',')) ++p;
    if (p >= dims.size()) break;
    size_t q = p;
    while (q < dims.size() && std::isdigit(static_cast<unsigned char>(dims[q]))) ++q;
    shape.push_back(std::stoll(dims.substr(p, q - p)));
    p = q;
  }
  auto t = torch::empty(shape, torch::TensorOptions().dtype(st));
  in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
  if (!in) throw std::runtime_error(path.string() + ": truncated");
  return t;
}

}  // namespace

// The reader against headers laid out as numpy's format 1.0 writes them.
TEST(HFParity, NpyReader) {
  const auto dir = temp_dir("npy");
  auto write = [&](const std::string& name, const std::string& dict, const void* data, size_t n) {
    std::string h = dict;
    while ((10 + h.size() + 1) % 64 != 0) h += ' ';
    h += '\n';
    std::ofstream out(dir / name, std::ios::binary);
    out.write("\x93NUMPY\x01\x00", 8);
    const unsigned char len[2] = {static_cast<unsigned char>(h.size() & 0xff), static_cast<unsigned char>(h.size() >> 8)};
    out.write(reinterpret_cast<const char*>(len), 2);
    out << h;
    out.write(static_cast<const char*>(data), static_cast<std::streamsize>(n));
  };
  const float f[6] = {1.5f, -2.f, 3.f, 4.f, 5.f, 6.25f};
  const int64_t i[3] = {7, -8, 9};
  write("f.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f, sizeof f);
  write("i.npy", "{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", i, sizeof i);
  auto tf = read_npy(dir / "f.npy");
  auto ti = read_npy(dir / "i.npy");
  ASSERT_EQ(tf.sizes(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(tf[1][2].item<float>(), 6.25f);
  EXPECT_EQ(tf[0][1].item<float>(), -2.f);
  ASSERT_EQ(ti.sizes(), (std::vector<int64_t>{3}));
  EXPECT_EQ(ti[1].item<int64_t>(), -8);
  write("d.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }", f, 8);
  EXPECT_THROW(read_npy(dir / "d.npy"), std::runtime_error);
  fs::remove_all(dir);
}

TEST(HFParity, LogitsMatchTransformers) {
  const char* dir = std::getenv("MPQAT_HF_PARITY_DIR");
  if (dir == nullptr)
    GTEST_SKIP() << "MPQAT_HF_PARITY_DIR not set (run tools/check_hf_parity.py OUT on a machine with "
                    "transformers, then point MPQAT_HF_PARITY_DIR at OUT)";
  int cases = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const auto d = entry.path();
    if (!fs::exists(d / "logits.npy")) continue;
    SCOPED_TRACE(d.string());
    auto ids = read_npy(d / "input_ids.npy");
    auto mask = read_npy(d / "attention_mask.npy");
    auto expect = read_npy(d / "logits.npy");
    auto m = model::load_any_model(model::ModelFolder((d / "model").string()), {torch::kCPU, true});
    torch::NoGradGuard ng;
    auto got = m->forward(ids, mask);
    ASSERT_EQ(got.sizes(), expect.sizes());
    const double scale = std::max(1.0, max_abs(expect));
    if (m->is_causal_lm()) {
      // Only real tokens: logits at padded positions are not defined the same way.
      auto keep = mask.ne(0).unsqueeze(-1).expand_as(got);
      EXPECT_LT(max_abs(got.masked_select(keep) - expect.masked_select(keep)), 1e-4 * scale);
    } else {
      EXPECT_LT(max_diff(got, expect), 1e-4 * scale) << got << expect;
    }
    ++cases;
  }
  EXPECT_GT(cases, 0) << "no case folders (with logits.npy) under " << dir;
}
