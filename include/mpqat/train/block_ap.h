// Block-wise quantization-aware training (EfficientQAT's Block-AP, BRIEF §4) with SGRA's
// per-block epochs / learning-rate multipliers / patience, and E2E-QP (step sizes only, end to
// end on next-token loss). docs/training.md describes the algorithm, the state folder and the
// log format.
//
// Per block i, in order:
//   target = block_i_fp(Y)            Y = the full-precision chain's input (cached, fp16)
//   input  = Xq                        Xq = the already-quantized chain's output (cached, fp16)
//   train FakeQuantLinear weights + scales + zeros (norms optionally) on MSE(block_i_q(Xq), target)
//   with AdamW (no weight decay, separate lr for weights and quantizer parameters, cosine per
//   iteration to lr * min_lr_ratio), validation MSE on held-out calibration sequences after each
//   epoch, early stopping after `patience` epochs without improvement, best state restored;
//   then scales are rounded to fp16, the block is packed (QuantLinear), Y <- target and
//   Xq <- block_i_packed(Xq).
// Only one float block is in memory at a time (read from the mapped safetensors file); finished
// blocks are kept packed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/model/activation_cache.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/gptq.h"
#include "mpqat/quant/quantizer.h"

namespace mpqat::dist {
class Communicator;
}

namespace mpqat::train {

// Token sequences for Block-AP / E2E-QP: ids (N, L) int64 and an optional attention mask (N, L)
// (1 = token, 0 = padding; undefined = every position is a token).
struct TokenBatch {
  torch::Tensor ids;
  torch::Tensor mask;
  int64_t size() const { return ids.defined() ? ids.size(0) : 0; }
};
// Stacks equal-length sequences (calibration windows) into a TokenBatch. Throws InputError when
// empty or ragged.
TokenBatch stack_sequences(const std::vector<std::vector<int32_t>>& seqs);

struct BlockApOptions {
  int epochs = 2;          // per block when the plan has no SGRA entry for its modules
  int patience = 0;        // without SGRA: early-stopping patience in epochs (0 = off)
  bool use_sgra = true;    // read epochs / lr_scale / patience from the plan's "sgra" entries
  // With SGRA: the blocks' SGRA epochs rescaled to sum to `epochs` x (blocks with SGRA entries),
  // the uniform schedule's steps (alloc::equalize_epochs).
  bool sgra_equal_steps = false;
  int64_t batch_size = 2;  // global sequences per optimisation step (over all ranks)
  double lr_weights = 1e-5;
  double lr_quant = 1e-4;
  double min_lr_ratio = 0.05;  // cosine floor: lr * ratio
  bool train_norm = false;
  quant::InitOptions init;
  // Start from GPTQ's codes, scales and zeros (training.init: gptq) instead of min-max rounding:
  // the block's Hessians come from the quantized chain's inputs Xq (train/gptq.h). act_order
  // uses static groups here (the fake-quant modules need contiguous groups).
  bool gptq_init = false;
  quant::GptqOptions gptq;
  // From GPTQ's start, also train the scales and zeros (training.gptq.train_scales). Off by
  // default: GPTQ chose its codes for its own scales, and the straight-through scale gradient
  // there is driven by where the weights sit in their cells, not by the loss; training it undoes
  // GPTQ's error compensation within the first steps (docs/quantization.md, "Block-AP from GPTQ").
  bool gptq_train_scales = false;
  double val_fraction = 0.1;  // held-out share of the sequences (at least 1 when N >= 2)
  // Xq / Y caches (fp16, 8 GiB per rank by default; past the limit they are files in cache.dir;
  // cache.dir "" = state_dir, else the system temp folder).
  model::CacheOptions cache = default_cache();
  static model::CacheOptions default_cache() {
    model::CacheOptions c;
    c.dtype = torch::kHalf;
    c.memory_limit = 8ull << 30;
    c.dir_key = "training.cache_dir";
    c.limit_key = "training.cache_memory_limit";
    return c;
  }
  double nan_lr_backoff = 0.5;
  std::string state_dir;  // progress after each block ("" = no resume support)
  bool resume = true;     // continue from state_dir when it holds a matching run
  uint64_t seed = 0;
  torch::Device device = torch::kCPU;
  dist::Communicator* comm = nullptr;  // null = single process
  // (Tests inject faults through train/fault_injection.h, not through these options.)
};

struct BlockLog {
  int64_t block = 0;
  std::vector<std::pair<std::string, int>> bits;  // relative module name -> bits
  double avg_bits = 0;                            // over the block's parameters (16 = float)
  int epochs_planned = 0, epochs_run = 0, patience = 0;
  double lr_weights = 0, lr_quant = 0, lr_scale = 1;
  double start_train_mse = 0, start_val_mse = 0;  // the init (RTN, or GPTQ with gptq_init)
  double end_train_mse = 0, end_val_mse = 0;      // the packed block that was kept
  double best_val_mse = 0;                        // best fake-quant epoch (0 = RTN start)
  int best_epoch = 0;
  bool kept_rtn = false;  // training did not beat the init: the init (RTN or GPTQ) was kept
  int nan_steps = 0;      // discarded NaN/Inf steps
  int64_t steps = 0;
  double seconds = 0, tokens_per_second = 0;
  std::vector<double> train_curve, val_curve;  // per epoch
  bool resumed = false;                         // restored from the state folder
};

struct E2eLog {
  int64_t steps = 0;
  double start_loss = 0, end_loss = 0;  // mean next-token loss over the data, before / after
  int nan_steps = 0;
  double seconds = 0;
};

struct QatResult {
  std::shared_ptr<model::TransformerModel> shell;  // embeddings, final norm, head
  model::ModelConfig config;                        // the full model's config
  std::vector<model::BlockPtr> blocks;              // packed blocks (QuantLinear)
  std::vector<BlockLog> logs;
  std::optional<E2eLog> e2e;
  double seconds = 0;
  uint64_t cache_disk_bytes = 0;  // activation caches held in files (past the memory limit)
};

// Runs Block-AP over every block of `folder` (float model) with `plan`. `data` is the global
// calibration set (the same on every rank; each rank keeps the sequences g with
// g % world_size == rank). Throws InputError for a quantized folder, a plan naming unknown
// modules, or too few sequences.
QatResult block_ap(const model::ModelFolder& folder, const quant::BitPlan& plan, const TokenBatch& data,
                   const BlockApOptions& opts);

nlohmann::json block_log_to_json(const BlockLog& log);
BlockLog block_log_from_json(const nlohmann::json& j);
// train_log.jsonl (docs/training.md): one block_log_to_json line per block, then with E2E-QP
// {"e2e": {"steps", "start_loss", "end_loss", "nan_steps", "seconds"}}.
std::string train_log_jsonl(const QatResult& r);
// Fixed-width table: block, bits, epochs, lr, start / best / end val MSE, kept, seconds.
std::string summary_table(const QatResult& r);

}  // namespace mpqat::train
