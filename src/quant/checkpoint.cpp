// RTN over a model, the GPTQ(-v2) mixed-precision writer, the detecting loader and inspect.
#include "mpqat/quant/checkpoint.h"

#include <c10/util/Half.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <fmt/format.h>
#include <iomanip>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "mpqat/model/config.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/hf_names.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/engines.h"
#include "mpqat/model/bert.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/opt.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/util/strings.h"
#include "mpqat/util/torch_compat.h"

#ifndef MPQAT_VERSION
#define MPQAT_VERSION "dev"
#endif

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace mpqat::quant {

namespace {

std::string regex_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (std::strchr(".^$|()[]{}*+?\\", c)) r += '\\';
    r += c;
  }
  return r;
}

std::vector<std::string> linear_names(const model::TransformerModel& m) {
  std::vector<std::string> n;
  for (const auto& [name, lin] : m.named_linears()) n.push_back(name);
  return n;
}

template <typename Make>
int64_t swap_plan(model::TransformerModel& m, const BitPlan& plan, Make make) {
  validate_plan_modules(plan, linear_names(m));
  int64_t n = 0;
  for (const auto& [name, spec] : plan.quantized()) {
    auto lin = m.linear(name);
    m.set_linear(name, make(*lin, spec));
    ++n;
  }
  return n;
}

}  // namespace

int64_t rtn_quantize(model::TransformerModel& m, const BitPlan& plan, const InitOptions& init) {
  return swap_plan(m, plan, [&](const model::LinearImpl& lin, const QuantSpec& spec) -> model::LinearPtr {
    FakeQuantLinearImpl fq(lin, spec, init);
    return fq.to_quant_linear();
  });
}

int64_t apply_fake_quant(model::TransformerModel& m, const BitPlan& plan, const InitOptions& init) {
  return swap_plan(m, plan, [&](const model::LinearImpl& lin, const QuantSpec& spec) -> model::LinearPtr {
    return std::make_shared<FakeQuantLinearImpl>(lin, spec, init);
  });
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

struct OwnedTensor {
  std::string name;
  io::DType dtype;
  torch::Tensor t;  // contiguous CPU, dtype matching `dtype`
};

}  // namespace

