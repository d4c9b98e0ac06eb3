// Sensitivity ([M4]): calibration sampling, the diagonal empirical Fisher (against the closed
// form of softmax regression), the Omega table, sensitivity.json as the allocator reads it, and
// the two-rank Fisher against the one-rank one.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "mpqat/alloc/allocate.h"
#include "mpqat/data/calibration.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/dist/launcher.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/quantizer.h"
#include "mpqat/sensitivity/fisher.h"
#include "mpqat/sensitivity/output_sensitivity.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/sensitivity/sensitivity_json.h"
#include "mpqat/util/error.h"
#include "run_command.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

// One token per byte (id = byte + 3), BOS 1, EOS 2: token positions are checkable by hand.
class ByteTokenizer : public data::Tokenizer {
 public:
  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool add_eos) const override {
    std::vector<int32_t> v;
    if (add_bos) v.push_back(1);
    for (unsigned char c : text) v.push_back(static_cast<int32_t>(c) + 3);
    if (add_eos) v.push_back(2);
    return v;
  }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  std::string decode_piece(int32_t, int32_t) const override { return ""; }
  int32_t vocab_size() const override { return 259; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  std::string kind() const override { return "test-bytes"; }
};

std::string temp_file(const std::string& name, const std::string& content) {
  auto p = fs::temp_directory_path() / ("mpqat_sens_" + std::to_string(::getpid()) + "_" + name);
  std::ofstream(p, std::ios::binary) << content;
  return p.string();
}

json tiny_llama_json(int layers = 2) {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
              {"intermediate_size", 48}, {"num_hidden_layers", layers}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 64}, {"max_position_embeddings", 256},
              {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
}

std::shared_ptr<model::TransformerModel> tiny_model(const json& j, uint64_t seed) {
  torch::manual_seed(seed);
  return model::build_model(model::parse_model_config(j, "tiny"));
}

