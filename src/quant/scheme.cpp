#include "mpqat/quant/scheme.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <set>
#include <sstream>

#include "mpqat/quant/bitplan.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::quant {

namespace {

QuantTypeTraits make_traits(QuantType t, int bits, const char* name) {
  const int l = 32 / std::gcd(32, bits) * bits;  // lcm(32, bits)
  return QuantTypeTraits{t, bits, (int32_t(1) << bits) - 1, l / bits, l / 32, name};
}

std::string join_ints(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}

std::string group_sizes_str() {
  std::string s;
  for (size_t i = 0; i < supported_group_sizes().size(); ++i)
    s += (i ? ", " : "") + std::to_string(supported_group_sizes()[i]);
  return s;
}

}  // namespace

const std::vector<QuantTypeTraits>& quant_type_table() {
  static const std::vector<QuantTypeTraits> table{
      make_traits(QuantType::W2, 2, "w2"), make_traits(QuantType::W3, 3, "w3"),
      make_traits(QuantType::W4, 4, "w4"), make_traits(QuantType::W5, 5, "w5"),
      make_traits(QuantType::W6, 6, "w6"), make_traits(QuantType::W8, 8, "w8")};
  return table;
}

bool is_supported_bits(int bits) {
  for (const auto& t : quant_type_table())
    if (t.bits == bits) return true;
  return false;
}

const QuantTypeTraits& traits_for_bits(int bits, const std::string& context) {
  for (const auto& t : quant_type_table())
    if (t.bits == bits) return t;
  throw InputError(context + ": bits " + std::to_string(bits) + " is not supported (accepted: " +
                   join_ints(supported_bits()) + ")");
}

const std::vector<int>& supported_bits() {
  static const std::vector<int> b{2, 3, 4, 5, 6, 8};
  return b;
}

const std::vector<int64_t>& supported_group_sizes() {
  static const std::vector<int64_t> g{32, 64, 128, 256, -1};
  return g;
}

void validate_spec(const QuantSpec& spec, const std::string& context) {
  traits_for_bits(spec.bits, context);
  for (auto g : supported_group_sizes())
    if (g == spec.group_size) return;
  throw InputError(context + ": group_size " + std::to_string(spec.group_size) +
                   " is not supported (accepted: " + group_sizes_str() + ")");
}

std::string spec_str(const QuantSpec& spec) {
  return "w" + std::to_string(spec.bits) + "g" + std::to_string(spec.group_size) + (spec.sym ? " sym" : "");
}

std::vector<int> bits_for_packed_words(int64_t words, int64_t n) {
  std::vector<int> out;
  for (int b : supported_bits())
    if (packed_words(n, b) == words) out.push_back(b);
  return out;
}

void pack_stream(const int32_t* vals, int64_t n, int64_t in_stride, int bits, int32_t* words,
                 int64_t out_stride, const std::string& context) {
  const uint32_t mask = (uint32_t(1) << bits) - 1;
  uint64_t acc = 0;
  int nb = 0;
  int64_t w = 0;
  uint32_t bad = 0;
  for (int64_t k = 0; k < n; ++k) {
    const uint32_t v = static_cast<uint32_t>(vals[k * in_stride]);
    bad |= v & ~mask;
    acc |= uint64_t(v & mask) << nb;
    nb += bits;
    if (nb >= 32) {
      words[w++ * out_stride] = static_cast<int32_t>(static_cast<uint32_t>(acc));
      acc >>= 32;
      nb -= 32;
    }
  }
  if (nb > 0) words[w * out_stride] = static_cast<int32_t>(static_cast<uint32_t>(acc));
  if (bad) {
    for (int64_t k = 0; k < n; ++k)
      if (static_cast<uint32_t>(vals[k * in_stride]) & ~mask)
        throw InputError(context + ": code " + std::to_string(vals[k * in_stride]) + " at index " +
                         std::to_string(k) + " does not fit in " + std::to_string(bits) +
                         " bits (accepted: 0.." + std::to_string(mask) + ")");
  }
}

