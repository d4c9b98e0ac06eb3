// Block-at-a-time passes ([S1]): the streamed Fisher against the whole-model autograd one (random
// Llama / OPT / BERT, stories260K), two ranks against one, activation caches in memory and on disk
// and their errors, streamed evaluation and RTN against the whole model, and the sensitivity
// stage's peak memory against model depth (a subprocess per depth).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "mpqat/data/calibration.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/dist/launcher.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/model/llama2c.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/activation_cache.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/sensitivity/fisher.h"
#include "mpqat/sensitivity/run_sensitivity.h"
#include "mpqat/util/error.h"
#include "run_command.h"
#include "test_util.h"
#include "float_folder.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

fs::path temp_dir(const std::string& name) { return mpqat::testing::fresh_temp_dir("stream", name); }

json llama_json(int layers) {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 64},
              {"intermediate_size", 96}, {"num_hidden_layers", layers}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 64}, {"max_position_embeddings", 128},
              {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
}

json opt_cls_json() {
  return json{{"architectures", {"OPTForSequenceClassification"}}, {"model_type", "opt"}, {"hidden_size", 32},
              {"ffn_dim", 48}, {"num_hidden_layers", 3}, {"num_attention_heads", 4}, {"vocab_size", 40},
              {"max_position_embeddings", 64}, {"word_embed_proj_dim", 32}, {"do_layer_norm_before", true},
              {"activation_function", "relu"}, {"pad_token_id", 0}, {"bos_token_id", 2}, {"eos_token_id", 3},
              {"num_labels", 3}};
}

json bert_cls_json() {
  return json{{"architectures", {"BertForSequenceClassification"}}, {"model_type", "bert"}, {"hidden_size", 32},
              {"intermediate_size", 48}, {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"vocab_size", 40},
              {"max_position_embeddings", 64}, {"type_vocab_size", 2}, {"layer_norm_eps", 1e-12},
              {"hidden_act", "gelu"}, {"pad_token_id", 0}, {"num_labels", 2}};
}

// A random float model folder (F32 safetensors + config.json).
fs::path model_folder(const std::string& name, const json& cfg, uint64_t seed) {
  const auto dir = temp_dir(name);
  torch::manual_seed(seed);
  auto m = model::build_model(model::parse_model_config(cfg, name));
  std::ofstream(dir / "config.json") << cfg.dump(2);
  mpqat::testing::write_f32_safetensors(*m, dir);
  return dir;
}

std::vector<std::vector<int32_t>> random_sequences(int n, int min_len, int max_len, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> s(n);
  for (auto& q : s) {
    q.resize(static_cast<size_t>(min_len + static_cast<int>(rng() % static_cast<uint64_t>(max_len - min_len + 1))));
    for (auto& t : q) t = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  }
  return s;
}

// The streamed Fisher of every block, in named_linears() order.
std::vector<torch::Tensor> streamed(model::BlockSource& src, const std::vector<std::vector<int32_t>>& seqs,
                                    const std::vector<int64_t>& labels, const sensitivity::StreamedFisherOptions& o) {
  std::vector<std::vector<torch::Tensor>> per(static_cast<size_t>(src.num_blocks()));
  std::vector<int64_t> order;
  sensitivity::fisher_streamed(
      src, seqs, labels,
      [&](int64_t i, model::Block&, const std::vector<torch::Tensor>& f) {
        order.push_back(i);
        for (const auto& t : f) per[static_cast<size_t>(i)].push_back(t.clone());
      },
      o);
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < per.size(); ++i) {
    EXPECT_EQ(order[i], static_cast<int64_t>(per.size() - 1 - i)) << "blocks are walked top down";
    for (auto& t : per[i]) out.push_back(t);
  }
  return out;
}

