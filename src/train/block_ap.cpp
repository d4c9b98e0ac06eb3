// Block-AP (see include/mpqat/train/block_ap.h and docs/training.md).
#include "mpqat/train/block_ap.h"

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mpqat/dist/communicator.h"
#include "mpqat/model/activation_cache.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/train/block_runner.h"
#include "mpqat/train/fault_injection.h"
#include "mpqat/train/gptq.h"
#include "mpqat/train/steps.h"
#include "mpqat/util/error.h"
#include "mpqat/util/fingerprint.h"
#include "mpqat/util/memory.h"
#include <spdlog/spdlog.h>
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mpqat::train {

TokenBatch stack_sequences(const std::vector<std::vector<int32_t>>& seqs) {
  if (seqs.empty()) throw InputError("no calibration sequences to train on");
  const size_t L = seqs.front().size();
  if (L < 2) throw InputError("calibration sequences need at least 2 tokens");
  auto ids = torch::empty({static_cast<int64_t>(seqs.size()), static_cast<int64_t>(L)}, torch::kLong);
  auto* p = ids.data_ptr<int64_t>();
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (seqs[i].size() != L)
      throw InputError("calibration sequences differ in length (" + std::to_string(seqs[i].size()) + " vs " +
                       std::to_string(L) + " tokens)");
    for (size_t t = 0; t < L; ++t) p[i * L + t] = seqs[i][t];
  }
  return {ids, torch::Tensor()};
}

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Parameters trained on a block: per module (with its SGRA lr multiplier) plus norms.
struct Trainable {
  struct Module {
    std::string name;
    quant::FakeQuantLinearPtr fq;
    double lr_scale = 1;
    bool train_quantizer = true;  // scale and zero trained (false: GPTQ's stay)
  };
  std::vector<Module> modules;
  std::vector<torch::Tensor> norms;
  // Every tensor trained, in a fixed order (weights, scale, zero per module; then norms).
  std::vector<torch::Tensor> all() const {
    std::vector<torch::Tensor> v;
    for (const auto& m : modules) {
      v.push_back(m.fq->weight);
      if (!m.train_quantizer) continue;
      v.push_back(m.fq->scale);
      if (m.fq->zero.requires_grad()) v.push_back(m.fq->zero);
    }
    for (const auto& n : norms) v.push_back(n);
    return v;
  }
};

std::vector<torch::Tensor> snapshot(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> out;
  for (const auto& t : ts) out.push_back(t.detach().clone());
  return out;
}
void restore(const std::vector<torch::Tensor>& ts, const std::vector<torch::Tensor>& snap) {
  torch::NoGradGuard ng;
  for (size_t i = 0; i < ts.size(); ++i) ts[i].copy_(snap[i]);
}

// Tokens (positions) of the global sequences `gs` (mask-aware).
double token_count(const TokenBatch& data, const std::vector<int64_t>& gs) {
  if (!data.mask.defined()) return static_cast<double>(gs.size()) * static_cast<double>(data.ids.size(1));
  double n = 0;
  for (auto g : gs) n += data.mask[g].ne(0).sum().item<double>();
  return n;
}

// Global MSE over the global sequences `gs` (each rank sums its own).
double eval_mse(const BlockRunner& run, model::Block& block, const model::ActivationCache& xc,
                const model::ActivationCache& tc, const TokenBatch& data, const std::vector<int64_t>& gs, int64_t chunk,
                dist::Communicator* comm) {
  torch::NoGradGuard ng;
  std::vector<int64_t> mine;
  for (auto g : gs)
    if (run.shard.local_of[g] >= 0) mine.push_back(run.shard.local_of[g]);
  double sse = 0;
  for (size_t s = 0; s < mine.size(); s += chunk) {
    std::vector<int64_t> part(mine.begin() + s, mine.begin() + std::min(mine.size(), s + chunk));
    sse += run.sse(block, xc, tc, part).item<double>();
  }
  sse = reduce_sum(comm, sse);
  const double denom = token_count(data, gs) * static_cast<double>(xc.width());
  return denom > 0 ? sse / denom : 0.0;
}

// Swaps every planned linear of `block` for a FakeQuantLinear (RTN init).
std::vector<Trainable::Module> fake_quantize_block(model::Block& block, const std::string& prefix,
                                                   const quant::BitPlan& plan, const BlockApOptions& o) {
  std::vector<Trainable::Module> mods;
  for (const auto& [rel, lin] : block.linears()) {
    auto it = plan.modules.find(prefix + rel);
    if (it == plan.modules.end() || !it->second.quantized()) continue;
    auto fq = std::make_shared<quant::FakeQuantLinearImpl>(*lin, it->second.spec(), o.init);
    fq->to(o.device);
    block.set_linear(rel, fq);
    Trainable::Module m;
    m.name = rel;
    m.fq = fq;
    m.lr_scale = o.use_sgra && it->second.sgra ? it->second.sgra->lr_scale : 1.0;
    mods.push_back(m);
  }
  return mods;
}