std::vector<std::vector<int32_t>> random_sequences(int n, int len, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> s(n, std::vector<int32_t>(len));
  for (auto& q : s)
    for (auto& t : q) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  return s;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Calibration

TEST(Calibration, TextWindowsAreSeededSlicesOfTheStream) {
  std::string text;
  for (int i = 0; i < 400; ++i) text += static_cast<char>('a' + (i * 7) % 26);
  const auto path = temp_file("text.txt", text);
  ByteTokenizer tok;
  const auto stream = data::tokenize_calibration_file(path, tok);
  ASSERT_EQ(stream.size(), 401u);
  EXPECT_EQ(stream[0], 1);  // BOS once, at the start of the file
  EXPECT_EQ(stream[1], 'a' + 3);
  data::CalibrationOptions o;
  o.samples = 8;
  o.seqlen = 16;
  o.seed = 5;
  const auto a = data::load_token_calibration(path, tok, o);
  const auto b = data::load_token_calibration(path, tok, o);
  o.seed = 6;
  const auto c = data::load_token_calibration(path, tok, o);
  EXPECT_FALSE(a.consecutive);
  EXPECT_EQ(a.total_tokens, 401);
  ASSERT_EQ(a.sequences.size(), 8u);
  EXPECT_EQ(a.sequences, b.sequences);
  EXPECT_NE(a.sequences, c.sequences);
  for (const auto& s : a.sequences) {
    ASSERT_EQ(s.size(), 16u);
    bool found = false;
    for (std::size_t st = 0; st + 16 <= stream.size() && !found; ++st)
      found = std::equal(s.begin(), s.end(), stream.begin() + static_cast<std::ptrdiff_t>(st));
    EXPECT_TRUE(found);
  }
}

TEST(Calibration, ShortFileGivesConsecutiveWindows) {
  const auto path = temp_file("short.txt", std::string(49, 'x'));  // 50 tokens with BOS
  ByteTokenizer tok;
  data::CalibrationOptions o;
  o.samples = 10;
  o.seqlen = 16;
  const auto c = data::load_token_calibration(path, tok, o);
  EXPECT_TRUE(c.consecutive);
  ASSERT_EQ(c.sequences.size(), 3u);  // floor(50 / 16)
  EXPECT_EQ(c.sequences[0][0], 1);
  EXPECT_EQ(c.sequences[1][0], 'x' + 3);
}

TEST(Calibration, TooShortFileNamesFileAndCounts) {
  const auto path = temp_file("tiny.txt", "abc");
  ByteTokenizer tok;
  data::CalibrationOptions o;
  o.samples = 2;
  o.seqlen = 16;
  const auto msg = error_of([&] { data::load_token_calibration(path, tok, o); });
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
  EXPECT_NE(msg.find("4 tokens found"), std::string::npos) << msg;
  EXPECT_NE(msg.find("16 needed"), std::string::npos) << msg;
  EXPECT_THROW(data::load_token_calibration("/nonexistent/x.txt", tok, o), InputError);
  o.seqlen = 0;
  EXPECT_THROW(data::load_token_calibration(path, tok, o), InputError);
}

TEST(Calibration, JsonlDocumentsJoinedWithEosBos) {
  const auto path = temp_file("docs.jsonl", "{\"text\": \"ab\"}\n\n{\"text\": \"c\", \"id\": 3}\n");
  ByteTokenizer tok;
  const auto s = data::tokenize_calibration_file(path, tok);
  EXPECT_EQ(s, (std::vector<int32_t>{1, 'a' + 3, 'b' + 3, 2, 1, 'c' + 3}));
  const auto bad = temp_file("bad.jsonl", "{\"text\": \"ab\"}\n{\"body\": 1}\n");
  const auto msg = error_of([&] { data::tokenize_calibration_file(bad, tok); });
  EXPECT_NE(msg.find(bad + ":2"), std::string::npos) << msg;
}

TEST(Calibration, StratifiedIsBalancedAndSeeded) {
  data::ClassificationData d;
  d.path = "mem";
  d.label_names = {"neg", "pos", "neutral"};
  for (int i = 0; i < 100; ++i) {
    d.texts.push_back("t" + std::to_string(i));
    d.labels.push_back(i < 80 ? 0 : (i < 95 ? 1 : 2));  // 80 / 15 / 5
  }
  auto count = [](const data::LabelledCalibration& c) {
    std::map<int64_t, int> m;
    for (auto l : c.labels) ++m[l];
    return m;
  };
  const auto s = data::sample_labelled(d, 12, data::Sampling::Stratified, 3);
  EXPECT_EQ(count(s), (std::map<int64_t, int>{{0, 4}, {1, 4}, {2, 4}}));
  const auto s2 = data::sample_labelled(d, 30, data::Sampling::Stratified, 3);
  EXPECT_EQ(count(s2), (std::map<int64_t, int>{{0, 13}, {1, 12}, {2, 5}}));  // label 2 runs out
  for (std::size_t i = 0; i < s2.texts.size(); ++i) {
    EXPECT_EQ(s2.texts[i], d.texts[static_cast<std::size_t>(s2.source_index[i])]);
    EXPECT_EQ(s2.labels[i], d.labels[static_cast<std::size_t>(s2.source_index[i])]);
  }
  std::set<int64_t> uniq(s2.source_index.begin(), s2.source_index.end());
  EXPECT_EQ(uniq.size(), 30u);
  EXPECT_EQ(data::sample_labelled(d, 12, data::Sampling::Stratified, 3).source_index, s.source_index);
  EXPECT_NE(data::sample_labelled(d, 12, data::Sampling::Stratified, 4).source_index, s.source_index);
  const auto r = data::sample_labelled(d, 20, data::Sampling::Random, 9);
  EXPECT_EQ(r.source_index, data::sample_labelled(d, 20, data::Sampling::Random, 9).source_index);
  EXPECT_EQ(data::sample_labelled(d, 500, data::Sampling::Random, 9).texts.size(), 100u);
  EXPECT_THROW(data::sample_labelled(d, 0, data::Sampling::Random, 9), InputError);
  EXPECT_THROW(data::parse_sampling("balanced"), InputError);
  EXPECT_EQ(data::parse_sampling("stratified"), data::Sampling::Stratified);
}

TEST(Calibration, LabelledFromTsv) {
  const auto path = temp_file("cls.tsv", "sentence\tlabel\na\t0\nb\t1\nc\t0\nd\t0\ne\t1\n");
  const auto c = data::load_labelled_calibration(path, 4, data::Sampling::Stratified, 1);
  ASSERT_EQ(c.labels.size(), 4u);
  int ones = 0;
  for (auto l : c.labels) ones += l == 1;
  EXPECT_EQ(ones, 2);
  EXPECT_EQ(c.path, path);
}

// ---------------------------------------------------------------------------------------------
// Fisher

TEST(Fisher, SoftmaxRegressionMatchesClosedForm) {
  // logits = W x; for sample (x, y): dCE/dW = (softmax(Wx) - onehot(y)) x^T, so the empirical
  // Fisher is the sum over samples of its square. The formula is evaluated in fp64 by hand.
  const int K = 4, D = 5, N = 7;
  torch::manual_seed(3);
  auto W = torch::randn({K, D}).requires_grad_(true);
  auto X = torch::randn({N, D});
  std::vector<int64_t> Y = {0, 3, 1, 1, 2, 0, 3};
  auto loss_fn = [&](int64_t i) {
    auto logits = torch::matmul(W, X[i]).unsqueeze(0);  // (1, K)
    return torch::nn::functional::cross_entropy(logits, torch::tensor({Y[static_cast<std::size_t>(i)]}));
  };
  auto F = sensitivity::empirical_fisher(N, loss_fn, {W});
  ASSERT_EQ(F.size(), 1u);
  auto w = W.detach().to(torch::kFloat64);
  auto x = X.to(torch::kFloat64);
  auto wa = w.accessor<double, 2>();
  auto xa = x.accessor<double, 2>();
  std::vector<double> expect(K * D, 0.0);
  for (int n = 0; n < N; ++n) {
    std::vector<double> z(K), p(K);
    double mx = -1e300, den = 0;
    for (int k = 0; k < K; ++k) {
      z[k] = 0;
      for (int d = 0; d < D; ++d) z[k] += wa[k][d] * xa[n][d];
      mx = std::max(mx, z[k]);
    }
    for (int k = 0; k < K; ++k) den += std::exp(z[k] - mx);
    for (int k = 0; k < K; ++k) p[k] = std::exp(z[k] - mx) / den;
    for (int k = 0; k < K; ++k)
      for (int d = 0; d < D; ++d) {
        const double g = (p[k] - (k == Y[n] ? 1.0 : 0.0)) * xa[n][d];
        expect[k * D + d] += g * g;
      }
  }
  auto f = F[0].to(torch::kFloat64);
  auto fa = f.accessor<double, 2>();
  for (int k = 0; k < K; ++k)
    for (int d = 0; d < D; ++d) EXPECT_NEAR(fa[k][d], expect[k * D + d], 1e-5 * (1 + expect[k * D + d]));
  EXPECT_FALSE(W.grad().defined());  // the gradient buffer is released at the end
}

TEST(Fisher, CausalLmItemsAreSummedAndWeightsRestored) {
  auto m = tiny_model(tiny_llama_json(), 11);
  auto seqs = random_sequences(3, 12, 64, 2);
  // requires_grad comes back as it was (mixed on purpose).
  auto params = m->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) params[i].requires_grad_(i % 2 == 0);
  auto r = sensitivity::fisher_causal_lm(*m, seqs);
  for (std::size_t i = 0; i < params.size(); ++i) EXPECT_EQ(params[i].requires_grad(), i % 2 == 0);
  for (auto& p : params) p.requires_grad_(false);
  auto lin = m->named_linears();
  ASSERT_EQ(r.names.size(), lin.size());
  ASSERT_EQ(r.fisher.size(), lin.size());
  // Brute force: the squared gradient of each sequence's mean next-token loss via autograd::grad.
  std::vector<torch::Tensor> ws;
  for (auto& [n, l] : lin) ws.push_back(l->weight.requires_grad_(true));
  std::vector<torch::Tensor> expect(lin.size());
  for (const auto& s : seqs) {
    std::vector<int64_t> v(s.begin(), s.end());
    auto ids = torch::tensor(v).view({1, -1});
    auto logits = m->forward(ids, torch::Tensor());  // (1, T, V)
    const int64_t T = ids.size(1);
    auto logp = torch::log_softmax(logits[0].slice(0, 0, T - 1), -1);  // (T-1, V)
    auto loss = -logp.gather(1, ids[0].slice(0, 1, T).unsqueeze(1)).mean();
    auto g = torch::autograd::grad({loss}, ws);
    for (std::size_t k = 0; k < ws.size(); ++k)
      expect[k] = expect[k].defined() ? expect[k] + g[k] * g[k] : g[k] * g[k];
  }
  for (auto& w : ws) w.requires_grad_(false);
  for (std::size_t k = 0; k < lin.size(); ++k) {
    EXPECT_EQ(r.names[k], lin[k].first);
    EXPECT_TRUE(torch::allclose(r.fisher[k], expect[k], 1e-4, 1e-9)) << r.names[k];
    EXPECT_GT(r.fisher[k].sum().item<double>(), 0.0) << r.names[k];
  }
}