void expect_fisher_equal(const std::vector<torch::Tensor>& got, const sensitivity::FisherResult& ref) {
  ASSERT_EQ(got.size(), ref.fisher.size());
  for (size_t k = 0; k < got.size(); ++k) {
    const double scale = ref.fisher[k].abs().max().item<double>();
    ASSERT_GT(scale, 0.0) << ref.names[k];
    EXPECT_TRUE(torch::allclose(got[k], ref.fisher[k], 1e-5, 1e-7 * scale))
        << ref.names[k] << ": max abs diff " << (got[k] - ref.fisher[k]).abs().max().item<double>() << " of "
        << scale;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Streamed Fisher

TEST(StreamedFisher, EqualsWholeModelAutogradOnRandomLlamaFromFolder) {
  const auto dir = model_folder("llama", llama_json(3), 5);
  model::ModelFolder folder(dir.string());
  const auto seqs = random_sequences(5, 6, 20, 64, 11);
  auto whole = model::load_any_model(folder);
  const auto ref = sensitivity::fisher_causal_lm(*whole, seqs);
  auto src = model::folder_blocks(folder);
  ASSERT_TRUE(src->streaming());
  sensitivity::StreamedFisherOptions o;
  expect_fisher_equal(streamed(*src, seqs, {}, o), ref);
  // Caches in files (limit 0): the same numbers.
  o.cache.memory_limit = 0;
  o.cache.dir = (dir / "cache").string();
  expect_fisher_equal(streamed(*src, seqs, {}, o), ref);
  EXPECT_TRUE(fs::is_empty(dir / "cache")) << "spilled caches are unlinked files";
  fs::remove_all(dir);
}

TEST(StreamedFisher, EqualsWholeModelAutogradOnOptAndBertClassifiers) {
  for (const auto& j : {opt_cls_json(), bert_cls_json()}) {
    torch::manual_seed(17);
    auto m = model::build_model(model::parse_model_config(j, "cls"));
    const auto seqs = random_sequences(6, 3, 12, 40, 23);
    std::vector<int64_t> labels;
    for (size_t i = 0; i < seqs.size(); ++i) labels.push_back(static_cast<int64_t>(i % m->num_labels()));
    const auto ref = sensitivity::fisher_classifier(*m, seqs, labels);
    std::vector<bool> before;
    for (const auto& p : m->parameters()) before.push_back(p.requires_grad());
    auto src = model::model_blocks(*m);  // the same model's blocks, walked one at a time
    expect_fisher_equal(streamed(*src, seqs, labels, {}), ref);
    // The in-memory model is left as it was, gradients included.
    size_t k = 0;
    for (const auto& p : m->parameters()) {
      EXPECT_EQ(p.requires_grad(), before[k++]);
      EXPECT_FALSE(p.grad().defined());
    }
  }
}

TEST(StreamedFisher, RejectsBadInputsWithOneLine) {
  torch::manual_seed(1);
  auto m = model::build_model(model::parse_model_config(llama_json(2), "t"));
  auto src = model::model_blocks(*m);
  auto noop = [](int64_t, model::Block&, const std::vector<torch::Tensor>&) {};
  EXPECT_THROW(sensitivity::fisher_streamed(*src, {{5}}, {}, noop), InputError);          // < 2 tokens
  EXPECT_THROW(sensitivity::fisher_streamed(*src, {{5, 6}}, {1}, noop), InputError);      // labels for an LM
  torch::manual_seed(2);
  auto c = model::build_model(model::parse_model_config(bert_cls_json(), "b"));
  auto csrc = model::model_blocks(*c);
  EXPECT_THROW(sensitivity::fisher_streamed(*csrc, {{5, 6}}, {7}, noop), InputError);     // label out of range
}

TEST(StreamedFisher, TwoRanksEqualOneRank) {
  const auto dir = model_folder("dist", llama_json(2), 8);
  model::ModelFolder folder(dir.string());
  const auto seqs = random_sequences(5, 8, 16, 64, 3);  // odd: ranks hold 3 and 2
  auto one = model::folder_blocks(folder);
  const auto ref = streamed(*one, seqs, {}, {});
  const int port = dist::find_free_port();
  dist::Options opts;
  opts.backend = "gloo";
  opts.timeout = std::chrono::seconds(60);
  std::vector<std::vector<torch::Tensor>> res(2);
  std::vector<std::string> errors(2);
  auto body = [&](int r) {
    try {
      dist::LaunchEnv e;
      e.present = true;
      e.rank = e.local_rank = r;
      e.world_size = e.local_world_size = 2;
      e.master_port = port;
      auto c = dist::Communicator::create(e, opts);
      auto src = model::folder_blocks(folder);
      sensitivity::StreamedFisherOptions o;
      o.comm = c.get();
      std::vector<std::vector<torch::Tensor>> per(2);
      sensitivity::fisher_streamed(
          *src, seqs, {},
          [&](int64_t i, model::Block&, const std::vector<torch::Tensor>& f) {
            for (const auto& t : f) per[static_cast<size_t>(i)].push_back(t.clone());
          },
          o);
      for (auto& b : per)
        for (auto& t : b) res[static_cast<size_t>(r)].push_back(t);
    } catch (const std::exception& ex) {
      errors[static_cast<size_t>(r)] = ex.what();
    }
  };
  std::thread t0(body, 0), t1(body, 1);
  t0.join();
  t1.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[static_cast<size_t>(r)], "") << "rank " << r;
    ASSERT_EQ(res[static_cast<size_t>(r)].size(), ref.size());
    for (size_t k = 0; k < ref.size(); ++k)
      EXPECT_TRUE(torch::allclose(res[static_cast<size_t>(r)][k], ref[k], 1e-5, 1e-10)) << k << " rank " << r;
  }
  fs::remove_all(dir);
}

