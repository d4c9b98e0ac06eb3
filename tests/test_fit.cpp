// train/fit: plain full-precision training of causal LMs and sequence classifiers, and the float
// model folders it writes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include <torch/torch.h>

#include "mpqat/data/wordpiece_tokenizer.h"
#include "mpqat/model/config.h"
#include "mpqat/model/loader.h"
#include "mpqat/train/fit.h"
#include "mpqat/util/error.h"
#include "run_command.h"
#include "sentiment_fixture.h"
#include "test_util.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

using namespace mpqat::testing;

namespace {

fs::path temp_dir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("test_fit", tag); }

json llama_json(int64_t vocab) {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 32},
              {"intermediate_size", 64}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", vocab}, {"max_position_embeddings", 32},
              {"tie_word_embeddings", true}, {"bos_token_id", 1}, {"eos_token_id", 2}};
}

model::ModelPtr fresh_model(const json& j, uint64_t seed = 0) {
  torch::manual_seed(seed);
  auto m = model::create_model(model::parse_model_config(j));
  train::init_for_training(*m);
  return m;
}

// A deterministic stream: a fixed random permutation cycle over ids 3..V-1, so every next token
// is a function of the current one (learnable to ~0 loss).
std::vector<int32_t> cycle_stream(int64_t vocab, int64_t n, uint64_t seed) {
  std::vector<int32_t> perm;
  for (int32_t i = 3; i < vocab; ++i) perm.push_back(i);
  std::mt19937 rng(seed);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(perm[static_cast<size_t>(i) % perm.size()]);
  return out;
}

bool all_frozen(const model::TransformerModel& m) {
  for (const auto& p : m.parameters(true))
    if (p.requires_grad()) return false;
  return !m.is_training();
}

}  // namespace

TEST(Fit, LearningRateSchedule) {
  train::FitOptions o;
  o.lr = 1.0;
  o.min_lr_ratio = 0.1;
  o.warmup = 10;
  EXPECT_NEAR(train::learning_rate(o, 0, 110), 0.1, 1e-12);  // (0 + 1) / 10
  EXPECT_NEAR(train::learning_rate(o, 9, 110), 1.0, 1e-12);
  EXPECT_NEAR(train::learning_rate(o, 10, 110), 1.0, 1e-12);   // cosine starts at the peak
  EXPECT_NEAR(train::learning_rate(o, 109, 110), 0.1, 1e-12);  // and ends at lr * min_lr_ratio
  EXPECT_NEAR(train::learning_rate(o, 10 + 99 / 2, 110), 0.55, 0.02);  // halfway: the mean
  for (int s = 11; s < 110; ++s) EXPECT_LE(train::learning_rate(o, s, 110), train::learning_rate(o, s - 1, 110));
  o.schedule = "linear";
  EXPECT_NEAR(train::learning_rate(o, 10 + 99, 110), 0.1, 1e-12);
  EXPECT_NEAR(train::learning_rate(o, 10 + 33, 110), 0.7, 1e-9);
  o.schedule = "constant";
  EXPECT_NEAR(train::learning_rate(o, 100, 110), 1.0, 1e-12);
}

TEST(Fit, InitForTraining) {
  auto m = fresh_model(llama_json(40), 3);
  for (const auto& item : m->named_parameters(true)) {
    const auto& n = item.key();
    const auto& p = item.value();
    if (n.find("norm") != std::string::npos) {
      EXPECT_TRUE(torch::all(p == 1).item<bool>()) << n;
    } else if (n.find("o_proj") != std::string::npos || n.find("down_proj") != std::string::npos) {
      EXPECT_NEAR(p.std().item<double>(), 0.02 / 2.0, 0.004) << n;  // 0.02 / sqrt(2 * 2 blocks)
    } else {
      EXPECT_NEAR(p.std().item<double>(), 0.02, 0.004) << n;
    }
  }
  auto b = fresh_model(bert_json(40));
  for (const auto& item : b->named_parameters(true)) {
    if (item.value().dim() == 1 && item.key().find("LayerNorm") == std::string::npos) {
      EXPECT_TRUE(torch::all(item.value() == 0).item<bool>()) << item.key();
    }
  }
}

