// What a checkpoint folder holds, per linear: bits, group size, bytes; averages and compression.
// No torch here (the `inspect` command stays cheap to compile); implemented with the loader's
// detection in src/quant/checkpoint.cpp, so inspect validates a checkpoint exactly as loading does.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace mpqat::quant {

struct InspectModule {
  std::string name;
  int bits = 16;             // 2..8 quantized; 16 / 32 = stored float (by its dtype)
  int64_t group_size = 0;    // 0 for float modules
  bool sym = false;
  int64_t out = 0, in = 0;   // weight shape (out, in)
  uint64_t bytes = 0;        // every tensor of the module (qweight, qzeros, scales, g_idx, bias / weight, bias)
  uint64_t overhead_bytes = 0;  // qzeros + scales + g_idx
};

struct InspectReport {
  std::string dir;
  bool quantized = false;       // has a GPTQ quantization_config
  std::string checkpoint_format;
  std::vector<InspectModule> modules;  // the block linears, model order
  std::map<int, int64_t> bits_histogram;  // bits -> number of modules
  uint64_t total_bytes = 0;     // every tensor in the checkpoint
  uint64_t fp16_bytes = 0;      // the same model with every parameter in fp16
  int64_t linear_weights = 0;   // weights in block linears
  double avg_bits = 0;          // over block-linear weights, code bits only
  double avg_bits_with_overhead = 0;  // + zeros, scales and g_idx
  double compression_ratio = 0;  // fp16_bytes / total_bytes
  struct Engine {
    std::string name;
    bool loads = false;
    std::string why_not;
  };
  std::vector<Engine> engines;  // quant/engines.h: which serving engines load it, and why not
};

// Validates like the loader (throws InputError naming the tensor on any inconsistency).
InspectReport inspect_checkpoint(const std::string& dir);
nlohmann::json inspect_to_json(const InspectReport& r);
// Human-readable table.
std::string inspect_to_text(const InspectReport& r);

}  // namespace mpqat::quant
