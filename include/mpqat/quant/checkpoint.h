// Mixed-precision GPTQ checkpoints (docs/checkpoint-format.md): RTN over a whole model from a
// bit plan, the writer, and the loader that detects every module's bits and group size from
// its tensors and cross-checks them against config.json's quantization_config (default
// bits / group_size + GPTQModel `dynamic` rules).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/io/safetensors.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/quant/quantizer.h"
#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

// Validates the plan against the model's linears, then swaps each quantized module for a
// QuantLinear holding its round-to-nearest codes (FakeQuantLinear -> to_quant_linear, so the
// result is bitwise what the fake-quant model computes). Returns the modules quantized.
int64_t rtn_quantize(model::TransformerModel& m, const BitPlan& plan, const InitOptions& init = {});
// Same plan, FakeQuantLinear modules (QAT start point; the reference for RTN).
int64_t apply_fake_quant(model::TransformerModel& m, const BitPlan& plan, const InitOptions& init = {});

// A model kept as its block-free shell (embeddings, norms, head) and its blocks: what the
// block-at-a-time passes (RTN below, Block-AP) produce and the shell + blocks writer saves.
struct BlockModel {
  std::shared_ptr<model::TransformerModel> shell;
  model::ModelConfig config;  // the full model's
  std::vector<model::BlockPtr> blocks;
};
// rtn_quantize block by block from the mapped checkpoint: one float block in memory at a time,
// the finished blocks packed. Saved, it is the same bytes as rtn_quantize on the whole model.
BlockModel rtn_quantize_blocks(const model::ModelFolder& folder, const BitPlan& plan, const InitOptions& init = {});

struct SaveOptions {
  std::string source_dir;          // config.json base and tokenizer files ("" = none)
  io::DType float_dtype = io::DType::F16;  // unquantized tensors: F16, BF16 or F32
  uint64_t max_shard_bytes = 4ull << 30;   // 0 = one file
  std::string method = "rtn";      // provenance
  const BitPlan* plan = nullptr;   // recorded under "mpqat" when given
  bool force = false;              // replace an existing non-empty out_dir
};

// Writes `out_dir` atomically (built in a sibling temp folder, then renamed). Quantized
// modules are the QuantLinear / FakeQuantLinear linears of `m` (fake ones are packed on the
// fly). Throws InputError when no linear is quantized or out_dir exists without force.
void save_quantized_checkpoint(const model::TransformerModel& m, const std::string& out_dir,
                               const SaveOptions& opts = {});

// The same from a model shell (embeddings, norms, head: load_any_model_shell) and its blocks held
// separately (a block-at-a-time pass such as Block-AP): blocks[i] is written under
// family_block_prefix(cfg, i); cfg is the full model's config.
void save_quantized_checkpoint(const model::TransformerModel& shell, const model::ModelConfig& cfg,
                               const std::vector<model::BlockPtr>& blocks, const std::string& out_dir,
                               const SaveOptions& opts = {});
// One `dynamic` entry: "-:re" excludes, "+:re" / "re" overrides (fields left unset inherit).
struct DynamicRule {
  std::string key;  // as written
  bool exclude = false;
  std::regex re;
  std::optional<int> bits;
  std::optional<int64_t> group_size;
  std::optional<bool> sym;
};

struct QuantConfig {
  int bits = 4;
  int64_t group_size = 128;
  bool sym = false;
  bool desc_act = false;
  std::string checkpoint_format = "gptq";  // "gptq" (v1: zero - 1 stored) or "gptq_v2"
  std::vector<DynamicRule> dynamic;        // in file order; first match wins
  std::string source = "config.json";
};

// True when `dir`/config.json (or quantize_config.json) has a GPTQ quantization config.
bool is_quantized_folder(const std::string& dir);
// Parses quantization_config (config.json) or quantize_config.json's object. Throws
// InputError naming `source` and the key.
QuantConfig parse_quant_config(const nlohmann::json& j, const std::string& source);
// The folder's quantization config (config.json "quantization_config", else quantize_config.json).
QuantConfig load_quant_config(const std::string& dir);
// The spec config.json assigns to `module` (nullopt = left unquantized by a "-:" rule);
// `rule` receives the matching dynamic key ("" = default).
std::optional<QuantSpec> resolve_module(const QuantConfig& qc, const std::string& module,
                                        std::string* rule = nullptr);

// config.json's mpqat.format_version that this build writes (and the newest it reads).
constexpr int kCheckpointFormatVersion = 1;

// A module's storage as found in the checkpoint, validated against the config.
struct DetectedModule {
  std::string name;
  bool quantized = false;
  QuantSpec spec;           // quantized only
  int64_t out = 0, in = 0;
  bool has_g_idx = false;
};
// Detects and validates one linear of shape (out, in). Throws InputError on a missing tensor,
// an impossible shape or a disagreement with the config.
DetectedModule detect_module(const io::SafetensorsCheckpoint& ckpt, const QuantConfig& qc,
                             const std::string& name, int64_t out, int64_t in, const std::string& dir);

// The whole folder as every reader checks it (load_quantized_model and `mpqat inspect` run it):
// every block linear detected as above (with its g_idx in range and no `.weight` beside a
// `.qweight`), the config's layer count against the file (ModelFolder), config.json's "mpqat"
// section (format_version this build reads; a recorded bit plan that agrees with the tensors),
// and for Llama-family models every float tensor present with the shape config.json implies and
// a float dtype. Returns the detected block linears in model order. Throws InputError naming the
// file, the tensor or key and what would be accepted.
std::vector<DetectedModule> validate_quantized_folder(const model::ModelFolder& folder, const QuantConfig& qc);

// The packed tensors of one module detect_module validated (true zeros also for a v1
// "gptq" file, scales as fp16, g_idx when stored), without its bias (left empty when with_bias);
// nullptr when the checkpoint keeps the module float.
QuantLinearPtr read_packed_linear(const model::ModelFolder& folder, const QuantConfig& qc, const DetectedModule& d,
                                  bool with_bias = false);

// Builds the model with QuantLinear modules where the checkpoint has packed tensors (fp32
// math, eval mode, no grad). Works for any family create_model builds. model::load_any_model /
// load_any_block reach these two through install_packed_loader().

model::ModelPtr load_quantized_model(const model::ModelFolder& folder, const model::LoadOptions& opts = {});
// Block i alone (same type and linear names as in the full model), for block-at-a-time passes.
model::BlockPtr load_quantized_block(const model::ModelFolder& folder, int64_t i, const model::LoadOptions& opts = {});
// Makes model::load_any_model / load_any_block / load_model / load_block build packed folders with
// the two functions above (idempotent; also done when this file's object is linked in).
void install_packed_loader();

}  // namespace mpqat::quant
