// Size model, budgets, sensitivity view, menus and the allocation methods.
#include "mpqat/alloc/allocate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fmt/format.h>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "mpqat/alloc/solver.h"
#include "mpqat/io/recipe.h"
#include "mpqat/model/hf_names.h"
#include "mpqat/quant/engines.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::alloc {

using json = nlohmann::json;
using model::Family;

// ---------------------------------------------------------------------------------------------
// Layout

namespace {

std::string num_str(uint64_t v) { return std::to_string(v); }
int digits(uint64_t v) { return static_cast<int>(num_str(v).size()); }

}  // namespace

int64_t ModelLayout::linear_weights() const {
  int64_t n = 0;
  for (const auto& l : linears) n += l.numel();
  return n;
}

ModelLayout layout_from_config(const model::ModelConfig& cfg) {
  if (cfg.family != Family::Llama)
    throw InputError(cfg.source + ": the size model builds the parameter list from config.json for Llama-family "
                                  "models only; pass the model folder (its safetensors header) for " + cfg.model_type);
  ModelLayout L;
  L.cfg = cfg;
  // The writer's order (quant::save_quantized_checkpoint) is model::llama_tensors' order; a
  // linear's bias follows its weight.
  for (const auto& t : model::llama_tensors(cfg)) {
    ParamEntry e{t.name, t.shape};
    if (!t.linear.empty()) {
      if (t.is_bias) {
        L.linears.back().bias = true;
      } else {
        const std::string rel = t.linear.substr(model::family_block_prefix(cfg, t.block).size());
        L.linears.push_back({t.linear, t.block, rel, t.shape[0], t.shape[1], false});
      }
      e.linear = static_cast<int>(L.linears.size()) - 1;
      e.is_bias = t.is_bias;
    }
    L.params.push_back(e);
  }
  return L;
}

ModelLayout layout_from_folder(const std::string& dir) {
  const auto cfg = model::load_model_config(dir);
  if (cfg.family == Family::Llama) return layout_from_config(cfg);
  io::SafetensorsCheckpoint ck(dir);
  ModelLayout L;
  L.cfg = cfg;
  L.order_exact = false;
  std::map<std::string, std::pair<int, bool>> lin_of;  // tensor name -> (linear, is_bias)
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& rel : model::family_block_linear_names(cfg)) {
      const std::string name = model::family_block_prefix(cfg, i) + rel;
      const auto [o, in] = model::block_linear_shape(cfg, rel);
      const int idx = static_cast<int>(L.linears.size());
      L.linears.push_back({name, i, rel, o, in, ck.contains(name + ".bias")});
      lin_of[name + ".weight"] = {idx, false};
      lin_of[name + ".bias"] = {idx, true};
      if (!ck.contains(name + ".weight"))
        throw InputError("'" + dir + "': tensor '" + name + ".weight' is missing from the checkpoint");
    }
  for (const auto& n : ck.names()) {
    if (util::ends_with(n, "inv_freq") || util::ends_with(n, "position_ids")) continue;
    ParamEntry e{n, ck.info(n).shape};
    if (auto it = lin_of.find(n); it != lin_of.end()) {
      e.linear = it->second.first;
      e.is_bias = it->second.second;
    }
    L.params.push_back(e);
  }
  return L;
}

// ---------------------------------------------------------------------------------------------
// Size model

std::string choice_key(const Choice& c) {
  return c.quantized() ? std::to_string(c.bits) + ":" + std::to_string(c.group_size) : std::string("16");
}

const char* metric_name(SizeMetric m) {
  switch (m) {
    case SizeMetric::FileBytes: return "file_bytes";
    case SizeMetric::TensorBytes: return "tensor_bytes";
    case SizeMetric::CodeBits: return "code_bits";
    default: return "linear_bytes";
  }
}

uint64_t PlanSize::of(SizeMetric m) const {
  switch (m) {
    case SizeMetric::FileBytes: return file_bytes;
    case SizeMetric::TensorBytes: return tensor_bytes;
    case SizeMetric::CodeBits: return code_bit_total;
    default: return linear_bytes;
  }
}

namespace {
uint64_t numel_of(const std::vector<int64_t>& s) {
  uint64_t n = 1;
  for (auto d : s) n *= static_cast<uint64_t>(d);
  return n;
}
// The writer's metadata for every shard.
const std::map<std::string, std::string>& writer_metadata() { return quant::checkpoint_file_metadata(); }
}  // namespace

SizeModel::SizeModel(ModelLayout layout, SizeOptions opts) : layout_(std::move(layout)), opts_(std::move(opts)) {
  if (opts_.gguf) {
    // The header does not depend on the linears' types (each tensor's entry is name, dims, a
    // type code and an offset): price it once with every tensor at its float type.
    const auto& g = *opts_.gguf;
    quant::check_gguf_types(g.types);
    quant::check_gguf_supported(layout_.cfg, g.source);
    const std::vector<Choice> all_float(layout_.linears.size(), Choice{16, 0});
    const auto specs = gguf_specs(all_float);
    uint64_t data = 0, linears = 0;
    for (const auto& s : specs) data += s.padded_nbytes();
    for (std::size_t i = 0; i < all_float.size(); ++i) linears += gguf_module_bytes(i, all_float[i]);
    gguf_fixed_data_ = data - linears;
    gguf_header_ = io::gguf_file_size(quant::gguf_metadata(layout_.cfg, g.name, true, g.vocab, g.source), specs) - data;
  }
  // Largest possible total data: every module at its dearest supported option.
  uint64_t mx = fixed_tensor_bytes();
  for (std::size_t i = 0; i < layout_.linears.size(); ++i) {
    uint64_t m = module_tensor_bytes(i, Choice{16, 0});
    for (int b : quant::supported_bits())
      for (int64_t g : quant::supported_group_sizes()) m = std::max(m, module_tensor_bytes(i, Choice{b, g}));
    mx += m;
  }
  offset_digits_ = digits(mx);
}

io::GgmlType SizeModel::gguf_module_type(std::size_t i, const Choice& c) const {
  const auto& l = layout_.linears.at(i);
  const auto& g = *opts_.gguf;
  if (c.quantized())
    return quant::gguf_choice_for_spec(quant::QuantSpec{c.bits, c.group_size, g.sym}, l.in, g.types).type;
  return quant::gguf_float_tensor_type(model::HfTensor{l.name + ".weight", {l.out, l.in}, l.name, l.block, false}, g.types);
}

uint64_t SizeModel::gguf_module_bytes(std::size_t i, const Choice& c) const {
  const auto& l = layout_.linears.at(i);
  return io::GgufTensorSpec{l.name, {l.in, l.out}, gguf_module_type(i, c)}.padded_nbytes();
}

uint64_t SizeModel::module_linear_bytes(std::size_t i, const Choice& c) const {
  if (opts_.gguf) return gguf_module_bytes(i, c);
  const auto& l = layout_.linears.at(i);
  if (!c.quantized()) return static_cast<uint64_t>(l.numel()) * float_size();
  return quant::packed_module_bytes(l.out, l.in, quant::QuantSpec{c.bits, c.group_size, false});
}