void pack_block(model::Block& block, const std::vector<Trainable::Module>& mods, torch::Device device) {
  for (const auto& m : mods) {
    m.fq->round_scales_to_fp16();
    auto q = m.fq->to_quant_linear();
    q->to(device);
    block.set_linear(m.name, q);
  }
  for (auto& p : block.parameters()) p.set_requires_grad(false);
}

// A block of `folder` with QuantLinear placeholders where the plan quantizes (to load a saved
// packed block into).
model::BlockPtr packed_block_shape(const model::ModelFolder& folder, int64_t i, const quant::BitPlan& plan) {
  auto b = model::load_any_block(folder, i);
  const auto prefix = model::family_block_prefix(folder.config(), i);
  for (const auto& [rel, lin] : b->linears()) {
    auto it = plan.modules.find(prefix + rel);
    if (it == plan.modules.end() || !it->second.quantized()) continue;
    b->set_linear(rel, std::make_shared<quant::QuantLinearImpl>(lin->in_features(), lin->out_features(),
                                                                lin->has_bias(), it->second.spec()));
  }
  return b;
}

void save_module_atomic(torch::nn::Module& m, const fs::path& path) {
  torch::serialize::OutputArchive ar;
  m.save(ar);
  const auto tmp = path.string() + ".tmp";
  ar.save_to(tmp);
  fs::rename(tmp, path);
}

json fingerprint(const model::ModelFolder& folder, const quant::BitPlan& plan, const TokenBatch& data,
                 const BlockApOptions& o, int world) {
  auto ids = data.ids.contiguous();
  std::string bytes(reinterpret_cast<const char*>(ids.data_ptr()), static_cast<size_t>(ids.nbytes()));
  if (data.mask.defined()) {
    auto m = data.mask.to(torch::kLong).contiguous();
    bytes.append(reinterpret_cast<const char*>(m.data_ptr()), static_cast<size_t>(m.nbytes()));
  }
  return {{"model", fs::absolute(folder.dir()).lexically_normal().string()},
          {"model_files", util::model_folder_fingerprint(folder.dir())},
          {"plan", util::fnv1a64_hex(quant::bit_plan_to_json(plan).dump())},
          {"data", util::fnv1a64_hex(bytes)},
          {"world_size", world},
          {"options", fmt::format("e{} p{} sgra{} b{} lw{} lq{} r{} norm{} clip{} val{} seed{} dt{}{}{}", o.epochs, o.patience,
                                  o.use_sgra, o.batch_size, o.lr_weights, o.lr_quant, o.min_lr_ratio, o.train_norm,
                                  o.init.clip_search, o.val_fraction, o.seed, static_cast<int>(o.cache.dtype),
                                  o.gptq_init ? fmt::format(" gptq{}/{}/{}/{}/{}", o.gptq.damp, o.gptq.act_order,
                                                            o.gptq.static_groups, o.gptq.block_columns,
                                                            o.gptq_train_scales)
                                              : "",
                                  o.use_sgra && o.sgra_equal_steps ? " sgra-equal" : "")}};
}

}  // namespace

// ---------------------------------------------------------------------------------------------

json block_log_to_json(const BlockLog& l) {
  json bits = json::object();
  for (const auto& [n, b] : l.bits) bits[n] = b;
  return {{"block", l.block},
          {"bits", bits},
          {"avg_bits", l.avg_bits},
          {"epochs_planned", l.epochs_planned},
          {"epochs_run", l.epochs_run},
          {"patience", l.patience},
          {"lr_weights", l.lr_weights},
          {"lr_quant", l.lr_quant},
          {"lr_scale", l.lr_scale},
          {"start_train_mse", l.start_train_mse},
          {"start_val_mse", l.start_val_mse},
          {"end_train_mse", l.end_train_mse},
          {"end_val_mse", l.end_val_mse},
          {"best_val_mse", l.best_val_mse},
          {"best_epoch", l.best_epoch},
          {"kept_rtn", l.kept_rtn},
          {"nan_steps", l.nan_steps},
          {"steps", l.steps},
          {"seconds", l.seconds},
          {"tokens_per_second", l.tokens_per_second},
          {"train_curve", l.train_curve},
          {"val_curve", l.val_curve},
          {"resumed", l.resumed}};
}

BlockLog block_log_from_json(const json& j) {
  // A NaN is written as null: it reads back as NaN.
  auto real = [&](const char* k) {
    const json& v = j.at(k);
    return v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>();
  };
  auto curve = [&](const char* k) {
    std::vector<double> out;
    for (const auto& v : j.at(k)) out.push_back(v.is_null() ? std::numeric_limits<double>::quiet_NaN() : v.get<double>());
    return out;
  };
  BlockLog l;
  l.block = j.at("block").get<int64_t>();
  for (const auto& [n, b] : j.at("bits").items()) l.bits.emplace_back(n, b.get<int>());
  l.avg_bits = real("avg_bits");
  l.epochs_planned = j.at("epochs_planned").get<int>();
  l.epochs_run = j.at("epochs_run").get<int>();
  l.patience = j.at("patience").get<int>();
  l.lr_weights = real("lr_weights");
  l.lr_quant = real("lr_quant");
  l.lr_scale = real("lr_scale");
  l.start_train_mse = real("start_train_mse");
  l.start_val_mse = real("start_val_mse");
  l.end_train_mse = real("end_train_mse");
  l.end_val_mse = real("end_val_mse");
  l.best_val_mse = real("best_val_mse");
  l.best_epoch = j.at("best_epoch").get<int>();
  l.kept_rtn = j.at("kept_rtn").get<bool>();
  l.nan_steps = j.at("nan_steps").get<int>();
  l.steps = j.at("steps").get<int64_t>();
  l.seconds = real("seconds");
  l.tokens_per_second = real("tokens_per_second");
  l.train_curve = curve("train_curve");
  l.val_curve = curve("val_curve");
  return l;
}