TEST(Fit, CausalLMLearnsACycle) {
  for (const json& j : {llama_json(24), opt_json(false, 24)}) {
    auto m = fresh_model(j, 1);
    const auto stream = cycle_stream(24, 3000, 7);
    const auto valid = cycle_stream(24, 400, 7);
    train::FitOptions o;
    o.steps = 80;
    o.batch_size = 8;
    o.seqlen = 16;
    o.lr = 1e-2;
    o.warmup = 5;
    o.log_every = 0;
    int calls = 0;
    o.on_step = [&](const json& rec) {
      ++calls;
      EXPECT_TRUE(rec.contains("loss") && rec.contains("lr"));
    };
    const auto r = train::fit_causal_lm(*m, stream, o, valid);
    const std::string arch = j["architectures"][0];
    EXPECT_EQ(calls, 80) << arch;
    ASSERT_EQ(r.step_loss.size(), 80u) << arch;
    EXPECT_EQ(r.steps, 80) << arch;
    EXPECT_EQ(r.tokens, 80 * 8 * 16) << arch;
    EXPECT_GT(r.step_loss.front(), 2.5) << arch;  // ~ln(24) at the start
    EXPECT_LT(r.step_loss.back(), 0.3) << arch;
    ASSERT_EQ(r.evals.size(), 1u) << arch;
    EXPECT_LT(r.evals.back().ppl, 1.5) << arch;
    EXPECT_NEAR(r.evals.back().ppl, std::exp(r.evals.back().loss), 1e-9);
    // The same number as causal_lm_loss on the returned model, which is in eval mode, frozen.
    EXPECT_TRUE(all_frozen(*m)) << arch;
    EXPECT_NEAR(train::causal_lm_loss(*m, valid, 16), r.evals.back().loss, 1e-5) << arch;
  }
}

TEST(Fit, SameSeedSameRun) {
  const auto stream = cycle_stream(24, 1000, 2);
  train::FitOptions o;
  o.steps = 5;
  o.batch_size = 4;
  o.seqlen = 8;
  o.log_every = 0;
  auto a = fresh_model(llama_json(24), 5), b = fresh_model(llama_json(24), 5);
  const auto ra = train::fit_causal_lm(*a, stream, o);
  const auto rb = train::fit_causal_lm(*b, stream, o);
  EXPECT_EQ(ra.step_loss, rb.step_loss);
  o.seed = 1;  // another data order
  auto c = fresh_model(llama_json(24), 5);
  EXPECT_NE(train::fit_causal_lm(*c, stream, o).step_loss, ra.step_loss);
}

TEST(Fit, MaxSecondsStopsEarly) {
  auto m = fresh_model(llama_json(24));
  train::FitOptions o;
  o.steps = 100000;
  o.batch_size = 2;
  o.seqlen = 8;
  o.log_every = 0;
  o.max_seconds = 0.3;
  const auto r = train::fit_causal_lm(*m, cycle_stream(24, 500, 1), o);
  EXPECT_TRUE(r.stopped_early);
  EXPECT_LT(r.steps, 100000);
  EXPECT_EQ(r.planned_steps, 100000);
}

TEST(Fit, ClassifiersLearnSeparableData) {
  const data::WordPieceTokenizer tok(sentiment_vocab(), data::WordPieceOptions{});
  const int64_t V = static_cast<int64_t>(sentiment_vocab().size());
  std::vector<std::string> texts, vtexts;
  std::vector<int64_t> labels, vlabels;
  sentiment_data(256, 11, texts, labels);
  sentiment_data(100, 12, vtexts, vlabels);
  for (const json& j : {bert_json(V), opt_json(true, V)}) {
    const std::string arch = j["architectures"][0];
    auto m = fresh_model(j, 2);
    const auto cfg = model::parse_model_config(j);
    const auto enc = train::classifier_encoding(cfg, tok);
    EXPECT_TRUE(enc.add_bos);  // [CLS] ... [SEP], as `mpqat eval --classify`
    EXPECT_TRUE(enc.keep_last_token);
    EXPECT_EQ(enc.pad_id, 0);
    const auto before = train::score_classifier(*m, train::encode_for_classifier(tok, vtexts, enc), vlabels, enc);
    train::FitOptions o;
    o.epochs = 6;
    o.batch_size = 16;
    o.seqlen = 0;
    o.lr = 3e-3;
    o.weight_decay = 0.01;
    o.warmup = 10;
    o.log_every = 0;
    o.eval_every = 48;
    const auto r = train::fit_classifier(*m, tok, texts, labels, o, enc, vtexts, vlabels);
    EXPECT_EQ(r.steps, 6 * 16) << arch;  // 256 / 16 batches per epoch
    EXPECT_EQ(r.epoch_loss.size(), 6u) << arch;
    EXPECT_LT(r.epoch_loss.back(), r.epoch_loss.front()) << arch;
    ASSERT_EQ(r.evals.size(), 2u) << arch;  // step 48 and the end
    EXPECT_GE(r.evals.back().accuracy, 0.95) << arch << " (before training: " << before.accuracy << ")";
    EXPECT_TRUE(all_frozen(*m)) << arch;
    const auto after = train::score_classifier(*m, train::encode_for_classifier(tok, vtexts, enc), vlabels, enc);
    EXPECT_DOUBLE_EQ(after.accuracy, r.evals.back().accuracy) << arch;
    EXPECT_EQ(after.predictions.size(), vtexts.size());
  }
}