namespace {

// The writer behind both public entry points: every block linear by full name, every parameter
// by full name, and the model's config (used when the source folder has no config.json).
void save_contents(const std::vector<std::pair<std::string, model::LinearPtr>>& linears,
                   const std::vector<std::pair<std::string, torch::Tensor>>& params,
                   const model::ModelConfig& model_cfg, const std::string& out_dir, const SaveOptions& opts) {
  torch::NoGradGuard ng;
  const auto fst = model::scalar_type(opts.float_dtype, "output.float_dtype");
  // Packed modules, by full name.
  std::map<std::string, QuantLinearPtr> packed;
  std::vector<std::string> float_linears;
  for (const auto& [name, lin] : linears) {
    if (auto q = std::dynamic_pointer_cast<QuantLinearImpl>(lin)) packed[name] = q;
    else if (auto f = std::dynamic_pointer_cast<FakeQuantLinearImpl>(lin)) packed[name] = f->to_quant_linear();
    else float_linears.push_back(name);
  }
  if (packed.empty())
    throw InputError("nothing to save as a quantized checkpoint to '" + out_dir +
                     "': no linear is quantized (the bit plan names no module with bits 2..8)");

  // Default = the most common (bits, group_size, sym); the others become dynamic overrides.
  std::map<std::tuple<int, int64_t, bool>, int> counts;
  for (const auto& [name, q] : packed) counts[{q->spec().bits, q->spec().group_size, q->spec().sym}]++;
  auto best = counts.begin();
  for (auto it = counts.begin(); it != counts.end(); ++it)
    if (it->second > best->second) best = it;
  const auto [dbits, dgroup, dsym] = best->first;
  ojson dynamic = ojson::object();
  for (const auto& [name, q] : packed) {
    const auto& s = q->spec();
    if (s.bits == dbits && s.group_size == dgroup && s.sym == dsym) continue;
    ojson o{{"bits", s.bits}, {"group_size", s.group_size}};
    if (s.sym != dsym) o["sym"] = s.sym;
    dynamic["+:^" + regex_escape(name) + "$"] = o;
  }
  for (const auto& name : float_linears) dynamic["-:^" + regex_escape(name) + "$"] = ojson::object();
  // vLLM matches `dynamic` against its fused modules (qkv_proj, gate_up_proj): where the members
  // of one share a spec, the fused name gets the same rule (other loaders match no module by it).
  std::map<std::string, std::vector<std::string>> fused;  // fused name -> member specs as text
  auto spec_key = [](const QuantSpec& sp) { return fmt::format("{}:{}:{}", sp.bits, sp.group_size, sp.sym); };
  for (const auto& [name, q] : packed)
    if (auto f = fused_name(name); !f.empty()) fused[f].push_back(spec_key(q->spec()));
  for (const auto& name : float_linears)
    if (auto f = fused_name(name); !f.empty()) fused[f].push_back("float");
  for (const auto& [f, specs] : fused) {
    if (specs.size() != fused_members(f).size() ||
        std::adjacent_find(specs.begin(), specs.end(), std::not_equal_to<>()) != specs.end())
      continue;
    if (specs.front() == "float") {
      dynamic["-:^" + regex_escape(f) + "$"] = ojson::object();
      continue;
    }
    const auto& q = packed.at(fused_members(f).front());
    const auto& sp = q->spec();
    if (sp.bits == dbits && sp.group_size == dgroup && sp.sym == dsym) continue;
    ojson o{{"bits", sp.bits}, {"group_size", sp.group_size}};
    if (sp.sym != dsym) o["sym"] = sp.sym;
    dynamic["+:^" + regex_escape(f) + "$"] = o;
  }
  // desc_act: some module's g_idx is not i / group_size (GPTQ act-order groups).
  bool desc_act = false;
  for (const auto& [name, q] : packed)
    desc_act = desc_act || !torch::equal(q->g_idx.to(torch::kCPU).to(torch::kInt),
                                         default_g_idx(q->in_features(), q->spec().group_size));

  // Tensors: every parameter except the float weights / quantizer parameters of packed modules.
  std::vector<OwnedTensor> owned;
  auto is_packed_internal = [&](const std::string& pname) {
    const auto dot = pname.rfind('.');
    if (dot == std::string::npos) return false;
    const std::string mod = pname.substr(0, dot), leaf = pname.substr(dot + 1);
    return packed.count(mod) && leaf != "bias";
  };
  std::set<std::string> written;
  for (const auto& [pname, value] : params) {
    if (is_packed_internal(pname)) continue;
    const std::string& name = pname;
    // A FakeQuantLinear's bias lives in the converted QuantLinear as well; same values.
    owned.push_back({name, opts.float_dtype, value.detach().to(torch::kCPU).to(fst).contiguous()});
    written.insert(name);
  }
  for (const auto& [name, q] : packed) {
    // The layout's one list (quant/scheme.h) names, orders and shapes the packed tensors.
    const std::map<std::string, torch::Tensor> held = {
        {".qweight", q->qweight}, {".qzeros", q->qzeros}, {".scales", q->scales}, {".g_idx", q->g_idx}};
    for (const auto& t : packed_tensor_shapes(q->out_features(), q->in_features(), q->spec())) {
      auto v = held.at(t.suffix).to(torch::kCPU).to(t.dtype == io::DType::I32 ? torch::kInt : torch::kHalf).contiguous();
      if (v.sizes().vec() != t.shape)
        throw Error("checkpoint writer: '" + name + t.suffix + "' has shape " + io::shape_str(v.sizes().vec()) +
                    ", the packed layout says " + io::shape_str(t.shape));
      owned.push_back({name + t.suffix, t.dtype, std::move(v)});
    }
    if (q->has_bias() && !written.count(name + ".bias"))
      owned.push_back({name + ".bias", opts.float_dtype, q->bias.detach().to(torch::kCPU).to(fst).contiguous()});
  }
  std::vector<io::TensorToWrite> tw;
  for (const auto& o : owned)
    tw.push_back({o.name, o.dtype, o.t.sizes().vec(), o.t.data_ptr(), static_cast<size_t>(o.t.nbytes())});

  // config.json: the source's own (unknown keys preserved) or the model's.
  ojson cfg;
  const fs::path src_cfg = opts.source_dir.empty() ? fs::path() : fs::path(opts.source_dir) / "config.json";
  if (!src_cfg.empty() && fs::exists(src_cfg)) {
    try {
      cfg = ojson::parse(util::read_file(src_cfg.string()));
    } catch (const nlohmann::json::exception& e) {
      throw InputError("'" + src_cfg.string() + "' is not valid JSON: " + e.what());
    }
  } else {
    cfg = ojson::parse(model::model_config_to_json(model_cfg).dump());
  }
  cfg["torch_dtype"] = io::config_dtype_name(opts.float_dtype, "output.float_dtype");
  cfg["quantization_config"] = ojson{{"quant_method", "gptq"},
                                     {"checkpoint_format", "gptq_v2"},
                                     {"bits", dbits},
                                     {"group_size", dgroup},
                                     {"sym", dsym},
                                     {"desc_act", desc_act},
                                     {"pack_dtype", "int32"},
                                     {"dynamic", dynamic}};
  ojson prov{{"tool", std::string("mpqat ") + MPQAT_VERSION},
             {"torch", util::torch_version_string()},
             {"method", opts.method},
             {"source_model", opts.source_dir.empty() ? "" : fs::absolute(opts.source_dir).string()},
             {"created", util::utc_iso_now()},
             {"packing", "bit stream per column, LSB first (GPTQ layout for 2/3/4/8 bits)"}};
  ojson mp{{"format_version", kCheckpointFormatVersion}, {"provenance", prov}};
  if (opts.plan) mp["bit_plan"] = ojson::parse(bit_plan_to_json(*opts.plan).dump());
  cfg["mpqat"] = mp;

  const fs::path out(out_dir);
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out)) && !opts.force)
    throw InputError("output folder '" + out_dir + "' exists and is not empty (pass --force to replace it)");
  util::write_folder_atomic(
      out_dir,
      [&](const std::string& tmp_dir) {
        const fs::path tmp(tmp_dir);
        io::write_safetensors_sharded(tmp_dir, tw, checkpoint_file_metadata(), opts.max_shard_bytes, "model");
        util::write_file_atomic((tmp / "config.json").string(), cfg.dump(2) + "\n");
        if (!opts.source_dir.empty()) model::copy_model_side_files(opts.source_dir, tmp_dir);
      },
      "checkpoint");
}

}  // namespace