namespace {

// What the blocks of one Block-AP run share.
struct BlockApRun {
  const model::ModelFolder& folder;
  const quant::BitPlan& plan;
  const TokenBatch& data;
  const BlockApOptions& o;
  const FaultInjection& faults;
  const Shard& shard;
  const BlockRunner& run;
  model::ActivationCache& Xq;  // quantized chain input
  model::ActivationCache& Y;   // float chain input, then target
  std::vector<int64_t> train_g, val_g;
  int64_t chunk, C;
  std::vector<int> equal_epochs = {};  // allocation.sgra.equal_steps: each block's epochs (0 = no SGRA entry)
  // Global MSE of `block` on the sequences gs.
  double mse(model::Block& block, const std::vector<int64_t>& gs) const {
    return eval_mse(run, block, Xq, Y, data, gs, chunk, o.comm);
  }
  double val_mse(model::Block& block, double train) const { return val_g.empty() ? train : mse(block, val_g); }
};

// Resume: the block to start at (0 = from scratch) and the finished blocks' logs. Throws
// InputError for a state folder of another run or another state format.
int64_t resume_point(const BlockApOptions& o, const json& fp, int64_t nb, std::vector<BlockLog>& logs) {
  if (o.state_dir.empty()) return 0;
  const fs::path state = o.state_dir;
  fs::create_directories(state);
  const auto prog = state / "progress.json";
  if (!fs::exists(prog) || !o.resume) return 0;
  json p;
  try {
    p = json::parse(util::read_file(prog.string()));
  } catch (const json::exception& e) {
    throw InputError("state file '" + prog.string() + "' is not valid JSON (" + e.what() +
                     "); remove the folder or run without resume");
  }
  if (p.value("version", 0) != 2)
    throw InputError("state folder '" + o.state_dir + "' was written by another mpqat version (state format " +
                     p.value("version", json(0)).dump() + ", this one writes 2); remove it or run without resume");
  // Changed inputs (the model's files, the calibration data): the saved blocks were trained on
  // something else; start over. Other differences (plan, options, ranks) are refused: the user
  // pointed a run at another run's state.
  for (const char* k : {"model_files", "data"})
    if (!p.contains("fingerprint") || p["fingerprint"].value(k, json()) != fp.at(k)) {
      spdlog::warn("state folder '{}': the {} changed since its progress was saved ({} -> {}); starting Block-AP over",
                   o.state_dir, std::string(k) == "data" ? "calibration data" : "model's files",
                   p.contains("fingerprint") ? p["fingerprint"].value(k, json("none")).dump() : "none", fp.at(k).dump());
      return 0;
    }
  for (const auto& [k, v] : fp.items())
    if (!p.contains("fingerprint") || p["fingerprint"].value(k, json()) != v)
      throw InputError("state folder '" + o.state_dir + "' belongs to another run (" + k + " differs: " +
                       (p.contains("fingerprint") ? p["fingerprint"].value(k, json()).dump() : "none") + " vs " +
                       v.dump() + "); remove it or run without resume");
  const int64_t start = p.at("next_block").get<int64_t>();
  for (const auto& lj : p.at("logs")) {
    auto l = block_log_from_json(lj);
    l.resumed = true;
    logs.push_back(l);
  }
  if (start > 0) spdlog::info("resuming Block-AP at block {} of {} from '{}'", start, nb, o.state_dir);
  return start;
}

fs::path cache_file(const BlockApOptions& o, int rank, const char* which, int64_t after) {
  return fs::path(o.state_dir) / fmt::format("rank{}_{}_after_{}.bin", rank, which, after);
}

// After block bi: every rank's caches, then rank 0's packed block and progress.json (atomic).
void save_progress(const BlockApRun& b, const json& fp, int64_t bi, int64_t nb, model::Block& block,
                   const std::vector<BlockLog>& logs) {
  const auto& o = b.o;
  const int rank = rank_of(o.comm);
  b.Xq.save(cache_file(o, rank, "xq", bi).string());
  b.Y.save(cache_file(o, rank, "y", bi).string());
  barrier(o.comm);
  if (rank == 0) {
    save_module_atomic(block, fs::path(o.state_dir) / fmt::format("block_{}.pt", bi));
    json lj = json::array();
    for (const auto& l : logs) lj.push_back(block_log_to_json(l));
    json p{{"format", "mpqat-block-ap-state"},
           {"version", 2},
           {"fingerprint", fp},
           {"next_block", bi + 1},
           {"num_blocks", nb},
           {"rng", "per (seed, block, epoch) permutation; no global RNG state"},
           {"logs", lj}};
    util::write_file_atomic((fs::path(o.state_dir) / "progress.json").string(), p.dump(1) + "\n");
  }
  barrier(o.comm);
  if (bi > 0) {
    fs::remove(cache_file(o, rank, "xq", bi - 1));
    fs::remove(cache_file(o, rank, "y", bi - 1));
  }
}

// allocation.sgra.equal_steps: every block's SGRA epochs (the most of its quantized modules', as
// plan_block reads them) rescaled to sum to o.epochs x the blocks with SGRA entries. Empty when
// not asked; 0 for a block without SGRA entries.
std::vector<int> equal_step_epochs(const model::ModelConfig& cfg, const quant::BitPlan& plan, const BlockApOptions& o) {
  if (!o.use_sgra || !o.sgra_equal_steps) return {};
  std::vector<int> per_block(static_cast<size_t>(cfg.num_hidden_layers), 0), sgra;
  for (int64_t bi = 0; bi < cfg.num_hidden_layers; ++bi) {
    for (const auto& rel : model::family_block_linear_names(cfg)) {
      auto it = plan.modules.find(model::family_block_prefix(cfg, bi) + rel);
      if (it != plan.modules.end() && it->second.sgra && it->second.quantized())
        per_block[static_cast<size_t>(bi)] = std::max(per_block[static_cast<size_t>(bi)], it->second.sgra->epochs);
    }
    if (per_block[static_cast<size_t>(bi)] > 0) sgra.push_back(per_block[static_cast<size_t>(bi)]);
  }
  const auto equal = equalize_epochs(sgra, static_cast<int64_t>(sgra.size()) * o.epochs);
  for (std::size_t bi = 0, k = 0; bi < per_block.size(); ++bi)
    if (per_block[bi] > 0) per_block[bi] = equal[k++];
  return per_block;
}

// The block's bits, average bits, learning-rate multiplier and (with SGRA) epochs and patience.
void plan_block(const BlockApRun& b, model::Block& block, const std::string& prefix, const Trainable& tr,
                BlockLog& log) {
  const auto& o = b.o;
  int epochs = o.epochs, patience = o.patience;
  bool any_sgra = false;
  int64_t qparams = 0;
  double bit_params = 0, lr_scale_sum = 0;
  for (const auto& [rel, lin] : block.linears()) {
    auto it = b.plan.modules.find(prefix + rel);
    const int bits = it != b.plan.modules.end() ? it->second.bits : 16;
    log.bits.emplace_back(rel, bits);
    const int64_t n = lin->in_features() * lin->out_features();
    qparams += n;
    bit_params += static_cast<double>(n) * std::min(bits, 16);
    if (o.use_sgra && it != b.plan.modules.end() && it->second.sgra && it->second.quantized()) {
      if (!any_sgra) epochs = 0, patience = 0;
      any_sgra = true;
      epochs = std::max(epochs, it->second.sgra->epochs);
      patience = std::max(patience, it->second.sgra->patience);
    }
  }
  if (any_sgra && !b.equal_epochs.empty()) epochs = b.equal_epochs[static_cast<size_t>(log.block)];
  for (const auto& m : tr.modules) lr_scale_sum += m.lr_scale;
  log.avg_bits = qparams ? bit_params / static_cast<double>(qparams) : 16;
  log.lr_scale = tr.modules.empty() ? 1.0 : lr_scale_sum / static_cast<double>(tr.modules.size());
  log.lr_weights = o.lr_weights * log.lr_scale;
  log.lr_quant = o.gptq_init && !o.gptq_train_scales ? 0.0 : o.lr_quant * log.lr_scale;  // 0: GPTQ's stay
  log.epochs_planned = tr.modules.empty() ? 0 : epochs;
  log.patience = patience;
}

// AdamW with one group per module kind: weights and quantizer parameters at their own lr.
std::pair<std::unique_ptr<torch::optim::AdamW>, std::vector<double>> make_optimizer(const Trainable& tr,
                                                                                   const BlockApOptions& o) {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> base_lr;
  for (const auto& m : tr.modules) {
    groups.emplace_back(std::vector<torch::Tensor>{m.fq->weight},
                        std::make_unique<torch::optim::AdamWOptions>(
                            torch::optim::AdamWOptions(o.lr_weights * m.lr_scale).weight_decay(0)));
    base_lr.push_back(o.lr_weights * m.lr_scale);
    if (!m.train_quantizer) continue;
    std::vector<torch::Tensor> q{m.fq->scale};
    if (m.fq->zero.requires_grad()) q.push_back(m.fq->zero);
    groups.emplace_back(q, std::make_unique<torch::optim::AdamWOptions>(
                               torch::optim::AdamWOptions(o.lr_quant * m.lr_scale).weight_decay(0)));
    base_lr.push_back(o.lr_quant * m.lr_scale);
  }
  if (!tr.norms.empty()) {
    groups.emplace_back(tr.norms, std::make_unique<torch::optim::AdamWOptions>(
                                      torch::optim::AdamWOptions(o.lr_weights).weight_decay(0)));
    base_lr.push_back(o.lr_weights);
  }
  return {std::make_unique<torch::optim::AdamW>(groups, torch::optim::AdamWOptions(o.lr_quant).weight_decay(0)),
          base_lr};
}

// The epochs of block bi: steps over the shuffled training sequences, validation after each
// epoch, early stopping, the best epoch's parameters restored (the RTN start stays in `params`
// when no epoch beat it; log.best_epoch is then 0).
void train_epochs(const BlockApRun& b, model::Block& block, const Trainable& tr, const std::vector<torch::Tensor>& params,
                  int64_t bi, BlockLog& log) {
  const auto& o = b.o;
  const int epochs = log.epochs_planned, patience = log.patience;
  auto [opt, base_lr] = make_optimizer(tr, o);
  std::vector<torch::Tensor> best_state;  // the best epoch's parameters (one copy, updated in place)
  double best = log.start_val_mse;
  const int64_t B = o.batch_size;
  const int64_t steps_per_epoch = (static_cast<int64_t>(b.train_g.size()) + B - 1) / B;
  const int64_t total = std::max<int64_t>(1, steps_per_epoch * epochs);
  double lr_factor = 1.0;
  int64_t step = 0;
  int bad_epochs = 0;
  for (int ep = 0; ep < epochs; ++ep) {
    const auto perm = permutation(static_cast<int64_t>(b.train_g.size()), mix(mix(o.seed, bi + 1), ep + 1));
    double ep_loss = 0;
    int64_t ep_steps = 0;
    for (int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
      std::vector<int64_t> batch_g, mine;
      for (int64_t k = s * B; k < std::min<int64_t>((s + 1) * B, static_cast<int64_t>(perm.size())); ++k) {
        const int64_t g = b.train_g[perm[k]];
        batch_g.push_back(g);
        if (b.shard.local_of[g] >= 0) mine.push_back(b.shard.local_of[g]);
      }
      const double denom = token_count(b.data, batch_g) * static_cast<double>(b.C);
      const double f = cosine_factor(step, total, 0, o.min_lr_ratio);
      for (size_t gi = 0; gi < base_lr.size(); ++gi) set_lr(*opt, gi, base_lr[gi] * lr_factor * f);
      opt->zero_grad();
      double local_loss = 0;
      if (!mine.empty()) {
        auto loss = b.run.sse(block, b.Xq, b.Y, mine) / denom;
        if (bi == b.faults.nan_block && step == b.faults.nan_step) loss = loss * std::numeric_limits<float>::quiet_NaN();
        loss.backward();
        local_loss = loss.item<double>();
      }
      const double step_loss = reduce_sum(o.comm, local_loss);
      if (!(reduce_grads(params, o.comm) && std::isfinite(step_loss))) {
        ++log.nan_steps;
        lr_factor *= o.nan_lr_backoff;
        spdlog::warn("block {} step {}: non-finite loss or gradient; step discarded, learning rate x{} (now x{:.3g})",
                     bi, step, o.nan_lr_backoff, lr_factor);
        opt->zero_grad();
        continue;
      }
      opt->step();
      ep_loss += step_loss;
      ++ep_steps;
    }
    log.steps += ep_steps;
    const double train_mse = ep_steps ? ep_loss / static_cast<double>(ep_steps) : std::nan("");
    const double val = b.mse(block, b.val_g.empty() ? b.train_g : b.val_g);
    log.train_curve.push_back(train_mse);
    log.val_curve.push_back(val);
    log.epochs_run = ep + 1;
    spdlog::debug("block {} epoch {}: train mse {:.4g}, val mse {:.4g}", bi, ep + 1, train_mse, val);
    if (std::isfinite(val) && val < best) {
      best = val;
      if (best_state.empty()) best_state = snapshot(params);
      else restore(best_state, params);  // in place: never two snapshots at once
      log.best_epoch = ep + 1;
      bad_epochs = 0;
    } else if (patience > 0 && ++bad_epochs >= patience) {
      spdlog::debug("block {}: early stop after epoch {} ({} epochs without improvement)", bi, ep + 1, bad_epochs);
      break;
    }
  }
  if (!best_state.empty()) restore(params, best_state);
  log.best_val_mse = best;
}

// Block bi at RTN: the original weights from the file, fresh quantizer init.
std::pair<model::BlockPtr, std::vector<Trainable::Module>> rtn_block(const BlockApRun& b, int64_t bi,
                                                                    const std::string& prefix) {
  auto fresh = model::load_any_block(b.folder, bi, {b.o.device});
  fresh->eval();
  for (auto& p : fresh->parameters()) p.set_requires_grad(false);
  auto mods = fake_quantize_block(*fresh, prefix, b.plan, b.o);
  return {fresh, mods};
}

// A trainable FakeQuantLinear that computes exactly what the packed `q` does (weight = W^,
// scale and zero = q's; contiguous groups).
quant::FakeQuantLinearPtr fake_from_packed(const quant::QuantLinearImpl& q, const BlockApOptions& o) {
  torch::NoGradGuard ng;
  const auto& spec = q.spec();
  model::LinearImpl plain(q.in_features(), q.out_features(), q.has_bias());
  plain.weight.copy_(q.dequantize().to(plain.weight.device()));
  if (q.has_bias()) plain.bias.copy_(q.bias.to(plain.bias.device()));
  auto fq = std::make_shared<quant::FakeQuantLinearImpl>(plain, spec, o.init);
  const int64_t groups = q.scales.size(0), out = q.out_features();
  auto qz = q.qzeros.to(torch::kCPU).contiguous();
  auto zeros = quant::unpack_qzeros(qz.data_ptr<int32_t>(), groups, out, spec.bits);  // (groups, out)
  fq->scale.copy_(q.scales.to(torch::kCPU, torch::kFloat).t());
  fq->zero.copy_(torch::from_blob(zeros.data(), {groups, out}, torch::kInt).to(torch::kFloat).t());
  fq->to(o.device);
  return fq;
}

// The GPTQ start's trainable weights: W^ (on the grid) moved towards the original weights `w`
// as far as its rounding cells allow, W^ + clamp(w - W^, -0.49 s, 0.49 s). The codes stay
// GPTQ's, but the weights are not on the grid (from W^ itself the rounding residuals, and most
// of the scale gradients, are zero and training stalls) and they sit as near the float model as
// those codes allow. Contiguous groups (Block-AP's GPTQ uses static groups).
void start_in_gptq_cells(quant::FakeQuantLinearImpl& fq, const torch::Tensor& w) {
  torch::NoGradGuard ng;
  const auto what = fq.weight.detach().clone();
  const int64_t in = what.size(1);
  const auto group = torch::arange(in, torch::TensorOptions().dtype(torch::kLong).device(what.device()))
                         .div(quant::group_width(in, fq.spec().group_size), "floor");
  const auto half = 0.49 * fq.scale.detach().index_select(1, group);
  fq.weight.copy_(what + torch::max(torch::min(w.to(what.device()) - what, half), -half));
}

// Block bi's start: RTN (fake_quantize_block), or GPTQ on the quantized chain's inputs (the block
// is still float here). With GPTQ, `start` receives the packed GPTQ modules, the fallback when
// training does not beat them.
std::vector<Trainable::Module> init_block(const BlockApRun& b, model::Block& block, int64_t bi,
                                          const std::string& prefix,
                                          std::map<std::string, model::LinearPtr>& start) {
  const auto& o = b.o;
  if (!o.gptq_init) return fake_quantize_block(block, prefix, b.plan, o);
  GptqRunOptions go;
  go.gptq = o.gptq;
  go.gptq.static_groups = go.gptq.static_groups || go.gptq.act_order;  // contiguous groups to train
  go.gptq.measure = false;
  go.init = o.init;
  go.chunk = b.chunk;
  go.device = o.device;
  go.comm = o.comm;
  std::map<std::string, torch::Tensor> original;  // the float weights GPTQ replaces
  for (const auto& [rel, lin] : block.linears()) original[rel] = lin->weight.detach().clone();
  gptq_block(block, bi, prefix, b.plan, b.run, b.Xq, go);
  std::vector<Trainable::Module> mods;
  for (const auto& [rel, lin] : block.linears()) {
    auto it = b.plan.modules.find(prefix + rel);
    if (it == b.plan.modules.end() || !it->second.quantized()) continue;
    auto q = std::dynamic_pointer_cast<quant::QuantLinearImpl>(lin);
    if (!q) throw Error("GPTQ init left '" + prefix + rel + "' unquantized");
    start[rel] = lin;
    auto fq = fake_from_packed(*q, o);
    start_in_gptq_cells(*fq, original.at(rel));
    block.set_linear(rel, fq);
    Trainable::Module m;
    m.name = rel;
    m.fq = fq;
    m.lr_scale = o.use_sgra && it->second.sgra ? it->second.sgra->lr_scale : 1.0;
    m.train_quantizer = o.gptq_train_scales;
    if (!m.train_quantizer) {
      fq->scale.set_requires_grad(false);
      fq->zero.set_requires_grad(false);
    }
    mods.push_back(m);
  }
  return mods;
}

// One block: target, init, training, packing (or the init when training lost), the quantized
// chain propagated. Returns the packed block.
model::BlockPtr quantize_block(const BlockApRun& b, int64_t bi, BlockLog& log) {
  const auto& o = b.o;
  const std::string prefix = model::family_block_prefix(b.folder.config(), bi);
  auto block = model::load_any_block(b.folder, bi, {o.device});
  block->eval();  // no dropout
  for (auto& p : block->parameters()) p.set_requires_grad(false);
  b.run.apply(*block, b.Y, b.chunk);  // the target: the float block on the float chain

  Trainable tr;
  std::map<std::string, model::LinearPtr> start;  // packed GPTQ start (gptq_init only)
  tr.modules = init_block(b, *block, bi, prefix, start);
  std::set<const void*> lin_params;
  for (const auto& [rel, lin] : block->linears())
    for (const auto& p : lin->parameters()) lin_params.insert(p.unsafeGetTensorImpl());
  if (o.train_norm)
    for (auto& p : block->parameters())
      if (!lin_params.count(p.unsafeGetTensorImpl()) && p.is_floating_point()) tr.norms.push_back(p);
  plan_block(b, *block, prefix, tr, log);

  auto params = tr.all();
  for (auto& p : params) p.set_requires_grad(true);
  log.start_train_mse = b.mse(*block, b.train_g);  // the start: RTN or GPTQ
  log.start_val_mse = b.val_mse(*block, log.start_train_mse);
  log.best_val_mse = log.start_val_mse;
  if (log.epochs_planned > 0) train_epochs(b, *block, tr, params, bi, log);
  for (auto& p : params) p.set_requires_grad(false);
  for (auto& p : params) p.mutable_grad() = torch::Tensor();
  // Back to the start. RTN: rebuilt from the file (no snapshot was kept); GPTQ: its packed
  // modules (trained norms, if any, are restored from the file too).
  auto restart = [&](bool packed) {
    params.clear();
    tr = Trainable{};
    block.reset();
    if (o.gptq_init) {
      block = model::load_any_block(b.folder, bi, {o.device});
      block->eval();
      for (auto& p : block->parameters()) p.set_requires_grad(false);
      for (const auto& [rel, q] : start) block->set_linear(rel, q);
      if (!packed)
        for (const auto& [rel, q] : start) {
          auto fq = fake_from_packed(dynamic_cast<const quant::QuantLinearImpl&>(*q), o);
          block->set_linear(rel, fq);
          tr.modules.push_back({rel, fq, 1.0});
        }
      return;
    }
    std::tie(block, tr.modules) = rtn_block(b, bi, prefix);
    if (packed) pack_block(*block, tr.modules, o.device), tr.modules.clear();
  };
  if (log.epochs_planned > 0 && log.best_epoch == 0) restart(false);  // no epoch beat the start
  pack_block(*block, tr.modules, o.device);  // what will be saved, measured
  log.end_train_mse = b.mse(*block, b.train_g);
  log.end_val_mse = b.val_mse(*block, log.end_train_mse);
  if (log.end_val_mse > log.start_val_mse && !tr.modules.empty()) {
    restart(true);
    log.kept_rtn = true;
    log.end_train_mse = b.mse(*block, b.train_g);
    log.end_val_mse = b.val_mse(*block, log.end_train_mse);
    spdlog::warn("block {}: trained val MSE {:.4g} is worse than the {} start's {:.4g}; keeping the start", bi,
                 log.best_val_mse, o.gptq_init ? "GPTQ" : "RTN", log.start_val_mse);
  }
  b.run.apply(*block, b.Xq, b.chunk);  // propagate the quantized chain
  return block;
}

}  // namespace

