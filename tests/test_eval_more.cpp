// Evaluation across families: data-parallel perplexity (2 ranks as threads == 1 rank, and == a
// brute-force log-softmax sum), block streaming == full forward for OPT and BERT, and the
// `mpqat eval` CLI on tiny OPT / BERT folders written here (--ppl, --streaming, --classify,
// --device, error paths). Expected classifier outputs come from per-example unpadded forwards.
#include <gtest/gtest.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include <torch/torch.h>

#include "mpqat/cli/commands.h"
#include "mpqat/data/tokenizer.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/dist/launcher.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/config.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"

#include "eval_cli.h"
#include "float_folder.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

fs::path temp_dir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("test_evalmore", tag); }

json opt_json(bool classifier) {
  json j{{"architectures", {classifier ? "OPTForSequenceClassification" : "OPTForCausalLM"}},
         {"model_type", "opt"},
         {"hidden_size", 32},
         {"ffn_dim", 48},
         {"num_hidden_layers", 3},
         {"num_attention_heads", 4},
         {"vocab_size", 40},
         {"max_position_embeddings", 64},
         {"word_embed_proj_dim", 32},
         {"do_layer_norm_before", true},
         {"activation_function", "relu"},
         {"pad_token_id", 0},
         {"bos_token_id", 2},
         {"eos_token_id", 3}};
  if (classifier) j["num_labels"] = 2;
  return j;
}

json bert_json(int labels) {
  return json{{"architectures", {"BertForSequenceClassification"}},
              {"model_type", "bert"},
              {"hidden_size", 32},
              {"intermediate_size", 48},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"vocab_size", 40},
              {"max_position_embeddings", 64},
              {"type_vocab_size", 2},
              {"layer_norm_eps", 1e-12},
              {"hidden_act", "gelu"},
              {"pad_token_id", 0},
              {"num_labels", labels}};
}

// A random model whose outputs depend visibly on the input (embeddings and heads at unit scale).
model::ModelPtr random_model(const json& j, uint64_t seed) {
  torch::manual_seed(seed);
  auto m = model::build_model(model::parse_model_config(j));
  torch::NoGradGuard ng;
  for (auto& item : m->named_parameters(true)) {
    const auto& n = item.key();
    if (n == "classifier.bias") item.value().zero_();  // else the bias alone decides
    else if (n.find("pooler") != std::string::npos) item.value().normal_(0.0, 0.3);
    else if (n.find("encoder") != std::string::npos && n.find("LayerNorm") == std::string::npos &&
             n.find("weight") != std::string::npos)
      item.value().normal_(0.0, 0.2);  // attention mixes tokens visibly
    else if (n.find("embed") != std::string::npos || n.find("classifier") != std::string::npos ||
             n.find("score") != std::string::npos)
      item.value().normal_(0.0, 1.0);
  }
  return m;
}

// WordPiece vocabulary of the tiny folders (ids 0..4 special, < 40 tokens in all).
const std::vector<std::string> kVocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the",   "cat",  "dog",
                                         "sat",   "on",    "mat",   "a",     "good",   "bad",   "movie", "was",
                                         "very",  "not",   ".",     "!",     ",",      "and",   "it",    "##s",
                                         "run",   "##ning", "fun",  "film"};

void save_folder(torch::nn::Module& m, const json& cfg, const fs::path& dir) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << cfg.dump(2);
  mpqat::testing::write_f32_safetensors(m, dir);
  std::ofstream v(dir / "vocab.txt");
  for (const auto& t : kVocab) v << t << "\n";
}

using mpqat::testing::run_eval_cli;

template <typename E, typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception of the expected type>";
}

dist::LaunchEnv env_for(int rank, int world, int port) {
  dist::LaunchEnv e;
  e.present = true;
  e.rank = rank;
  e.local_rank = rank;
  e.world_size = world;
  e.local_world_size = world;
  e.master_port = port;
  return e;
}