void save_quantized_checkpoint(const model::TransformerModel& m, const std::string& out_dir,
                               const SaveOptions& opts) {
  // The order of the shell + blocks writer below (block-free parameters first, then the blocks),
  // so that a model saved whole and the same model saved block by block are the same bytes.
  std::vector<std::pair<std::string, torch::Tensor>> shell_params;
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> block_params(static_cast<size_t>(m.num_blocks()));
  for (const auto& item : m.named_parameters(true)) {
    int64_t owner = -1;
    for (int64_t i = 0; i < m.num_blocks() && owner < 0; ++i)
      if (item.key().compare(0, m.block_prefix(i).size(), m.block_prefix(i)) == 0) owner = i;
    (owner < 0 ? shell_params : block_params[static_cast<size_t>(owner)]).emplace_back(item.key(), item.value());
  }
  auto params = shell_params;
  for (const auto& b : block_params) params.insert(params.end(), b.begin(), b.end());
  save_contents(m.named_linears(), params, m.config(), out_dir, opts);
}

BlockModel rtn_quantize_blocks(const model::ModelFolder& folder, const BitPlan& plan, const InitOptions& init) {
  const auto& cfg = folder.config();
  {
    std::vector<std::string> names;
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
      for (const auto& rel : model::family_block_linear_names(cfg)) names.push_back(model::family_block_prefix(cfg, i) + rel);
    validate_plan_modules(plan, names);
  }
  BlockModel r;
  r.config = cfg;
  r.shell = model::load_any_model_shell(folder);
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i) {
    auto b = model::load_any_block(folder, i);  // the only float block in memory
    const auto prefix = model::family_block_prefix(cfg, i);
    for (const auto& [rel, lin] : b->linears()) {
      auto it = plan.modules.find(prefix + rel);
      if (it == plan.modules.end() || !it->second.quantized()) continue;
      FakeQuantLinearImpl fq(*lin, it->second.spec(), init);
      b->set_linear(rel, fq.to_quant_linear());
    }
    r.blocks.push_back(b);
  }
  return r;
}

void save_quantized_checkpoint(const model::TransformerModel& shell, const model::ModelConfig& cfg,
                               const std::vector<model::BlockPtr>& blocks, const std::string& out_dir,
                               const SaveOptions& opts) {
  if (static_cast<int64_t>(blocks.size()) != cfg.num_hidden_layers)
    throw Error("save_quantized_checkpoint: " + std::to_string(blocks.size()) + " blocks given for a model of " +
                std::to_string(cfg.num_hidden_layers));
  std::vector<std::pair<std::string, torch::Tensor>> params;
  std::vector<std::pair<std::string, model::LinearPtr>> linears;
  for (const auto& item : shell.named_parameters(true)) params.emplace_back(item.key(), item.value());
  for (size_t i = 0; i < blocks.size(); ++i) {
    const std::string prefix = model::family_block_prefix(cfg, static_cast<int64_t>(i));
    for (const auto& item : blocks[i]->named_parameters(true)) params.emplace_back(prefix + item.key(), item.value());
    for (const auto& [rel, lin] : blocks[i]->linears()) linears.emplace_back(prefix + rel, lin);
  }
  save_contents(linears, params, cfg, out_dir, opts);
}

// ---------------------------------------------------------------------------------------------
// Quantization config