QatResult block_ap(const model::ModelFolder& folder, const quant::BitPlan& plan, const TokenBatch& data,
                   const BlockApOptions& o) {
  const auto t_all = Clock::now();
  if (quant::is_quantized_folder(folder.dir()))
    throw InputError("model folder '" + folder.dir() + "' is already quantized (Block-AP needs the float model)");
  if (o.batch_size < 1) throw InputError("training.batch_size must be >= 1");
  if (data.size() < 1) throw InputError("Block-AP needs at least one calibration sequence");
  if (data.mask.defined() && data.mask.sizes() != data.ids.sizes())
    throw InputError("calibration attention mask shape differs from the ids' shape");
  const auto& cfg = folder.config();
  const int64_t nb = cfg.num_hidden_layers;
  {
    std::vector<std::string> names;
    for (int64_t i = 0; i < nb; ++i)
      for (const auto& rel : model::family_block_linear_names(cfg)) names.push_back(model::family_block_prefix(cfg, i) + rel);
    quant::validate_plan_modules(plan, names);
  }
  const int world = world_of(o.comm), rank = rank_of(o.comm);
  const int64_t N = data.size(), L = data.ids.size(1), C = cfg.hidden_size;
  // Train / validation split over global indices: the last n_val sequences validate.
  int64_t n_val = N >= 2 ? std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.val_fraction * N))) : 0;
  if (o.val_fraction <= 0) n_val = 0;
  n_val = std::min(n_val, N - 1);

  QatResult res;
  res.config = cfg;
  res.shell = model::load_any_model_shell(folder, {o.device});
  for (auto& p : res.shell->parameters()) p.set_requires_grad(false);
  const Shard shard = make_shard(data, rank, world);
  const BlockRunner runner{*res.shell, shard, o.device};
  const int64_t n_local = static_cast<int64_t>(shard.global.size());
  const json fp = fingerprint(folder, plan, data, o, world);
  const int64_t start_block = resume_point(o, fp, nb, res.logs);

  // Caches: past the memory limit they are files in the cache folder (model/activation_cache.h).
  model::CacheOptions copt = o.cache;
  if (copt.dir.empty()) copt.dir = o.state_dir;
  model::CacheBudget budget(copt);
  model::ActivationCache Xq(budget, n_local, L, C, "quantized-input");
  model::ActivationCache Y(budget, n_local, L, C, "float-input");
  res.cache_disk_bytes = budget.on_disk();
  if (budget.on_disk() > 0)
    spdlog::info("activation caches exceed {} ({}): {} in files under '{}'", copt.limit_key,
                 util::format_bytes(copt.memory_limit), util::format_bytes(budget.on_disk()),
                 copt.dir.empty() ? fs::temp_directory_path().string() : copt.dir);
  BlockApRun b{folder, plan, data, o, fault_injection(), shard, runner, Xq, Y, {}, {},
               std::max<int64_t>(1, o.batch_size), C};
  for (int64_t g = 0; g < N; ++g) (g < N - n_val ? b.train_g : b.val_g).push_back(g);
  b.equal_epochs = equal_step_epochs(folder.config(), plan, o);

  if (start_block == 0) {
    torch::NoGradGuard ng;
    for (int64_t s = 0; s < n_local; s += b.chunk) {
      std::vector<int64_t> local;
      for (int64_t k = s; k < std::min(n_local, s + b.chunk); ++k) local.push_back(k);
      auto idx = torch::tensor(local, torch::kLong);
      auto h = res.shell->embed(shard.ids.index_select(0, idx).to(o.device), runner.ctx(local));
      Xq.put(local, h);
      Y.put(local, h);
    }
  } else {
    for (int64_t i = 0; i < start_block; ++i) {
      auto blk = packed_block_shape(folder, i, plan);
      torch::serialize::InputArchive ar;
      ar.load_from((fs::path(o.state_dir) / fmt::format("block_{}.pt", i)).string());
      blk->load(ar);
      blk->to(o.device);
      blk->eval();
      res.blocks.push_back(blk);
    }
    Xq.load(cache_file(o, rank, "xq", start_block - 1).string());
    Y.load(cache_file(o, rank, "y", start_block - 1).string());
  }

  for (int64_t bi = start_block; bi < nb; ++bi) {
    const auto t0 = Clock::now();
    BlockLog log;
    log.block = bi;
    auto block = quantize_block(b, bi, log);
    res.blocks.push_back(block);
    log.seconds = since(t0);
    const double tokens = static_cast<double>(log.steps) * static_cast<double>(o.batch_size * L);
    log.tokens_per_second = log.seconds > 0 ? tokens / log.seconds : 0;
    spdlog::info("block {}/{}: {:.2f} avg bits, {} epochs, val MSE {:.4g} ({}) -> {:.4g}{}{}, {:.1f} s", bi + 1, nb,
                 log.avg_bits, log.epochs_run, log.start_val_mse, o.gptq_init ? "GPTQ" : "RTN", log.end_val_mse, log.kept_rtn ? " [kept the start]" : "",
                 log.nan_steps ? fmt::format(" [{} NaN steps]", log.nan_steps) : "", log.seconds);
    res.logs.push_back(log);
    if (!o.state_dir.empty()) save_progress(b, fp, bi, nb, *block, res.logs);
    // The finished float block, its optimizer state and snapshots are freed: give the memory back.
    util::release_free_memory();
    if (b.faults.after_block) b.faults.after_block(bi);
  }
  res.seconds = since(t_all);
  return res;
}