uint64_t SizeModel::module_tensor_bytes(std::size_t i, const Choice& c) const {
  const auto& l = layout_.linears.at(i);
  return module_linear_bytes(i, c) + (l.bias ? static_cast<uint64_t>(l.out) * float_size() : 0);
}

uint64_t SizeModel::fixed_tensor_bytes() const {
  if (opts_.gguf) return gguf_fixed_data_;
  uint64_t b = 0;
  for (const auto& p : layout_.params)
    if (p.linear < 0) b += numel_of(p.shape) * float_size();
  return b;
}

uint64_t SizeModel::fp16_bytes() const { return 2ull * static_cast<uint64_t>(layout_.cfg.num_parameters()); }

// `"name":{"data_offsets":[A,B],"dtype":"DT","shape":[..]}` plus its separating comma, with
// both offsets at the largest possible digit count.
uint64_t SizeModel::entry_len(const std::string& name, io::DType dt, const std::vector<int64_t>& shape) const {
  uint64_t n = name.size() + 2 + 1;  // "name":
  n += std::string(R"({"data_offsets":[)").size() + 2 * offset_digits_ + 1;
  n += std::string(R"(],"dtype":")").size() + std::string(io::dtype_name(dt)).size();
  n += std::string(R"(","shape":[)").size();
  for (std::size_t k = 0; k < shape.size(); ++k) n += digits(static_cast<uint64_t>(shape[k])) + (k ? 1 : 0);
  n += 2;  // ]}
  return n + 1;  // comma
}

uint64_t SizeModel::option_cost(SizeMetric m, std::size_t i, const Choice& c) const {
  if (m == SizeMetric::CodeBits)
    return static_cast<uint64_t>(std::llround(static_cast<double>(layout_.linears[i].numel()) * module_code_bits(i, c)));
  if (m == SizeMetric::LinearBytes || opts_.gguf) return module_linear_bytes(i, c);  // GGUF: exactly additive
  uint64_t b = module_tensor_bytes(i, c);
  if (m == SizeMetric::TensorBytes) return b;
  const auto& l = layout_.linears[i];
  const auto fdt = opts_.float_dtype;
  if (l.bias) b += entry_len(l.name + ".bias", fdt, {l.out});
  if (!c.quantized()) return b + entry_len(l.name + ".weight", fdt, {l.out, l.in});
  for (const auto& t : quant::packed_tensor_shapes(l.out, l.in, quant::QuantSpec{c.bits, c.group_size, false}))
    b += entry_len(l.name + t.suffix, t.dtype, t.shape);
  return b;
}

uint64_t SizeModel::fixed_cost(SizeMetric m) const {
  if (m == SizeMetric::LinearBytes || m == SizeMetric::CodeBits) return 0;
  uint64_t b = fixed_tensor_bytes();
  if (m == SizeMetric::TensorBytes) return b;
  if (opts_.gguf) return b + gguf_header_;
  for (const auto& p : layout_.params)
    if (p.linear < 0) b += entry_len(p.name, opts_.float_dtype, p.shape);
  // {}, the metadata entry, 7 bytes of padding at most, the 8-byte length.
  const uint64_t per_file = 2 + json(writer_metadata()).dump().size() + std::string(R"("__metadata__":)").size() + 7 + 8;
  b += per_file;
  // Greedy sharding: every two consecutive shards hold more than max_shard_bytes, so there are
  // at most 2 * ceil(total / max) + 1 shards; each extra one repeats the per-file overhead.
  if (opts_.max_shard_bytes > 0) {
    uint64_t mx = fixed_tensor_bytes();
    for (std::size_t i = 0; i < layout_.linears.size(); ++i) mx += module_tensor_bytes(i, Choice{16, 0}) * 2;
    if (mx > opts_.max_shard_bytes) b += (2 * ((mx + opts_.max_shard_bytes - 1) / opts_.max_shard_bytes)) * (per_file + 1);
  }
  return b;
}

PlanSize SizeModel::exact(const std::vector<Choice>& ch) const {
  if (ch.size() != layout_.linears.size())
    throw Error("size model: " + std::to_string(ch.size()) + " choices for " +
                std::to_string(layout_.linears.size()) + " linears");
  if (opts_.gguf) return gguf_exact(ch);
  struct T {
    std::string name;
    io::DType dt;
    std::vector<int64_t> shape;
    uint64_t nbytes;
  };
  std::vector<T> ts;
  const auto fdt = opts_.float_dtype;
  auto add = [&](const std::string& n, io::DType dt, std::vector<int64_t> s) {
    const uint64_t nb = numel_of(s) * io::dtype_size(dt);
    ts.push_back({n, dt, std::move(s), nb});
  };
  // Parameters in model order, minus packed weights (their bias stays in place) ...
  for (const auto& p : layout_.params) {
    if (p.linear >= 0 && !p.is_bias && ch[p.linear].quantized()) continue;
    add(p.name, fdt, p.shape);
  }
  // ... then the packed tensors by module name (the writer's std::map order).
  std::map<std::string, std::size_t> packed;
  for (std::size_t i = 0; i < ch.size(); ++i)
    if (ch[i].quantized()) packed[layout_.linears[i].name] = i;
  for (const auto& [name, i] : packed) {
    const auto& l = layout_.linears[i];
    const auto& c = ch[i];
    for (const auto& t : quant::packed_tensor_shapes(l.out, l.in, quant::QuantSpec{c.bits, c.group_size, false}))
      add(name + t.suffix, t.dtype, t.shape);
  }
  PlanSize r;
  // Shards and headers exactly as write_safetensors_sharded writes them (io owns both rules).
  std::vector<uint64_t> sizes;
  for (const auto& t : ts) sizes.push_back(t.nbytes);
  const auto groups = io::plan_shards(sizes, opts_.max_shard_bytes);
  for (const auto& grp : groups) {
    std::vector<io::TensorToWrite> part;
    for (auto k : grp) {
      part.push_back({ts[k].name, ts[k].dt, ts[k].shape, nullptr, static_cast<std::size_t>(ts[k].nbytes)});
      r.tensor_bytes += ts[k].nbytes;
    }
    r.header_bytes += io::header_bytes(part, writer_metadata());
  }
  r.shards = static_cast<int>(std::max<std::size_t>(1, groups.size()));
  r.file_bytes = r.tensor_bytes + r.header_bytes;
  fill_plan_stats(r, ch);
  return r;
}

double SizeModel::module_code_bits(std::size_t i, const Choice& c) const {
  if (c.quantized()) return c.bits;
  if (!opts_.gguf) return 8.0 * static_cast<double>(float_size());
  const auto& l = layout_.linears[i];
  return 8.0 * static_cast<double>(io::ggml_row_bytes(gguf_module_type(i, c), l.in, l.name)) / static_cast<double>(l.in);
}

void SizeModel::fill_plan_stats(PlanSize& r, const std::vector<Choice>& ch) const {
  for (std::size_t i = 0; i < ch.size(); ++i) r.linear_bytes += module_linear_bytes(i, ch[i]);
  const double nw = static_cast<double>(layout_.linear_weights());
  r.avg_bits = nw > 0 ? 8.0 * static_cast<double>(r.linear_bytes) / nw : 0.0;
  r.code_bit_total = 0;
  for (std::size_t i = 0; i < ch.size(); ++i) r.code_bit_total += option_cost(SizeMetric::CodeBits, i, ch[i]);
  r.code_bits = nw > 0 ? static_cast<double>(r.code_bit_total) / nw : 0.0;
  r.compression = r.tensor_bytes ? static_cast<double>(fp16_bytes()) / static_cast<double>(r.tensor_bytes) : 0.0;
}

// The GGUF file's tensors for a plan, as export_gguf lists them (quant::gguf_tensor_specs).
std::vector<io::GgufTensorSpec> SizeModel::gguf_specs(const std::vector<Choice>& ch) const {
  std::map<std::string, std::size_t> linear_of;
  for (std::size_t i = 0; i < layout_.linears.size(); ++i) linear_of[layout_.linears[i].name] = i;
  return quant::gguf_tensor_specs(layout_.cfg, [&](const model::HfTensor& t) {
    const auto f = linear_of.find(t.linear);
    return f != linear_of.end() ? gguf_module_type(f->second, ch[f->second])
                                : quant::gguf_float_tensor_type(t, opts_.gguf->types);
  });
}

// The plan's GGUF file sized by io::gguf_file_size.
PlanSize SizeModel::gguf_exact(const std::vector<Choice>& ch) const {
  const auto& g = *opts_.gguf;
  const auto specs = gguf_specs(ch);
  PlanSize r;
  for (const auto& s : specs) r.tensor_bytes += s.padded_nbytes();
  r.file_bytes = io::gguf_file_size(quant::gguf_metadata(layout_.cfg, g.name, true, g.vocab, g.source), specs);
  r.header_bytes = r.file_bytes - r.tensor_bytes;
  r.shards = 1;
  fill_plan_stats(r, ch);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Budget

Budget parse_budget(const std::string& text) {
  const auto eq = text.find('=');
  const std::string accepted = " (accepted: bytes=700KiB, avg_bits=3.0, code_bits=3.0, compression=4)";
  if (eq == std::string::npos) throw InputError("budget '" + text + "' has no '='" + accepted);
  const std::string key = util::trim(text.substr(0, eq)), val = util::trim(text.substr(eq + 1));
  Budget b;
  b.text = text;
  if (key == "bytes") {
    b.kind = BudgetKind::Bytes;
    b.value = static_cast<double>(util::parse_bytes(val, "budget '" + text + "'"));
    if (b.value <= 0) throw InputError("budget '" + text + "' must be positive");
    return b;
  }
  if (key != "avg_bits" && key != "code_bits" && key != "compression")
    throw InputError("budget '" + text + "': unknown kind '" + key + "'" + accepted);
  b.kind = key == "avg_bits" ? BudgetKind::AvgBits : key == "code_bits" ? BudgetKind::CodeBits : BudgetKind::Compression;
  try {
    std::size_t used = 0;
    b.value = std::stod(val, &used);
    if (used != val.size()) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    throw InputError("budget '" + text + "': '" + val + "' is not a number" + accepted);
  }
  const bool bits = b.kind == BudgetKind::AvgBits || b.kind == BudgetKind::CodeBits;
  if (!(b.value > 0) || !std::isfinite(b.value) || (bits && b.value > 32))
    throw InputError("budget '" + text + "': " + key + " must be a positive number" +
                     (bits ? std::string(" <= 32") : std::string()));
  return b;
}

const char* budget_kind_name(BudgetKind k) {
  switch (k) {
    case BudgetKind::Bytes: return "bytes";
    case BudgetKind::AvgBits: return "avg_bits";
    case BudgetKind::CodeBits: return "code_bits";
    default: return "compression";
  }
}

SizeMetric budget_metric(BudgetKind k) {
  switch (k) {
    case BudgetKind::Bytes: return SizeMetric::FileBytes;
    case BudgetKind::Compression: return SizeMetric::TensorBytes;
    case BudgetKind::CodeBits: return SizeMetric::CodeBits;
    default: return SizeMetric::LinearBytes;
  }
}

uint64_t budget_total(const Budget& b, const SizeModel& sm) {
  switch (b.kind) {
    case BudgetKind::Bytes: return static_cast<uint64_t>(b.value);
    case BudgetKind::Compression: return static_cast<uint64_t>(std::floor(static_cast<double>(sm.fp16_bytes()) / b.value));
    case BudgetKind::CodeBits:
      return static_cast<uint64_t>(std::floor(b.value * static_cast<double>(sm.layout().linear_weights()) + 1e-6));
    default:
      return static_cast<uint64_t>(std::floor(b.value * static_cast<double>(sm.layout().linear_weights()) / 8.0));
  }
}

// ---------------------------------------------------------------------------------------------
// Sensitivity

namespace {
UnitSensitivity parse_unit(const json& e, const std::string& ctx) {
  if (!e.is_object()) throw InputError(ctx + " must be an object like {\"score\": 1.5, \"omega\": {\"4:128\": 0.01}}");
  UnitSensitivity u;
  if (e.contains("score") && !e["score"].is_null()) {
    if (!e["score"].is_number()) throw InputError(ctx + ": \"score\" must be a number");
    u.score = e["score"].get<double>();
  }
  if (e.contains("omega") && !e["omega"].is_null()) {
    if (!e["omega"].is_object()) throw InputError(ctx + ": \"omega\" must be an object of \"bits:group\" -> number");
    for (const auto& [k, v] : e["omega"].items()) {
      if (!v.is_number() || !std::isfinite(v.get<double>()))
        throw InputError(ctx + ": omega \"" + k + "\" must be a finite number");
      const auto parts = util::split(k, ':');
      bool ok = (parts.size() == 1 && (k == "16" || k == "32")) || parts.size() == 2;
      if (ok && parts.size() == 2) {
        try {
          const int b = std::stoi(parts[0]);
          (void)std::stoll(parts[1]);
          ok = quant::is_supported_bits(b);
        } catch (const std::exception&) {
          ok = false;
        }
      }
      if (!ok) throw InputError(ctx + ": omega key \"" + k + "\" is not \"bits:group\" (e.g. \"4:128\", \"3:-1\") or \"16\"");
      u.omega[k == "32" ? "16" : k] = v.get<double>();
    }
  }
  if (!u.score && u.omega.empty()) throw InputError(ctx + " has neither \"score\" nor \"omega\"");
  return u;
}
}  // namespace

Sensitivity parse_sensitivity(const json& j, const std::string& source) {
  Sensitivity s;
  s.source = source;
  if (!j.is_object()) throw InputError(source + ": expected a JSON object with \"modules\"");
  if (j.contains("version")) {
    if (!j["version"].is_number_integer() || j["version"].get<int>() != kSensitivityVersion)
      throw InputError(source + ": \"version\" is " + j["version"].dump() + " (accepted: " +
                       std::to_string(kSensitivityVersion) + ")");
  }
  if (!j.contains("modules") || !j["modules"].is_object())
    throw InputError(source + ": missing \"modules\" object (name -> {\"score\", \"omega\"})");
  for (const auto& [name, e] : j["modules"].items()) s.modules[name] = parse_unit(e, source + ": module '" + name + "'");
  if (j.contains("blocks") && j["blocks"].is_object())
    for (const auto& [k, e] : j["blocks"].items()) {
      int64_t b = -1;
      try {
        b = std::stoll(k);
      } catch (const std::exception&) {
      }
      if (b < 0) throw InputError(source + ": block key '" + k + "' must be a block index (\"0\", \"1\", ...)");
      s.blocks[b] = parse_unit(e, source + ": block '" + k + "'");
    }
  return s;
}

Sensitivity equal_sensitivity(const ModelLayout& layout) {
  Sensitivity s;
  s.source = "equal scores";
  for (const auto& lin : layout.linears) {
    s.modules[lin.name].score = 1.0;
    s.blocks[lin.block].score = 1.0;
  }
  return s;
}

Sensitivity load_sensitivity(const std::string& path) {
  const std::string text = util::read_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw InputError("sensitivity file '" + path + "' is not valid JSON: " + e.what());
  }
  return parse_sensitivity(j, "sensitivity file '" + path + "'");
}

void check_sensitivity(const Sensitivity& s, const ModelLayout& layout) {
  std::vector<std::string> names;
  for (const auto& l : layout.linears) {
    names.push_back(l.name);
    if (!s.modules.count(l.name))
      throw InputError(s.source + " does not match the model: module '" + l.name + "' of the model has no entry (the file has " +
                       std::to_string(s.modules.size()) + " modules, the model " + std::to_string(layout.linears.size()) + ")");
  }
  const std::set<std::string> known(names.begin(), names.end());
  for (const auto& [name, u] : s.modules)
    if (!known.count(name)) {
      const std::string near = util::closest_match(name, names);
      throw InputError(s.source + " does not match the model: module '" + name + "' is not a quantizable linear of the model" +
                       (near.empty() ? std::string() : " (did you mean '" + near + "'?)"));
    }
}

double module_omega(const Sensitivity& s, const LinearInfo& lin, const Choice& c) {
  const auto it = s.modules.find(lin.name);
  if (it == s.modules.end()) throw InputError(s.source + ": no entry for module '" + lin.name + "'");
  const auto& u = it->second;
  const std::string key = choice_key(c);
  if (auto o = u.omega.find(key); o != u.omega.end()) return o->second;
  if (!c.quantized()) return 0.0;  // kept in float: no quantization loss
  if (!u.score)
    throw InputError(s.source + ": module '" + lin.name + "' has no omega for \"" + key +
                     "\" and no \"score\" to model it from");
  const double gw = static_cast<double>(std::max<int64_t>(2, quant::group_width(lin.in, c.group_size)));
  return *u.score * static_cast<double>(lin.numel()) * std::pow(4.0, -c.bits) * std::log(gw) / std::log(128.0);
}

double module_score(const Sensitivity& s, const LinearInfo& lin) {
  const auto it = s.modules.find(lin.name);
  if (it == s.modules.end()) throw InputError(s.source + ": no entry for module '" + lin.name + "'");
  if (it->second.score) return *it->second.score;
  // Inverse of the noise model (group factor left out) at the lowest-bit omega present.
  const auto& om = it->second.omega;
  for (int b : quant::supported_bits())
    for (const auto& [k, v] : om)
      if (util::starts_with(k, std::to_string(b) + ":"))
        return v / (static_cast<double>(lin.numel()) * std::pow(4.0, -b));
  return 0.0;
}

// ---------------------------------------------------------------------------------------------
// Allocation

Method parse_method(const std::string& s) {
  static const std::map<std::string, Method> m{{"qbo", Method::QBO},           {"mpq", Method::MPQ},
                                               {"kmeans", Method::KMeans},     {"percentile", Method::Percentile},
                                               {"hierarchical", Method::Hierarchical}, {"uniform", Method::Uniform}};
  auto it = m.find(s);
  if (it == m.end())
    throw InputError("unknown allocation method '" + s + "' (accepted: qbo, mpq, kmeans, percentile, hierarchical, uniform)");
  return it->second;
}

const char* method_name(Method m) {
  switch (m) {
    case Method::QBO: return "qbo";
    case Method::MPQ: return "mpq";
    case Method::KMeans: return "kmeans";
    case Method::Percentile: return "percentile";
    case Method::Hierarchical: return "hierarchical";
    default: return "uniform";
  }
}

SizeOptions size_options_from_recipe(const io::Recipe& r) {
  SizeOptions so;
  so.float_dtype = io::parse_float_dtype(r.str("output.float_dtype"), "output.float_dtype");
  so.max_shard_bytes = util::parse_bytes(r.str("output.shard_size"), "output.shard_size");
  return so;
}

AllocOptions alloc_options_from_recipe(const io::Recipe& r) {
  AllocOptions o;
  const std::string method = r.str("allocation.method");
  if (method == "plan") throw InputError("allocation.method 'plan' uses allocation.plan as is; nothing to allocate");
  o.method = parse_method(method);
  const std::string bytes = r.str("allocation.budget.bytes");
  const double avg = r.number("allocation.budget.avg_bits"), comp = r.number("allocation.budget.compression");
  const double code = r.number("allocation.budget.code_bits");
  int given = (!bytes.empty()) + (avg > 0) + (comp > 0) + (code > 0);
  if (given > 1) throw InputError(r.source() + ": give one of allocation.budget.bytes, avg_bits, code_bits, compression");
  if (!bytes.empty()) o.budget = parse_budget("bytes=" + bytes);
  else if (avg > 0) o.budget = parse_budget("avg_bits=" + fmt::format("{}", avg));
  else if (code > 0) o.budget = parse_budget("code_bits=" + fmt::format("{}", code));
  else if (comp > 0) o.budget = parse_budget("compression=" + fmt::format("{}", comp));
  o.bits.clear();
  for (auto b : r.integers("allocation.bits")) o.bits.push_back(static_cast<int>(b));
  o.group_sizes = r.integers("allocation.group_sizes");
  o.unit_block = r.str("allocation.unit") == "block";
  o.min_bits = static_cast<int>(r.integer("allocation.min_bits"));
  o.max_bits = static_cast<int>(r.integer("allocation.max_bits"));
  for (const auto& [k, v] : r.int_map("allocation.pins")) o.pins.emplace_back(k, static_cast<int>(v));
  o.tie_qkv = r.flag("allocation.tie_qkv");
  o.tie_gate_up = r.flag("allocation.tie_gate_up");
  o.allow_modelled_omega = r.flag("allocation.allow_modelled_omega");
  o.target = r.str("allocation.target");
  if (!quant::engine_menu(o.target, "allocation.target").gptq_layout)
    throw NotImplementedError(r.source() + ": allocation.target " + o.target + " in a recipe (`mpqat run` writes the GPTQ layout; "
                              "use `mpqat allocate --target " + o.target + "`, then `mpqat quantize` or `mpqat train` "
                              "with --plan, then `mpqat export gguf`)");
  o.lagrangian = r.str("allocation.solver") == "lagrangian";
  o.groups = static_cast<int>(r.integer("allocation.groups"));
  o.preset.clear();
  for (auto b : r.integers("allocation.preset")) o.preset.push_back(static_cast<int>(b));
  o.uniform_bits = static_cast<int>(r.integer("allocation.uniform_bits"));
  o.sym = r.flag("allocation.sym");
  o.sgra = r.flag("allocation.sgra.enabled");
  const auto ep = r.integers("allocation.sgra.epochs");
  const auto lr = r.numbers("allocation.sgra.lr_scale");
  const auto pa = r.integers("allocation.sgra.patience");
  if (ep.size() != 2 || lr.size() != 2 || pa.size() != 2)
    throw InputError(r.source() + ": allocation.sgra.epochs / lr_scale / patience must be [least, most]");
  o.sgra_ranges = {static_cast<int>(ep[0]), static_cast<int>(ep[1]), lr[0], lr[1], static_cast<int>(pa[0]), static_cast<int>(pa[1])};
  return for_target(o);
}

namespace {

bool is_tie_qkv(const std::string& rel) {
  return rel == "self_attn.q_proj" || rel == "self_attn.k_proj" || rel == "self_attn.v_proj" ||
         rel == "attention.self.query" || rel == "attention.self.key" || rel == "attention.self.value";
}
bool is_tie_gate_up(const std::string& rel) { return rel == "mlp.gate_proj" || rel == "mlp.up_proj"; }

struct Unit {
  std::vector<std::size_t> members;
  std::optional<int> pin;
  std::vector<Choice> menu;
};

std::string bits_list(const std::vector<int>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

namespace {

// allocate(), step by step.

std::string list_text(const std::vector<int64_t>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s;
}

void validate_alloc_options(const AllocOptions& opts) {
  for (int b : opts.bits)
    if (!(quant::is_supported_bits(b) || b == 16 || b == 32))
      throw InputError("allocation bits " + std::to_string(b) + " is not supported (accepted: 2, 3, 4, 5, 6, 8, 16)");
  if (opts.group_sizes.empty()) throw InputError("allocation group sizes must not be empty (e.g. 128)");
  for (auto g : opts.group_sizes) quant::validate_spec(quant::QuantSpec{4, g, false}, "allocation group sizes");
  if (opts.min_bits > opts.max_bits)
    throw InputError("allocation min_bits " + std::to_string(opts.min_bits) + " exceeds max_bits " + std::to_string(opts.max_bits));
}

// Pins: regex matched from the start of the name (GPTQModel `dynamic` style); bits per linear.
std::vector<std::optional<int>> resolve_pins(const AllocOptions& opts, const std::vector<LinearInfo>& lins) {
  std::vector<std::optional<int>> pin(lins.size());
  for (const auto& [pat, bits] : opts.pins) {
    if (!(quant::is_supported_bits(bits) || bits == 16 || bits == 32))
      throw InputError("pin '" + pat + "': bits " + std::to_string(bits) + " is not supported (accepted: 2, 3, 4, 5, 6, 8, 16, 32)");
    std::regex re;
    try {
      re = std::regex(pat, std::regex::ECMAScript);
    } catch (const std::regex_error&) {
      throw InputError("pin '" + pat + "' is not a valid regular expression");
    }
    int hits = 0;
    for (std::size_t i = 0; i < lins.size(); ++i) {
      if (!std::regex_search(lins[i].name, re, std::regex_constants::match_continuous)) continue;
      ++hits;
      const int b = bits >= 16 ? 16 : bits;
      if (pin[i] && *pin[i] != b)
        throw InputError("infeasible pins: module '" + lins[i].name + "' is pinned to both " + std::to_string(*pin[i]) +
                         " and " + std::to_string(b) + " bits (pin '" + pat + "')");
      pin[i] = b;
    }
    if (!hits && bits < 16)
      throw InputError("pin '" + pat + "' matches no quantizable module (names look like '" +
                       (lins.empty() ? std::string() : lins.front().name) + "')");
  }
  return pin;
}

// Units: per module, merged by ties, or per block; each with its pin.
std::vector<Unit> build_units(const AllocOptions& opts, const std::vector<LinearInfo>& lins,
                              const std::vector<std::optional<int>>& pin) {
  std::vector<Unit> units;
  {
    std::map<std::string, std::size_t> key_unit;
    for (std::size_t i = 0; i < lins.size(); ++i) {
      std::string key = std::to_string(i);
      const std::string blk = std::to_string(lins[i].block);
      if (opts.unit_block) key = "b" + blk;
      else if (opts.tie_qkv && is_tie_qkv(lins[i].rel)) key = "qkv" + blk;
      else if (opts.tie_gate_up && is_tie_gate_up(lins[i].rel)) key = "gu" + blk;
      auto [it, fresh] = key_unit.emplace(key, units.size());
      if (fresh) units.emplace_back();
      Unit& u = units[it->second];
      if (pin[i]) {
        if (u.pin && *u.pin != *pin[i])
          throw InputError("infeasible pins: module '" + lins[i].name + "' is pinned to " + std::to_string(*pin[i]) +
                           " bits but shares its unit (tie / block) with a module pinned to " + std::to_string(*u.pin));
        u.pin = pin[i];
      }
      u.members.push_back(i);
    }
  }
  return units;
}

bool is_solver_method(Method m) { return m == Method::QBO || m == Method::MPQ; }

// Each unit's menu of choices: its pin, or (for the solvers) the bits x group sizes in range.
void fill_menus(std::vector<Unit>& units, const AllocOptions& opts) {
  const bool solver_method = is_solver_method(opts.method);
  for (auto& u : units) {
    if (u.pin) {
      if (*u.pin >= 16) u.menu.push_back({16, 0});
      else
        for (auto g : opts.group_sizes) u.menu.push_back({*u.pin, g});
      continue;
    }
    if (!solver_method) continue;
    bool flt = false;
    for (int b : opts.bits) {
      if (b < opts.min_bits || b > opts.max_bits) continue;
      if (b >= 16) {
        flt = flt || opts.method == Method::QBO;  // MPQ allocates 2..8 bits only
        continue;
      }
      for (auto g : opts.group_sizes) u.menu.push_back({b, g});
    }
    if (flt) u.menu.push_back({16, 0});
    if (u.menu.empty())
      throw InputError("allocation menu is empty: bits [" + bits_list(opts.bits) + "] within min_bits " +
                       std::to_string(opts.min_bits) + " .. max_bits " + std::to_string(opts.max_bits) + " leave no option");
  }
}

// Each unit's sensitivity score: the mean of its modules', or the block's own score per block.
std::vector<double> unit_scores(const Sensitivity& sens, const std::vector<LinearInfo>& lins,
                                const std::vector<Unit>& units, const AllocOptions& opts) {
  std::vector<double> unit_score(units.size(), 0);
  for (std::size_t u = 0; u < units.size(); ++u) {
    double s = 0;
    for (auto i : units[u].members) s += module_score(sens, lins[i]);
    unit_score[u] = s / static_cast<double>(units[u].members.size());
  }
  if (opts.unit_block)  // a per-block score from the file wins over the mean of its modules
    for (std::size_t u = 0; u < units.size(); ++u)
      if (auto it = sens.blocks.find(lins[units[u].members.front()].block); it != sens.blocks.end() && it->second.score)
        unit_score[u] = *it->second.score;
  return unit_score;
}

// QBO / MPQ: the multiple-choice knapsack under the budget; fills res's totals and solver fields.
std::vector<Choice> solve_under_budget(const SizeModel& sm, const Sensitivity& sens, const std::vector<Unit>& units,
                                       const AllocOptions& opts, AllocResult& res) {
  const auto& L = sm.layout();
  const auto& lins = L.linears;
  std::vector<Choice> choice(lins.size());
  if (!opts.budget) throw InputError(std::string("allocation method ") + method_name(opts.method) + " needs a budget (--budget)");
  const SizeMetric m = res.metric;
  std::vector<std::vector<McOption>> classes(units.size());
  for (std::size_t u = 0; u < units.size(); ++u)
    for (const auto& c : units[u].menu) {
      McOption o;
      for (auto i : units[u].members) {
        o.cost += sm.option_cost(m, i, c);
        o.value += module_omega(sens, lins[i], c);
      }
      classes[u].push_back(o);
    }
  const uint64_t fixed = sm.fixed_cost(m);
  res.min_total = fixed + mckp_min_cost(classes);
  res.max_total = fixed + mckp_max_cost(classes);
  auto lim = [&](uint64_t v) {
    if (m == SizeMetric::CodeBits)
      return fmt::format("{:.4f} code bits", static_cast<double>(v) / static_cast<double>(L.linear_weights()));
    if (m == SizeMetric::LinearBytes)
      return fmt::format("{:.4f} avg bits", 8.0 * static_cast<double>(v) / static_cast<double>(L.linear_weights()));
    if (m == SizeMetric::TensorBytes)
      return fmt::format("{} bytes (compression {:.3f}x)", v, static_cast<double>(sm.fp16_bytes()) / static_cast<double>(v));
    return fmt::format("{} bytes ({})", v, util::format_bytes(v));
  };
  if (res.budget_total < res.min_total || res.budget_total > res.max_total)
    throw InputError("budget '" + opts.budget->text + "' (" + lim(res.budget_total) + ") is " +
                     (res.budget_total < res.min_total ? "below the smallest" : "above the largest") +
                     " size this menu can reach: smallest " + lim(res.min_total) + ", largest " + lim(res.max_total));
  const uint64_t cap = res.budget_total - fixed;
  McResult r;
  if (opts.lagrangian) {
    r = solve_mckp_lagrangian(classes, cap);
    res.solver = "lagrangian";
  } else {
    r = solve_mckp_dp(classes, cap);
    res.solver = "dp";
    res.max_front = r.max_front;
    const McResult l = solve_mckp_lagrangian(classes, cap);
    res.lagrangian_objective = l.value;
    res.lagrangian_gap = l.value - r.value;
  }
  if (!r.feasible) throw Error("allocation solver found no feasible plan although the budget is within the limits");
  res.lower_bound = r.lower_bound;
  for (std::size_t u = 0; u < units.size(); ++u)
    for (auto i : units[u].members) choice[i] = units[u].menu[r.choice[u]];
  return choice;
}

std::vector<Choice> uniform_choices(const std::vector<Unit>& units, std::size_t n, const AllocOptions& opts) {
  std::vector<Choice> choice(n);
  for (std::size_t u = 0; u < units.size(); ++u)
    for (auto i : units[u].members)
      choice[i] = units[u].pin ? units[u].menu.front()
                               : (opts.uniform_bits >= 16 ? Choice{16, 0} : Choice{opts.uniform_bits, opts.group_sizes.front()});
  return choice;
}

// The seeds' clustering presets: unit scores in `groups` clusters, one bit-width per cluster.
std::vector<Choice> cluster_choices(const std::vector<Unit>& units, const std::vector<double>& unit_score,
                                    std::size_t n, const AllocOptions& opts) {
  std::vector<Choice> choice(n);
  if (static_cast<int>(opts.preset.size()) != opts.groups)
    throw InputError("clustering preset [" + bits_list(opts.preset) + "] has " + std::to_string(opts.preset.size()) +
                     " entries but groups is " + std::to_string(opts.groups) + " (one bit-width per group, most sensitive first)");
  for (int b : opts.preset)
    if (!(quant::is_supported_bits(b) || b == 16 || b == 32))
      throw InputError("clustering preset bits " + std::to_string(b) + " is not supported (accepted: 2, 3, 4, 5, 6, 8, 16, 32)");
  // Pinned units keep their pin and do not take part in the clustering.
  std::vector<double> sc;
  std::vector<std::size_t> free_units;
  for (std::size_t u = 0; u < units.size(); ++u)
    if (!units[u].pin) {
      sc.push_back(unit_score[u]);
      free_units.push_back(u);
    }
  const auto grp = cluster_scores(sc, opts.groups,
                                  opts.method == Method::KMeans       ? ClusterMethod::KMeans
                                  : opts.method == Method::Percentile ? ClusterMethod::Percentile
                                                                      : ClusterMethod::Hierarchical);
  std::vector<Choice> uc(units.size());
  for (std::size_t u = 0; u < units.size(); ++u)
    if (units[u].pin) uc[u] = units[u].menu.front();
  for (std::size_t k = 0; k < free_units.size(); ++k) {
    const int b = opts.preset[grp[k]];
    uc[free_units[k]] = b >= 16 ? Choice{b, 0} : Choice{b, opts.group_sizes.front()};
  }
  for (std::size_t u = 0; u < units.size(); ++u)
    for (auto i : units[u].members) choice[i] = uc[u];
  return choice;
}

// The per-module result in model order, with bytes, omega, SGRA settings and the totals.
void assemble_modules(const SizeModel& sm, const Sensitivity& sens, const std::vector<Unit>& units,
                      const std::vector<double>& unit_score, const std::vector<Choice>& choice,
                      const AllocOptions& opts, AllocResult& res) {
  const auto& lins = sm.layout().linears;
  std::vector<SgraSettings> sg;
  if (opts.sgra) sg = sgra_settings(unit_score, opts.sgra_ranges);
  res.size = sm.exact(choice);
  for (std::size_t u = 0; u < units.size(); ++u)
    for (auto i : units[u].members) {
      ModuleAlloc a;
      a.name = lins[i].name;
      a.choice = choice[i];
      a.bytes = sm.module_tensor_bytes(i, choice[i]);
      a.omega = module_omega(sens, lins[i], Choice{choice[i].bits >= 16 ? 16 : choice[i].bits, choice[i].group_size});
      a.score = module_score(sens, lins[i]);
      a.unit = static_cast<int>(u);
      a.pinned = units[u].pin.has_value();
      if (opts.sgra) a.sgra = sg[u];
      res.modules.push_back(a);
    }
  // Model order.
  std::map<std::string, std::size_t> pos;
  for (std::size_t i = 0; i < lins.size(); ++i) pos[lins[i].name] = i;
  std::sort(res.modules.begin(), res.modules.end(),
            [&](const ModuleAlloc& a, const ModuleAlloc& b) { return pos[a.name] < pos[b.name]; });
  for (const auto& a : res.modules) res.objective += a.omega;
  if (opts.budget) res.fits = res.size.of(res.metric) <= res.budget_total;
}

}  // namespace

namespace {

// QBO / MPQ need an omega for every (module, candidate). Counts the ones the noise model would
// supply; refuses (unless allowed) a file whose omega tables lack candidates of the menu.
std::size_t check_omega_coverage(const Sensitivity& sens, const std::vector<LinearInfo>& lins,
                                 const std::vector<Unit>& units, const AllocOptions& opts) {
  std::set<std::string> missing;
  std::size_t modelled = 0, modules_missing = 0;
  for (const auto& u : units)
    for (auto m : u.members) {
      const auto& om = sens.modules.at(lins[m].name).omega;
      const bool has_table = std::any_of(om.begin(), om.end(), [](const auto& kv) { return kv.first != "16"; });
      bool this_missing = false;
      for (const auto& c : u.menu) {
        if (!c.quantized() || om.count(choice_key(c))) continue;
        ++modelled;
        if (has_table) {
          missing.insert(choice_key(c));
          this_missing = true;
        }
      }
      modules_missing += this_missing;
    }
  if (!missing.empty() && !opts.allow_modelled_omega) {
    std::set<int64_t> groups;
    std::string keys;
    for (const auto& k : missing) {
      keys += (keys.empty() ? "" : ", ") + k;
      groups.insert(std::stoll(k.substr(k.find(':') + 1)));
    }
    std::string gl;
    for (auto g : groups) gl += (gl.empty() ? "" : ",") + std::to_string(g);
    throw InputError(sens.source + " has no omega for the candidates " + keys + " of the menu (" +
                     std::to_string(modules_missing) + " modules): compute them with `mpqat sensitivity ... --group-sizes " +
                     gl + "`" +
                     ", or model them from the score with --allow-modelled-omega (allocation.allow_modelled_omega: true)");
  }
  return modelled;
}

}  // namespace

AllocOptions for_target(AllocOptions o) {
  const auto& e = quant::engine_menu(o.target, "allocation.target");
  auto runs = [&](int b) { return b >= 16 || std::find(e.bits.begin(), e.bits.end(), b) != e.bits.end(); };
  std::string ebits;
  for (int b : e.bits) ebits += (ebits.empty() ? "" : ", ") + std::to_string(b);
  const std::string ctx = "allocation.target " + o.target + " (runs " + ebits + " bits)";
  std::vector<int> bits;
  for (int b : o.bits)
    if (runs(b)) bits.push_back(b);
  if (std::none_of(bits.begin(), bits.end(), [](int b) { return b < 16; }))
    throw InputError(ctx + ": allocation.bits [" + bits_list(o.bits) + "] keeps no bit-width it runs");
  o.bits = bits;
  std::vector<int64_t> groups;
  for (auto g : o.group_sizes)
    if (std::find(e.group_sizes.begin(), e.group_sizes.end(), g) != e.group_sizes.end()) groups.push_back(g);
  if (groups.empty())
    throw InputError(ctx + ": allocation.group_sizes [" + list_text(o.group_sizes) +
                     "] keeps no group size it runs (accepted: " + list_text(e.group_sizes) + ")");
  o.group_sizes = groups;
  for (const auto& [pat, b] : o.pins)
    if (!runs(b)) throw InputError(ctx + ": pin '" + pat + "' asks for " + std::to_string(b) + " bits");
  if (o.method == Method::Uniform && !runs(o.uniform_bits))
    throw InputError(ctx + ": allocation.uniform_bits " + std::to_string(o.uniform_bits) + " is not one of them");
  if (o.method == Method::KMeans || o.method == Method::Percentile || o.method == Method::Hierarchical)
    for (int b : o.preset)
      if (!runs(b)) throw InputError(ctx + ": allocation.preset asks for " + std::to_string(b) + " bits");
  if (e.sym_only) o.sym = true;
  if (e.tie_qkv) o.tie_qkv = true;
  if (e.tie_gate_up) o.tie_gate_up = true;
  return o;
}

AllocResult allocate(const SizeModel& sm, const Sensitivity& sens, const AllocOptions& opts_in) {
  const AllocOptions opts = for_target(opts_in);
  const auto& lins = sm.layout().linears;
  // A GGUF engine's plan is priced as the GGUF file (SizeOptions::gguf), any other's as safetensors.
  const bool gguf = !quant::engine_menu(opts.target, "allocation.target").gptq_layout;
  if (gguf != sm.options().gguf.has_value())
    throw Error("allocate: allocation.target " + opts.target + (gguf ? " needs" : " cannot use") +
                " a size model with GGUF sizing (SizeOptions::gguf)");
  if (gguf && sm.options().gguf->sym != opts.sym)
    throw Error("allocate: the GGUF size model's symmetry differs from the options' (set GgufSizing::sym = AllocOptions::sym)");
  check_sensitivity(sens, sm.layout());
  validate_alloc_options(opts);
  std::vector<Unit> units = build_units(opts, lins, resolve_pins(opts, lins));
  fill_menus(units, opts);
  // Engines whose kernels tile whole groups (vLLM's Marlin): per unit, only the group sizes that
  // divide every member's input width.
  const auto& engine = quant::engine_menu(opts.target, "allocation.target");
  if (engine.whole_groups) {
    const bool per_row = std::find(engine.group_sizes.begin(), engine.group_sizes.end(), int64_t{-1}) !=
                         engine.group_sizes.end();
    for (auto& u : units) {
      std::vector<Choice> keep;
      for (const auto& c : u.menu) {
        bool ok = true;
        for (auto m : u.members) ok = ok && (!c.quantized() || c.group_size <= 0 || lins[m].in % c.group_size == 0);
        if (ok) keep.push_back(c);
      }
      if (keep.empty() && !u.menu.empty())
        throw InputError("allocation.target " + opts.target + ": no group size of [" + list_text(opts.group_sizes) +
                         "] divides the input width " + std::to_string(lins[u.members.front()].in) + " of '" +
                         lins[u.members.front()].name + "' (" +
                         (per_row ? "add -1, one group per row" : "add 16 to the bits: it can only stay float there") +
                         ")");
      u.menu = keep;
    }
  }

  AllocResult res;
  res.target = opts.target;
  res.method = opts.method;
  res.budget = opts.budget;
  res.units = units.size();
  if (opts.budget) {
    res.metric = budget_metric(opts.budget->kind);
    res.budget_total = budget_total(*opts.budget, sm);
  }
  const std::vector<double> unit_score = unit_scores(sens, lins, units, opts);
  if (is_solver_method(opts.method)) res.modelled_omegas = check_omega_coverage(sens, lins, units, opts);

  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<Choice> choice =
      is_solver_method(opts.method)     ? solve_under_budget(sm, sens, units, opts, res)
      : opts.method == Method::Uniform ? uniform_choices(units, lins.size(), opts)
                                       : cluster_choices(units, unit_score, lins.size(), opts);
  res.solve_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  assemble_modules(sm, sens, units, unit_score, choice, opts, res);
  return res;
}

// ---------------------------------------------------------------------------------------------
// Output

json plan_to_json(const AllocResult& r, const SizeModel& sm, const AllocOptions& opts) {
  json mods = json::object();
  for (const auto& a : r.modules) {
    json e = {{"bits", a.choice.bits}};
    if (a.choice.quantized()) {
      e["group_size"] = a.choice.group_size;
      e["sym"] = opts.sym;
    }
    e["predicted_bytes"] = a.bytes;
    e["predicted_omega"] = a.omega;
    e["score"] = a.score;
    e["unit"] = a.unit;
    if (a.pinned) e["pinned"] = true;
    if (a.sgra) e["sgra"] = {{"epochs", a.sgra->epochs}, {"lr_scale", a.sgra->lr_scale},
                             {"patience", a.sgra->patience}, {"rank", a.sgra->rank}};
    mods[a.name] = e;
  }
  std::map<std::string, int> hist;
  for (const auto& a : r.modules) hist[std::to_string(a.choice.bits)]++;
  json totals = {{"predicted_bytes", r.size.file_bytes},
                 {"tensor_bytes", r.size.tensor_bytes},
                 {"header_bytes", r.size.header_bytes},
                 {"linear_bytes", r.size.linear_bytes},
                 {"shards", r.size.shards},
                 {"avg_bits", r.size.avg_bits},
                 {"compression", r.size.compression},
                 {"fp16_bytes", sm.fp16_bytes()},
                 {"objective", r.objective},
                 {"bits_histogram", hist},
                 {"header_exact", sm.layout().order_exact}};
  json budget = nullptr;
  if (r.budget)
    budget = {{"text", r.budget->text},
              {"kind", budget_kind_name(r.budget->kind)},
              {"value", r.budget->value},
              {"metric", metric_name(r.metric)},
              {"total", r.budget_total},
              {"fits", r.fits}};
  json method = {{"name", method_name(r.method)}, {"unit", opts.unit_block ? "block" : "module"},
                 {"bits", opts.bits}, {"group_sizes", opts.group_sizes}, {"tie_qkv", opts.tie_qkv},
                 {"tie_gate_up", opts.tie_gate_up}, {"min_bits", opts.min_bits}, {"max_bits", opts.max_bits}};
  json pins = json::object();
  for (const auto& [k, v] : opts.pins) pins[k] = v;
  method["pins"] = pins;
  if (!r.solver.empty()) {
    method["solver"] = r.solver;
    method["lower_bound"] = r.lower_bound;
    if (r.lagrangian_gap) method["lagrangian_gap"] = *r.lagrangian_gap;
  }
  if (r.method == Method::KMeans || r.method == Method::Percentile || r.method == Method::Hierarchical) {
    method["groups"] = opts.groups;
    method["preset"] = opts.preset;
  }
  if (opts.sgra)
    method["sgra"] = {{"epochs", {opts.sgra_ranges.epochs_min, opts.sgra_ranges.epochs_max}},
                      {"lr_scale", {opts.sgra_ranges.lr_min, opts.sgra_ranges.lr_max}},
                      {"patience", {opts.sgra_ranges.patience_min, opts.sgra_ranges.patience_max}}};
  return {{"version", 1},
          {"format", "mpqat.bitplan"},
          {"model", {{"architecture", sm.layout().cfg.architecture}, {"num_hidden_layers", sm.layout().cfg.num_hidden_layers},
                     {"float_dtype", io::dtype_name(sm.options().float_dtype)}}},
          {"method", method},
          {"budget", budget},
          {"totals", totals},
          {"modules", mods}};
}

void write_plan(const std::string& path, const AllocResult& r, const SizeModel& sm, const AllocOptions& opts) {
  util::write_file_atomic(path, plan_to_json(r, sm, opts).dump(2) + "\n");
}

json summary_json(const AllocResult& r) {
  json j = {{"predicted_bytes", r.size.file_bytes},
            {"tensor_bytes", r.size.tensor_bytes},
            {"header_bytes", r.size.header_bytes},
            {"avg_bits", r.size.avg_bits},
            {"bpw", r.size.avg_bits},
            {"code_bits", r.size.code_bits},
            {"compression", r.size.compression},
            {"objective", r.objective},
            {"method", method_name(r.method)},
            {"units", r.units},
            {"solve_seconds", r.solve_seconds},
            {"modelled_omegas", r.modelled_omegas},
            {"target", r.target}};
  if (r.budget) {
    j["budget"] = r.budget->text;
    j["budget_metric"] = metric_name(r.metric);
    j["budget_bytes"] = r.budget_total;
    j["predicted_metric_bytes"] = r.size.of(r.metric);
    j["fits"] = r.fits;
  } else {
    j["budget_bytes"] = nullptr;
  }
  if (!r.solver.empty()) {
    j["solver"] = r.solver;
    j["lower_bound"] = r.lower_bound;
    j["min_achievable"] = r.min_total;
    j["max_achievable"] = r.max_total;
  }
  if (r.lagrangian_gap) {
    j["lagrangian_objective"] = *r.lagrangian_objective;
    j["lagrangian_gap"] = *r.lagrangian_gap;
  }
  return j;
}

std::string result_text(const AllocResult& r) {
  std::size_t w = 6;
  for (const auto& m : r.modules) w = std::max(w, m.name.size());
  std::string s = fmt::format("{:<{}}  {:>4}  {:>5}  {:>12}  {:>12}  {:>10}\n", "module", w, "bits", "group", "bytes", "omega", "score");
  for (const auto& m : r.modules) {
    s += fmt::format("{:<{}}  {:>4}  {:>5}  {:>12}  {:>12.4g}  {:>10.4g}", m.name, w, m.choice.bits,
                     m.choice.quantized() ? std::to_string(m.choice.group_size) : std::string("-"), m.bytes, m.omega, m.score);
    if (m.sgra) s += fmt::format("  sgra e{} lr{:.2f} p{}", m.sgra->epochs, m.sgra->lr_scale, m.sgra->patience);
    if (m.pinned) s += "  (pinned)";
    s += "\n";
  }
  s += fmt::format("method {}{}: objective {:.6g}, {:.4f} bpw (all bytes of the quantized linears / their weights), "
                   "{:.4f} code bits, compression {:.3f}x\n",
                   method_name(r.method),
                   (r.solver.empty() ? "" : " (" + r.solver + ")") + (r.target == "mpqat" ? "" : " for " + r.target),
                   r.objective, r.size.avg_bits,
                   r.size.code_bits, r.size.compression);
  if (r.lagrangian_gap) s += fmt::format("lagrangian objective {:.6g}: gap to the exact optimum {:.6g}\n", *r.lagrangian_objective, *r.lagrangian_gap);
  if (r.modelled_omegas > 0)
    s += fmt::format("{} omegas were modelled from module scores (score x numel x 4^-bits x group factor), not "
                     "measured: compute the sensitivity for these candidates for a measured allocation\n",
                     r.modelled_omegas);
  s += fmt::format("predicted size: {} bytes ({}) = tensors {} + headers {}", r.size.file_bytes, util::format_bytes(r.size.file_bytes),
                   r.size.tensor_bytes, r.size.header_bytes);
  if (r.budget)
    s += fmt::format("; budget {}{} -> {} {} (predicted {}): {}", r.budget->text,
                     r.budget->kind == BudgetKind::AvgBits    ? " bpw incl. scales/zeros/g_idx"
                     : r.budget->kind == BudgetKind::CodeBits ? " code bits per weight (scales/zeros/g_idx not counted)"
                                                              : "",
                     r.budget_total,
                     metric_name(r.metric),
                     r.size.of(r.metric), r.fits ? "fits" : "EXCEEDS the budget");
  return s + "\n";
}

}  // namespace mpqat::alloc
