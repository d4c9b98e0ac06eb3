// Bit allocation under a size budget ([M5]): the exact size model of the checkpoint that
// quant::save_quantized_checkpoint writes, budgets, the candidate menu (units, pins, ties,
// min/max bits), QBO / MPQ through the exact MCKP solver, the seeds' clustering presets,
// SGRA, and bitplan.json. No torch here. docs/allocation.md, docs/formats.md.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/alloc/cluster.h"
#include "mpqat/io/gguf.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/config.h"
#include "mpqat/quant/gguf_layout.h"

namespace mpqat::io {
class Recipe;
}

namespace mpqat::alloc {

// ---------------------------------------------------------------------------------------------
// Model layout (torch-free mirror of the model's parameters)

struct LinearInfo {
  std::string name;  // "model.layers.3.self_attn.q_proj"
  int64_t block = 0;
  std::string rel;   // "self_attn.q_proj"
  int64_t out = 0, in = 0;
  bool bias = false;
  int64_t numel() const { return out * in; }
};

// One parameter as the writer visits it (model.named_parameters order).
struct ParamEntry {
  std::string name;
  std::vector<int64_t> shape;
  int linear = -1;       // index into linears when this is a quantizable linear's weight / bias
  bool is_bias = false;
};

struct ModelLayout {
  model::ModelConfig cfg;
  std::vector<LinearInfo> linears;  // quantizable block linears, model order
  std::vector<ParamEntry> params;   // every parameter, writer order
  bool order_exact = true;          // false: order taken from the folder (OPT/BERT): header
                                    // bytes may differ by a few offset digits (bounded)
  int64_t linear_weights() const;
};

// Llama-family configs (exact parameter order); throws InputError for OPT/BERT.
ModelLayout layout_from_config(const model::ModelConfig& cfg);
// Reads DIR/config.json; Llama from the config, OPT/BERT from the safetensors header.
ModelLayout layout_from_folder(const std::string& dir);

// ---------------------------------------------------------------------------------------------
// Size model

struct Choice {
  int bits = 16;            // 2..8 quantized; 16 / 32 = kept in the output float dtype
  int64_t group_size = 0;   // quantized only
  bool quantized() const { return bits < 16; }
  bool operator==(const Choice& o) const {
    return bits == o.bits && (bits >= 16 || group_size == o.group_size);
  }
};
// "4:128", "3:-1", "16" (the omega keys of sensitivity.json)
std::string choice_key(const Choice& c);

// allocation.target llama.cpp: the plan is priced as the GGUF file `mpqat export gguf` writes
// from its checkpoint (quant/gguf_layout.h): header with metadata and vocabulary, every tensor
// padded to 32 bytes, each packed module in the ggml type its bits / group / symmetry map to.
struct GgufSizing {
  std::vector<io::GgufKV> vocab;  // data::gguf_vocab_metadata of the model's tokenizer
  quant::GgufTypes types;         // embeddings, float linears and the fallback, as export's options
  std::string name;               // general.name the export writes (quant::gguf_default_name)
  std::string source;             // the model folder, for messages
  bool sym = false;               // the plan's symmetry (AllocOptions::sym): Q4_0/Q5_0 vs Q4_1/Q5_1
};

struct SizeOptions {
  io::DType float_dtype = io::DType::F16;  // dtype of every unquantized tensor
  uint64_t max_shard_bytes = 4ull << 30;   // the writer's default (SaveOptions)
  std::optional<GgufSizing> gguf;          // set: sizes are those of the GGUF export
};

// What a budget counts (docs/allocation.md):
//   FileBytes   - bytes of the .safetensors file(s): tensors + 8-byte length + JSON header
//   TensorBytes - tensor bytes only (`mpqat inspect` total_bytes; compression's base)
//   LinearBytes - block-linear bytes without bias (qweight+qzeros+scales+g_idx, or float
//                 weight): 8 * this / linear weights = inspect's avg_bits_with_overhead
// What a budget limits: file bytes, tensor bytes, bytes of the block linears, or the code bits
// of the block linears (in bits: sum of bits x weights, a float module at its dtype's width).
enum class SizeMetric { FileBytes, TensorBytes, LinearBytes, CodeBits };
const char* metric_name(SizeMetric m);

struct PlanSize {
  uint64_t tensor_bytes = 0;
  uint64_t header_bytes = 0;  // every shard's 8-byte length + padded JSON header
  uint64_t file_bytes = 0;    // tensor_bytes + header_bytes
  uint64_t linear_bytes = 0;
  int shards = 1;
  double avg_bits = 0;        // bpw: 8 * linear_bytes / linear weights (codes, scales, zeros, g_idx)
  double code_bits = 0;       // code bits per linear weight (a float module counts its dtype's bits)
  uint64_t code_bit_total = 0;  // code_bits x linear weights (SizeMetric::CodeBits)
  double compression = 0;     // fp16 bytes / tensor_bytes (as inspect reports it)
  uint64_t of(SizeMetric m) const;
};

class SizeModel {
 public:
  explicit SizeModel(ModelLayout layout, SizeOptions opts = {});
  const ModelLayout& layout() const { return layout_; }
  const SizeOptions& options() const { return opts_; }
  std::size_t float_size() const { return io::dtype_size(opts_.float_dtype); }