// Mean NLL over non-overlapping windows, by hand in fp64 from one forward per window.
double brute_force_nll(model::TransformerModel& m, const std::vector<int32_t>& ids, int context) {
  torch::NoGradGuard ng;
  double total = 0.0;
  int64_t count = 0;
  for (size_t w0 = 0; w0 + static_cast<size_t>(context) <= ids.size(); w0 += static_cast<size_t>(context)) {
    std::vector<int64_t> win(ids.begin() + static_cast<int64_t>(w0), ids.begin() + static_cast<int64_t>(w0) + context);
    auto x = torch::tensor(win, torch::kLong).unsqueeze(0);                 // (1, T)
    auto logits = m.forward(x, torch::Tensor())[0].to(torch::kDouble);      // (T, V)
    for (int t = 0; t + 1 < context; ++t) {
      auto row = logits[t];
      const double lse = (row - row.max()).exp().sum().log().item<double>() + row.max().item<double>();
      total += lse - row[win[static_cast<size_t>(t) + 1]].item<double>();
      ++count;
    }
  }
  return total / static_cast<double>(count);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Data-parallel perplexity

TEST(PerplexityDist, TwoRanksEqualOneRankAndBruteForce) {
  const json j = opt_json(false);
  std::vector<int32_t> ids;
  uint64_t s = 12345;
  for (int i = 0; i < 7 * 16 + 5; ++i) {  // 7 windows of 16 and a dropped tail of 5
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    ids.push_back(static_cast<int32_t>((s >> 33) % 40));
  }
  auto m0 = random_model(j, 7), m1 = random_model(j, 7);
  const auto one = eval::evaluate_perplexity(*m0, ids, 16, 1);
  EXPECT_EQ(one.windows, 7);
  EXPECT_EQ(one.tokens, 7 * 16 + 5);
  EXPECT_EQ(one.predicted, 7 * 15);
  EXPECT_NEAR(one.nll, brute_force_nll(*m0, ids, 16), 1e-5 * one.nll);
  EXPECT_NEAR(one.ppl, std::exp(one.nll), 1e-12 * one.ppl);
  // Batched windows agree too (padding-free batches of equal length).
  EXPECT_NEAR(eval::evaluate_perplexity(*m0, ids, 16, 3).nll, one.nll, 1e-6 * one.nll);

  const int port = dist::find_free_port();
  dist::Options opts;
  opts.backend = "gloo";
  opts.timeout = std::chrono::seconds(60);
  std::vector<eval::PplResult> res(2);
  std::vector<std::string> errors(2);
  std::atomic<int> windows_seen[2] = {{0}, {0}};
  model::TransformerModel* models[2] = {m0.get(), m1.get()};
  auto body = [&](int r) {
    try {
      auto c = dist::Communicator::create(env_for(r, 2, port), opts);
      torch::NoGradGuard ng;
      const eval::LogitsFn fn = [&, r](const torch::Tensor& x) {
        windows_seen[r] += static_cast<int>(x.size(0));
        return models[r]->forward(x, torch::Tensor());
      };
      res[r] = eval::evaluate_perplexity(fn, ids, 16, 1, 0, torch::kCPU, c.get());
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  };
  std::thread t0(body, 0), t1(body, 1);
  t0.join();
  t1.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_NEAR(res[r].nll, one.nll, 1e-12 * one.nll) << "rank " << r;
    EXPECT_NEAR(res[r].ppl, one.ppl, 1e-12 * one.ppl) << "rank " << r;
    EXPECT_EQ(res[r].windows, 7);
    EXPECT_EQ(res[r].predicted, one.predicted);
  }
  // Rank 0 scored windows 0, 2, 4, 6 and rank 1 windows 1, 3, 5.
  EXPECT_EQ(windows_seen[0].load(), 4);
  EXPECT_EQ(windows_seen[1].load(), 3);
}

TEST(PerplexityDist, ClassifierIsRejected) {
  auto m = random_model(bert_json(2), 1);
  std::vector<int32_t> ids(64, 5);
  const auto msg = error_message<InputError>([&] { eval::evaluate_perplexity(*m, ids, 16); });
  EXPECT_NE(msg.find("BertForSequenceClassification"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Streaming for every family

TEST(Streaming, EqualsFullForwardForOPTAndBert) {
  const auto dir = temp_dir("stream");
  struct Case {
    std::string name;
    json cfg;
  };
  const std::vector<Case> cases = {{"opt", opt_json(false)}, {"optcls", opt_json(true)}, {"bert", bert_json(3)}};
  for (const auto& c : cases) {
    auto m = random_model(c.cfg, 3);
    save_folder(*m, c.cfg, dir / c.name);
    model::ModelFolder f((dir / c.name).string());
    auto full = model::load_any_model(f);
    auto shell = model::load_any_model_shell(f);
    EXPECT_EQ(shell->num_blocks(), 0) << c.name;
    // Fewer parameters in the shell: the blocks are absent.
    EXPECT_LT(shell->parameters().size(), full->parameters().size()) << c.name;
    torch::manual_seed(5);
    auto ids = torch::randint(5, 28, {2, 11}, torch::kLong);  // (B, T)
    auto mask = torch::ones({2, 11}, torch::kLong);
    mask[1].narrow(0, 8, 3).zero_();  // right padding on row 1
    ids[1].narrow(0, 8, 3).fill_(0);
    torch::NoGradGuard ng;
    const auto ref = full->forward(ids, mask);
    const auto got = model::forward_streaming(f, ids, shell, mask);
    ASSERT_EQ(ref.sizes(), got.sizes()) << c.name;
    EXPECT_LT((ref - got).abs().max().item<double>(), 1e-5) << c.name;
    // Also the model the folder was written from (no loader involved on that side).
    EXPECT_LT((m->forward(ids, mask) - model::forward_streaming(f, ids, nullptr, mask)).abs().max().item<double>(),
              1e-5)
        << c.name;
  }
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// CLI

TEST(EvalCliFamilies, OPTPerplexityStreamingAndErrors) {
  const auto dir = temp_dir("cliopt");
  auto m = random_model(opt_json(false), 11);
  save_folder(*m, opt_json(false), dir / "opt");
  std::string text;
  const char* words[] = {"the cat sat on the mat. ", "a dog was running, and it was fun! ", "the film was not good. "};
  for (int i = 0; i < 30; ++i) text += words[(i * 7) % 3];
  std::ofstream(dir / "text.txt") << text;
  const auto mdir = (dir / "opt").string();

  const auto out = json::parse(run_eval_cli({mdir, "--ppl", (dir / "text.txt").string(), "--context", "16", "--json"}));
  // The library on the same folder, by hand.
  model::ModelFolder f(mdir);
  const auto ids = f.tokenizer().encode(text, true);
  ASSERT_EQ(f.tokenizer().kind(), "wordpiece");
  auto lm = model::load_any_model(f);
  const double nll = brute_force_nll(*lm, ids, 16);
  EXPECT_NEAR(out["nll"].get<double>(), nll, 1e-5 * nll);
  EXPECT_EQ(out["tokens"].get<int64_t>(), static_cast<int64_t>(ids.size()));
  EXPECT_EQ(out["windows"].get<int64_t>(), static_cast<int64_t>(ids.size()) / 16);
  EXPECT_NEAR(out["ppl"].get<double>(), std::exp(out["nll"].get<double>()), 1e-9);

  const auto st = json::parse(run_eval_cli(
      {mdir, "--ppl", (dir / "text.txt").string(), "--context", "16", "--json", "--streaming", "--batch-size", "2"}));
  EXPECT_NEAR(st["nll"].get<double>(), out["nll"].get<double>(), 1e-6 * nll);
  EXPECT_EQ(st["windows"], out["windows"]);

  // --device cpu gives the same; cuda without a GPU is a clear input error.
  const auto cpu = json::parse(
      run_eval_cli({mdir, "--ppl", (dir / "text.txt").string(), "--context", "16", "--json", "--device", "cpu"}));
  EXPECT_NEAR(cpu["nll"].get<double>(), nll, 1e-5 * nll);
  if (!torch::cuda::is_available()) {
    const auto msg = error_message<InputError>(
        [&] { run_eval_cli({mdir, "--ppl", (dir / "text.txt").string(), "--device", "cuda"}); });
    EXPECT_NE(msg.find("cuda"), std::string::npos) << msg;
  }
  // Generation is Llama-only: the error names the family.
  auto msg = error_message<NotImplementedError>([&] { run_eval_cli({mdir, "--generate", "the cat"}); });
  EXPECT_NE(msg.find("OPT"), std::string::npos) << msg;
  // --classify on a causal LM.
  std::ofstream(dir / "cls.tsv") << "sentence\tlabel\nthe cat\t0\n";
  msg = error_message<InputError>([&] { run_eval_cli({mdir, "--classify", (dir / "cls.tsv").string()}); });
  EXPECT_NE(msg.find("ForSequenceClassification"), std::string::npos) << msg;
  fs::remove_all(dir);
}

TEST(EvalCliFamilies, BertClassifyMatchesPerExampleForwards) {
  const auto dir = temp_dir("clibert");
  const json cfg = bert_json(2);
  const auto mdir = (dir / "bert").string();
  // Labels are text, listed out of sorted order via --labels.
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"the movie was very good!", "pos"}, {"a bad film.", "neg"},          {"the cat sat on the mat", "pos"},
      {"not fun , not good", "neg"},       {"it was running", "pos"},       {"the dog was bad and not fun.", "neg"},
      {"good", "pos"},                     {"very very very bad movie !", "neg"}, {"cats and dogs", "pos"},
      {"the film", "neg"},                 {"a good film , a fun movie", "pos"}};
  {
    std::ofstream t(dir / "data.tsv");
    t << "idx\tsentence\tlabel\n";
    for (size_t i = 0; i < rows.size(); ++i) t << i << "\t" << rows[i].first << "\t" << rows[i].second << "\n";
  }
  // --labels pos,neg below: pos = 0, neg = 1.
  const int64_t max_len = 7;

  // Expected: one unpadded forward per example, [CLS] ... [SEP] truncated to max_len keeping [SEP].
  // The first seed whose model predicts both classes, so that agreeing is not a coincidence.
  std::vector<std::vector<int64_t>> cm;
  const int64_t limit = 10;
  for (uint64_t seed = 21; seed < 41; ++seed) {
    auto m = random_model(cfg, seed);
    fs::remove_all(mdir);
    save_folder(*m, cfg, mdir);
    model::ModelFolder f(mdir);
    const auto& tok = f.tokenizer();
    auto lm = model::load_any_model(f);
    cm.assign(2, std::vector<int64_t>(2, 0));
    torch::NoGradGuard ng;
    for (int64_t i = 0; i < limit; ++i) {
      auto e = tok.encode(rows[static_cast<size_t>(i)].first, true);
      ASSERT_EQ(e.front(), 2);
      ASSERT_EQ(e.back(), 3);
      if (static_cast<int64_t>(e.size()) > max_len) {
        e.resize(static_cast<size_t>(max_len));
        e.back() = 3;
      }
      std::vector<int64_t> e64(e.begin(), e.end());
      auto logits = lm->forward(torch::tensor(e64, torch::kLong).unsqueeze(0), torch::Tensor());  // (1, 2)
      const int64_t pred = logits.argmax(-1).item<int64_t>();
      const int64_t truth = rows[static_cast<size_t>(i)].second == "pos" ? 0 : 1;
      ++cm[static_cast<size_t>(truth)][static_cast<size_t>(pred)];
    }
    if (cm[0][0] + cm[1][0] > 0 && cm[0][1] + cm[1][1] > 0) break;
  }
  ASSERT_GT(cm[0][0] + cm[1][0], 0) << "no seed gave a model predicting both classes";
  ASSERT_GT(cm[0][1] + cm[1][1], 0) << "no seed gave a model predicting both classes";
  const auto j = json::parse(run_eval_cli({mdir, "--classify", (dir / "data.tsv").string(), "--text-field",
                                           "sentence", "--label-field", "label", "--labels", "pos,neg", "--limit",
                                           "10", "--batch-size", "3", "--max-length", std::to_string(max_len),
                                           "--json", "--report", (dir / "rep").string()}));
  EXPECT_EQ(j["n"].get<int64_t>(), limit);
  EXPECT_EQ(j["confusion"].get<std::vector<std::vector<int64_t>>>(), cm);
  const double tp = static_cast<double>(cm[1][1]), fp = static_cast<double>(cm[0][1]),
               fn = static_cast<double>(cm[1][0]);
  const double acc = static_cast<double>(cm[0][0] + cm[1][1]) / static_cast<double>(limit);
  const double prec = tp + fp > 0 ? tp / (tp + fp) : 0.0, rec = tp + fn > 0 ? tp / (tp + fn) : 0.0;
  EXPECT_NEAR(j["accuracy"].get<double>(), acc, 1e-12);
  EXPECT_EQ(j["average"], "binary");
  EXPECT_NEAR(j["precision"].get<double>(), prec, 1e-12);
  EXPECT_NEAR(j["recall"].get<double>(), rec, 1e-12);
  EXPECT_NEAR(j["f1"].get<double>(), prec + rec > 0 ? 2 * prec * rec / (prec + rec) : 0.0, 1e-12);
  for (const char* k : {"macro_precision", "macro_recall", "macro_f1"}) EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["per_class"][0]["label"], "pos");
  // The report holds the same metrics under the file's stem.
  std::ifstream rin(dir / "rep.json");
  const auto rep = json::parse(rin);
  EXPECT_EQ(rep["classification"]["data"]["confusion"], j["confusion"]);
  EXPECT_TRUE(fs::exists(dir / "rep.txt"));

  // Streaming gives the same predictions.
  const auto js = json::parse(run_eval_cli({mdir, "--classify", (dir / "data.tsv").string(), "--labels", "pos,neg",
                                            "--limit", "10", "--batch-size", "4", "--max-length",
                                            std::to_string(max_len), "--json", "--streaming"}));
  EXPECT_EQ(js["confusion"], j["confusion"]);

  // Text output names the metrics.
  const auto txt = run_eval_cli({mdir, "--classify", (dir / "data.tsv").string(), "--labels", "pos,neg"});
  EXPECT_NE(txt.find("accuracy"), std::string::npos) << txt;
  EXPECT_NE(txt.find("confusion"), std::string::npos) << txt;

  // Three labels in the file, two in the model.
  {
    std::ofstream t(dir / "three.jsonl");
    t << R"({"text": "good", "y": "a"})" << "\n" << R"({"text": "bad", "y": "b"})" << "\n"
      << R"({"text": "fun", "y": "c"})" << "\n";
  }
  auto msg = error_message<InputError>([&] {
    run_eval_cli({mdir, "--classify", (dir / "three.jsonl").string(), "--text-field", "text", "--label-field", "y"});
  });
  EXPECT_NE(msg.find("3 labels"), std::string::npos) << msg;
  // A classifier cannot do perplexity.
  std::ofstream(dir / "t.txt") << "the cat sat on the mat";
  msg = error_message<InputError>([&] { run_eval_cli({mdir, "--ppl", (dir / "t.txt").string()}); });
  EXPECT_NE(msg.find("causal LM"), std::string::npos) << msg;
  fs::remove_all(dir);
}