TEST(Fisher, ClassifierUsesLabelLoss) {
  json j = {{"architectures", {"BertForSequenceClassification"}}, {"model_type", "bert"}, {"hidden_size", 32},
            {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 50},
            {"max_position_embeddings", 40}, {"type_vocab_size", 2}, {"layer_norm_eps", 1e-12},
            {"hidden_act", "gelu"}, {"pad_token_id", 0}, {"num_labels", 3}};
  auto m = tiny_model(j, 4);
  auto ids = random_sequences(4, 9, 50, 8);
  std::vector<int64_t> labels = {0, 2, 1, 2};
  auto r = sensitivity::fisher_classifier(*m, ids, labels);
  ASSERT_FALSE(r.fisher.empty());
  // One item's Fisher is its squared gradient: item-wise additivity, checked on a split.
  auto a = sensitivity::fisher_classifier(*m, {ids[0], ids[1]}, {0, 2});
  auto b = sensitivity::fisher_classifier(*m, {ids[2], ids[3]}, {1, 2});
  for (std::size_t k = 0; k < r.fisher.size(); ++k) {
    EXPECT_TRUE(torch::allclose(r.fisher[k], a.fisher[k] + b.fisher[k], 1e-4, 1e-10)) << r.names[k];
    EXPECT_GT(r.fisher[k].sum().item<double>(), 0.0);
  }
  const auto msg = error_of([&] { sensitivity::fisher_classifier(*m, ids, {0, 1, 3, 0}); });
  EXPECT_NE(msg.find("label 3"), std::string::npos) << msg;
  EXPECT_THROW(sensitivity::fisher_causal_lm(*m, ids), InputError);
}

