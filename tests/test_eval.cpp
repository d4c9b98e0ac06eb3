// Zero-shot multiple-choice tasks (loaders, lm-eval-style scoring), classification metrics and
// files, reports, and the `mpqat eval --tasks` CLI.
// Scoring is checked against a brute-force log-softmax sum computed here from a full forward pass,
// metrics against hand counts, and the task strings against the raw files' first lines.
#include <gtest/gtest.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "mpqat/cli/commands.h"
#include "mpqat/data/tokenizer.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/dist/launcher.h"
#include "mpqat/eval/classification.h"
#include "mpqat/eval/multiple_choice.h"
#include "mpqat/eval/report.h"
#include "mpqat/eval/tasks.h"
#include "mpqat/model/llama2c.h"
#include "mpqat/model/config.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"
#include "eval_cli.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

fs::path temp_dir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("test_eval", tag); }

void write(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

template <typename E = InputError, typename F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  }
  return "<no exception>";
}

// The shared folder when it really holds the data (an MPQAT_SHARED_DIR pointing elsewhere skips too).
std::string shared() {
  const auto s = mpqat::testing::shared_dir();
  return !s.empty() && fs::exists(s + "/data/SOURCES.md") ? s : "";
}

std::string tasks_dir() {
  const auto s = shared();
  return s.empty() ? "" : s + "/data/tasks";
}

#define REQUIRE_SHARED()                                                                  \
  if (tasks_dir().empty()) GTEST_SKIP() << "shared data not found (set MPQAT_SHARED_DIR or put it at ../shared)"

// One token per byte (ids 3 + byte % (V - 3)), BOS = 1: no merges, so token boundaries are the
// byte boundaries and expected ids are easy to write down.
class ByteTokenizer : public data::Tokenizer {
 public:
  explicit ByteTokenizer(int32_t vocab) : vocab_(vocab) {}
  std::vector<int32_t> encode(const std::string& text, bool add_bos, bool add_eos = false) const override {
    std::vector<int32_t> ids;
    if (add_bos) ids.push_back(1);
    for (unsigned char c : text) ids.push_back(3 + static_cast<int32_t>(c) % (vocab_ - 3));
    if (add_eos) ids.push_back(2);
    return ids;
  }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  std::string decode_piece(int32_t, int32_t) const override { return ""; }
  int32_t vocab_size() const override { return vocab_; }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  std::string kind() const override { return "bytes"; }

 private:
  int32_t vocab_;
};

json tiny_config_json() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", 32},
              {"intermediate_size", 48},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"vocab_size", 64},
              {"max_position_embeddings", 256},
              {"rms_norm_eps", 1e-5},
              {"tie_word_embeddings", false}};
}

std::shared_ptr<model::LlamaForCausalLM> tiny_llama(uint64_t seed) {
  torch::manual_seed(seed);
  auto m = std::make_shared<model::LlamaForCausalLM>(model::parse_model_config(tiny_config_json()));
  m->reset_parameters();
  m->eval();
  return m;
}