  uint64_t module_linear_bytes(std::size_t i, const Choice& c) const;  // without bias
  uint64_t module_tensor_bytes(std::size_t i, const Choice& c) const;  // with bias
  uint64_t fixed_tensor_bytes() const;  // every parameter that is not a block linear
  uint64_t fp16_bytes() const;          // 2 * parameters (inspect's fp16_bytes)

  // Additive upper bound: fixed_cost(m) + sum_i option_cost(m, i, c_i) >= exact(c).of(m),
  // with equality for TensorBytes and LinearBytes; FileBytes over-counts only offset digits,
  // header padding (< 8) and the possible extra shards' headers.
  uint64_t option_cost(SizeMetric m, std::size_t i, const Choice& c) const;
  uint64_t fixed_cost(SizeMetric m) const;

  // Exact sizes of a plan (one choice per linear): the headers are built as the writer builds
  // them (same tensor order, same JSON, same sharding).
  PlanSize exact(const std::vector<Choice>& choices) const;

 private:
  uint64_t entry_len(const std::string& name, io::DType dt, const std::vector<int64_t>& shape) const;
  io::GgmlType gguf_module_type(std::size_t i, const Choice& c) const;
  uint64_t gguf_module_bytes(std::size_t i, const Choice& c) const;
  std::vector<io::GgufTensorSpec> gguf_specs(const std::vector<Choice>& choices) const;
  PlanSize gguf_exact(const std::vector<Choice>& choices) const;
  // Code bits per weight of module i (a float module counts its stored type's bits).
  double module_code_bits(std::size_t i, const Choice& c) const;
  // linear_bytes, avg_bits, code_bits and compression of `r` from its choices and tensor_bytes.
  void fill_plan_stats(PlanSize& r, const std::vector<Choice>& choices) const;
  ModelLayout layout_;
  SizeOptions opts_;
  uint64_t gguf_header_ = 0, gguf_fixed_data_ = 0;  // GGUF mode: header; non-linear tensors' data
  int offset_digits_ = 1;  // digits of the largest possible data offset
};

// ---------------------------------------------------------------------------------------------
// Budget

enum class BudgetKind { Bytes, AvgBits, Compression, CodeBits };
struct Budget {
  BudgetKind kind = BudgetKind::AvgBits;
  double value = 0;  // bytes, bits or ratio
  std::string text;  // as given
};
// "bytes=700KiB" | "avg_bits=3.0" (bpw) | "code_bits=3.0" | "compression=4"; throws InputError
// naming the text.
Budget parse_budget(const std::string& text);
SizeMetric budget_metric(BudgetKind k);
const char* budget_kind_name(BudgetKind k);  // "bytes", "avg_bits", "code_bits", "compression"
// The budget in its metric's bytes (all of the model, fixed part included).
uint64_t budget_total(const Budget& b, const SizeModel& sm);

// ---------------------------------------------------------------------------------------------
// Sensitivity (the part allocation consumes; docs/formats.md "sensitivity.json")

struct UnitSensitivity {
  std::optional<double> score;
  std::map<std::string, double> omega;  // choice_key -> expected loss increase
};
struct Sensitivity {
  int version = 1;
  std::map<std::string, UnitSensitivity> modules;
  std::map<int64_t, UnitSensitivity> blocks;
  std::string source = "sensitivity";
};
constexpr int kSensitivityVersion = 1;
Sensitivity parse_sensitivity(const nlohmann::json& j, const std::string& source = "sensitivity");
Sensitivity load_sensitivity(const std::string& path);
// Equal scores for every module and block of `layout`: the input of methods that read no
// sensitivities (uniform) and of size-only checks (budget feasibility).
Sensitivity equal_sensitivity(const ModelLayout& layout);
// Throws InputError naming the first module of the model missing from the file, or the first
// module of the file that the model does not have (with the closest real name).
void check_sensitivity(const Sensitivity& s, const ModelLayout& layout);
// Omega of one module: the file's value for the choice, else the noise model
// score * numel * 4^-bits * ln(group width) / ln(128) (0 for float); throws InputError when
// neither exists.
double module_omega(const Sensitivity& s, const LinearInfo& lin, const Choice& c);
// The scalar score (clustering, SGRA): "score", else omega at 2:128 / numel... (see docs).
double module_score(const Sensitivity& s, const LinearInfo& lin);

// ---------------------------------------------------------------------------------------------
// Allocation

enum class Method { QBO, MPQ, KMeans, Percentile, Hierarchical, Uniform };
Method parse_method(const std::string& s);
const char* method_name(Method m);

struct AllocOptions {
  Method method = Method::QBO;
  std::optional<Budget> budget;
  std::vector<int> bits = {2, 3, 4, 5, 6, 8};  // 16 = may keep float
  std::vector<int64_t> group_sizes = {128};
  bool unit_block = false;
  int min_bits = 2, max_bits = 16;
  std::vector<std::pair<std::string, int>> pins;  // regex (matched from the name's start) -> bits
  bool tie_qkv = false, tie_gate_up = false;
  bool lagrangian = false;       // solver; with dp the Lagrangian also runs and its gap is reported
  int groups = 3;
  std::vector<int> preset = {16, 8, 4};
  int uniform_bits = 4;
  bool sym = false;
  bool sgra = true;
  SgraRanges sgra_ranges;
  // QBO / MPQ: a sensitivity file with omega tables that lack a candidate of the menu ("3:32"
  // when it was computed for g128) is refused unless this is set; then those omegas are modelled
  // from the module's score (module_omega) and AllocResult::modelled_omegas counts them. Files
  // without omega tables at all (score-only metrics such as CKA) are always modelled, and counted.
  bool allow_modelled_omega = false;
  // The engine the checkpoint is for (quant/engines.h): mpqat, gptqmodel, vllm, llama.cpp (then
  // the SizeModel must carry GgufSizing). for_target() turns it into the menu; allocate() applies it too.
  std::string target = "mpqat";
};
// The options restricted to what `o.target` runs: bits and group sizes intersected with the
// engine's, symmetric and q/k/v + gate/up tied where it needs them. Throws InputError when no
// option of the menu remains or a pin / preset / uniform_bits asks for bits the engine does not
// run. Idempotent.
AllocOptions for_target(AllocOptions o);
// allocation.* keys of a validated recipe.
AllocOptions alloc_options_from_recipe(const io::Recipe& r);
// The writer settings a recipe gives the checkpoint (output.float_dtype, output.shard_size), which
// the size model must price as the writer will write them.
SizeOptions size_options_from_recipe(const io::Recipe& r);

struct ModuleAlloc {
  std::string name;
  Choice choice;
  uint64_t bytes = 0;   // module_tensor_bytes
  double omega = 0;
  double score = 0;
  int unit = 0;
  bool pinned = false;
  std::optional<SgraSettings> sgra;  // of its unit
};

struct AllocResult {
  Method method = Method::QBO;
  std::string solver;  // "dp", "lagrangian", "" (clustering / uniform)
  std::vector<ModuleAlloc> modules;
  PlanSize size;
  std::optional<Budget> budget;
  SizeMetric metric = SizeMetric::FileBytes;
  uint64_t budget_total = 0;      // in metric bytes (0 without budget)
  uint64_t min_total = 0, max_total = 0;  // achievable range of the menu in metric bytes
  bool fits = true;
  double objective = 0;           // sum of module omegas
  double lower_bound = 0;         // Lagrangian dual bound (solver methods)
  std::optional<double> lagrangian_objective, lagrangian_gap;
  double solve_seconds = 0;
  std::size_t units = 0, max_front = 0;
  std::size_t modelled_omegas = 0;  // (module, candidate) omegas taken from the noise model
  std::string target = "mpqat";
};

// Throws InputError for an infeasible budget (naming the achievable limits), infeasible pins,
// a preset whose length is not `groups`, a sensitivity file that does not match.
AllocResult allocate(const SizeModel& sm, const Sensitivity& sens, const AllocOptions& opts);

// bitplan.json (docs/formats.md); accepted by quant::parse_bit_plan.
nlohmann::json plan_to_json(const AllocResult& r, const SizeModel& sm, const AllocOptions& opts);
void write_plan(const std::string& path, const AllocResult& r, const SizeModel& sm, const AllocOptions& opts);
// {"predicted_bytes", "budget_bytes", "objective", "method", ...}
nlohmann::json summary_json(const AllocResult& r);
// Per-module table + predicted size vs budget.
std::string result_text(const AllocResult& r);

}  // namespace mpqat::alloc