TEST(Fisher, ErrorCases) {
  auto m = tiny_model(tiny_llama_json(), 1);
  EXPECT_THROW(sensitivity::fisher_causal_lm(*m, {{5}}), InputError);
  EXPECT_THROW(sensitivity::fisher_classifier(*m, {{5, 6}}, {0}), InputError);
  auto w = torch::randn({4, 64});
  EXPECT_THROW(sensitivity::omega(w, torch::ones_like(w), 7, 32), InputError);
  EXPECT_THROW(sensitivity::omega(w, torch::ones_like(w), 4, 48), InputError);
}

// ---------------------------------------------------------------------------------------------
// Omega

TEST(Omega, DecreasesAsBitsGrow) {
  auto m = tiny_model(tiny_llama_json(), 5);
  auto r = sensitivity::fisher_causal_lm(*m, random_sequences(4, 16, 64, 3));
  auto lin = m->named_linears();
  for (std::size_t k = 0; k < lin.size(); ++k) {
    const auto& w = lin[k].second->weight;
    auto t = sensitivity::omega_table(w, r.fisher[k], {2, 3, 4, 5, 6, 8}, {32, -1});
    EXPECT_EQ(t.size(), 13u);
    EXPECT_EQ(t.at("16"), 0.0);
    for (const char* g : {"32", "-1"}) {
      double prev = INFINITY;
      for (int b : {2, 3, 4, 5, 6, 8}) {
        const double v = t.at(std::to_string(b) + ":" + g);
        EXPECT_GT(v, 0.0);
        EXPECT_LT(v, prev) << lin[k].first << " " << b << ":" << g;
        prev = v;
      }
    }
  }
  // F = 1 everywhere: Omega is half the squared quantization error, ~ 4^-b for a fine grid
  // (each doubling of the levels quarters the error: check the 6 -> 8 step is ~16x).
  auto w = torch::randn({64, 256});
  auto ones = torch::ones_like(w);
  const double o6 = sensitivity::omega(w, ones, 6, 32), o8 = sensitivity::omega(w, ones, 8, 32);
  EXPECT_GT(o6 / o8, 10.0);
  EXPECT_LT(o6 / o8, 25.0);
  EXPECT_EQ(sensitivity::omega(w, torch::zeros_like(w), 2, 32), 0.0);
}