void unpack_stream(const int32_t* words, int64_t n, int64_t in_stride, int bits, int32_t* vals,
                   int64_t out_stride) {
  const uint64_t mask = (uint64_t(1) << bits) - 1;
  uint64_t acc = 0;
  int nb = 0;
  int64_t w = 0;
  for (int64_t k = 0; k < n; ++k) {
    if (nb < bits) {
      acc |= uint64_t(static_cast<uint32_t>(words[w++ * in_stride])) << nb;
      nb += 32;
    }
    vals[k * out_stride] = static_cast<int32_t>(acc & mask);
    acc >>= bits;
    nb -= bits;
  }
}

std::vector<int32_t> pack_qweight(const int32_t* codes, int64_t out, int64_t in, int bits) {
  traits_for_bits(bits, "pack_qweight");
  std::vector<int32_t> q(static_cast<size_t>(packed_words(in, bits) * out), 0);
  for (int64_t o = 0; o < out; ++o)
    pack_stream(codes + o * in, in, 1, bits, q.data() + o, out, "qweight row " + std::to_string(o));
  return q;
}

std::vector<int32_t> unpack_qweight(const int32_t* qweight, int64_t out, int64_t in, int bits) {
  traits_for_bits(bits, "unpack_qweight");
  std::vector<int32_t> c(static_cast<size_t>(out * in));
  for (int64_t o = 0; o < out; ++o) unpack_stream(qweight + o, in, out, bits, c.data() + o * in, 1);
  return c;
}

std::vector<int32_t> pack_qzeros(const int32_t* zeros, int64_t groups, int64_t out, int bits) {
  traits_for_bits(bits, "pack_qzeros");
  const int64_t cols = packed_words(out, bits);
  std::vector<int32_t> q(static_cast<size_t>(groups * cols), 0);
  for (int64_t g = 0; g < groups; ++g)
    pack_stream(zeros + g * out, out, 1, bits, q.data() + g * cols, 1, "qzeros group " + std::to_string(g));
  return q;
}

std::vector<int32_t> unpack_qzeros(const int32_t* qzeros, int64_t groups, int64_t out, int bits) {
  traits_for_bits(bits, "unpack_qzeros");
  const int64_t cols = packed_words(out, bits);
  std::vector<int32_t> z(static_cast<size_t>(groups * out));
  for (int64_t g = 0; g < groups; ++g) unpack_stream(qzeros + g * cols, out, 1, bits, z.data() + g * out, 1);
  return z;
}