std::string train_log_jsonl(const QatResult& r) {
  std::ostringstream log;
  for (const auto& l : r.logs) log << block_log_to_json(l).dump() << "\n";
  if (r.e2e)
    log << json{{"e2e", {{"steps", r.e2e->steps},
                         {"start_loss", r.e2e->start_loss},
                         {"end_loss", r.e2e->end_loss},
                         {"nan_steps", r.e2e->nan_steps},
                         {"seconds", r.e2e->seconds}}}}
               .dump()
        << "\n";
  return log.str();
}

std::string summary_table(const QatResult& r) {
  std::ostringstream os;
  os << fmt::format("{:>5} {:>8} {:>6} {:>9} {:>11} {:>11} {:>11} {:>7} {:>8}\n", "block", "avg bits", "epochs",
                    "lr scale", "start val", "best val", "final val", "kept", "seconds");
  double secs = 0;
  for (const auto& l : r.logs) {
    os << fmt::format("{:>5} {:>8.2f} {:>6} {:>9.2f} {:>11.4g} {:>11.4g} {:>11.4g} {:>7} {:>8.1f}{}\n", l.block,
                      l.avg_bits, fmt::format("{}/{}", l.epochs_run, l.epochs_planned), l.lr_scale, l.start_val_mse,
                      l.best_val_mse, l.end_val_mse, l.kept_rtn ? "start" : "trained", l.seconds,
                      l.resumed ? "  (resumed)" : "");
    secs += l.seconds;
  }
  os << fmt::format("total Block-AP time {:.1f} s", secs);
  if (r.e2e)
    os << fmt::format("; E2E-QP {} steps, loss {:.4f} -> {:.4f}, {:.1f} s", r.e2e->steps, r.e2e->start_loss,
                      r.e2e->end_loss, r.e2e->seconds);
  os << "\n";
  return os.str();
}

}  // namespace mpqat::train