TEST(Fit, EncodeForClassifierTruncatesKeepingTheLastToken) {
  const data::WordPieceTokenizer tok(sentiment_vocab(), data::WordPieceOptions{});
  train::ClassifierEncoding enc;
  enc.add_bos = true;
  enc.keep_last_token = true;
  enc.max_length = 4;
  const auto e = train::encode_for_classifier(tok, {"the movie was good", "good"}, enc);
  ASSERT_EQ(e[0].size(), 4u);
  EXPECT_EQ(e[0].front(), 2);  // [CLS]
  EXPECT_EQ(e[0].back(), 3);   // [SEP] kept
  EXPECT_EQ(e[1].size(), 3u);  // [CLS] good [SEP]
}

TEST(Fit, RejectsBadInput) {
  const data::WordPieceTokenizer tok(sentiment_vocab(), data::WordPieceOptions{});
  train::FitOptions o;
  o.steps = 2;
  o.seqlen = 8;
  o.log_every = 0;
  auto cls = fresh_model(bert_json(40));
  EXPECT_THROW(train::fit_causal_lm(*cls, cycle_stream(24, 100, 1), o), InputError);  // not a causal LM
  auto lm = fresh_model(llama_json(24));
  EXPECT_THROW(train::fit_classifier(*lm, tok, {"good"}, {1}, o, {}), InputError);  // not a classifier
  EXPECT_THROW(train::fit_causal_lm(*lm, cycle_stream(24, 5, 1), o), InputError);    // shorter than a window
  EXPECT_THROW(train::fit_causal_lm(*lm, {1, 2, 3, 99, 4, 5, 6, 7, 8, 9, 10, 11}, o), InputError);  // id >= vocab
  o.seqlen = 64;  // > max_position_embeddings 32
  EXPECT_THROW(train::fit_causal_lm(*lm, cycle_stream(24, 500, 1), o), InputError);
  o.seqlen = 8;
  o.schedule = "step";
  EXPECT_THROW(train::fit_causal_lm(*lm, cycle_stream(24, 500, 1), o), InputError);
  o.schedule = "cosine";
  EXPECT_THROW(train::fit_classifier(*cls, tok, {"good", "bad"}, {1, 2}, o, {}), InputError);  // label 2 of 2
  EXPECT_THROW(train::fit_classifier(*cls, tok, {"good", "bad"}, {1}, o, {}), InputError);     // sizes differ
  EXPECT_THROW(train::fit_classifier(*cls, tok, {}, {}, o, {}), InputError);                   // empty
}

TEST(Fit, SaveFloatFolderReloadsAndIsAtomic) {
  const auto dir = temp_dir("save");
  const data::WordPieceTokenizer tok(sentiment_vocab(), data::WordPieceOptions{});
  {
    std::ofstream v(dir / "my_vocab.txt");
    for (const auto& w : sentiment_vocab()) v << w << "\n";
  }
  const auto files = train::tokenizer_files((dir / "my_vocab.txt").string());
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].second, "vocab.txt");  // the name the loader looks for
  EXPECT_THROW(train::tokenizer_files((dir / "nope.model").string()), InputError);
  EXPECT_THROW(train::tokenizer_files(dir.string() + "/../"), InputError);

  for (const json& j : {llama_json(40), bert_json(40), opt_json(true, 40)}) {
    const std::string arch = j["architectures"][0];
    auto m = fresh_model(j, 4);
    m->eval();
    const auto out = (dir / arch).string();
    train::save_float_model_folder(*m, nullptr, files, out);
    EXPECT_TRUE(fs::exists(dir / arch / "vocab.txt"));
    const model::ModelFolder folder(out);
    EXPECT_EQ(folder.config().architecture, arch);
    EXPECT_EQ(json::parse(std::ifstream(dir / arch / "config.json"))["torch_dtype"], "float16");
    for (const auto& n : folder.checkpoint().names())
      EXPECT_EQ(folder.checkpoint().info(n).dtype, io::DType::F16) << n;
    model::LoadOptions lo;
    lo.strict = true;  // every tensor written is one the model uses
    auto back = model::load_any_model(folder, lo);
    auto ids = torch::tensor({2, 7, 8, 20, 9, 3}, torch::kLong).unsqueeze(0);
    torch::NoGradGuard ng;
    auto a = m->forward(ids, torch::Tensor()), b = back->forward(ids, torch::Tensor());
    EXPECT_LT((a - b).abs().max().item<double>(), 2e-2) << arch;  // fp16 rounding only
    EXPECT_EQ(folder.tokenizer().vocab_size(), static_cast<int32_t>(sentiment_vocab().size())) << arch;
  }
  // An existing non-empty folder is kept without force and replaced with it; no temp folder remains.
  auto m = fresh_model(llama_json(40), 9);
  const auto out = (dir / "LlamaForCausalLM").string();
  EXPECT_THROW(train::save_float_model_folder(*m, nullptr, files, out), InputError);
  train::SaveOptions so;
  so.force = true;
  so.dtype = io::DType::F32;
  so.extra_files = {{"README.md", "hello\n"}};
  json cfg = model::model_config_to_json(m->config());
  cfg["custom_key"] = 5;  // a given config is written as given
  train::save_float_model_folder(*m, cfg, files, out, so);
  EXPECT_EQ(json::parse(std::ifstream(dir / "LlamaForCausalLM" / "config.json"))["custom_key"], 5);
  EXPECT_EQ(mpqat::testing::slurp((dir / "LlamaForCausalLM" / "README.md").string()), "hello\n");
  const model::ModelFolder folder(out);
  EXPECT_EQ(folder.checkpoint().info("model.embed_tokens.weight").dtype, io::DType::F32);
  EXPECT_TRUE(torch::equal(folder.tensor("model.embed_tokens.weight", {40, 32}),
                           m->named_parameters()["model.embed_tokens.weight"]));
  for (const auto& e : fs::directory_iterator(dir))
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  fs::remove_all(dir);
}

