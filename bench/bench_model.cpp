// Model benchmark: load time, forward throughput and peak resident memory of one mode
// (full model in memory, or block streaming from the mapped file), for any supported family
// (Llama, OPT, BERT; classifiers time their (B, num_labels) output). Peak RSS only grows within
// a process, so tools/bench_model.sh runs one process per mode and prints the table.
//
//   mpqat_bench_model DIR --mode full|streaming [--tokens T] [--batch B] [--repeats R]
//   mpqat_bench_model DIR --make-random [--layers L --hidden H --ffn F --heads N --kv-heads K
//                     --vocab V]   writes a random Llama folder (fp16) to benchmark against
#include <sys/resource.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "mpqat/io/safetensors.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double peak_rss_mib() {
  rusage ru{};
  ::getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // ru_maxrss is in KiB on Linux
}

// Current resident memory split into anonymous (heap: weights, activations) and file-backed
// (pages of the memory-mapped checkpoint, which the kernel can drop at will), in MiB.
std::pair<double, double> rss_anon_file_mib() {
  std::ifstream in("/proc/self/status");
  std::string key;
  double anon = 0, file = 0;
  while (in >> key) {
    double kib = 0;
    if (key == "RssAnon:" && in >> kib) anon = kib / 1024.0;
    else if (key == "RssFile:" && in >> kib) file = kib / 1024.0;
  }
  return {anon, file};
}

struct RandomSpec {
  int64_t layers = 8, hidden = 512, ffn = 1376, heads = 8, kv_heads = 4, vocab = 4096;
};

// A random Llama-architecture folder: config.json + fp16 model.safetensors (no tokenizer).
void make_random(const std::string& dir, const RandomSpec& r) {
  nlohmann::json j{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                   {"hidden_size", r.hidden}, {"intermediate_size", r.ffn},
                   {"num_hidden_layers", r.layers}, {"num_attention_heads", r.heads},
                   {"num_key_value_heads", r.kv_heads}, {"vocab_size", r.vocab},
                   {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-5},
                   {"tie_word_embeddings", false}, {"torch_dtype", "float16"}};
  const auto cfg = mpqat::model::parse_model_config(j, dir + "/config.json");
  torch::manual_seed(0);
  auto model = mpqat::model::build_model(cfg);
  std::vector<torch::Tensor> keep;
  std::vector<mpqat::io::TensorToWrite> out;
  for (const auto& p : model->named_parameters()) {
    auto t = p.value().detach().to(torch::kFloat16).contiguous();
    keep.push_back(t);
    out.push_back({p.key(), mpqat::io::DType::F16, t.sizes().vec(), t.data_ptr(),
                   static_cast<std::size_t>(t.numel()) * 2});
  }
  std::filesystem::create_directories(dir);
  mpqat::model::save_model_config(cfg, dir + "/config.json");
  mpqat::io::write_safetensors_sharded(dir, out);
  std::cout << "wrote " << dir << " (" << cfg.num_parameters() << " parameters)" << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mpqat model benchmark (one mode per process)", "mpqat_bench_model"};
  std::string dir, mode = "full";
  int64_t tokens = 0, batch = 1;
  int repeats = 3;
  app.add_option("model", dir, "model folder")->required();
  app.add_option("--mode", mode, "full or streaming")->check(CLI::IsMember({"full", "streaming"}))
      ->capture_default_str();
  app.add_option("--tokens", tokens, "sequence length (0 = min(512, model maximum))")
      ->capture_default_str();
  app.add_option("--batch", batch, "sequences per forward")->capture_default_str();
  app.add_option("--repeats", repeats, "timed forwards (after one warm-up)")->capture_default_str();
  bool make = false;
  RandomSpec spec;
  app.add_flag("--make-random", make, "write a random Llama folder to DIR and exit");
  app.add_option("--layers", spec.layers)->capture_default_str();
  app.add_option("--hidden", spec.hidden)->capture_default_str();
  app.add_option("--ffn", spec.ffn)->capture_default_str();
  app.add_option("--heads", spec.heads)->capture_default_str();
  app.add_option("--kv-heads", spec.kv_heads)->capture_default_str();
  app.add_option("--vocab", spec.vocab)->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (make) {
    make_random(dir, spec);
    return 0;
  }
  try {
    torch::NoGradGuard no_grad;
    const double rss0 = peak_rss_mib();
    const auto t0 = std::chrono::steady_clock::now();
    mpqat::model::ModelFolder folder(dir);
    // Any family: the whole model, or for streaming the block-free shell.
    std::shared_ptr<mpqat::model::TransformerModel> model =
        mode == "full" ? mpqat::model::load_any_model(folder) : mpqat::model::load_any_model_shell(folder);
    const double load_s = seconds_since(t0);
    const auto& cfg = folder.config();
    if (tokens <= 0) tokens = std::min<int64_t>(512, cfg.max_position_embeddings);
    torch::manual_seed(0);
    const auto ids = torch::randint(0, cfg.vocab_size, {batch, tokens}, torch::kInt64);  // (B, T)
    auto run = [&] {
      return mode == "full" ? model->forward(ids, torch::Tensor())
                            : mpqat::model::forward_streaming(folder, ids, model);
    };
    run();  // warm-up
    const auto t1 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) run();
    const double fwd_s = seconds_since(t1) / repeats;
    nlohmann::json j{{"mode", mode},
                     {"model", dir},
                     {"architecture", cfg.architecture},
                     {"layers", cfg.num_hidden_layers},
                     {"tokens_per_forward", batch * tokens},
                     {"load_s", load_s},
                     {"forward_s", fwd_s},
                     {"tokens_per_s", static_cast<double>(batch * tokens) / fwd_s},
                     {"peak_rss_mib", peak_rss_mib()},
                     {"rss_anon_mib", rss_anon_file_mib().first},
                     {"rss_file_mib", rss_anon_file_mib().second},
                     {"rss_before_load_mib", rss0},
                     {"threads", torch::get_num_threads()}};
    std::cout << j.dump() << std::endl;
  } catch (const mpqat::InputError& e) {
    std::cerr << "mpqat_bench_model: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "mpqat_bench_model: failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
