// Solver time for 7B- and 70B-sized menus (32 / 80 blocks x 7 modules x 12 options): exact DP
// and Lagrangian, at several average-bit budgets. Prints a markdown table.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>

#include "mpqat/alloc/allocate.h"
#include "mpqat/alloc/solver.h"

using namespace mpqat;

namespace {
model::ModelConfig llama(int64_t C, int64_t F, int64_t L, int64_t H, int64_t KV) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", C},
                      {"intermediate_size", F}, {"num_hidden_layers", L}, {"num_attention_heads", H},
                      {"num_key_value_heads", KV}, {"vocab_size", 32000}, {"max_position_embeddings", 4096}};
  return model::parse_model_config(j, "bench");
}
double secs(std::chrono::steady_clock::time_point a) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - a).count();
}
}  // namespace

int main() {
  std::printf("| menu | units x options | budget (avg bits) | DP s | DP max front | Lagrangian s | Lagrangian gap (rel.) |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  for (auto [name, cfg] : {std::make_pair("7B", llama(4096, 11008, 32, 32, 32)),
                           std::make_pair("70B", llama(8192, 28672, 80, 64, 8))}) {
    const alloc::SizeModel sm(alloc::layout_from_config(cfg));
    const auto& lins = sm.layout().linears;
    std::mt19937_64 rng(1);
    std::lognormal_distribution<double> ln(0, 1.5);
    alloc::Sensitivity sens;
    for (const auto& l : lins) sens.modules[l.name].score = ln(rng);
    std::vector<alloc::Choice> menu;
    for (int b : {2, 3, 4, 5, 6, 8})
      for (int64_t g : {64, 128}) menu.push_back({b, g});
    std::vector<std::vector<alloc::McOption>> cl(lins.size());
    for (std::size_t i = 0; i < lins.size(); ++i)
      for (const auto& c : menu)
        cl[i].push_back({sm.option_cost(alloc::SizeMetric::LinearBytes, i, c), alloc::module_omega(sens, lins[i], c)});
    for (double avg : {2.5, 3.0, 3.5, 4.25, 5.0}) {
      const uint64_t cap = alloc::budget_total(alloc::parse_budget("avg_bits=" + std::to_string(avg)), sm);
      double tdp = 1e9, tl = 1e9;
      alloc::McResult dp, lg;
      for (int rep = 0; rep < 3; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        dp = alloc::solve_mckp_dp(cl, cap);
        tdp = std::min(tdp, secs(t0));
        t0 = std::chrono::steady_clock::now();
        lg = alloc::solve_mckp_lagrangian(cl, cap);
        tl = std::min(tl, secs(t0));
      }
      std::printf("| %s | %zu x %zu | %.2f | %.4f | %zu | %.4f | %.2e |\n", name, cl.size(), menu.size(), avg, tdp,
                  dp.max_front, tl, (lg.value - dp.value) / dp.value);
    }
  }
  return 0;
}