// ---------------------------------------------------------------------------------------------
// sensitivity.json

sensitivity::SensitivityReport report_for(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& seqs) {
  auto r = sensitivity::fisher_causal_lm(m, seqs);
  sensitivity::SensitivityReport rep;
  rep.model_path = "/tmp/tiny";
  rep.architecture = m.config().architecture;
  rep.num_hidden_layers = m.num_blocks();
  rep.calib_path = "mem";
  rep.samples = static_cast<int64_t>(seqs.size());
  rep.seqlen = static_cast<int64_t>(seqs[0].size());
  rep.metrics = {"fisher"};
  rep.probe_bits = 3;
  rep.group_size = 32;
  auto lin = m.named_linears();
  for (std::size_t k = 0; k < lin.size(); ++k) {
    sensitivity::ModuleEntry e;
    e.name = lin[k].first;
    e.block = static_cast<int64_t>(std::stoll(e.name.substr(std::string("model.layers.").size())));
    e.omega = sensitivity::omega_table(lin[k].second->weight, r.fisher[k], {2, 3, 4, 8}, {32, -1});
    e.score = e.omega.at("3:32");
    rep.modules.push_back(e);
  }
  return rep;
}

TEST(SensitivityJson, AcceptedByTheAllocator) {
  const json cfg = tiny_llama_json();
  auto m = tiny_model(cfg, 9);
  const auto rep = report_for(*m, random_sequences(2, 10, 64, 4));
  const auto path = (fs::temp_directory_path() / ("mpqat_sens_" + std::to_string(::getpid()) + ".json")).string();
  const auto txt = sensitivity::write_sensitivity(rep, path);
  EXPECT_EQ(txt.substr(txt.size() - 4), ".txt");
  const auto s = alloc::load_sensitivity(path);
  const auto layout = alloc::layout_from_config(model::parse_model_config(cfg, "tiny"));
  EXPECT_NO_THROW(alloc::check_sensitivity(s, layout));
  EXPECT_EQ(s.modules.size(), layout.linears.size());
  ASSERT_EQ(s.blocks.size(), 2u);
  // Blocks are the sums of their modules; allocation reads the per-module omegas back exactly.
  double b0 = 0;
  for (const auto& e : rep.modules)
    if (e.block == 0) b0 += e.score;
  const json j = json::parse(std::ifstream(path));
  EXPECT_EQ(j["version"], 1);
  EXPECT_NEAR(j["blocks"]["0"]["score"].get<double>(), b0, 1e-12 * b0);
  for (const auto& lin : layout.linears) {
    alloc::Choice c;
    c.bits = 4;
    c.group_size = -1;
    const auto& e = *std::find_if(rep.modules.begin(), rep.modules.end(), [&](const auto& x) { return x.name == lin.name; });
    EXPECT_DOUBLE_EQ(alloc::module_omega(s, lin, c), e.omega.at("4:-1"));
  }
  // Stable for a fixed input: the same bytes twice.
  EXPECT_EQ(sensitivity::sensitivity_to_json(rep).dump(2), sensitivity::sensitivity_to_json(report_for(*m, random_sequences(2, 10, 64, 4))).dump(2));
  // A model with one more block is refused (the file lacks its modules).
  const auto bigger = alloc::layout_from_config(model::parse_model_config(tiny_llama_json(3), "tiny3"));
  EXPECT_THROW(alloc::check_sensitivity(s, bigger), InputError);
  fs::remove(path);
  fs::remove(txt);
}

