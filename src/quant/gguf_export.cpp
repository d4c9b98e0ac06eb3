#include "mpqat/quant/gguf_export.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "mpqat/model/hf_names.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/gguf_blocks.h"
#include "mpqat/quant/gguf_kquants.h"
#include "mpqat/quant/gguf_layout.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/util/strings.h"

namespace mpqat::quant {

using io::GgmlType;
namespace fs = std::filesystem;

namespace {

UnpackedModule unpack(const QuantLinearImpl& q, const DetectedModule& d) {
  UnpackedModule m;
  m.name = d.name;
  m.out = d.out;
  m.in = d.in;
  m.spec = d.spec;
  auto qw = q.qweight.contiguous();
  m.codes = unpack_qweight(qw.data_ptr<int32_t>(), d.out, d.in, d.spec.bits);
  auto qz = q.qzeros.contiguous();
  const int64_t groups = qz.size(0);
  m.zeros = unpack_qzeros(qz.data_ptr<int32_t>(), groups, d.out, d.spec.bits);
  auto sc = q.scales.contiguous().to(torch::kHalf);
  m.scales.resize(static_cast<size_t>(sc.numel()));
  std::memcpy(m.scales.data(), sc.data_ptr<at::Half>(), m.scales.size() * 2);
  auto gi = q.g_idx.contiguous().to(torch::kInt);
  m.g_idx.assign(gi.data_ptr<int32_t>(), gi.data_ptr<int32_t>() + gi.numel());
  return m;
}

struct Item {
  model::HfTensor hf;
  std::string gguf;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> rows;  // row order (q/k), empty = identity
  const DetectedModule* det = nullptr;  // packed block linear
  GgufChoice choice;
  std::string spec;
  std::vector<float> values;  // a tensor computed here, not read (rope_freqs)
};

// llama3 RoPE's per-frequency divisors: the unscaled inverse frequencies over the scaled ones,
// both from the model's own RoPE (model::rope_inv_freq), so llama.cpp rotates as mpqat does.
std::vector<float> rope_freq_factors(const model::ModelConfig& cfg) {
  model::ModelConfig plain = cfg;
  plain.rope_scaling = model::RopeScaling{};
  const auto f = (model::rope_inv_freq(plain) / model::rope_inv_freq(cfg)).contiguous();
  return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

// config.json's mpqat.provenance.source_model ("" when absent): the base model a packed
// checkpoint was made from.
std::string provenance_source(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "config.json");
  const auto j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("mpqat") || !j["mpqat"].is_object()) return "";
  const auto& m = j["mpqat"];
  if (!m.contains("provenance") || !m["provenance"].is_object()) return "";
  const auto& p = m["provenance"];
  return p.contains("source_model") && p["source_model"].is_string() ? p["source_model"].get<std::string>() : "";
}

double max_abs_diff(const std::vector<float>& a, const float* b) {
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

}  // namespace

io::GgmlType parse_gguf_float_type(const std::string& s, const std::string& what) {
  const std::string l = util::to_lower(s);
  if (l == "f32") return GgmlType::F32;
  if (l == "f16") return GgmlType::F16;
  if (l == "q8_0") return GgmlType::Q8_0;
  if (l == "q2_k") return GgmlType::Q2_K;
  if (l == "q3_k") return GgmlType::Q3_K;
  if (l == "q4_k") return GgmlType::Q4_K;
  if (l == "q5_k") return GgmlType::Q5_K;
  if (l == "q6_k") return GgmlType::Q6_K;
  throw InputError(what + " '" + s + "' (accepted: f32, f16, q8_0, q2_k, q3_k, q4_k, q5_k, q6_k)");
}

GgufExportReport export_gguf(const std::string& dir, const std::vector<io::GgufKV>& vocab, const std::string& out,
                             const GgufExportOptions& opts) {
  torch::NoGradGuard ng;
  check_gguf_types(opts);
  if (!opts.force && fs::exists(out))
    throw InputError("export gguf: '" + out + "' exists (give --force to replace it)");
  const model::ModelFolder folder(dir);
  const auto& cfg = folder.config();
  check_gguf_supported(cfg, dir);
  const bool quantized = is_quantized_folder(dir);
  std::vector<DetectedModule> detected;
  QuantConfig qc;
  if (quantized) {
    qc = load_quant_config(dir);
    detected = validate_quantized_folder(folder, qc);
  }
  std::map<std::string, const DetectedModule*> by_name;
  for (const auto& d : detected) by_name[d.name] = &d;

  // Pass 1: every tensor's GGUF type (packed modules are unpacked to check their codes).
  std::vector<Item> items;
  if (const auto rf = gguf_rope_freqs_spec(cfg)) {
    Item it;
    it.hf.name = "rope_freqs";
    it.hf.shape = {rf->ne[0]};
    it.type = rf->type;
    it.choice = {it.type, "float", ""};
    it.spec = "llama3 RoPE";
    it.values = rope_freq_factors(cfg);
    items.push_back(std::move(it));
  }
  const auto specs = gguf_tensor_specs(cfg, [&](const model::HfTensor& hf) {
    Item it;
    it.hf = hf;
    auto f = by_name.find(hf.linear);
    if (!hf.linear.empty() && f != by_name.end() && f->second->quantized) {
      it.det = f->second;
      auto q = read_packed_linear(folder, qc, *it.det);
      it.choice = choose_gguf_type(unpack(*q, *it.det), opts);
      it.type = it.choice.type;
      it.spec = spec_str(it.det->spec);
    } else {
      it.type = gguf_float_tensor_type(hf, opts);
      const bool rounded = it.type == GgmlType::Q8_0 || is_k_quant(it.type);
      it.choice = {it.type, rounded ? "quantized" : "float", ""};
      it.spec = hf.shape.size() == 1 ? "f32" : "float";
    }
    it.rows = gguf_row_order(cfg, hf);
    items.push_back(std::move(it));
    return items.back().type;
  });
  for (std::size_t i = 0; i < items.size(); ++i) items[i].gguf = specs[i].name;
  const std::string name = opts.name.empty() ? gguf_default_name(dir, quantized ? provenance_source(dir) : "") : opts.name;
  const std::vector<io::GgufKV> kvs = gguf_metadata(cfg, name, quantized, vocab, dir);

  GgufExportReport rep;
  rep.path = out;
  rep.predicted_bytes = io::gguf_file_size(kvs, specs);
  rep.tensors.resize(items.size());

  // The importance matrix: one weight per input column of the linears it names.
  for (const auto& [name, v] : opts.importance)
    for (const auto& it : items)
      if (it.hf.linear == name && it.hf.shape.size() == 2 && static_cast<int64_t>(v.size()) != it.hf.shape[1])
        throw InputError(fmt::format("export gguf: the importance matrix gives {} columns for '{}', which reads {} "
                                     "(an importance matrix of another model?)",
                                     v.size(), name, it.hf.shape[1]));

  // Pass 2: encode each tensor, read it back through ggml's dequantization, measure the error.
  io::write_gguf(out, kvs, specs, [&](std::size_t i, uint8_t* dst) {
    const Item& it = items[i];
    const auto& sp = specs[i];
    const int64_t rows = sp.ne.size() > 1 ? sp.ne[1] : 1, n = sp.ne[0];
    const auto imp_it = it.hf.linear.empty() ? opts.importance.end() : opts.importance.find(it.hf.linear);
    const float* imp = imp_it == opts.importance.end() ? nullptr : imp_it->second.data();
    std::vector<float> ref;  // the checkpoint's weights, rows in source order
    if (!it.values.empty()) {
      ref = it.values;
      encode_float(ref.data(), rows, n, it.type, it.rows, dst);
    } else if (it.det) {
      const auto um = unpack(*read_packed_linear(folder, qc, *it.det), *it.det);
      encode_unpacked(um, it.choice, it.rows, dst, imp);
      ref = dequantize_unpacked(um);
    } else {
      auto t = folder.tensor(it.hf.name, it.hf.shape).contiguous();
      ref.assign(t.data_ptr<float>(), t.data_ptr<float>() + t.numel());
      encode_float(ref.data(), rows, n, it.type, it.rows, dst, imp);
    }
    const uint64_t rb = io::ggml_row_bytes(it.type, n, it.gguf);
    std::vector<float> back(static_cast<size_t>(n));
    double err = 0.0, sq = 0.0, wsq = 0.0, wsum = 0.0;
    for (int64_t k = 0; k < rows; ++k) {
      const int64_t src = it.rows.empty() ? k : it.rows[static_cast<size_t>(k)];
      dequantize_gguf_row(it.type, dst + static_cast<uint64_t>(k) * rb, n, back.data());
      err = std::max(err, max_abs_diff(back, ref.data() + src * n));
      for (int64_t j = 0; j < n; ++j) {
        const double e = double(back[j]) - ref[src * n + j];
        sq += e * e;
        if (imp) wsq += double(imp[j]) * e * e, wsum += imp[j];
      }
    }
    auto& r = rep.tensors[i];
    r.gguf_name = it.gguf;
    r.source = it.hf.linear.empty() ? it.hf.name : it.hf.linear;
    r.source_spec = it.spec;
    r.type = io::ggml_type_traits(it.type).name;
    r.how = it.choice.how;
    r.why = it.choice.why;
    r.weights = rows * n;
    r.bytes = sp.nbytes();
    r.max_abs_error = err;
    r.rms_error = std::sqrt(sq / static_cast<double>(std::max<int64_t>(1, rows * n)));
    r.weighted_rms_error = imp && wsum > 0 ? std::sqrt(wsq / wsum) : 0.0;  // column weights normalised to mean 1
    r.imatrix = imp != nullptr && is_k_quant(it.type);
    r.block_linear = !it.hf.linear.empty();
  });
  rep.file_bytes = fs::file_size(out);
  for (const auto& t : rep.tensors) {
    rep.total_weights += t.weights;
    if (t.block_linear) {
      rep.linear_weights += t.weights;
      rep.linear_bytes += t.bytes;
    }
  }
  return rep;
}

void decode_gguf_to_folder(const std::string& gguf, const std::string& source_dir, const std::string& out) {
  const model::ModelFolder folder(source_dir);
  const auto& cfg = folder.config();
  const auto h = io::read_gguf_header(gguf);
  std::map<std::string, std::size_t> index;
  for (std::size_t i = 0; i < h.tensors.size(); ++i) index[h.tensors[i].name] = i;
  std::vector<std::vector<float>> values;
  std::vector<io::TensorToWrite> tensors;
  for (const auto& t : model::llama_tensors(cfg)) {
    const std::string g = gguf_tensor_name(t.name);
    const auto it = index.find(g);
    if (it == index.end()) throw InputError("decode '" + gguf + "': no tensor " + g + " (for " + t.name + ")");
    const auto& spec = h.tensors[it->second];
    const int64_t n = spec.ne[0], rows = spec.ne.size() > 1 ? spec.ne[1] : 1;
    int64_t numel = 1;
    for (int64_t d : t.shape) numel *= d;
    if (rows * n != numel)
      throw InputError(fmt::format("decode '{}': {} holds {} values, {} needs {}", gguf, g, rows * n, t.name, numel));
    const auto order = gguf_row_order(cfg, t);  // GGUF row k holds Hugging Face row order[k]
    const auto bytes = io::read_gguf_tensor(gguf, h, it->second);
    const uint64_t rb = io::ggml_row_bytes(spec.type, n, g);
    std::vector<float> w(static_cast<size_t>(rows * n));
    for (int64_t k = 0; k < rows; ++k) {
      const int64_t r = order.empty() ? k : order[static_cast<size_t>(k)];
      dequantize_gguf_row(spec.type, bytes.data() + k * rb, n, w.data() + r * n);
    }
    values.push_back(std::move(w));
    tensors.push_back({t.name, io::DType::F32, t.shape, values.back().data(), values.back().size() * sizeof(float)});
  }
  nlohmann::json config = nlohmann::json::parse(util::read_file((fs::path(source_dir) / "config.json").string()));
  config.erase("quantization_config");
  config["torch_dtype"] = "float32";
  util::write_folder_atomic(
      out,
      [&](const std::string& tmp) {
        io::write_safetensors((fs::path(tmp) / "model.safetensors").string(), tensors);
        util::write_file_atomic((fs::path(tmp) / "config.json").string(), config.dump(2) + "\n");
        model::copy_model_side_files(source_dir, tmp);
      },
      "decoded model folder");
}

std::string format_gguf_report(const GgufExportReport& r) {
  std::string s = fmt::format("{:<28} {:<12} {:<6} {:<24} {:>10} {:>12} {:>12}\n", "tensor", "checkpoint", "type",
                              "conversion", "bytes", "max |err|", "rms err");
  for (const auto& t : r.tensors) {
    s += fmt::format("{:<28} {:<12} {:<6} {:<24} {:>10} {:>12.3e} {:>12.3e}{}\n", t.gguf_name, t.source_spec, t.type,
                     t.how + (t.imatrix ? " (imatrix)" : ""), t.bytes, t.max_abs_error, t.rms_error,
                     t.why.empty() ? "" : "  (" + t.why + ")");
  }
  s += fmt::format("{}: {} bytes ({} predicted), {:.3f} bpw over all weights; block linears {:.3f} bpw "
                   "(all bytes of their GGUF blocks / their weights)\n",
                   r.path, r.file_bytes, r.predicted_bytes, r.file_bpw(), r.linear_bpw());
  return s;
}

}  // namespace mpqat::quant
