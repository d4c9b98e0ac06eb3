// GPTQ over a whole model, block by block (docs/quantization.md): the post-training path for any
// mixed plan and Block-AP's `training.init: gptq` start.
//
// Per block i, one float block in memory (read from the mapped safetensors files):
//   X = the quantized chain's input (blocks < i already GPTQ-quantized; cached per rank)
//   the block's planned linears in true-sequential order: groups of linears that read the same
//   tensor (q/k/v; o; gate/up; down for Llama; the same found by a probe forward for OPT, BERT
//   and any family), in the order the forward calls them. Per group: H = 2/N sum X^T X of the
//   group's input over every valid token of every rank (fp64, all-reduced), the forward stopping
//   at that input; then quant::gptq_quantize for each linear of the group, swapped in as a
//   QuantLinear, so the next group sees the quantized outputs;
//   X <- block_i_quantized(X).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/model/activation_cache.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/gptq.h"
#include "mpqat/train/block_ap.h"

namespace mpqat::dist {
class Communicator;
}

namespace mpqat::train {

struct BlockRunner;

struct GptqRunOptions {
  quant::GptqOptions gptq;
  quant::InitOptions init;            // group parameters: min-max, or the clipping search
  model::CacheOptions cache = BlockApOptions::default_cache();
  int64_t chunk = 2;                  // sequences per forward
  torch::Device device = torch::kCPU;
  dist::Communicator* comm = nullptr;  // null = single process; ranks split the sequences
};

struct GptqModuleLog {
  std::string name;  // relative to the block
  quant::QuantSpec spec;
  int64_t group = 0;  // true-sequential group (0 = first)
  double proxy_loss = 0, rtn_proxy_loss = 0;  // tr((W - W^) H (W - W^)^T)
  double damp = 0;
  int retries = 0;
  int64_t dead_columns = 0;
  bool permuted_groups = false;  // act-order g_idx (not i / group_size)
  double seconds = 0;
};
struct GptqBlockLog {
  int64_t block = 0;
  double tokens = 0;  // valid tokens of the Hessians (all ranks)
  std::vector<GptqModuleLog> modules;
  double seconds = 0;
};

// The true-sequential groups of `block`: its linears grouped by the tensor they read, in call
// order, found by one forward of a 2-token dummy input. Every linear appears once.
std::vector<std::vector<std::string>> sequential_groups(model::Block& block, model::TransformerModel& shell,
                                                        torch::Device device);

// One float block in place: its planned linears become QuantLinear modules with GPTQ codes
// (`prefix` + relative name finds a module's plan entry). `x` holds this rank's block inputs.
GptqBlockLog gptq_block(model::Block& block, int64_t index, const std::string& prefix, const quant::BitPlan& plan,
                        const BlockRunner& run, const model::ActivationCache& x, const GptqRunOptions& o);

struct GptqModelResult {
  QatResult model;  // shell, config, packed blocks (logs empty): what the writer and E2E-QP take
  std::vector<GptqBlockLog> logs;
};
// Every block of `folder` (float model) under `plan`. `data` is the global calibration set (the
// same on every rank; rank r keeps the sequences g with g % world == r). Throws InputError for
// a quantized folder or a plan naming unknown modules.
GptqModelResult gptq_model(const model::ModelFolder& folder, const quant::BitPlan& plan, const TokenBatch& data,
                           const GptqRunOptions& o);

nlohmann::json gptq_log_to_json(const GptqBlockLog& log);
// One gptq_log_to_json line per block.
std::string gptq_log_jsonl(const std::vector<GptqBlockLog>& logs);
// Fixed-width table: block, module, scheme, proxy loss GPTQ vs RTN, damp, seconds.
std::string gptq_summary_table(const std::vector<GptqBlockLog>& logs);

}  // namespace mpqat::train