QuantConfig parse_quant_config(const nlohmann::json& j_in, const std::string& source) {
  // Re-parse as ordered: `dynamic` rules apply in file order.
  const ojson j = ojson::parse(j_in.dump());
  QuantConfig qc;
  qc.source = source;
  if (!j.is_object()) throw InputError(source + ": quantization_config must be an object");
  const std::string method = j.value("quant_method", std::string("gptq"));
  if (method != "gptq")
    throw InputError(source + ": quant_method '" + method + "' is not supported (accepted: gptq)");
  auto get_int = [&](const ojson& o, const char* key, const std::string& ctx) {
    if (!o[key].is_number_integer()) throw InputError(ctx + ": \"" + key + "\" must be an integer");
    return o[key].get<int64_t>();
  };
  if (!j.contains("bits")) throw InputError(source + ": quantization_config has no \"bits\"");
  qc.bits = static_cast<int>(get_int(j, "bits", source));
  if (j.contains("group_size")) qc.group_size = get_int(j, "group_size", source);
  if (j.contains("sym")) qc.sym = j["sym"].get<bool>();
  if (j.contains("desc_act") && j["desc_act"].is_boolean()) qc.desc_act = j["desc_act"].get<bool>();
  qc.checkpoint_format = j.value("checkpoint_format", std::string("gptq"));
  if (qc.checkpoint_format != "gptq" && qc.checkpoint_format != "gptq_v2")
    throw InputError(source + ": checkpoint_format '" + qc.checkpoint_format + "' is not supported (accepted: gptq, gptq_v2)");
  if (j.contains("pack_dtype") && !(j["pack_dtype"].is_string() && j["pack_dtype"].get<std::string>() == "int32"))
    throw InputError(source + ": pack_dtype " + j["pack_dtype"].dump() + " is not supported (accepted: \"int32\")");
  traits_for_bits(qc.bits, source + ": quantization_config");
  if (j.contains("dynamic") && !j["dynamic"].is_null()) {
    if (!j["dynamic"].is_object()) throw InputError(source + ": \"dynamic\" must be an object of regex -> overrides");
    for (const auto& [key, val] : j["dynamic"].items()) {
      DynamicRule r;
      r.key = key;
      std::string pat = key;
      if (util::starts_with(key, "-:")) {
        r.exclude = true;
        pat = key.substr(2);
      } else if (util::starts_with(key, "+:")) {
        pat = key.substr(2);
      } else if (util::starts_with(key, "re:")) {
        pat = key.substr(3);
      }
      try {
        r.re = std::regex(pat, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        throw InputError(source + ": dynamic rule '" + key + "' is not a valid regular expression");
      }
      const std::string ctx = source + ": dynamic rule '" + key + "'";
      if (!val.is_object()) throw InputError(ctx + " must map to an object");
      if (val.contains("bits")) {
        r.bits = static_cast<int>(get_int(val, "bits", ctx));
        traits_for_bits(*r.bits, ctx);
      }
      if (val.contains("group_size")) r.group_size = get_int(val, "group_size", ctx);
      if (val.contains("sym")) r.sym = val["sym"].get<bool>();
      qc.dynamic.push_back(std::move(r));
    }
  }
  return qc;
}

namespace {

// config.json's "quantization_config", else quantize_config.json; nullopt when neither.
std::optional<std::pair<nlohmann::json, std::string>> find_quant_json(const std::string& dir) {
  const fs::path cfg = fs::path(dir) / "config.json";
  if (fs::exists(cfg)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(util::read_file(cfg.string()));
    } catch (const nlohmann::json::exception&) {
      return std::nullopt;
    }
    if (j.contains("quantization_config") && j["quantization_config"].is_object())
      return std::make_pair(j["quantization_config"], "'" + cfg.string() + "' quantization_config");
  }
  const fs::path qcf = fs::path(dir) / "quantize_config.json";
  if (fs::exists(qcf)) {
    try {
      return std::make_pair(nlohmann::json::parse(util::read_file(qcf.string())), "'" + qcf.string() + "'");
    } catch (const nlohmann::json::exception& e) {
      throw InputError("'" + qcf.string() + "' is not valid JSON: " + e.what());
    }
  }
  return std::nullopt;
}

}  // namespace

bool is_quantized_folder(const std::string& dir) { return find_quant_json(dir).has_value(); }

QuantConfig load_quant_config(const std::string& dir) {
  auto j = find_quant_json(dir);
  if (!j) throw InputError("'" + dir + "' has no quantization_config in config.json (not a quantized checkpoint)");
  return parse_quant_config(j->first, j->second);
}

std::optional<QuantSpec> resolve_module(const QuantConfig& qc, const std::string& module, std::string* rule) {
  for (const auto& r : qc.dynamic) {
    if (!std::regex_search(module, r.re, std::regex_constants::match_continuous)) continue;
    if (rule) *rule = r.key;
    if (r.exclude) return std::nullopt;
    return QuantSpec{r.bits.value_or(qc.bits), r.group_size.value_or(qc.group_size), r.sym.value_or(qc.sym)};
  }
  if (rule) *rule = "";
  return QuantSpec{qc.bits, qc.group_size, qc.sym};
}

// ---------------------------------------------------------------------------------------------
// Detection