// ---------------------------------------------------------------------------------------------
// Distributed

TEST(FisherDist, TwoRanksEqualOneRank) {
  auto seqs = random_sequences(5, 12, 64, 21);  // odd count: ranks get 3 and 2 sequences
  auto ref_model = tiny_model(tiny_llama_json(), 13);
  const auto ref = sensitivity::fisher_causal_lm(*ref_model, seqs);
  // Each rank needs its own model (autograd state is per module); same seed -> same weights.
  std::vector<std::shared_ptr<model::TransformerModel>> models = {tiny_model(tiny_llama_json(), 13),
                                                                  tiny_model(tiny_llama_json(), 13)};
  const int port = dist::find_free_port();
  dist::Options opts;
  opts.backend = "gloo";
  opts.timeout = std::chrono::seconds(60);
  std::vector<sensitivity::FisherResult> res(2);
  std::vector<std::string> errors(2);
  auto body = [&](int r) {
    try {
      dist::LaunchEnv e;
      e.present = true;
      e.rank = e.local_rank = r;
      e.world_size = e.local_world_size = 2;
      e.master_port = port;
      auto c = dist::Communicator::create(e, opts);
      res[r] = sensitivity::fisher_causal_lm(*models[r], seqs, c.get());
    } catch (const std::exception& ex) {
      errors[r] = ex.what();
    }
  };
  std::thread t0(body, 0), t1(body, 1);
  t0.join();
  t1.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    ASSERT_EQ(res[r].fisher.size(), ref.fisher.size());
    for (std::size_t k = 0; k < ref.fisher.size(); ++k)
      EXPECT_TRUE(torch::allclose(res[r].fisher[k], ref.fisher[k], 1e-5, 1e-10)) << ref.names[k] << " rank " << r;
  }
}

// ---------------------------------------------------------------------------------------------
// Output mode (CCA family)

namespace {

// Records every input a linear sees (test-side, independent of the library's observer).
class RecordLinear : public model::LinearImpl {
 public:
  explicit RecordLinear(model::LinearPtr orig)
      : model::LinearImpl(orig->in_features(), orig->out_features(), orig->has_bias()), orig_(orig) {}
  torch::Tensor forward(const torch::Tensor& x) override {
    inputs.push_back(x.detach().reshape({-1, x.size(-1)}).clone());
    return orig_->forward(x);
  }
  model::LinearPtr orig_;
  std::vector<torch::Tensor> inputs;
};

Eigen::MatrixXd eig(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  Eigen::MatrixXd m(c.size(0), c.size(1));
  auto a = c.accessor<double, 2>();
  for (int64_t i = 0; i < c.size(0); ++i)
    for (int64_t j = 0; j < c.size(1); ++j) m(i, j) = a[i][j];
  return m;
}

}  // namespace