TEST(StreamedFisher, OmegaEqualsWholeModelOnStories260K) {
  const std::string shared = mpqat::testing::shared_dir();
  if (shared.empty()) GTEST_SKIP() << "../shared/data not found (set MPQAT_SHARED_DIR): stories260K test skipped";
  const fs::path src = fs::path(shared) / "data/models/stories260K";
  const auto dir = temp_dir("stories");
  model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(), (dir / "m").string());
  const std::string calib = shared + "/data/text/tinystories/validation_part1.txt";
  sensitivity::SensitivityRunOptions so;
  so.model = (dir / "m").string();
  so.calib = calib;
  so.samples = 6;
  so.seqlen = 128;
  so.seed = 4;
  so.group_sizes = {32, 64};
  so.cache.memory_limit = 64 << 10;  // some caches in memory, the rest in files
  so.cache.dir = (dir / "cache").string();
  const auto rep = sensitivity::compute_sensitivity(so);

  model::ModelFolder folder(so.model);
  data::CalibrationOptions co;
  co.samples = so.samples;
  co.seqlen = so.seqlen;
  co.seed = so.seed;
  const auto seqs = data::load_token_calibration(calib, folder.tokenizer(), co).sequences;
  auto whole = model::load_any_model(folder);
  const auto ref = sensitivity::fisher_causal_lm(*whole, seqs);
  ASSERT_EQ(rep.modules.size(), ref.names.size());
  int compared = 0;
  for (size_t k = 0; k < ref.names.size(); ++k) {
    EXPECT_EQ(rep.modules[k].name, ref.names[k]);
    const auto table = sensitivity::omega_table(whole->linear(ref.names[k])->weight, ref.fisher[k], so.bits,
                                                so.group_sizes);
    ASSERT_EQ(rep.modules[k].omega.size(), table.size()) << ref.names[k];
    for (const auto& [key, v] : table) {
      const double got = rep.modules[k].omega.at(key);
      EXPECT_NEAR(got, v, 1e-5 * std::abs(v)) << ref.names[k] << " " << key;
      ++compared;
    }
  }
  EXPECT_EQ(compared, 5 * 7 * (6 * 2 + 1));  // 5 blocks x 7 linears x (6 bits x 2 groups + "16")
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Activation caches