DetectedModule detect_module(const io::SafetensorsCheckpoint& ckpt, const QuantConfig& qc, const std::string& name,
                             int64_t out, int64_t in, const std::string& dir) {
  DetectedModule d;
  d.name = name;
  d.out = out;
  d.in = in;
  std::string rule;
  const auto expected = resolve_module(qc, name, &rule);
  const std::string said =
      "config.json quantization_config (" + (rule.empty() ? std::string("default") : "dynamic rule '" + rule + "'") + ")";
  const std::string qw = name + ".qweight";
  if (!ckpt.contains(qw)) {
    if (expected)
      throw InputError("checkpoint '" + dir + "': module '" + name + "' has no tensor '" + qw + "' but " + said +
                       " quantizes it to " + std::to_string(expected->bits) + " bits");
    if (!ckpt.contains(name + ".weight"))
      throw InputError("checkpoint '" + dir + "': module '" + name + "' has neither '" + qw + "' nor '" + name +
                       ".weight'");
    return d;
  }
  const std::string file = ckpt.file_of(qw);
  if (ckpt.contains(name + ".weight"))
    throw InputError("'" + ckpt.file_of(name + ".weight") + "': module '" + name + "' has both '" + name +
                     ".weight' and '" + qw + "' (a module is either float or packed, not both)");
  if (!expected)
    throw InputError("'" + file + "': module '" + name + "' is packed ('" + qw + "') but " + said +
                     " marks it unquantized");
  for (const char* leaf : {".qzeros", ".scales"})
    if (!ckpt.contains(name + leaf))
      throw InputError("'" + file + "': module '" + name + "' has '" + qw + "' but tensor '" + name + leaf +
                       "' is missing");
  const auto& iq = ckpt.info(qw);
  const auto& iz = ckpt.info(name + ".qzeros");
  const auto& is = ckpt.info(name + ".scales");
  auto need = [&](const io::TensorInfo& t, bool ok, const std::string& what) {
    if (!ok)
      throw InputError("'" + ckpt.file_of(t.name) + "': tensor '" + t.name + "' has dtype " + io::dtype_name(t.dtype) +
                       " and shape " + io::shape_str(t.shape) + ", expected " + what);
  };
  need(iq, iq.dtype == io::DType::I32 && iq.shape.size() == 2 && iq.shape[1] == out,
       "I32 [rows, " + std::to_string(out) + "] for a (" + std::to_string(out) + ", " + std::to_string(in) + ") linear");
  const auto cands = bits_for_packed_words(iq.shape[0], in);
  if (cands.empty()) {
    std::string opts;
    for (int b : supported_bits()) opts += (opts.empty() ? "" : ", ") + std::to_string(packed_words(in, b)) + " (" + std::to_string(b) + "-bit)";
    throw InputError("'" + file + "': tensor '" + qw + "' has " + std::to_string(iq.shape[0]) + " rows, which matches no bit-width for " +
                     std::to_string(in) + " input features (accepted rows: " + opts + ")");
  }
  int bits = cands.front();
  bool agrees = false;
  for (int b : cands)
    if (b == expected->bits) {
      bits = b;
      agrees = true;
    }
  if (!agrees)
    throw InputError("'" + file + "': module '" + name + "' has " + std::to_string(bits) + "-bit tensors ('" + qw + "' has " +
                     std::to_string(iq.shape[0]) + " rows for " + std::to_string(in) + " inputs) but " + said + " says " +
                     std::to_string(expected->bits) + " bits");
  need(is, (is.dtype == io::DType::F16 || is.dtype == io::DType::BF16 || is.dtype == io::DType::F32) &&
               is.shape.size() == 2 && is.shape[1] == out && is.shape[0] >= 1,
       "F16 [groups, " + std::to_string(out) + "]");
  const int64_t ngr = is.shape[0];
  if (num_groups(in, expected->group_size) != ngr) {
    std::string detected;
    for (int64_t g : supported_group_sizes())
      if (num_groups(in, g) == ngr) detected += (detected.empty() ? "" : " or ") + std::to_string(g);
    throw InputError("'" + file + "': module '" + name + "' has " + std::to_string(ngr) + " scale groups for " +
                     std::to_string(in) + " inputs (group size " + (detected.empty() ? "none of 32, 64, 128, 256, -1" : detected) +
                     ") but " + said + " says group_size " + std::to_string(expected->group_size) + " (" +
                     std::to_string(num_groups(in, expected->group_size)) + " groups)");
  }
  need(iz, iz.dtype == io::DType::I32 && iz.shape == std::vector<int64_t>{ngr, packed_words(out, bits)},
       "I32 " + io::shape_str({ngr, packed_words(out, bits)}) + " (" + std::to_string(bits) + "-bit zeros, " +
           std::to_string(ngr) + " groups)");
  if (ckpt.contains(name + ".g_idx")) {
    const auto& ig = ckpt.info(name + ".g_idx");
    need(ig, ig.dtype == io::DType::I32 && ig.shape == std::vector<int64_t>{in}, "I32 [" + std::to_string(in) + "]");
    std::vector<int32_t> g(static_cast<size_t>(in));
    std::memcpy(g.data(), ckpt.data(ig.name), g.size() * sizeof(int32_t));
    ckpt.release(ig.name);
    for (size_t c = 0; c < g.size(); ++c)
      if (g[c] < 0 || g[c] >= ngr)
        throw InputError("'" + ckpt.file_of(ig.name) + "': tensor '" + ig.name + "' maps input column " +
                         std::to_string(c) + " to group " + std::to_string(g[c]) + ", outside [0, " +
                         std::to_string(ngr) + ") (the module has " + std::to_string(ngr) + " scale groups)");
    d.has_g_idx = true;
  }
  d.quantized = true;
  d.spec = QuantSpec{bits, expected->group_size, expected->sym};
  return d;
}