TEST(Fit, OptLMFolderStartsAClassifier) {
  const auto dir = temp_dir("matching");
  {
    std::ofstream v(dir / "vocab.txt");
    for (const auto& w : sentiment_vocab()) v << w << "\n";
  }
  auto lm = fresh_model(opt_json(false, 40), 6);
  train::SaveOptions so;
  so.dtype = io::DType::F32;
  train::save_float_model_folder(*lm, nullptr, train::tokenizer_files((dir / "vocab.txt").string()),
                                 (dir / "lm").string(), so);
  auto cls = fresh_model(opt_json(true, 40), 7);
  const auto missing = train::load_matching_parameters(*cls, model::ModelFolder((dir / "lm").string()));
  EXPECT_EQ(missing, (std::vector<std::string>{"score.weight"}));
  const auto lm_params = lm->named_parameters(true);
  for (const auto& item : cls->named_parameters(true)) {
    if (item.key() != "score.weight") {
      EXPECT_TRUE(torch::equal(item.value(), lm_params[item.key()])) << item.key();
    }
  }
  fs::remove_all(dir);
}

// The hidden CLI: a classifier trained from a config, then scored by `mpqat eval --classify`.
TEST(Fit, CliClassifierThenEval) {
  const auto dir = temp_dir("cli");
  {
    std::ofstream v(dir / "vocab.txt");
    for (const auto& w : sentiment_vocab()) v << w << "\n";
    std::ofstream c(dir / "config.json");
    c << bert_json(static_cast<int64_t>(sentiment_vocab().size())).dump();
    std::vector<std::string> texts;
    std::vector<int64_t> labels;
    sentiment_data(300, 21, texts, labels);
    std::ofstream tr(dir / "train.tsv"), va(dir / "dev.tsv");
    tr << "sentence\tlabel\n";
    va << "sentence\tlabel\n";
    for (size_t i = 0; i < texts.size(); ++i)
      (i < 200 ? tr : va) << texts[i] << "\t" << (labels[i] ? "pos" : "neg") << "\n";
  }
  const std::string d = dir.string();
  auto r = mpqat::testing::run_mpqat("fit classifier --config " + d + "/config.json --tokenizer " + d + "/vocab.txt --train " +
                              d + "/train.tsv --valid " + d + "/dev.tsv --out " + d + "/cls --epochs 8 --lr 3e-3 " +
                              "--batch-size 16 --warmup 10 --log-every 0 --summary " + d + "/summary.json");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  const auto summary = json::parse(mpqat::testing::slurp(d + "/summary.json"));
  EXPECT_EQ(summary["labels"], (json{"neg", "pos"}));
  EXPECT_GE(summary["evals"].back()["accuracy"].get<double>(), 0.95) << summary.dump();
  const auto cfg = json::parse(mpqat::testing::slurp(d + "/cls/config.json"));
  EXPECT_EQ(cfg["id2label"]["1"], "pos");
  r = mpqat::testing::run_mpqat("eval " + d + "/cls --classify " + d + "/dev.tsv --json");
  ASSERT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NEAR(json::parse(r.out)["accuracy"].get<double>(), summary["evals"].back()["accuracy"].get<double>(), 0.02);
  // A bad input is a one-line error with exit code 2.
  r = mpqat::testing::run_mpqat("fit classifier --config " + d + "/config.json --train " + d + "/train.tsv --out " + d + "/x");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--tokenizer"), std::string::npos) << r.err;
  fs::remove_all(dir);
}