TEST(ActivationCache, MemoryAndFileHoldTheSameValues) {
  const auto dir = temp_dir("cache");
  for (auto dt : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    model::CacheOptions o;
    o.dtype = dt;
    o.dir = dir.string();
    o.memory_limit = 1 << 20;
    model::CacheBudget budget(o);
    model::ActivationCache mem(budget, {3, 5, 2}, 4, "a");
    o.memory_limit = 0;
    model::CacheBudget disk_budget(o);
    model::ActivationCache disk(disk_budget, {3, 5, 2}, 4, "b");
    EXPECT_FALSE(mem.on_disk());
    EXPECT_TRUE(disk.on_disk());
    EXPECT_EQ(disk_budget.on_disk(), 10u * 4 * c10::elementSize(dt));
    for (int64_t i = 0; i < 3; ++i) {
      auto x = torch::randn({mem.length(i), 4});
      mem.put(i, x);
      disk.put(i, x.unsqueeze(0));
      const auto rounded = x.to(dt).to(torch::kFloat).unsqueeze(0);
      EXPECT_TRUE(torch::equal(mem.get(i), rounded));
      EXPECT_TRUE(torch::equal(disk.get(i), rounded));
    }
    const auto path = (dir / "saved.bin").string();
    disk.save(path);
    model::ActivationCache back(budget, {3, 5, 2}, 4, "c");
    back.load(path);
    for (int64_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::equal(back.get(i), disk.get(i)));
    model::ActivationCache other(budget, {3, 5, 3}, 4, "d");
    EXPECT_THROW(other.load(path), InputError);  // another shape
  }
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1) << "only saved.bin";
  fs::remove_all(dir);
}

TEST(ActivationCache, StackedItemsOfEqualLength) {
  model::CacheOptions o;
  model::CacheBudget budget(o);
  model::ActivationCache c(budget, 4, 3, 2, "s");
  auto x = torch::arange(24, torch::kFloat).view({4, 3, 2});
  c.put(std::vector<int64_t>{0, 1, 2, 3}, x);
  EXPECT_TRUE(torch::equal(c.get(std::vector<int64_t>{2, 0}), torch::stack({x[2], x[0]})));
  c.put(std::vector<int64_t>{1}, x.narrow(0, 3, 1) * 2);
  EXPECT_TRUE(torch::equal(c.get(1), (x[3] * 2).unsqueeze(0)));
}