namespace {

// config.json's "mpqat" section: the format version, and the bit plan the writer recorded.
void check_mpqat_section(const model::ModelFolder& folder, const std::vector<DetectedModule>& mods) {
  const std::string cfg_path = (fs::path(folder.dir()) / "config.json").string();
  nlohmann::json cfg;
  try {
    cfg = nlohmann::json::parse(util::read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    throw InputError("'" + cfg_path + "' is not valid JSON: " + e.what());
  }
  if (!cfg.contains("mpqat")) return;  // written by another tool: nothing of ours to check
  const auto& mp = cfg["mpqat"];
  if (!mp.is_object()) throw InputError("'" + cfg_path + "': \"mpqat\" must be an object");
  if (mp.contains("format_version")) {
    if (!mp["format_version"].is_number_integer() || mp["format_version"].get<int64_t>() < 1 ||
        mp["format_version"].get<int64_t>() > kCheckpointFormatVersion)
      throw InputError("'" + cfg_path + "': mpqat.format_version " + mp["format_version"].dump() +
                       " is not one this mpqat reads (accepted: 1.." + std::to_string(kCheckpointFormatVersion) +
                       "; a newer mpqat wrote it?)");
  }
  if (!mp.contains("bit_plan")) return;
  const BitPlan plan = parse_bit_plan(mp["bit_plan"], "'" + cfg_path + "' mpqat.bit_plan");
  const auto planned = plan.quantized();
  for (const auto& d : mods) {
    const auto it = planned.find(d.name);
    const bool in_plan = plan.modules.count(d.name) > 0;
    if (!in_plan) continue;  // modules the plan does not name keep the writer's default
    const std::string want = it == planned.end() ? std::string("float")
                                                 : std::to_string(it->second.bits) + "-bit g" +
                                                       std::to_string(it->second.group_size);
    const std::string have = d.quantized ? std::to_string(d.spec.bits) + "-bit g" + std::to_string(d.spec.group_size)
                                         : std::string("float");
    const bool same = (it == planned.end()) == !d.quantized &&
                      (!d.quantized || (it->second.bits == d.spec.bits &&
                                        num_groups(d.in, it->second.group_size) == num_groups(d.in, d.spec.group_size)));
    if (!same)
      throw InputError("'" + cfg_path + "': mpqat.bit_plan says module '" + d.name + "' is " + want +
                       " but its tensors are " + have + ": the plan and the weights disagree");
  }
}

// Llama family: every float tensor the config implies, with its shape and a float dtype.
void check_float_tensors(const model::ModelFolder& folder, const std::vector<DetectedModule>& mods) {
  const auto& cfg = folder.config();
  if (cfg.family != model::Family::Llama) return;  // OPT / BERT: the loader checks them against the model
  std::set<std::string> packed;
  for (const auto& d : mods)
    if (d.quantized) packed.insert(d.name);
  const auto& ckpt = folder.checkpoint();
  for (const auto& t : model::llama_tensors(cfg)) {
    if (!t.is_bias && packed.count(t.linear)) continue;  // a .qweight stands for it
    if (!ckpt.contains(t.name))
      throw InputError("checkpoint '" + folder.dir() + "': tensor '" + t.name + "' (" + io::shape_str(t.shape) +
                       " from config.json) is missing");
    const auto& info = ckpt.info(t.name);
    if (info.shape != t.shape)
      throw InputError("'" + ckpt.file_of(t.name) + "': tensor '" + t.name + "' has shape " + io::shape_str(info.shape) +
                       " but config.json implies " + io::shape_str(t.shape));
    if (info.dtype != io::DType::F16 && info.dtype != io::DType::BF16 && info.dtype != io::DType::F32)
      throw InputError("'" + ckpt.file_of(t.name) + "': tensor '" + t.name + "' has dtype " + io::dtype_name(info.dtype) +
                       " (accepted for float tensors: F16, BF16, F32)");
  }
}

}  // namespace

std::vector<DetectedModule> validate_quantized_folder(const model::ModelFolder& folder, const QuantConfig& qc) {
  const auto& cfg = folder.config();
  std::vector<DetectedModule> mods;
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& rel : model::family_block_linear_names(cfg)) {
      const auto [out, in] = model::block_linear_shape(cfg, rel);
      mods.push_back(detect_module(folder.checkpoint(), qc, model::family_block_prefix(cfg, i) + rel, out, in,
                                   folder.dir()));
    }
  check_mpqat_section(folder, mods);
  check_float_tensors(folder, mods);
  return mods;
}

namespace {

torch::Tensor read_raw(const io::SafetensorsCheckpoint& ckpt, const std::string& name, torch::ScalarType st) {
  const auto& info = ckpt.info(name);
  auto t = torch::empty(info.shape, torch::TensorOptions().dtype(st));
  std::memcpy(t.data_ptr(), ckpt.data(name), info.nbytes());
  ckpt.release(name);
  return t;
}

}  // namespace

QuantLinearPtr read_packed_linear(const model::ModelFolder& folder, const QuantConfig& qc, const DetectedModule& d,
                                  bool with_bias) {
  const auto& ckpt = folder.checkpoint();
  const std::string& name = d.name;
  if (!d.quantized) return nullptr;
  auto q = std::make_shared<QuantLinearImpl>(d.in, d.out, with_bias, d.spec);
  q->qweight.copy_(read_raw(ckpt, name + ".qweight", torch::kInt));
  auto qz = read_raw(ckpt, name + ".qzeros", torch::kInt);
  if (qc.checkpoint_format == "gptq") {
    // v1 stores zero - 1 (wrapping in b bits): restore the true zero.
    const int64_t ngr = qz.size(0);
    auto z = unpack_qzeros(qz.data_ptr<int32_t>(), ngr, d.out, d.spec.bits);
    for (auto& v : z) v = (v + 1) & d.spec.qmax();
    auto packed = pack_qzeros(z.data(), ngr, d.out, d.spec.bits);
    std::memcpy(qz.data_ptr<int32_t>(), packed.data(), packed.size() * sizeof(int32_t));
  }
  q->qzeros.copy_(qz);
  const auto& is = ckpt.info(name + ".scales");
  q->scales.copy_(read_raw(ckpt, name + ".scales", model::scalar_type(is.dtype, "'" + name + ".scales'")).to(torch::kHalf));
  if (!torch::isfinite(q->scales).all().item<bool>())
    throw InputError("'" + ckpt.file_of(name + ".scales") + "': tensor '" + name +
                     ".scales' holds NaN or Inf values (a corrupt checkpoint)");
  if (d.has_g_idx) {
    q->g_idx.copy_(read_raw(ckpt, name + ".g_idx", torch::kInt));  // range checked by detect_module
  }
  return q;
}

