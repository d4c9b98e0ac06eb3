// Model benchmark: load time, forward throughput and peak resident memory of one mode
// (full model in memory, or block streaming from the mapped file). Peak RSS only grows within
// a process, so tools/bench_model.sh runs one process per mode and prints the table.
//
//   mpqat_bench_model DIR --mode full|streaming [--tokens T] [--batch B] [--repeats R]
#include <sys/resource.h>

#include <chrono>
#include <iostream>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

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
  CLI11_PARSE(app, argc, argv);
  try {
    torch::NoGradGuard no_grad;
    const double rss0 = peak_rss_mib();
    const auto t0 = std::chrono::steady_clock::now();
    mpqat::model::ModelFolder folder(dir);
    mpqat::model::LlamaPtr model = mode == "full" ? mpqat::model::load_model(folder)
                                                  : mpqat::model::load_model_shell(folder);
    const double load_s = seconds_since(t0);
    const auto& cfg = folder.config();
    if (tokens <= 0) tokens = std::min<int64_t>(512, cfg.max_position_embeddings);
    torch::manual_seed(0);
    const auto ids = torch::randint(0, cfg.vocab_size, {batch, tokens}, torch::kInt64);  // (B, T)
    auto run = [&] {
      return mode == "full" ? model->forward(ids)
                            : mpqat::model::forward_streaming(folder, ids, model);
    };
    run();  // warm-up
    const auto t1 = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) run();
    const double fwd_s = seconds_since(t1) / repeats;
    nlohmann::json j{{"mode", mode},
                     {"model", dir},
                     {"layers", cfg.num_hidden_layers},
                     {"tokens_per_forward", batch * tokens},
                     {"load_s", load_s},
                     {"forward_s", fwd_s},
                     {"tokens_per_s", static_cast<double>(batch * tokens) / fwd_s},
                     {"peak_rss_mib", peak_rss_mib()},
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