TEST(ActivationCache, UnusableFolderOrFullDiskIsOneClearLine) {
  const auto dir = temp_dir("bad");
  std::ofstream(dir / "file") << "x";
  model::CacheOptions o;
  o.memory_limit = 0;
  o.dir = (dir / "file" / "sub").string();  // a folder under a file: cannot exist
  o.dir_key = "sensitivity.cache_dir";
  {
    model::CacheBudget budget(o);
    try {
      model::ActivationCache c(budget, 2, 8, 8, "x");
      FAIL() << "expected InputError";
    } catch (const InputError& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(o.dir), std::string::npos) << m;
      EXPECT_NE(m.find("sensitivity.cache_dir"), std::string::npos) << m;
      EXPECT_EQ(m.find('\n'), std::string::npos);
    }
  }
  // A disk that fills up: a file-size limit makes the reservation fail at creation.
  o.dir = dir.string();
  model::CacheBudget budget(o);
  struct rlimit old {};
  ::getrlimit(RLIMIT_FSIZE, &old);
  auto prev = std::signal(SIGXFSZ, SIG_IGN);
  struct rlimit small = old;
  small.rlim_cur = 1 << 16;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string msg;
  try {
    model::ActivationCache c(budget, 64, 64, 64, "big");  // 1 MiB of fp32
  } catch (const InputError& e) {
    msg = e.what();
  }
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, prev);
  EXPECT_NE(msg.find("needs 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find(dir.string()), std::string::npos) << msg;
  EXPECT_EQ(budget.on_disk(), 0u);
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Streamed evaluation and RTN

TEST(StreamedEval, PerplexityEqualsTheWholeModelBitForBit) {
  const auto dir = model_folder("eval", llama_json(3), 9);
  model::ModelFolder folder(dir.string());
  std::vector<int32_t> ids;
  std::mt19937 rng(1);
  for (int i = 0; i < 16 * 24 + 5; ++i) ids.push_back(static_cast<int32_t>(rng() % 64));
  model::StreamingOptions never;
  never.mode = "never";
  auto whole = model::open_blocks(folder, never);
  ASSERT_FALSE(whole->streaming());
  model::StreamingOptions always;
  always.mode = "always";
  auto streamed_src = model::open_blocks(folder, always);
  ASSERT_TRUE(streamed_src->streaming());
  const auto a = eval::evaluate_perplexity(model::batch_fn(*whole), ids, 16, 3);
  // Groups of two windows' hidden states (16 x 64 fp32 each): every block is read 4 times.
  const auto b = eval::evaluate_perplexity(model::batch_fn(*streamed_src, 2 * 16 * 64 * 4), ids, 16, 1);
  const auto c = eval::evaluate_perplexity(model::batch_fn(*streamed_src, 1ull << 30), ids, 16, 3);
  EXPECT_EQ(a.windows, 24);
  EXPECT_EQ(a.nll, c.nll);            // same batches: the same bits
  EXPECT_NEAR(a.nll, b.nll, 1e-6);    // batch 1 vs 3: float summation order only
  // auto: a limit below the whole model's bytes streams it.
  model::StreamingOptions tight;
  tight.memory_limit = model::whole_model_bytes(folder) - 1;
  EXPECT_TRUE(model::open_blocks(folder, tight)->streaming());
  tight.memory_limit = model::whole_model_bytes(folder);
  EXPECT_FALSE(model::open_blocks(folder, tight)->streaming());
  // A limit below one block and the embeddings / head: one line naming the setting.
  tight.memory_limit = 1000;
  tight.limit_key = "--memory-limit";
  try {
    model::open_blocks(folder, tight);
    ADD_FAILURE() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("--memory-limit"), std::string::npos) << e.what();
  }
  std::ofstream(dir / "text.txt") << std::string(400, 'a');
  fs::copy_file(fs::path(MPQAT_SOURCE_DIR) / "checkpoints/kjv-llama/tokenizer.model", dir / "tokenizer.model");
  const auto cli = mpqat::testing::run_mpqat("eval " + dir.string() + " --ppl " + (dir / "text.txt").string() +
                                             " --memory-limit 1KiB");
  EXPECT_EQ(cli.code, 2) << cli.err;
  EXPECT_NE(cli.err.find("--memory-limit = 1"), std::string::npos) << cli.err;
  EXPECT_THROW(model::parse_memory_limit("lots", "model.memory_limit"), InputError);
  EXPECT_EQ(model::parse_memory_limit("auto", "model.memory_limit"), 0u);
  fs::remove_all(dir);
}

TEST(StreamedRtn, SavedBlockByBlockIsTheSameBytesAsTheWholeModel) {
  const auto dir = model_folder("rtn", llama_json(3), 4);
  model::ModelFolder folder(dir.string());
  quant::BitPlan plan;
  for (int64_t i = 0; i < 3; ++i)
    for (const auto& rel : model::family_block_linear_names(folder.config())) {
      quant::ModulePlan m;
      m.bits = i == 1 ? 16 : (rel.find("mlp") != std::string::npos ? 3 : 4);
      m.group_size = 32;
      plan.modules[model::family_block_prefix(folder.config(), i) + rel] = m;
    }
  quant::SaveOptions so;
  so.source_dir = dir.string();
  so.plan = &plan;
  auto whole = model::load_any_model(folder);
  quant::rtn_quantize(*whole, plan);
  quant::save_quantized_checkpoint(*whole, (dir / "a").string(), so);
  const auto blocks = quant::rtn_quantize_blocks(folder, plan);
  quant::save_quantized_checkpoint(*blocks.shell, blocks.config, blocks.blocks, (dir / "b").string(), so);
  const auto fa = mpqat::testing::slurp((dir / "a" / "model.safetensors").string());
  const auto fb = mpqat::testing::slurp((dir / "b" / "model.safetensors").string());
  EXPECT_GT(fa.size(), 1000u);
  EXPECT_TRUE(fa == fb) << "streamed RTN differs from the whole-model RTN";
  fs::remove_all(dir);
}

// ---------------------------------------------------------------------------------------------
// Memory against depth

namespace {

// Runs the mpqat binary with `args` and returns its peak resident memory (wait4's ru_maxrss) in
// bytes, or 0 when it failed (its stderr goes to `err`).
uint64_t child_peak_rss(const std::vector<std::string>& args, std::string* err) {
  const auto errfile = fs::temp_directory_path() / ("mpqat_stream_err_" + std::to_string(::getpid()));
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::FILE* e = std::freopen(errfile.c_str(), "w", stderr);
    std::FILE* o = std::freopen("/dev/null", "w", stdout);
    (void)e;
    (void)o;
    std::vector<char*> argv{const_cast<char*>(MPQAT_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(MPQAT_BINARY, argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  ::wait4(pid, &status, 0, &ru);
  *err = mpqat::testing::slurp(errfile.string());
  fs::remove(errfile);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 0;
  return static_cast<uint64_t>(ru.ru_maxrss) * 1024;
}

}  // namespace

TEST(SensitivityMemory, PeakDoesNotGrowWithDepth) {
  const fs::path kjv = fs::path(MPQAT_SOURCE_DIR) / "checkpoints/kjv-llama";
  const auto dir = temp_dir("depth");
  std::string err;
  std::map<int, uint64_t> peak;
  for (int layers : {4, 16}) {
    const auto m = (dir / ("l" + std::to_string(layers))).string();
    // Blocks of 46 MB in fp32 (hidden 1024, FFN 2816): a whole-model pass would grow by 3 x 46 MB
    // (weights, gradients, Fisher) per block; a streamed one holds one block whatever the depth.
    auto r = mpqat::testing::run_mpqat("random-model " + m + " --shape tiny --hidden 1024 --ffn 2816 --layers " +
                                       std::to_string(layers) + " --tokenizer-from " + kjv.string());
    ASSERT_EQ(r.code, 0) << r.err;
    peak[layers] = child_peak_rss({"sensitivity", m, "--calib", (kjv / "calib.txt").string(), "--samples", "2",
                                   "--seqlen", "64", "--bits", "4", "--group-sizes", "128", "--probe-bits", "4",
                                   "--quiet", "--out", (dir / "s.json").string()},
                                  &err);
    ASSERT_GT(peak[layers], 0u) << err;
    fs::remove_all(m);
  }
  const double block_bytes = 4.0 * (1024.0 * 1024 * 2 + 1024.0 * 512 * 2 + 3 * 1024.0 * 2816);
  std::cout << "sensitivity peak rss: 4 layers " << peak[4] / 1048576 << " MiB, 16 layers " << peak[16] / 1048576
            << " MiB (one fp32 block " << block_bytes / 1048576 << " MiB)\n";
  EXPECT_LT(static_cast<double>(peak[16]), 1.15 * static_cast<double>(peak[4]));
  EXPECT_LT(static_cast<double>(peak[16]) - static_cast<double>(peak[4]), block_bytes);
  fs::remove_all(dir);
}