namespace {

void finish_loaded(torch::nn::Module& m, const model::LoadOptions& opts) {
  for (auto& p : m.parameters()) p.set_requires_grad(false);
  m.eval();
  if (opts.device != torch::Device(torch::kCPU)) m.to(opts.device);
}

}  // namespace

model::ModelPtr load_quantized_model(const model::ModelFolder& folder, const model::LoadOptions& opts) {
  torch::NoGradGuard ng;
  const QuantConfig qc = load_quant_config(folder.dir());
  std::map<std::string, DetectedModule> detected;  // every block linear, validated once
  for (auto& d : validate_quantized_folder(folder, qc)) detected.emplace(d.name, std::move(d));
  auto m = model::create_model(folder.config());
  for (const auto& [name, lin] : m->named_linears()) {
    auto it = detected.find(name);
    const auto d = it != detected.end()
                       ? it->second
                       : detect_module(folder.checkpoint(), qc, name, lin->out_features(), lin->in_features(),
                                       folder.dir());
    if (auto q = read_packed_linear(folder, qc, d, lin->has_bias())) m->set_linear(name, q);
  }
  model::load_parameters(*m, folder, "");
  finish_loaded(*m, opts);
  return m;
}

model::BlockPtr load_quantized_block(const model::ModelFolder& folder, int64_t i, const model::LoadOptions& opts) {
  torch::NoGradGuard ng;
  const auto& cfg = folder.config();
  if (i < 0 || i >= cfg.num_hidden_layers)
    throw InputError("block index " + std::to_string(i) + " out of range for '" + folder.dir() + "' (" +
                     std::to_string(cfg.num_hidden_layers) + " layers)");
  const QuantConfig qc = load_quant_config(folder.dir());
  model::BlockPtr b;
  switch (cfg.family) {
    case model::Family::Llama: b = std::make_shared<model::LlamaBlock>(cfg); break;
    case model::Family::OPT: b = std::make_shared<model::OPTBlock>(cfg); break;
    case model::Family::BERT: b = std::make_shared<model::BertBlock>(cfg); break;
  }
  const std::string prefix = model::family_block_prefix(cfg, i);
  for (const auto& [rel, lin] : b->linears()) {
    const auto d = detect_module(folder.checkpoint(), qc, prefix + rel, lin->out_features(), lin->in_features(),
                                 folder.dir());
    if (auto q = read_packed_linear(folder, qc, d, lin->has_bias())) b->set_linear(rel, q);
  }
  model::load_parameters(*b, folder, prefix);
  finish_loaded(*b, opts);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Inspect

InspectReport inspect_checkpoint(const std::string& dir) {
  InspectReport r;
  r.dir = dir;
  const model::ModelFolder folder(dir);  // config.json, safetensors headers, layer count
  const auto& cfg = folder.config();
  const auto& ckpt = folder.checkpoint();
  r.quantized = is_quantized_folder(dir);
  QuantConfig qc;
  if (r.quantized) {
    qc = load_quant_config(dir);
    r.checkpoint_format = qc.checkpoint_format;
  } else {
    // An unquantized folder: every module must be float.
    DynamicRule all;
    all.key = "-:.*";
    all.exclude = true;
    all.re = std::regex(".*");
    qc.dynamic.push_back(all);
  }
  // The loader's checks, all of them: inspect refuses what eval would refuse.
  const auto detected = validate_quantized_folder(folder, qc);
  uint64_t code_bits = 0, linear_bytes_no_bias = 0;
  for (const auto& d : detected) {
    const std::string& name = d.name;
    const int64_t out = d.out, in = d.in;
    InspectModule im;
    im.name = name;
    im.out = out;
    im.in = in;
    if (d.quantized) {
      im.bits = d.spec.bits;
      im.group_size = d.spec.group_size;
      im.sym = d.spec.sym;
      for (const char* leaf : {".qweight", ".qzeros", ".scales", ".g_idx"})
        if (ckpt.contains(name + leaf)) im.bytes += ckpt.info(name + leaf).nbytes();
      im.overhead_bytes = im.bytes - ckpt.info(name + ".qweight").nbytes();
      linear_bytes_no_bias += im.bytes;
      code_bits += static_cast<uint64_t>(im.bits) * out * in;
    } else {
      const auto& wi = ckpt.info(name + ".weight");
      im.bits = static_cast<int>(io::dtype_size(wi.dtype) * 8);
      im.bytes = wi.nbytes();
      linear_bytes_no_bias += im.bytes;
      code_bits += static_cast<uint64_t>(im.bits) * out * in;
    }
    if (ckpt.contains(name + ".bias")) im.bytes += ckpt.info(name + ".bias").nbytes();
    r.linear_weights += out * in;
    r.bits_histogram[im.bits]++;
    r.modules.push_back(im);
  }
  r.total_bytes = ckpt.total_tensor_bytes();
  r.fp16_bytes = 2ull * static_cast<uint64_t>(cfg.num_parameters());
  if (r.linear_weights > 0) {
    r.avg_bits = static_cast<double>(code_bits) / static_cast<double>(r.linear_weights);
    r.avg_bits_with_overhead = 8.0 * static_cast<double>(linear_bytes_no_bias) / static_cast<double>(r.linear_weights);
  }
  r.compression_ratio = r.total_bytes ? static_cast<double>(r.fp16_bytes) / static_cast<double>(r.total_bytes) : 0.0;
  if (r.quantized) {
    std::vector<ModuleView> views;
    for (const auto& d : detected) views.push_back({d.name, d.quantized, d.spec, d.in});
    for (const auto& e : engine_table()) {
      const auto sup = engine_support(e, views);
      r.engines.push_back({sup.engine, sup.loads, sup.why_not});
    }
  }
  return r;
}

nlohmann::json inspect_to_json(const InspectReport& r) {
  nlohmann::ordered_json mods = nlohmann::ordered_json::array();
  for (const auto& m : r.modules)
    mods.push_back({{"name", m.name},
                    {"bits", m.bits},
                    {"group_size", m.group_size},
                    {"sym", m.sym},
                    {"shape", {m.out, m.in}},
                    {"bytes", m.bytes},
                    {"overhead_bytes", m.overhead_bytes}});
  nlohmann::ordered_json hist = nlohmann::ordered_json::object();
  for (const auto& [b, n] : r.bits_histogram) hist[std::to_string(b)] = n;
  nlohmann::ordered_json j{{"checkpoint", r.dir},
                           {"quantized", r.quantized},
                           {"checkpoint_format", r.checkpoint_format},
                           {"modules", mods},
                           {"bits_histogram", hist},
                           {"total_bytes", r.total_bytes},
                           {"fp16_bytes", r.fp16_bytes},
                           {"avg_bits", r.avg_bits},
                           {"avg_bits_with_overhead", r.avg_bits_with_overhead},
                           {"compression_ratio", r.compression_ratio}};
  nlohmann::ordered_json engines = nlohmann::ordered_json::array();
  for (const auto& e : r.engines) {
    nlohmann::ordered_json ej{{"engine", e.name}, {"loads", e.loads}};
    if (!e.loads) ej["why_not"] = e.why_not;
    engines.push_back(ej);
  }
  j["engines"] = engines;
  return nlohmann::json::parse(j.dump());
}

std::string inspect_to_text(const InspectReport& r) {
  size_t w = 6;
  for (const auto& m : r.modules) w = std::max(w, m.name.size());
  std::string s = fmt::format("checkpoint: {}{}\n", r.dir,
                              r.quantized ? " (" + r.checkpoint_format + ")" : std::string(" (not quantized)"));
  s += fmt::format("{:<{}}  {:>4}  {:>5}  {:>13}  {:>12}\n", "module", w, "bits", "group", "shape", "bytes");
  for (const auto& m : r.modules)
    s += fmt::format("{:<{}}  {:>4}  {:>5}  {:>13}  {:>12}\n", m.name, w, m.bits,
                     m.group_size == 0 ? std::string("-") : std::to_string(m.group_size),
                     std::to_string(m.out) + "x" + std::to_string(m.in), m.bytes);
  s += "bits histogram:";
  for (const auto& [b, n] : r.bits_histogram) s += fmt::format(" {}b x{}", b, n);
  s += "\n";
  s += fmt::format("avg bits per linear weight: {:.3f} (codes only), {:.3f} (with scales, zeros, g_idx)\n", r.avg_bits,
                   r.avg_bits_with_overhead);
  s += fmt::format("total size: {} ({} bytes) vs fp16 {} ({} bytes): compression {:.2f}x\n",
                   util::format_bytes(r.total_bytes), r.total_bytes, util::format_bytes(r.fp16_bytes), r.fp16_bytes,
                   r.compression_ratio);
  for (const auto& e : r.engines)
    s += fmt::format("engine {:<10} {}\n", e.name, e.loads ? "loads it" : "cannot load it: " + e.why_not);
  return s;
}

void install_packed_loader() {
  model::PackedCheckpointLoader l;
  l.is_packed = &is_quantized_folder;
  l.load_model = [](const model::ModelFolder& f, const model::LoadOptions& o) { return load_quantized_model(f, o); };
  l.load_block = [](const model::ModelFolder& f, int64_t i, const model::LoadOptions& o) {
    return load_quantized_block(f, i, o);
  };
  model::install_packed_loader(l);
}

namespace {
// Linked in with the rest of this file, so every program that can save a packed checkpoint can
// also load one through the model layer.
const bool kPackedLoaderInstalled = (install_packed_loader(), true);
}  // namespace

}  // namespace mpqat::quant
