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
#include "mpqat/train/fault_injection.h"
#include "mpqat/train/steps.h"
#include "mpqat/util/error.h"
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
  };
  std::vector<Module> modules;
  std::vector<torch::Tensor> norms;
  // Every tensor trained, in a fixed order (weights, scale, zero per module; then norms).
  std::vector<torch::Tensor> all() const {
    std::vector<torch::Tensor> v;
    for (const auto& m : modules) {
      v.push_back(m.fq->weight);
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

struct BlockRunner {
  model::TransformerModel& shell;
  const Shard& shard;
  torch::Device device;
  model::BlockContext ctx(const std::vector<int64_t>& local) const {
    auto idx = torch::tensor(local, torch::kLong);
    auto ids = shard.ids.index_select(0, idx).to(device);
    torch::Tensor mask;
    if (shard.mask.defined()) mask = shard.mask.index_select(0, idx).to(device);
    return shell.context(ids, mask);
  }
  // Sum of squared errors of block(x[local]) against t[local] over valid positions.
  torch::Tensor sse(model::Block& block, const model::ActivationCache& xc, const model::ActivationCache& tc,
                    const std::vector<int64_t>& local) const {
    auto idx = torch::tensor(local, torch::kLong);
    auto x = xc.get(local, device);  // (k, L, C) fp32
    auto t = tc.get(local, device);
    auto c = ctx(local);
    auto d = (block.run(x, c) - t).pow(2);
    if (shard.mask.defined()) d = d * shard.mask.index_select(0, idx).to(device, torch::kFloat).unsqueeze(-1);
    return d.sum();
  }
  // In place: cache[local] = block(cache[local]) in chunks.
  void apply(model::Block& block, model::ActivationCache& cache, int64_t chunk) const {
    torch::NoGradGuard ng;
    const int64_t n = cache.items();
    for (int64_t s = 0; s < n; s += chunk) {
      std::vector<int64_t> local;
      for (int64_t k = s; k < std::min(n, s + chunk); ++k) local.push_back(k);
      cache.put(local, block.run(cache.get(local, device), ctx(local)));
    }
  }
};

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

std::string hash_hex(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return fmt::format("{:016x}", h);
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
          {"plan", hash_hex(quant::bit_plan_to_json(plan).dump())},
          {"data", hash_hex(bytes)},
          {"world_size", world},
          {"options", fmt::format("e{} p{} sgra{} b{} lw{} lq{} r{} norm{} clip{} val{} seed{} dt{}", o.epochs, o.patience,
                                  o.use_sgra, o.batch_size, o.lr_weights, o.lr_quant, o.min_lr_ratio, o.train_norm,
                                  o.init.clip_search, o.val_fraction, o.seed, static_cast<int>(o.cache.dtype))}};
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
  BlockLog l;
  l.block = j.at("block").get<int64_t>();
  for (const auto& [n, b] : j.at("bits").items()) l.bits.emplace_back(n, b.get<int>());
  l.avg_bits = j.at("avg_bits").get<double>();
  l.epochs_planned = j.at("epochs_planned").get<int>();
  l.epochs_run = j.at("epochs_run").get<int>();
  l.patience = j.at("patience").get<int>();
  l.lr_weights = j.at("lr_weights").get<double>();
  l.lr_quant = j.at("lr_quant").get<double>();
  l.lr_scale = j.at("lr_scale").get<double>();
  l.start_train_mse = j.at("start_train_mse").get<double>();
  l.start_val_mse = j.at("start_val_mse").get<double>();
  l.end_train_mse = j.at("end_train_mse").get<double>();
  l.end_val_mse = j.at("end_val_mse").get<double>();
  l.best_val_mse = j.at("best_val_mse").get<double>();
  l.best_epoch = j.at("best_epoch").get<int>();
  l.kept_rtn = j.at("kept_rtn").get<bool>();
  l.nan_steps = j.at("nan_steps").get<int>();
  l.steps = j.at("steps").get<int64_t>();
  l.seconds = j.at("seconds").get<double>();
  l.tokens_per_second = j.at("tokens_per_second").get<double>();
  l.train_curve = j.at("train_curve").get<std::vector<double>>();
  l.val_curve = j.at("val_curve").get<std::vector<double>>();
  return l;
}

QatResult block_ap(const model::ModelFolder& folder, const quant::BitPlan& plan, const TokenBatch& data,
                   const BlockApOptions& o) {
  const auto t_all = Clock::now();
  if (quant::is_quantized_folder(folder.dir()))
    throw InputError("model folder '" + folder.dir() + "' is already quantized (Block-AP needs the float model)");
  if (o.batch_size < 1) throw InputError("training.batch_size must be >= 1");
  if (data.size() < 1) throw InputError("Block-AP needs at least one calibration sequence");
  const auto& cfg = folder.config();
  const int64_t nb = cfg.num_hidden_layers;
  {
    std::vector<std::string> names;
    for (int64_t i = 0; i < nb; ++i)
      for (const auto& rel : model::family_block_linear_names(cfg)) names.push_back(model::family_block_prefix(cfg, i) + rel);
    quant::validate_plan_modules(plan, names);
  }
  dist::Communicator* comm = o.comm;
  const auto& faults = fault_injection();
  const int world = world_of(comm), rank = rank_of(comm);
  const int64_t N = data.size(), L = data.ids.size(1);
  if (data.mask.defined() && data.mask.sizes() != data.ids.sizes())
    throw InputError("calibration attention mask shape differs from the ids' shape");

  // Train / validation split over global indices: the last n_val sequences validate.
  int64_t n_val = N >= 2 ? std::max<int64_t>(1, static_cast<int64_t>(std::llround(o.val_fraction * N))) : 0;
  if (o.val_fraction <= 0) n_val = 0;
  n_val = std::min(n_val, N - 1);
  std::vector<int64_t> train_g, val_g;
  for (int64_t g = 0; g < N; ++g) (g < N - n_val ? train_g : val_g).push_back(g);
  const auto& val_set = val_g.empty() ? train_g : val_g;

  QatResult res;
  res.config = cfg;
  res.shell = model::load_any_model_shell(folder, {o.device});
  for (auto& p : res.shell->parameters()) p.set_requires_grad(false);
  const Shard shard = make_shard(data, rank, world);
  BlockRunner run{*res.shell, shard, o.device};
  const int64_t n_local = static_cast<int64_t>(shard.global.size());
  const int64_t C = cfg.hidden_size;
  const int64_t chunk = std::max<int64_t>(1, o.batch_size);

  // State folder and resume.
  const fs::path state = o.state_dir;
  json fp = fingerprint(folder, plan, data, o, world);
  int64_t start_block = 0;
  if (!o.state_dir.empty()) {
    fs::create_directories(state);
    const auto prog = state / "progress.json";
    if (fs::exists(prog) && o.resume) {
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
      for (const auto& [k, v] : fp.items())
        if (!p.contains("fingerprint") || p["fingerprint"].value(k, json()) != v)
          throw InputError("state folder '" + o.state_dir + "' belongs to another run (" + k + " differs: " +
                           (p.contains("fingerprint") ? p["fingerprint"].value(k, json()).dump() : "none") + " vs " +
                           v.dump() + "); remove it or run without resume");
      start_block = p.at("next_block").get<int64_t>();
      for (const auto& lj : p.at("logs")) {
        auto l = block_log_from_json(lj);
        l.resumed = true;
        res.logs.push_back(l);
      }
      if (start_block > 0)
        spdlog::info("resuming Block-AP at block {} of {} from '{}'", start_block, nb, o.state_dir);
    }
  }

  // Caches: Xq = quantized chain input, Y = float chain input (then target). Past the memory
  // limit they are files in the cache folder (model/activation_cache.h).
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
  auto cache_file = [&](const char* which, int64_t after) {
    return state / fmt::format("rank{}_{}_after_{}.bin", rank, which, after);
  };

  if (start_block == 0) {
    torch::NoGradGuard ng;
    for (int64_t s = 0; s < n_local; s += chunk) {
      std::vector<int64_t> local;
      for (int64_t k = s; k < std::min(n_local, s + chunk); ++k) local.push_back(k);
      auto c = run.ctx(local);
      auto idx = torch::tensor(local, torch::kLong);
      auto h = res.shell->embed(shard.ids.index_select(0, idx).to(o.device), c);
      Xq.put(local, h);
      Y.put(local, h);
    }
  } else {
    for (int64_t i = 0; i < start_block; ++i) {
      auto b = packed_block_shape(folder, i, plan);
      torch::serialize::InputArchive ar;
      ar.load_from((state / fmt::format("block_{}.pt", i)).string());
      b->load(ar);
      b->to(o.device);
      b->eval();
      res.blocks.push_back(b);
    }
    Xq.load(cache_file("xq", start_block - 1).string());
    Y.load(cache_file("y", start_block - 1).string());
  }

  for (int64_t bi = start_block; bi < nb; ++bi) {
    const auto t0 = Clock::now();
    const std::string prefix = model::family_block_prefix(cfg, bi);
    BlockLog log;
    log.block = bi;
    auto block = model::load_any_block(folder, bi, {o.device});
    block->eval();  // no dropout
    for (auto& p : block->parameters()) p.set_requires_grad(false);
    // Target: the float block on the float chain.
    run.apply(*block, Y, chunk);

    // Quantize and collect the trainables.
    Trainable tr;
    tr.modules = fake_quantize_block(*block, prefix, plan, o);
    std::set<const void*> lin_params;
    for (const auto& [rel, lin] : block->linears())
      for (const auto& p : lin->parameters()) lin_params.insert(p.unsafeGetTensorImpl());
    if (o.train_norm)
      for (auto& p : block->parameters())
        if (!lin_params.count(p.unsafeGetTensorImpl()) && p.is_floating_point()) tr.norms.push_back(p);
    int epochs = o.epochs, patience = o.patience;
    double lr_scale_sum = 0;
    bool any_sgra = false;
    int64_t qparams = 0;
    double bit_params = 0;
    for (const auto& [rel, lin] : block->linears()) {
      auto it = plan.modules.find(prefix + rel);
      const int b = it != plan.modules.end() ? it->second.bits : 16;
      log.bits.emplace_back(rel, b);
      const int64_t n = lin->in_features() * lin->out_features();
      qparams += n;
      bit_params += static_cast<double>(n) * std::min(b, 16);
      if (o.use_sgra && it != plan.modules.end() && it->second.sgra && it->second.quantized()) {
        if (!any_sgra) epochs = 0, patience = 0;
        any_sgra = true;
        epochs = std::max(epochs, it->second.sgra->epochs);
        patience = std::max(patience, it->second.sgra->patience);
      }
    }
    for (const auto& m : tr.modules) lr_scale_sum += m.lr_scale;
    log.avg_bits = qparams ? bit_params / static_cast<double>(qparams) : 16;
    log.lr_scale = tr.modules.empty() ? 1.0 : lr_scale_sum / static_cast<double>(tr.modules.size());
    log.lr_weights = o.lr_weights * log.lr_scale;
    log.lr_quant = o.lr_quant * log.lr_scale;
    if (tr.modules.empty()) epochs = 0;
    log.epochs_planned = epochs;
    log.patience = patience;

    auto params = tr.all();
    for (auto& p : params) p.set_requires_grad(true);
    // Start point = RTN.
    log.start_train_mse = eval_mse(run, *block, Xq, Y, data, train_g, chunk, comm);
    log.start_val_mse = val_g.empty() ? log.start_train_mse : eval_mse(run, *block, Xq, Y, data, val_g, chunk, comm);
    // The best epoch's parameters; empty while the RTN start is the best (it is rebuilt from the
    // file when needed rather than copied: one block's weights less in memory).
    std::vector<torch::Tensor> best_state;
    double best = log.start_val_mse;
    log.best_val_mse = best;

    if (epochs > 0) {
      // One param group per module kind: weights and quantizer parameters at their own lr.
      std::vector<torch::optim::OptimizerParamGroup> groups;
      std::vector<double> base_lr;
      for (const auto& m : tr.modules) {
        groups.emplace_back(std::vector<torch::Tensor>{m.fq->weight},
                            std::make_unique<torch::optim::AdamWOptions>(
                                torch::optim::AdamWOptions(o.lr_weights * m.lr_scale).weight_decay(0)));
        base_lr.push_back(o.lr_weights * m.lr_scale);
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
      torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(o.lr_quant).weight_decay(0));
      const int64_t B = o.batch_size;
      const int64_t steps_per_epoch = (static_cast<int64_t>(train_g.size()) + B - 1) / B;
      const int64_t total = std::max<int64_t>(1, steps_per_epoch * epochs);
      double lr_factor = 1.0;
      int64_t step = 0;
      int bad_epochs = 0;
      for (int ep = 0; ep < epochs; ++ep) {
        const auto perm = permutation(static_cast<int64_t>(train_g.size()), mix(mix(o.seed, bi + 1), ep + 1));
        double ep_loss = 0;
        int64_t ep_steps = 0;
        for (int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
          std::vector<int64_t> batch_g, mine;
          for (int64_t k = s * B; k < std::min<int64_t>((s + 1) * B, static_cast<int64_t>(perm.size())); ++k) {
            const int64_t g = train_g[perm[k]];
            batch_g.push_back(g);
            if (shard.local_of[g] >= 0) mine.push_back(shard.local_of[g]);
          }
          const double denom = token_count(data, batch_g) * static_cast<double>(C);
          const double f = cosine_factor(step, total, 0, o.min_lr_ratio);
          for (size_t gi = 0; gi < base_lr.size(); ++gi) set_lr(opt, gi, base_lr[gi] * lr_factor * f);
          opt.zero_grad();
          double local_loss = 0;
          if (!mine.empty()) {
            auto loss = run.sse(*block, Xq, Y, mine) / denom;
            if (bi == faults.nan_block && step == faults.nan_step) loss = loss * std::numeric_limits<float>::quiet_NaN();
            loss.backward();
            local_loss = loss.item<double>();
          }
          const double step_loss = reduce_sum(comm, local_loss);
          const bool finite = reduce_grads(params, comm) && std::isfinite(step_loss);
          if (!finite) {
            ++log.nan_steps;
            lr_factor *= o.nan_lr_backoff;
            spdlog::warn("block {} step {}: non-finite loss or gradient; step discarded, learning rate x{} (now x{:.3g})",
                           bi, step, o.nan_lr_backoff, lr_factor);
            opt.zero_grad();
            continue;
          }
          opt.step();
          ep_loss += step_loss;
          ++ep_steps;
        }
        log.steps += ep_steps;
        const double train_mse = ep_steps ? ep_loss / static_cast<double>(ep_steps) : std::nan("");
        const double val = eval_mse(run, *block, Xq, Y, data, val_set, chunk, comm);
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
      best_state.clear();
      log.best_val_mse = best;
    }  // the optimizer's state is freed here
    for (auto& p : params) p.set_requires_grad(false);
    for (auto& p : params) p.mutable_grad() = torch::Tensor();
    // The block at RTN (the original weights, fresh init), for a start no epoch improved on.
    auto rtn_block = [&] {
      auto fresh = model::load_any_block(folder, bi, {o.device});
      fresh->eval();
      for (auto& p : fresh->parameters()) p.set_requires_grad(false);
      auto mods = fake_quantize_block(*fresh, prefix, plan, o);
      return std::make_pair(fresh, mods);
    };
    if (epochs > 0 && log.best_epoch == 0 && !tr.modules.empty()) {
      params.clear();
      tr = Trainable{};
      block.reset();
      std::tie(block, tr.modules) = rtn_block();
    }

    // Pack and measure what will be saved.
    pack_block(*block, tr.modules, o.device);
    log.end_train_mse = eval_mse(run, *block, Xq, Y, data, train_g, chunk, comm);
    log.end_val_mse = val_g.empty() ? log.end_train_mse : eval_mse(run, *block, Xq, Y, data, val_g, chunk, comm);
    if (log.end_val_mse > log.start_val_mse && !tr.modules.empty()) {
      // Training did not beat RTN: keep RTN.
      params.clear();
      tr = Trainable{};
      block.reset();
      auto [fresh, mods] = rtn_block();
      pack_block(*fresh, mods, o.device);
      block = fresh;
      log.kept_rtn = true;
      log.end_train_mse = eval_mse(run, *block, Xq, Y, data, train_g, chunk, comm);
      log.end_val_mse = val_g.empty() ? log.end_train_mse : eval_mse(run, *block, Xq, Y, data, val_g, chunk, comm);
      spdlog::warn("block {}: trained val MSE {:.4g} is worse than RTN's {:.4g}; keeping the RTN result", bi,
                     log.best_val_mse, log.start_val_mse);
    }
    // Propagate the quantized chain.
    run.apply(*block, Xq, chunk);
    res.blocks.push_back(block);
    log.seconds = since(t0);
    const double tokens = static_cast<double>(log.steps) * static_cast<double>(o.batch_size * L);
    log.tokens_per_second = log.seconds > 0 ? tokens / log.seconds : 0;
    spdlog::info("block {}/{}: {:.2f} avg bits, {} epochs, val MSE {:.4g} (RTN) -> {:.4g}{}{}, {:.1f} s", bi + 1, nb,
                   log.avg_bits, log.epochs_run, log.start_val_mse, log.end_val_mse,
                   log.kept_rtn ? " [kept RTN]" : "", log.nan_steps ? fmt::format(" [{} NaN steps]", log.nan_steps) : "",
                   log.seconds);
    res.logs.push_back(log);

    if (!o.state_dir.empty()) {
      Xq.save(cache_file("xq", bi).string());
      Y.save(cache_file("y", bi).string());
      barrier(comm);
      if (rank == 0) {
        save_module_atomic(*block, state / fmt::format("block_{}.pt", bi));
        json logs = json::array();
        for (const auto& l : res.logs) logs.push_back(block_log_to_json(l));
        json p{{"format", "mpqat-block-ap-state"},
               {"version", 2},
               {"fingerprint", fp},
               {"next_block", bi + 1},
               {"num_blocks", nb},
               {"rng", "per (seed, block, epoch) permutation; no global RNG state"},
               {"logs", logs}};
        util::write_file_atomic((state / "progress.json").string(), p.dump(1) + "\n");
      }
      barrier(comm);
      if (bi > 0) {
        fs::remove(cache_file("xq", bi - 1));
        fs::remove(cache_file("y", bi - 1));
      }
    }
    // The finished float block, its optimizer state and snapshots are freed; glibc keeps such
    // freed heap memory in the process unless asked, which made the peak grow with depth
    // (tools/bench_train_depth.sh: 765 -> 531 MiB at 32 blocks with a fixed mmap threshold).
    util::release_free_memory();
    if (faults.after_block) faults.after_block(bi);
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
                    "lr scale", "RTN val", "best val", "final val", "kept", "seconds");
  double secs = 0;
  for (const auto& l : r.logs) {
    os << fmt::format("{:>5} {:>8.2f} {:>6} {:>9.2f} {:>11.4g} {:>11.4g} {:>11.4g} {:>7} {:>8.1f}{}\n", l.block,
                      l.avg_bits, fmt::format("{}/{}", l.epochs_run, l.epochs_planned), l.lr_scale, l.start_val_mse,
                      l.best_val_mse, l.end_val_mse, l.kept_rtn ? "RTN" : "trained", l.seconds,
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
