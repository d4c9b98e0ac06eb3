#include "mpqat/quant/engines.h"

#include <algorithm>
#include <map>

#include <fmt/format.h>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::quant {

const std::vector<EngineMenu>& engine_table() {
  static const std::vector<EngineMenu> t{
      {Engine::Mpqat, "mpqat", {2, 3, 4, 5, 6, 8}, {32, 64, 128, 256, -1}, false, false, false, true},
      {Engine::GptqModel, "gptqmodel", {2, 3, 4, 8}, {32, 64, 128, 256, -1}, false, false, false, true},
      {Engine::Vllm, "vllm", {4, 8}, {32, 64, 128, -1}, true, true, true, true, true},
      // GGUF (quant/gguf_blocks.h): 4/5-bit g32 -> Q4_x/Q5_x and 8-bit -> Q8_0 hold the codes;
      // 2/3/6 bits and other groups -> the K-quants (rows of a multiple of 256), else a legacy
      // type of more bits. The allocator prices every option in the bytes of the type it gets.
      {Engine::LlamaCpp, "llama.cpp", {2, 3, 4, 5, 6, 8}, {32, 64, 128, 256, -1}, false, false, false, false, true},
  };
  return t;
}

const EngineMenu& engine_menu(Engine e) {
  for (const auto& m : engine_table())
    if (m.engine == e) return m;
  return engine_table().front();
}

const EngineMenu& engine_menu(const std::string& name, const std::string& context) {
  std::string names;
  for (const auto& m : engine_table()) {
    if (name == m.name) return m;
    names += (names.empty() ? "" : ", ") + std::string(m.name);
  }
  throw InputError(context + " '" + name + "' is not a known engine (accepted: " + names + ")");
}

namespace {

const std::vector<std::pair<std::string, std::vector<std::string>>>& fusions() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> f{
      {"self_attn.qkv_proj", {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}},
      {"mlp.gate_up_proj", {"mlp.gate_proj", "mlp.up_proj"}},
  };
  return f;
}

std::string spec_text(const ModuleView& m) {
  return m.quantized ? fmt::format("{}-bit g{}{}", m.spec.bits, m.spec.group_size, m.spec.sym ? " sym" : "")
                     : std::string("float");
}

}  // namespace

std::string fused_name(const std::string& name) {
  for (const auto& [fused, members] : fusions())
    for (const auto& m : members)
      if (util::ends_with(name, "." + m) || name == m) return name.substr(0, name.size() - m.size()) + fused;
  return "";
}

std::vector<std::string> fused_members(const std::string& fused) {
  for (const auto& [f, members] : fusions())
    if (util::ends_with(fused, "." + f) || fused == f) {
      const std::string prefix = fused.substr(0, fused.size() - f.size());
      std::vector<std::string> out;
      for (const auto& m : members) out.push_back(prefix + m);
      return out;
    }
  return {};
}

EngineSupport engine_support(const EngineMenu& e, const std::vector<ModuleView>& mods) {
  EngineSupport s;
  s.engine = e.name;
  if (!e.gptq_layout) {
    s.why_not = "reads GGUF, not the GPTQ layout: convert with `mpqat export gguf` (docs/gguf.md)";
    return s;
  }
  std::map<std::string, int> bad;  // reason -> modules
  auto fail = [&](const std::string& why) { ++bad[why]; };
  std::string example;  // the first fused module whose members disagree
  std::map<std::string, const ModuleView*> by_name;
  for (const auto& m : mods) by_name[m.name] = &m;
  for (const auto& m : mods) {
    if (!m.quantized) continue;
    if (std::find(e.bits.begin(), e.bits.end(), m.spec.bits) == e.bits.end())
      fail(fmt::format("{}-bit modules", m.spec.bits));
    if (std::find(e.group_sizes.begin(), e.group_sizes.end(), m.spec.group_size) == e.group_sizes.end())
      fail(fmt::format("group size {}", m.spec.group_size));
    if (e.sym_only && !m.spec.sym) fail("asymmetric modules");
    if (e.whole_groups && m.in > 0 && m.spec.group_size > 0 && m.in % m.spec.group_size != 0)
      fail("group sizes that do not divide the input width");
  }
  if (e.tie_qkv || e.tie_gate_up)
    for (const auto& m : mods) {
      const std::string f = fused_name(m.name);
      if (f.empty()) continue;
      for (const auto& other : fused_members(f)) {
        auto it = by_name.find(other);
        if (it == by_name.end() || other == m.name) continue;
        if (spec_text(*it->second) != spec_text(m)) {
          if (example.empty()) example = f + ": " + spec_text(m) + " vs " + spec_text(*it->second);
          fail("q/k/v or gate/up of a layer at different specs, e.g. " + example);
        }
      }
    }
  if (bad.empty()) {
    s.loads = true;
    return s;
  }
  std::string why;
  for (const auto& [reason, n] : bad) why += (why.empty() ? "" : "; ") + fmt::format("{} ({} modules)", reason, n);
  std::string runs = "runs ";
  for (size_t i = 0; i < e.bits.size(); ++i) runs += (i ? "/" : "") + std::to_string(e.bits[i]);
  runs += " bits";
  if (e.sym_only) runs += ", symmetric only";
  if (e.tie_qkv) runs += ", q/k/v and gate/up at one spec";
  s.why_not = why + " (" + e.name + " " + runs + ")";
  return s;
}

}  // namespace mpqat::quant
