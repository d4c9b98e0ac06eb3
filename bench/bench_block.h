// Pieces the single-block benchmarks share (bench_train.cpp, bench_gptq.cpp): the config of one
// random Llama block of a given shape, a /proc/self/status field, a median. Header-only: each
// benchmark is one executable built from its own bench_*.cpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpqat/model/config.h"

namespace mpqat::bench {

// A one-layer Llama config with this block shape (max_position_embeddings at least 2048).
inline model::ModelConfig llama_block_config(int64_t hidden, int64_t intermediate, int64_t heads, int64_t kv_heads,
                                             int64_t context, int64_t vocab) {
  nlohmann::json j{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"},
                   {"hidden_size", hidden}, {"intermediate_size", intermediate},
                   {"num_hidden_layers", 1}, {"num_attention_heads", heads},
                   {"num_key_value_heads", kv_heads}, {"vocab_size", vocab},
                   {"max_position_embeddings", std::max<int64_t>(context, 2048)},
                   {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
  return model::parse_model_config(j, "bench block shape");
}

// A field of /proc/self/status in MiB ("VmHWM:", "VmRSS:"); -1 when unreadable.
inline double status_mib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) != 0) continue;
    std::istringstream ss(line.substr(field.size()));
    double kib = -1;
    ss >> kib;
    return kib < 0 ? -1 : kib / 1024.0;
  }
  return -1;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace mpqat::bench