uint64_t PackedTensorShape::nbytes() const {
  uint64_t n = io::dtype_size(dtype);
  for (auto d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

std::vector<PackedTensorShape> packed_tensor_shapes(int64_t out, int64_t in, const QuantSpec& spec) {
  const int64_t g = num_groups(in, spec.group_size);
  return {{".qweight", io::DType::I32, {packed_words(in, spec.bits), out}},
          {".qzeros", io::DType::I32, {g, packed_words(out, spec.bits)}},
          {".scales", io::DType::F16, {g, out}},
          {".g_idx", io::DType::I32, {in}}};
}

uint64_t packed_module_bytes(int64_t out, int64_t in, const QuantSpec& spec) {
  uint64_t b = 0;
  for (const auto& t : packed_tensor_shapes(out, in, spec)) b += t.nbytes();
  return b;
}

// ---------------------------------------------------------------------------------------------
// Bit plan

std::map<std::string, QuantSpec> BitPlan::quantized() const {
  std::map<std::string, QuantSpec> out;
  for (const auto& [name, m] : modules)
    if (m.quantized()) out[name] = m.spec();
  return out;
}

BitPlan parse_bit_plan(const nlohmann::json& j, const std::string& source) {
  BitPlan plan;
  plan.source = source;
  if (!j.is_object()) throw InputError(source + ": a bit plan must be a JSON object with a \"modules\" object");
  if (j.contains("version")) {
    if (!j["version"].is_number_integer() || j["version"].get<int>() != kBitPlanVersion)
      throw InputError(source + ": \"version\" is " + j["version"].dump() + " (accepted: " +
                       std::to_string(kBitPlanVersion) + ")");
  }
  if (!j.contains("modules") || !j["modules"].is_object())
    throw InputError(source + ": missing \"modules\" object (expected {\"modules\": {\"model.layers.0.self_attn.q_proj\": "
                              "{\"bits\": 4, \"group_size\": 128}, ...}})");
  for (const auto& [name, e] : j["modules"].items()) {
    const std::string ctx = source + ": module '" + name + "'";
    if (!e.is_object()) throw InputError(ctx + " must map to an object like {\"bits\": 4, \"group_size\": 128}");
    ModulePlan m;
    if (!e.contains("bits") || !e["bits"].is_number_integer())
      throw InputError(ctx + ": \"bits\" must be an integer (accepted: 2, 3, 4, 5, 6, 8, or 16 / 32 for float)");
    m.bits = e["bits"].get<int>();
    if (e.contains("group_size")) {
      if (!e["group_size"].is_number_integer())
        throw InputError(ctx + ": \"group_size\" must be an integer (accepted: " + group_sizes_str() + ")");
      m.group_size = e["group_size"].get<int64_t>();
    }
    if (e.contains("sym")) {
      if (!e["sym"].is_boolean()) throw InputError(ctx + ": \"sym\" must be true or false");
      m.sym = e["sym"].get<bool>();
    }
    if (e.contains("sgra")) {
      const auto& g = e["sgra"];
      auto bad = [&] {
        return InputError(ctx + ": \"sgra\" must be {\"epochs\": int >= 0, \"lr_scale\": number > 0, "
                                "\"patience\": int >= 1}");
      };
      if (!g.is_object()) throw bad();
      SgraPlan sp;
      if (g.contains("epochs")) {
        if (!g["epochs"].is_number_integer() || g["epochs"].get<int>() < 0) throw bad();
        sp.epochs = g["epochs"].get<int>();
      }
      if (g.contains("lr_scale")) {
        if (!g["lr_scale"].is_number() || !(g["lr_scale"].get<double>() > 0)) throw bad();
        sp.lr_scale = g["lr_scale"].get<double>();
      }
      if (g.contains("patience")) {
        if (!g["patience"].is_number_integer() || g["patience"].get<int>() < 1) throw bad();
        sp.patience = g["patience"].get<int>();
      }
      m.sgra = sp;
    }
    if (m.bits == 16 || m.bits == 32) {
      plan.modules[name] = m;
      continue;
    }
    if (!is_supported_bits(m.bits))
      throw InputError(ctx + ": bits " + std::to_string(m.bits) +
                       " is not supported (accepted: 2, 3, 4, 5, 6, 8, or 16 / 32 for float)");
    validate_spec(m.spec(), ctx);
    plan.modules[name] = m;
  }
  return plan;
}

BitPlan load_bit_plan(const std::string& path) {
  const std::string text = util::read_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw InputError("bit plan '" + path + "' is not valid JSON: " + e.what());
  }
  return parse_bit_plan(j, "bit plan '" + path + "'");
}

nlohmann::json bit_plan_to_json(const BitPlan& plan) {
  nlohmann::json mods = nlohmann::json::object();
  for (const auto& [name, m] : plan.modules)
  {
    mods[name] = {{"bits", m.bits}, {"group_size", m.group_size}, {"sym", m.sym}};
    if (m.sgra)
      mods[name]["sgra"] = {{"epochs", m.sgra->epochs}, {"lr_scale", m.sgra->lr_scale}, {"patience", m.sgra->patience}};
  }
  return {{"version", plan.version}, {"modules", mods}};
}

void validate_plan_modules(const BitPlan& plan, const std::vector<std::string>& module_names) {
  std::set<std::string> known(module_names.begin(), module_names.end());
  for (const auto& [name, m] : plan.modules) {
    if (known.count(name)) continue;
    const std::string near = util::closest_match(name, module_names);
    throw InputError(plan.source + ": module '" + name + "' is not a quantizable linear of this model" +
                     (near.empty() ? std::string(" (names look like '") +
                                         (module_names.empty() ? "" : module_names.front()) + "')"
                                   : " (did you mean '" + near + "'?)"));
  }
}

const std::map<std::string, std::string>& checkpoint_file_metadata() {
  static const std::map<std::string, std::string> m{{"format", "pt"}};
  return m;
}

}  // namespace mpqat::quant