TEST(OutputSensitivity, MatchesDirectMetricsOnRecordedInputs) {
  auto m = tiny_model(tiny_llama_json(), 17);
  torch::NoGradGuard ng;
  const auto seqs = random_sequences(6, 16, 64, 5);  // 96 tokens > 48 output columns
  sensitivity::OutputSensitivityOptions o;
  o.metrics = {"cka", "pwcca", "cka-debiased"};
  o.probe_bits = 3;
  o.group_size = 32;
  o.max_rows = 0;  // every token, so the subsample metrics see the same rows as the direct ones
  auto ids0 = torch::tensor(std::vector<int64_t>(seqs[0].begin(), seqs[0].end())).view({1, -1});
  const auto before = m->forward(ids0, torch::Tensor());
  const auto lin = m->named_linears();
  const auto r = sensitivity::output_sensitivity(*m, seqs, o);
  // The model is given back untouched.
  const auto after_lin = m->named_linears();
  for (std::size_t k = 0; k < lin.size(); ++k) EXPECT_EQ(after_lin[k].second.get(), lin[k].second.get());
  EXPECT_TRUE(torch::equal(before, m->forward(ids0, torch::Tensor())));
  EXPECT_EQ(r.rows, 96);
  EXPECT_EQ(r.sampled_rows, 96);
  // Direct: record each module's inputs, Y = X W^T + b and Y^q = X Q(W)^T + b, batch metrics.
  std::vector<std::shared_ptr<RecordLinear>> rec;
  for (const auto& [name, l] : lin) {
    rec.push_back(std::make_shared<RecordLinear>(l));
    m->set_linear(name, rec.back());
  }
  for (const auto& s : seqs) m->forward(torch::tensor(std::vector<int64_t>(s.begin(), s.end())).view({1, -1}), torch::Tensor());
  for (std::size_t k = 0; k < lin.size(); ++k) {
    m->set_linear(lin[k].first, lin[k].second);
    const auto& w = lin[k].second->weight;
    quant::QuantSpec spec;
    spec.bits = 3;
    spec.group_size = 32;
    auto qp = quant::init_params(w, spec);
    auto wq = quant::fake_quant(w, qp.scale, qp.zero, spec);
    auto X = torch::cat(rec[k]->inputs, 0);
    const auto Y = eig(torch::matmul(X, w.t())), Q = eig(torch::matmul(X, wq.t()));
    EXPECT_NEAR(r.metric.at("cka")[k], 1.0 - sensitivity::linear_cka(Y, Q), 1e-6) << lin[k].first;
    // An output wider than the input has rank <= in: its covariance is singular and CCA's
    // result hangs on the epsilon ridge and float noise, so PWCCA is compared where out <= in.
    if (w.size(0) <= w.size(1))
      EXPECT_NEAR(r.metric.at("pwcca")[k], 1.0 - sensitivity::pwcca(Y, Q).value, 1e-6) << lin[k].first;
    EXPECT_NEAR(r.metric.at("cka-debiased")[k], 1.0 - sensitivity::debiased_linear_cka(Y, Q), 1e-6) << lin[k].first;
    EXPECT_GT(r.metric.at("cka")[k], 0.0);
  }
}

TEST(OutputSensitivity, FallsAsBitsGrowAndIsSeeded) {
  auto m = tiny_model(tiny_llama_json(), 19);
  const auto seqs = random_sequences(4, 32, 64, 6);
  sensitivity::OutputSensitivityOptions o;
  o.metrics = {"cka", "svcca", "cka-rbf"};
  o.group_size = 32;
  o.max_rows = 100;
  o.seed = 3;
  double prev = INFINITY;
  for (int b : {2, 3, 4, 8}) {
    o.probe_bits = b;
    const auto r = sensitivity::output_sensitivity(*m, seqs, o);
    EXPECT_EQ(r.sampled_rows, 100);
    double mean = 0;
    for (double v : r.metric.at("cka")) mean += v;
    mean /= static_cast<double>(r.metric.at("cka").size());
    EXPECT_LT(mean, prev) << b;
    prev = mean;
    if (b == 8) EXPECT_LT(mean, 1e-3);
  }
  o.probe_bits = 3;
  const auto a = sensitivity::output_sensitivity(*m, seqs, o);
  const auto b = sensitivity::output_sensitivity(*m, seqs, o);
  EXPECT_EQ(a.metric.at("svcca"), b.metric.at("svcca"));
  EXPECT_EQ(a.metric.at("cka-rbf"), b.metric.at("cka-rbf"));
  o.metrics = {"cka", "spearman"};
  EXPECT_THROW(sensitivity::output_sensitivity(*m, seqs, o), InputError);
  o.metrics = {"cka"};
  o.probe_bits = 7;
  EXPECT_THROW(sensitivity::output_sensitivity(*m, seqs, o), InputError);
}

// ---------------------------------------------------------------------------------------------
// CLI on stories260K