// log p(tokens[s..] | tokens[..s]) from one forward pass over `tokens`, log-softmax by hand in fp64.
double brute_force_ll(model::LlamaForCausalLM& m, const std::vector<int32_t>& tokens, size_t s) {
  torch::NoGradGuard ng;
  std::vector<int64_t> ids(tokens.begin(), tokens.end());
  auto logits = m.forward(torch::tensor(ids, torch::kLong).unsqueeze(0))[0].to(torch::kDouble);  // (T, V)
  auto a = logits.accessor<double, 2>();
  double total = 0.0;
  for (size_t t = s; t < tokens.size(); ++t) {
    double mx = -INFINITY;
    for (int64_t v = 0; v < logits.size(1); ++v) mx = std::max(mx, a[t - 1][v]);
    double z = 0.0;
    for (int64_t v = 0; v < logits.size(1); ++v) z += std::exp(a[t - 1][v] - mx);
    total += a[t - 1][tokens[t]] - mx - std::log(z);
  }
  return total;
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

// Runs body(comm) on 2 ranks as threads over Gloo; returns each rank's error ("" = none).
template <typename F>
std::vector<std::string> run_two_ranks(F body) {
  const int port = dist::find_free_port();
  dist::Options opts;
  opts.backend = "gloo";
  opts.timeout = std::chrono::seconds(60);
  std::vector<std::string> errors(2);
  auto run = [&](int r) {
    try {
      auto c = dist::Communicator::create(env_for(r, 2, port), opts);
      body(r, c.get());
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  };
  std::thread t0(run, 0), t1(run, 1);
  t0.join();
  t1.join();
  return errors;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Task loaders

TEST(EvalTasks, PiqaCountsAndFirstItem) {
  REQUIRE_SHARED();
  const auto t = eval::load_task("piqa", tasks_dir());
  EXPECT_EQ(t.split, "validation");
  ASSERT_EQ(t.items.size(), 1838u);
  for (const auto& it : t.items) ASSERT_EQ(it.continuations.size(), 2u);
  // piqa/valid.jsonl line 1 and valid-labels.lst line 1 ("0").
  const auto& a = t.items[0];
  EXPECT_EQ(a.context, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:");
  EXPECT_EQ(a.continuations[0],
            " Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you "
            "will also need to supply it with a water bottle and a food dish.");
  EXPECT_EQ(a.continuations[1],
            " Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you "
            "will also need to supply it with a water bottle and a food dish.");
  EXPECT_EQ(a.gold, 0);
  // Line 2: trailing / double spaces of the raw solutions are kept, as lm-eval does.
  EXPECT_EQ(t.items[1].context, "Question: dresser\nAnswer:");
  EXPECT_EQ(t.items[1].continuations[0], " replace drawer with bobby pin ");
  EXPECT_EQ(t.items[1].continuations[1], " finish, woodgrain with  bobby pin ");
  EXPECT_EQ(t.items[1].gold, 1);
}

TEST(EvalTasks, ArcEasyCountsAndFirstItem) {
  REQUIRE_SHARED();
  const auto path = fs::path(tasks_dir()) / "arc/ARC-Easy-test.jsonl";
  size_t lines = 0;
  {
    std::ifstream in(path);
    std::string l;
    while (std::getline(in, l))
      if (!l.empty()) ++lines;
  }
  const auto t = eval::load_task("arc_easy", tasks_dir());
  EXPECT_EQ(t.split, "test");
  EXPECT_EQ(t.items.size(), lines);
  const auto& a = t.items[0];
  EXPECT_EQ(a.context,
            "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:");
  ASSERT_EQ(a.continuations.size(), 4u);
  EXPECT_EQ(a.continuations[0], " Sunlight is the source of energy for nearly all ecosystems.");
  EXPECT_EQ(a.continuations[3], " The producers in all ecosystems are plants.");
  EXPECT_EQ(a.choices[3], "The producers in all ecosystems are plants.");
  EXPECT_EQ(a.gold, 0);
  EXPECT_EQ(t.items[1].gold, 1);  // answerKey "B"
  EXPECT_EQ(eval::load_task("arc_easy", tasks_dir(), "validation").items.size(), 570u);
}

TEST(EvalTasks, HellaswagCountsAndFirstItem) {
  REQUIRE_SHARED();
  const auto t = eval::load_task("hellaswag", tasks_dir());
  ASSERT_EQ(t.items.size(), 10042u);
  for (const auto& it : t.items) ASSERT_EQ(it.continuations.size(), 4u);
  // File lines 1-6: "Roof shingle removal: A man is sitting on a roof. he", "3", 4 endings.
  // lm-eval capitalizes ctx_b ("he" -> "He").
  const auto& a = t.items[0];
  EXPECT_EQ(a.context, "Roof shingle removal: A man is sitting on a roof. He");
  EXPECT_EQ(a.continuations[0], " is using wrap to wrap a pair of skis.");
  EXPECT_EQ(a.continuations[3], " starts pulling up roofing on a roof.");
  EXPECT_EQ(a.gold, 3);
  EXPECT_EQ(t.items[1].context, "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady");
  EXPECT_EQ(t.items[1].continuations[3], " stands and lifts the weight over her head.");
}

TEST(EvalTasks, HellaswagPreprocessByHand) {
  // strip; " [title]" -> ". "; drop [..]; "  " -> " " in one pass (three spaces leave two).
  EXPECT_EQ(eval::hellaswag_preprocess("  [header] How to x [title] Do y. [step] Z  w  "), " How to x. Do y. Z w");
  EXPECT_EQ(eval::hellaswag_preprocess("a   b"), "a  b");
  EXPECT_EQ(eval::hellaswag_preprocess("keep [open bracket"), "keep [open bracket");
  EXPECT_EQ(eval::hellaswag_query("Label: First sentence. the Rest of it"), "Label: First sentence. The rest of it");
  EXPECT_EQ(eval::hellaswag_query("Label: First sentence. Second one."), "Label: First sentence. Second one.");
  EXPECT_EQ(eval::utf8_length("caf\xc3\xa9"), 4);
}

TEST(EvalTasks, ErrorsNameTheTaskOrPath) {
  auto msg = error_message([] { eval::load_task("piqa2", "/nonexistent"); });
  for (const char* k : {"piqa2", "piqa", "arc_easy", "arc_challenge", "hellaswag"})
    EXPECT_NE(msg.find(k), std::string::npos) << msg;
  msg = error_message([] { eval::load_task("arc_challenge", "/nonexistent/tasks"); });
  EXPECT_NE(msg.find("/nonexistent/tasks/arc/ARC-Challenge-test.jsonl"), std::string::npos) << msg;
  EXPECT_NE(msg.find("answerKey"), std::string::npos) << msg;
  msg = error_message([] { eval::load_task("hellaswag", "/nonexistent"); });
  EXPECT_NE(msg.find("hellaswag_val_full.txt.bz2"), std::string::npos) << msg;

  // Numeric answer keys ("1".."4") and a key that is not a label.
  const auto dir = temp_dir("arc");
  fs::create_directories(dir / "arc");
  write(dir / "arc/ARC-Challenge-test.jsonl",
        R"({"question":"Q?","choices":{"text":["a","b","c","d"],"label":["1","2","3","4"]},"answerKey":"3"})"
        "\n");
  auto t = eval::load_task("arc_challenge", dir.string());
  ASSERT_EQ(t.items.size(), 1u);
  EXPECT_EQ(t.items[0].gold, 2);
  EXPECT_EQ(t.items[0].context, "Question: Q?\nAnswer:");
  write(dir / "arc/ARC-Challenge-test.jsonl",
        R"({"question":"Q?","choices":{"text":["a","b"],"label":["A","B"]},"answerKey":"C"})"
        "\n");
  msg = error_message([&] { eval::load_task("arc_challenge", dir.string()); });
  EXPECT_NE(msg.find("ARC-Challenge-test.jsonl:1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'C'"), std::string::npos) << msg;
  write(dir / "arc/ARC-Challenge-test.jsonl", "{not json\n");
  EXPECT_THROW(eval::load_task("arc_challenge", dir.string()), InputError);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Scoring

TEST(EvalScoring, EncodePairMovesTrailingSpaces) {
  ByteTokenizer tok(64);
  const auto a = eval::encode_pair(tok, "Answer: ", "yes");
  const auto b = eval::encode_pair(tok, "Answer:", " yes");
  EXPECT_EQ(a.context, b.context);
  EXPECT_EQ(a.continuation, b.continuation);
  EXPECT_EQ(a.context, tok.encode("Answer:", true));
  EXPECT_EQ(a.continuation, tok.encode(" yes", false));
  const auto nobos = eval::encode_pair(tok, "Answer:", " yes", /*add_bos=*/false);
  EXPECT_EQ(nobos.context, tok.encode("Answer:", false));
  // Empty context: the continuation follows BOS.
  const auto e = eval::encode_pair(tok, "", "hi");
  EXPECT_EQ(e.context, std::vector<int32_t>{1});
  EXPECT_EQ(e.continuation, tok.encode("hi", false));
}

TEST(EvalScoring, RealTokenizerSplitsWholeEncoding) {
  REQUIRE_SHARED();
  const auto tok = data::load_tokenizer(shared() + "/data/models/stories260K/tok512.bin");
  const std::string ctx = "Question: Where is the cat?\nAnswer:", cont = " in the garden";
  const auto p = eval::encode_pair(*tok, ctx, cont);
  const auto whole = tok->encode(ctx + cont, true);
  const auto c = tok->encode(ctx, true);
  ASSERT_LE(c.size(), whole.size());
  EXPECT_EQ(p.context, c);
  EXPECT_EQ(p.continuation, std::vector<int32_t>(whole.begin() + static_cast<long>(c.size()), whole.end()));
  // context + continuation ids give back the whole encoding.
  auto joined = p.context;
  joined.insert(joined.end(), p.continuation.begin(), p.continuation.end());
  EXPECT_EQ(joined, whole);
}

TEST(EvalScoring, LoglikelihoodEqualsBruteForce) {
  auto m = tiny_llama(11);
  const eval::LogitsFn fn = [&](const torch::Tensor& x) { return m->forward(x); };
  ByteTokenizer tok(64);
  const std::vector<std::pair<std::string, std::string>> reqs = {
      {"Question: why?\nAnswer:", " because"},
      {"abc", " d"},
      {"A much longer context that goes on for a while", " and a longer continuation too"},
      {"x", " yz"}};
  std::vector<eval::TokenPair> pairs;
  for (const auto& [c, k] : reqs) pairs.push_back(eval::encode_pair(tok, c, k));
  const auto ll1 = eval::loglikelihoods(fn, pairs, 256, 1);
  const auto ll3 = eval::loglikelihoods(fn, pairs, 256, 3);
  ASSERT_EQ(ll1.size(), pairs.size());
  for (size_t i = 0; i < pairs.size(); ++i) {
    auto all = pairs[i].context;
    all.insert(all.end(), pairs[i].continuation.begin(), pairs[i].continuation.end());
    const double expect = brute_force_ll(*m, all, pairs[i].context.size());
    EXPECT_NEAR(ll1[i], expect, 1e-5) << i;
    EXPECT_NEAR(ll3[i], ll1[i], 1e-5) << i;  // batched (right-padded) == unbatched
    EXPECT_LT(ll1[i], 0.0);
  }
  // Left truncation to max_length: the last max_length + 1 tokens are kept.
  const int64_t max_len = 40;  // whole sequence is 77 tokens, continuation 30
  const auto llt = eval::loglikelihoods(fn, {pairs[2]}, max_len, 1);
  auto all = pairs[2].context;
  all.insert(all.end(), pairs[2].continuation.begin(), pairs[2].continuation.end());
  std::vector<int32_t> tail(all.end() - (max_len + 1), all.end());
  EXPECT_NEAR(llt[0], brute_force_ll(*m, tail, tail.size() - pairs[2].continuation.size()), 1e-5);
  // A continuation longer than the window: its last max_length tokens, predicted inside the window.
  const auto llc = eval::loglikelihoods(fn, {pairs[2]}, 20, 1);
  std::vector<int32_t> last21(all.end() - 21, all.end());
  EXPECT_NEAR(llc[0], brute_force_ll(*m, last21, 1), 1e-5);
}

TEST(EvalScoring, AccVersusAccNormAndStderr) {
  ByteTokenizer tok(64);
  // Uniform logits: every token costs log(V), so ll = -(tokens) * log V.
  const eval::LogitsFn uniform = [](const torch::Tensor& x) {
    return torch::zeros({x.size(0), x.size(1), 64});
  };
  eval::MultipleChoiceOptions o;
  o.progress = false;
  // " a" costs 2 tokens (len("a") = 1); " bbbbbbbb" costs 9 (len 8): acc picks 0, acc_norm picks 1.
  eval::MultipleChoiceItem it;
  it.context = "Q:";
  it.choices = {"a", "bbbbbbbb"};
  it.continuations = {" a", " bbbbbbbb"};
  it.gold = 1;
  auto r = eval::evaluate_multiple_choice(uniform, tok, {it}, o);
  EXPECT_EQ(r.n, 1);
  EXPECT_EQ(r.acc, 0.0);
  EXPECT_EQ(r.acc_norm, 1.0);

  // Ties go to the first choice (numpy.argmax): 3 of 5 items have gold 0 -> acc 0.6,
  // stderr = sqrt(p (1 - p) / (n - 1)) = sqrt(0.06).
  std::vector<eval::MultipleChoiceItem> items;
  for (int g : {0, 1, 0, 1, 0}) {
    eval::MultipleChoiceItem x;
    x.context = "Q:";
    x.choices = {"aa", "bb"};
    x.continuations = {" aa", " bb"};
    x.gold = g;
    items.push_back(x);
  }
  r = eval::evaluate_multiple_choice(uniform, tok, items, o);
  EXPECT_EQ(r.n, 5);
  EXPECT_DOUBLE_EQ(r.acc, 0.6);
  EXPECT_NEAR(r.acc_stderr, std::sqrt(0.06), 1e-12);
  EXPECT_DOUBLE_EQ(r.acc_norm, 0.6);
  o.limit = 2;
  EXPECT_EQ(eval::evaluate_multiple_choice(uniform, tok, items, o).n, 2);
}

TEST(EvalScoring, TwoRanksEqualOneRank) {
  auto m = tiny_llama(5);
  const eval::LogitsFn fn = [&](const torch::Tensor& x) { return m->forward(x); };
  ByteTokenizer tok(64);
  std::vector<eval::MultipleChoiceItem> items;
  torch::manual_seed(9);
  const std::vector<std::string> words = {"red", "green", "blue sky", "a", "yellow sun", "dark night", "cat"};
  for (int i = 0; i < 7; ++i) {
    eval::MultipleChoiceItem it;
    it.context = "Item " + std::to_string(i) + ": pick one.";
    for (int c = 0; c < 3; ++c) {
      it.choices.push_back(words[(i + 2 * c) % words.size()]);
      it.continuations.push_back(" " + it.choices.back());
    }
    it.gold = i % 3;
    items.push_back(it);
  }
  eval::MultipleChoiceOptions o;
  o.progress = false;
  o.batch_size = 2;
  const auto one = eval::evaluate_multiple_choice(fn, tok, items, o, "t");
  EXPECT_EQ(one.n, 7);
  std::vector<eval::MultipleChoiceResult> res(2);
  const auto errors = run_two_ranks([&](int r, dist::Communicator* c) {
    auto oo = o;
    oo.comm = c;
    res[r] = eval::evaluate_multiple_choice(fn, tok, items, oo, "t");
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(res[r].n, one.n);
    EXPECT_DOUBLE_EQ(res[r].acc, one.acc);
    EXPECT_DOUBLE_EQ(res[r].acc_norm, one.acc_norm);
    EXPECT_DOUBLE_EQ(res[r].acc_stderr, one.acc_stderr);
  }
}

// ---------------------------------------------------------------------------------------------
// Classification

TEST(EvalClassification, BinaryMetricsByHand) {
  // rows = true class, columns = predicted
  const auto m = eval::metrics_from_confusion({{5, 2}, {1, 7}});
  EXPECT_EQ(m.n, 15);
  EXPECT_DOUBLE_EQ(m.accuracy, 12.0 / 15.0);
  ASSERT_TRUE(m.binary);
  EXPECT_DOUBLE_EQ(m.binary_precision, 7.0 / 9.0);
  EXPECT_DOUBLE_EQ(m.binary_recall, 7.0 / 8.0);
  EXPECT_NEAR(m.binary_f1, 14.0 / 17.0, 1e-12);  // 2 tp / (2 tp + fp + fn)
  EXPECT_NEAR(m.f1[0], 10.0 / 13.0, 1e-12);
  EXPECT_NEAR(m.macro_f1, (14.0 / 17.0 + 10.0 / 13.0) / 2.0, 1e-12);
  EXPECT_EQ(m.support, (std::vector<int64_t>{7, 8}));
  // Same from label vectors.
  std::vector<int64_t> yt, yp;
  const int64_t cm[2][2] = {{5, 2}, {1, 7}};
  for (int t = 0; t < 2; ++t)
    for (int p = 0; p < 2; ++p)
      for (int64_t k = 0; k < cm[t][p]; ++k) yt.push_back(t), yp.push_back(p);
  const auto m2 = eval::compute_metrics(yt, yp, 2);
  EXPECT_EQ(m2.confusion, m.confusion);
  EXPECT_DOUBLE_EQ(m2.binary_f1, m.binary_f1);
  EXPECT_THROW(eval::compute_metrics({0, 2}, {0, 1}, 2), InputError);
}

TEST(EvalClassification, ThreeClassMetricsByHand) {
  const auto m = eval::metrics_from_confusion({{3, 1, 0}, {2, 4, 1}, {0, 1, 5}});
  EXPECT_EQ(m.n, 17);
  EXPECT_DOUBLE_EQ(m.accuracy, 12.0 / 17.0);
  EXPECT_FALSE(m.binary);
  // precision = diag / column sum, recall = diag / row sum
  const double p[3] = {3.0 / 5.0, 4.0 / 6.0, 5.0 / 6.0};
  const double r[3] = {3.0 / 4.0, 4.0 / 7.0, 5.0 / 6.0};
  double mf = 0;
  for (int c = 0; c < 3; ++c) {
    EXPECT_NEAR(m.precision[c], p[c], 1e-12);
    EXPECT_NEAR(m.recall[c], r[c], 1e-12);
    const double f = 2 * p[c] * r[c] / (p[c] + r[c]);
    EXPECT_NEAR(m.f1[c], f, 1e-12);
    mf += f / 3;
  }
  EXPECT_NEAR(m.macro_f1, mf, 1e-12);
  EXPECT_NEAR(m.macro_precision, (p[0] + p[1] + p[2]) / 3, 1e-12);
  // A class never predicted has precision 0 (sklearn's zero_division).
  const auto z = eval::metrics_from_confusion({{2, 0}, {3, 0}});
  EXPECT_EQ(z.binary_precision, 0.0);
  EXPECT_EQ(z.binary_f1, 0.0);
}

TEST(EvalClassification, MetricsReadBackFromTheirJsonExactly) {
  // Reports carry the metrics as JSON; classification_from_json is its inverse, for a binary
  // (headline = class 1) and a macro (3 classes) average, with label names.
  for (auto m : {eval::metrics_from_confusion({{5, 2}, {1, 7}}),
                 eval::metrics_from_confusion({{3, 1, 0}, {2, 4, 1}, {0, 1, 5}})}) {
    m.label_names = std::vector<std::string>(static_cast<std::size_t>(m.num_labels), "x");
    m.label_names[0] = "negative";
    const auto back = eval::classification_from_json(m.to_json());
    EXPECT_EQ(back.to_json(), m.to_json());
    EXPECT_EQ(back.binary, m.binary);
    EXPECT_DOUBLE_EQ(back.headline_f1(), m.headline_f1());
    EXPECT_EQ(back.confusion, m.confusion);
    EXPECT_EQ(back.label_names, m.label_names);
  }
  // A hand-written {"accuracy", "f1"}: a macro average; what it lacks is NaN, not 0.
  const auto h = eval::classification_from_json(nlohmann::json{{"accuracy", 0.9}, {"f1_score", 0.8}});
  EXPECT_FALSE(h.binary);
  EXPECT_DOUBLE_EQ(h.headline_f1(), 0.8);
  EXPECT_TRUE(std::isnan(h.headline_precision()));
  // A task's scores likewise.
  eval::MultipleChoiceResult t{"piqa", 100, 0.7, 0.01, 0.72, 0.012};
  const auto tb = eval::multiple_choice_from_json("piqa", eval::to_json(t));
  EXPECT_EQ(eval::to_json(tb), eval::to_json(t));
  EXPECT_TRUE(std::isnan(eval::multiple_choice_from_json("piqa", nlohmann::json{{"acc", 0.5}}).acc_norm));
}

TEST(EvalClassification, ReadsQuotedCsvJsonlAndErrors) {
  const auto dir = temp_dir("cls");
  write(dir / "a.csv",
        "id,text,label\n"
        "1,\"hello, world\",pos\n"
        "2,\"she said \"\"hi\"\"\",neg\r\n"
        "3,\"two\nlines\",pos\n");
  data::ClassificationReadOptions o;
  o.text_field = "text";
  auto d = data::read_classification_file((dir / "a.csv").string(), o);
  ASSERT_EQ(d.texts.size(), 3u);
  EXPECT_EQ(d.texts[0], "hello, world");
  EXPECT_EQ(d.texts[1], "she said \"hi\"");
  EXPECT_EQ(d.texts[2], "two\nlines");
  EXPECT_EQ(d.label_names, (std::vector<std::string>{"neg", "pos"}));
  EXPECT_EQ(d.labels, (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(data::split_csv_record("a,\"b,c\",,d"), (std::vector<std::string>{"a", "b,c", "", "d"}));

  // Explicit label order, and a label outside it.
  o.labels = {"pos", "neg"};
  d = data::read_classification_file((dir / "a.csv").string(), o);
  EXPECT_EQ(d.labels, (std::vector<int64_t>{0, 1, 0}));
  o.labels = {"pos"};
  auto msg = error_message([&] { data::read_classification_file((dir / "a.csv").string(), o); });
  EXPECT_NE(msg.find("'neg'"), std::string::npos) << msg;
  o.labels.clear();

  // Missing column: names the file, the column and the available ones.
  o.text_field = "sentence";
  msg = error_message([&] { data::read_classification_file((dir / "a.csv").string(), o); });
  EXPECT_NE(msg.find((dir / "a.csv").string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("'sentence'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("id, text, label"), std::string::npos) << msg;

  // JSONL with integer labels sorts them numerically.
  write(dir / "b.jsonl", "{\"sentence\": \"x\", \"label\": 10}\n{\"sentence\": \"y\", \"label\": 2}\n\n");
  d = data::read_classification_file((dir / "b.jsonl").string(), o);
  EXPECT_EQ(d.label_names, (std::vector<std::string>{"2", "10"}));
  EXPECT_EQ(d.labels, (std::vector<int64_t>{1, 0}));
  write(dir / "c.jsonl", "{\"text\": \"x\", \"label\": 1}\n");
  msg = error_message([&] { data::read_classification_file((dir / "c.jsonl").string(), o); });
  EXPECT_NE(msg.find("c.jsonl:1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'sentence'"), std::string::npos) << msg;
  // Ragged rows and unterminated quotes.
  write(dir / "d.csv", "sentence,label\na,1,extra\n");
  msg = error_message([&] { data::read_classification_file((dir / "d.csv").string(), o); });
  EXPECT_NE(msg.find("d.csv:2"), std::string::npos) << msg;
  write(dir / "e.csv", "sentence,label\n\"a,1\n");
  EXPECT_THROW(data::read_classification_file((dir / "e.csv").string(), o), InputError);
  EXPECT_THROW(data::read_classification_file((dir / "missing.tsv").string(), o), InputError);
  fs::remove_all(dir);
}

TEST(EvalClassification, ReadsGlueSst2Tsv) {
  REQUIRE_SHARED();
  const auto d = data::read_classification_file(shared() +
                                                "/data/classification/sst2/glue_sst2_dev.tsv");
  EXPECT_EQ(d.texts.size(), 872u);
  EXPECT_EQ(d.label_names, (std::vector<std::string>{"0", "1"}));
  EXPECT_EQ(d.texts[0], "it 's a charming and often affecting journey . ");
  EXPECT_EQ(d.labels[0], 1);
  EXPECT_EQ(d.labels[1], 0);
}

TEST(EvalClassification, PredictPadsTruncatesAndSplitsRanks) {
  // The fake classifier predicts (number of real tokens) % 3 and checks the padding it gets.
  const eval::ClassifyFn fn = [](const at::Tensor& ids, const at::Tensor& mask) {
    auto len = mask.sum(1);  // (B)
    EXPECT_TRUE(torch::equal(ids.masked_select(mask == 0), torch::full({(mask == 0).sum().item<int64_t>()}, 7L)));
    return torch::one_hot(len.remainder(3), 3).to(torch::kFloat);  // (B, 3)
  };
  const eval::EncodeFn enc = [](const std::string& s) {
    return std::vector<int32_t>(s.size(), 5);
  };
  data::ClassificationData d;
  d.path = "mem";
  d.label_names = {"a", "b", "c"};
  for (int i = 0; i < 11; ++i) {
    d.texts.push_back(std::string(static_cast<size_t>(i + 1), 'x'));
    d.labels.push_back(i % 3);
  }
  eval::PredictOptions o;
  o.batch_size = 4;
  o.max_length = 6;
  o.pad_id = 7;
  o.progress = false;
  const auto m = eval::evaluate_classifier(fn, enc, d, o);
  std::vector<int64_t> yp;
  for (int i = 0; i < 11; ++i) yp.push_back(std::min(i + 1, 6) % 3);
  const auto expect = eval::compute_metrics(d.labels, yp, 3);
  EXPECT_EQ(m.confusion, expect.confusion);
  EXPECT_EQ(m.n, 11);

  std::vector<eval::ClassificationMetrics> res(2);
  const auto errors = run_two_ranks([&](int r, dist::Communicator* c) {
    auto oo = o;
    oo.comm = c;
    res[r] = eval::evaluate_classifier(fn, enc, d, oo);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_EQ(res[r].confusion, expect.confusion);
  }
}

// ---------------------------------------------------------------------------------------------
// Report

TEST(EvalReport, WritesJsonAndAlignedText) {
  eval::EvalReport rep("some/model");
  rep.set_meta("limit", 20);
  eval::MultipleChoiceResult a;
  a.task = "piqa";
  a.n = 20;
  a.acc = 0.55;
  a.acc_stderr = 0.1141;
  a.acc_norm = 0.6;
  a.acc_norm_stderr = 0.1124;
  rep.add_multiple_choice(a);
  a.task = "hellaswag";
  a.n = 1000;
  rep.add_multiple_choice(a);
  auto cm = eval::metrics_from_confusion({{5, 2}, {1, 7}});
  cm.label_names = {"neg", "pos"};
  rep.add_classification("sst2", cm);
  const auto dir = temp_dir("report");
  const auto prefix = (dir / "sub/out").string();
  rep.write(prefix);
  const auto j = json::parse(read(prefix + ".json"));
  EXPECT_EQ(j["model"], "some/model");
  EXPECT_EQ(j["tasks"]["piqa"]["n"], 20);
  EXPECT_DOUBLE_EQ(j["tasks"]["piqa"]["acc"].get<double>(), 0.55);
  EXPECT_NEAR(j["classification"]["sst2"]["f1"].get<double>(), 14.0 / 17.0, 1e-12);
  const auto txt = read(prefix + ".txt");
  EXPECT_EQ(txt, rep.to_text());
  // Rows of the task table line up: "n" values end in the same column.
  std::istringstream ss(txt);
  std::string line, piqa, hs;
  while (std::getline(ss, line)) {
    if (line.rfind("piqa ", 0) == 0) piqa = line;
    if (line.rfind("hellaswag ", 0) == 0) hs = line;
  }
  ASSERT_FALSE(piqa.empty()) << txt;
  ASSERT_FALSE(hs.empty()) << txt;
  EXPECT_EQ(piqa.size(), hs.size()) << txt;
  EXPECT_NE(piqa.find("0.5500"), std::string::npos) << txt;
  EXPECT_FALSE(fs::exists(prefix + ".json.tmp"));
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// CLI on the real stories260K

namespace {

using mpqat::testing::run_eval_cli;

}  // namespace

TEST(EvalCli, TasksOnStories260K) {
  REQUIRE_SHARED();
  const auto sdir = shared();
  const auto dir = temp_dir("cli");
  const auto mdir = dir / "stories260K";
  const auto src = fs::path(sdir) / "data/models/stories260K";
  model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(), mdir.string());

  const auto out = run_eval_cli({mdir.string(), "--tasks", "piqa,arc_easy", "--limit", "20", "--json",
                                 "--task-dir", tasks_dir(), "--batch-size", "4", "--report",
                                 (dir / "rep").string()});
  const auto j = json::parse(out);  // exactly one object
  for (const char* t : {"piqa", "arc_easy"}) {
    ASSERT_TRUE(j["tasks"].contains(t)) << out;
    const auto& r = j["tasks"][t];
    EXPECT_EQ(r["n"].get<int64_t>(), 20);
    for (const char* k : {"acc", "acc_norm"}) {
      const double v = r[k].get<double>();
      EXPECT_GE(v, 0.0);
      EXPECT_LE(v, 1.0);
      // 20 items: a multiple of 1/20.
      EXPECT_NEAR(v * 20, std::round(v * 20), 1e-9);
    }
    EXPECT_GT(r["acc_stderr"].get<double>(), 0.0);
  }
  // The CLI agrees with the library called directly on the same model.
  model::ModelFolder f(mdir.string());
  auto m = model::load_model(f);
  eval::MultipleChoiceOptions o;
  o.limit = 20;
  o.max_length = 512;
  o.progress = false;
  const auto direct =
      eval::evaluate_task([&](const torch::Tensor& x) { return m->forward(x); }, f.tokenizer(),
                          eval::load_task("piqa", tasks_dir()), o);
  EXPECT_DOUBLE_EQ(direct.acc, j["tasks"]["piqa"]["acc"].get<double>());
  EXPECT_DOUBLE_EQ(direct.acc_norm, j["tasks"]["piqa"]["acc_norm"].get<double>());
  // Report files.
  const auto rj = json::parse(read(dir / "rep.json"));
  EXPECT_EQ(rj["tasks"]["piqa"], j["tasks"]["piqa"]);
  EXPECT_NE(read(dir / "rep.txt").find("arc_easy"), std::string::npos);

  // Without BOS the scores come from other token sequences; the library agrees again.
  const auto nb = json::parse(run_eval_cli({mdir.string(), "--tasks", "piqa", "--limit", "20", "--json",
                                            "--task-dir", tasks_dir(), "--no-bos"}));
  o.add_bos = false;
  const auto direct_nb =
      eval::evaluate_task([&](const torch::Tensor& x) { return m->forward(x); }, f.tokenizer(),
                          eval::load_task("piqa", tasks_dir()), o);
  EXPECT_DOUBLE_EQ(direct_nb.acc, nb["tasks"]["piqa"]["acc"].get<double>());
  EXPECT_DOUBLE_EQ(direct_nb.acc_norm, nb["tasks"]["piqa"]["acc_norm"].get<double>());

  // Errors: an unknown task, and --classify on a causal LM.
  auto msg = error_message([&] { run_eval_cli({mdir.string(), "--tasks", "piqa,winogrande", "--task-dir", tasks_dir()}); });
  EXPECT_NE(msg.find("winogrande"), std::string::npos) << msg;
  EXPECT_NE(msg.find("hellaswag"), std::string::npos) << msg;
  const auto sst = sdir + "/data/classification/sst2/glue_sst2_dev.tsv";
  msg = error_message<InputError>([&] { run_eval_cli({mdir.string(), "--classify", sst}); });
  EXPECT_NE(msg.find("ForSequenceClassification"), std::string::npos) << msg;
  fs::remove_all(dir);
}
