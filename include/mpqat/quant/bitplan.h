// The bit plan: which linear gets how many bits and which group size. Written by `mpqat
// allocate` ([M5] finalises the schema), read by quantize / train. No torch here.
//
//   {"version": 1,
//    "modules": {"model.layers.0.self_attn.q_proj": {"bits": 4, "group_size": 32, "sym": false},
//                ...}}
//
// "version" is optional (1). Per module: "bits" required (2, 3, 4, 5, 6, 8; 16 or 32 = keep the
// float weight), "group_size" optional (default 128; 32, 64, 128, 256, -1), "sym" optional
// (default false). Other keys in a module entry (SGRA's epochs / lr / patience) and other
// top-level keys are kept for later stages and ignored here. Modules not named keep float.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

// SGRA's per-unit training settings ([M5] writes them, Block-AP reads them).
struct SgraPlan {
  int epochs = 2;
  double lr_scale = 1.0;
  int patience = 2;
};

struct ModulePlan {
  int bits = 16;  // 16 / 32 = not quantized
  int64_t group_size = 128;
  bool sym = false;
  std::optional<SgraPlan> sgra;  // "sgra": {"epochs": E, "lr_scale": S, "patience": P}
  bool quantized() const { return bits < 16; }
  QuantSpec spec() const { return QuantSpec{bits, group_size, sym}; }
};

struct BitPlan {
  int version = 1;
  std::map<std::string, ModulePlan> modules;
  std::string source = "bit plan";  // for messages
  // Only the modules that are quantized.
  std::map<std::string, QuantSpec> quantized() const;
};

constexpr int kBitPlanVersion = 1;

// Throws InputError naming `source`, the module and the key, listing the accepted values.
BitPlan parse_bit_plan(const nlohmann::json& j, const std::string& source = "bit plan");
BitPlan load_bit_plan(const std::string& path);
nlohmann::json bit_plan_to_json(const BitPlan& plan);

// Every module of the plan must be one of `module_names`; throws InputError naming the first
// unknown one and the closest real module name.
void validate_plan_modules(const BitPlan& plan, const std::vector<std::string>& module_names);

}  // namespace mpqat::quant