TEST(SensitivityCli, Stories260KEndToEnd) {
  const auto shared = mpqat::testing::shared_dir();
  if (shared.empty()) GTEST_SKIP() << "shared data not found (set MPQAT_SHARED_DIR or place ../shared)";
  const auto dir = fs::temp_directory_path() / ("mpqat_sens_cli_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string m = shared + "/data/models/stories260K/", model = (dir / "model").string();
  auto r = mpqat::testing::run_mpqat("convert llama2c " + m + "stories260K.bin --tokenizer " + m + "tok512.bin --out " + model);
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string calib = shared + "/data/text/tinystories/validation_part1.txt";
  const std::string common = "sensitivity " + model + " --calib " + calib +
                             " --samples 6 --seqlen 64 --group-sizes 32,-1 --seed 2 --quiet --metrics fisher,cka,pwcca+cka";
  const auto a = (dir / "a.json").string(), b = (dir / "b.json").string(), c = (dir / "c.json").string();
  r = mpqat::testing::run_mpqat(common + " --out " + a);
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(mpqat::testing::run_mpqat(common + " --out " + b).code, 0);
  EXPECT_EQ(mpqat::testing::slurp(a), mpqat::testing::slurp(b));  // stable for a fixed seed
  EXPECT_EQ(mpqat::testing::slurp((dir / "a.txt").string()), mpqat::testing::slurp((dir / "b.txt").string()));
  const auto s = alloc::load_sensitivity(a);
  EXPECT_NO_THROW(alloc::check_sensitivity(s, alloc::layout_from_folder(model)));
  const json ja = json::parse(mpqat::testing::slurp(a));
  for (const auto& [name, e] : ja["modules"].items()) {
    EXPECT_DOUBLE_EQ(e["score"].get<double>(), e["omega"]["3:32"].get<double>()) << name;
    EXPECT_TRUE(e["metrics"].contains("cka")) << name;
    EXPECT_TRUE(e["metrics"].contains("pwcca+cka")) << name;
  }
  // Two ranks: the Fisher (hence every omega) equals the one-rank result up to float order.
  r = mpqat::testing::run_mpqat("launch -n 2 -- " + common + " --out " + c);
  ASSERT_EQ(r.code, 0) << r.err;
  const json jc = json::parse(mpqat::testing::slurp(c));
  EXPECT_EQ(jc["calibration"]["world_size"], 2);
  for (const auto& [name, e] : ja["modules"].items())
    for (const auto& [k, v] : e["omega"].items())
      EXPECT_NEAR(jc["modules"][name]["omega"][k].get<double>(), v.get<double>(), 1e-5 * std::abs(v.get<double>()) + 1e-15)
          << name << " " << k;
  // The seeds' layer-to-layer profile: per-block change and statistics in the file.
  r = mpqat::testing::run_mpqat("sensitivity " + model + " --calib " + calib +
                                " --samples 4 --seqlen 64 --metrics pwcca+cka --mode profile --group-sizes 32 --quiet --out " + c);
  ASSERT_EQ(r.code, 0) << r.err;
  const json jp = json::parse(mpqat::testing::slurp(c));
  for (const auto& [b, e] : jp["blocks"].items()) {
    ASSERT_TRUE(e.contains("stats")) << b;
    EXPECT_GT(e["stats"]["std"].get<double>(), 0.0) << b;
    EXPECT_TRUE(e["stats"]["change"].contains("cka")) << b;
  }
  // Errors: unknown metric, unknown mode, too-short calibration file.
  r = mpqat::testing::run_mpqat("sensitivity " + model + " --calib " + calib + " --metrics fisher,foo --out " + c);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("foo"), std::string::npos) << r.err;
  r = mpqat::testing::run_mpqat("sensitivity " + model + " --calib " + calib + " --mode sideways --out " + c);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("accepted: output, profile"), std::string::npos) << r.err;
  std::ofstream((dir / "short.txt").string()) << "Once upon a time";
  r = mpqat::testing::run_mpqat("sensitivity " + model + " --calib " + (dir / "short.txt").string() + " --out " + c);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("tokens found"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
