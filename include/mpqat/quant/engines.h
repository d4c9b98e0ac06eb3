// What each serving engine runs of the GPTQ layout mpqat writes, from the published loaders
// (docs/checkpoint-format.md#engines). One table for the allocator (allocation.target restricts
// the menu to it) and for `mpqat inspect` (which engines load a checkpoint, and why not). No torch.
//
//   mpqat      2/3/4/5/6/8 bits, groups 32/64/128/256/-1, sym or not, any mix
//   gptqmodel  GPTQModel's torch kernel on gptq_v2 with `dynamic`: 2/3/4/8 bits
//   vllm       vLLM's GPTQ (Marlin) path: symmetric 4/8 bits, groups -1/32/64/128, q/k/v and
//              gate/up of a layer at the same spec (vLLM fuses them into qkv_proj, gate_up_proj)
//   llama.cpp  GGUF, not this layout: `mpqat export gguf` (docs/gguf.md) converts a checkpoint;
//              4/5/8 bits at g32 in the block types that hold the codes, 2/3/6 bits and other
//              groups as K-quants (rows of a multiple of 256) or a legacy type of more bits;
//              the allocator prices every option in GGUF bytes (alloc::GgufSizing)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

enum class Engine { Mpqat, GptqModel, Vllm, LlamaCpp };

struct EngineMenu {
  Engine engine = Engine::Mpqat;
  const char* name = "mpqat";
  std::vector<int> bits;               // quantized bit-widths it runs
  std::vector<int64_t> group_sizes;    // group sizes it runs
  bool sym_only = false;
  bool tie_qkv = false, tie_gate_up = false;  // modules it fuses must share bits / group / sym
  bool gptq_layout = true;             // false: needs another file format
  bool whole_groups = false;           // group size must divide the input width (Marlin tiles,
                                       // GGUF's 32-weight blocks)
};

const std::vector<EngineMenu>& engine_table();
// "mpqat", "gptqmodel", "vllm", "llama.cpp"; throws InputError naming `context` and the accepted.
const EngineMenu& engine_menu(const std::string& name, const std::string& context);
const EngineMenu& engine_menu(Engine e);

// One block linear as a checker sees it (full Hugging Face name).
struct ModuleView {
  std::string name;
  bool quantized = false;
  QuantSpec spec;
  int64_t in = 0;  // input width (0 = unknown: divisibility not checked)
};
struct EngineSupport {
  std::string engine;
  bool loads = false;
  std::string why_not;  // empty when it loads
};
// Whether the engine loads a checkpoint whose block linears are `mods` (GPTQ layout).
EngineSupport engine_support(const EngineMenu& e, const std::vector<ModuleView>& mods);

// The fused module a vLLM-style engine builds from `name` ("...self_attn.q_proj" ->
// "...self_attn.qkv_proj", "...mlp.up_proj" -> "...mlp.gate_up_proj"), and the members of that
// fusion; empty when `name` is not fused.
std::string fused_name(const std::string& name);
std::vector<std::string> fused_members(const std::string& fused);

}  // namespace mpqat::quant
