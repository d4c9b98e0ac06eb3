// Block-AP and E2E-QP (see include/mpqat/train/block_ap.h and docs/training.md).
#include "mpqat/train/block_ap.h"

#include <fcntl.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
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
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/util/error.h"
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

int world_of(dist::Communicator* c) { return c ? c->world_size() : 1; }
int rank_of(dist::Communicator* c) { return c ? c->rank() : 0; }
double reduce_sum(dist::Communicator* c, double v) { return c && c->distributed() ? c->all_reduce_sum(v) : v; }
void barrier(dist::Communicator* c) {
  if (c && c->distributed()) c->barrier();
}

// Seeded permutation, independent of the standard library's distributions.
std::vector<int64_t> permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  std::mt19937_64 rng(seed);
  for (int64_t k = n - 1; k > 0; --k) std::swap(p[k], p[static_cast<int64_t>(rng() % static_cast<uint64_t>(k + 1))]);
  return p;
}

uint64_t mix(uint64_t a, uint64_t b) {
  a ^= b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2);
  return a * 0xff51afd7ed558ccdull;
}

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

// Sums gradients over ranks (the loss is already divided by the global element count), making
// undefined gradients zero first. Returns false when any gradient is not finite.
bool reduce_grads(const std::vector<torch::Tensor>& params, dist::Communicator* comm) {
  if (!comm || !comm->distributed()) {
    // One process: check in place (no flattened copy of every gradient).
    bool finite = true;
    for (const auto& p : params) {
      auto& g = p.mutable_grad();
      if (!g.defined()) g = torch::zeros_like(p);
      finite = finite && torch::isfinite(g).all().item<bool>();
    }
    return finite;
  }
  std::vector<torch::Tensor> flat;
  for (const auto& p : params) {
    auto& g = p.mutable_grad();
    if (!g.defined()) g = torch::zeros_like(p);
    flat.push_back(g.reshape(-1));
  }
  auto all = torch::cat(flat);
  {
    auto cpu = all.to(torch::kCPU);
    comm->all_reduce_sum(cpu);
    all = cpu.to(all.device());
    int64_t off = 0;
    torch::NoGradGuard ng;
    for (const auto& p : params) {
      const int64_t n = p.numel();
      p.mutable_grad().copy_(all.narrow(0, off, n).view_as(p));
      off += n;
    }
  }
  return torch::isfinite(all).all().item<bool>();
}

void set_lr(torch::optim::Optimizer& opt, size_t group, double lr) {
  static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[group].options()).lr(lr);
}

// A (n, L, C) activation cache in host memory or, past the memory limit, in a mapped file.
torch::Tensor make_cache(int64_t n, int64_t L, int64_t C, torch::ScalarType dt, bool on_disk, const std::string& path) {
  if (!on_disk) return torch::empty({n, L, C}, torch::TensorOptions().dtype(dt));
  const int64_t numel = n * L * C;
  const int64_t bytes = numel * static_cast<int64_t>(c10::elementSize(dt));
  fs::create_directories(fs::path(path).parent_path());
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || ::ftruncate(fd, bytes) != 0) {
    if (fd >= 0) ::close(fd);
    throw Error("cannot create the activation cache file '" + path + "' (" + util::format_bytes(bytes) +
                "); set training.cache_dir to a folder with room");
  }
  ::close(fd);
  return torch::from_file(path, true, numel, torch::TensorOptions().dtype(dt)).view({n, L, C});
}

struct Shard {
  std::vector<int64_t> global;  // global index of each local sequence
  torch::Tensor ids, mask;      // local (n, L)
  std::vector<int64_t> local_of;  // global -> local position (-1 = other rank)
};

Shard make_shard(const TokenBatch& data, int rank, int world) {
  Shard s;
  const int64_t N = data.size();
  s.local_of.assign(N, -1);
  for (int64_t g = rank; g < N; g += world) {
    s.local_of[g] = static_cast<int64_t>(s.global.size());
    s.global.push_back(g);
  }
  auto idx = torch::tensor(s.global, torch::kLong);
  s.ids = s.global.empty() ? data.ids.narrow(0, 0, 0) : data.ids.index_select(0, idx);
  if (data.mask.defined()) s.mask = s.global.empty() ? data.mask.narrow(0, 0, 0) : data.mask.index_select(0, idx);
  return s;
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
  torch::Tensor sse(model::Block& block, const torch::Tensor& xc, const torch::Tensor& tc,
                    const std::vector<int64_t>& local) const {
    auto idx = torch::tensor(local, torch::kLong);
    auto x = xc.index_select(0, idx).to(device, torch::kFloat);
    auto t = tc.index_select(0, idx).to(device, torch::kFloat);
    auto c = ctx(local);
    auto d = (block.run(x, c) - t).pow(2);
    if (shard.mask.defined()) d = d * shard.mask.index_select(0, idx).to(device, torch::kFloat).unsqueeze(-1);
    return d.sum();
  }
  // In place: cache[local] = block(cache[local]) in chunks.
  void apply(model::Block& block, torch::Tensor& cache, int64_t chunk) const {
    torch::NoGradGuard ng;
    const int64_t n = cache.size(0);
    for (int64_t s = 0; s < n; s += chunk) {
      std::vector<int64_t> local;
      for (int64_t k = s; k < std::min(n, s + chunk); ++k) local.push_back(k);
      auto x = cache.narrow(0, s, static_cast<int64_t>(local.size())).to(device, torch::kFloat);
      auto y = block.run(x, ctx(local));
      cache.narrow(0, s, static_cast<int64_t>(local.size())).copy_(y.to(torch::kCPU).to(cache.scalar_type()));
    }
  }
};

// Global MSE over the global sequences `gs` (each rank sums its own).
double eval_mse(const BlockRunner& run, model::Block& block, const torch::Tensor& xc, const torch::Tensor& tc,
                const TokenBatch& data, const std::vector<int64_t>& gs, int64_t chunk, dist::Communicator* comm) {
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
  const double denom = token_count(data, gs) * static_cast<double>(xc.size(2));
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

void save_tensors_atomic(const std::vector<std::pair<std::string, torch::Tensor>>& ts, const fs::path& path) {
  torch::serialize::OutputArchive ar;
  for (const auto& [k, t] : ts) ar.write(k, t.contiguous());
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
                                  o.init.clip_search, o.val_fraction, o.seed, static_cast<int>(o.cache_dtype))}};
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

  // Caches: Xq = quantized chain input, Y = float chain input (then target).
  const uint64_t cache_bytes = 2ull * n_local * L * C * c10::elementSize(o.cache_dtype);
  const bool spill = cache_bytes > o.cache_memory_limit;
  const std::string cdir = !o.cache_dir.empty() ? o.cache_dir
                           : !o.state_dir.empty() ? o.state_dir
                                                  : (fs::temp_directory_path() / ("mpqat-cache-" + std::to_string(::getpid()))).string();
  if (spill)
    spdlog::info("activation caches ({}) exceed training.cache_memory_limit ({}): mapped files in '{}'",
                   util::format_bytes(cache_bytes), util::format_bytes(o.cache_memory_limit), cdir);
  torch::Tensor Xq = make_cache(n_local, L, C, o.cache_dtype, spill, cdir + "/rank" + std::to_string(rank) + "_xq.bin");
  torch::Tensor Y = make_cache(n_local, L, C, o.cache_dtype, spill, cdir + "/rank" + std::to_string(rank) + "_y.bin");

  if (start_block == 0) {
    torch::NoGradGuard ng;
    for (int64_t s = 0; s < n_local; s += chunk) {
      std::vector<int64_t> local;
      for (int64_t k = s; k < std::min(n_local, s + chunk); ++k) local.push_back(k);
      auto c = run.ctx(local);
      auto idx = torch::tensor(local, torch::kLong);
      auto h = res.shell->embed(shard.ids.index_select(0, idx).to(o.device), c).to(torch::kCPU).to(o.cache_dtype);
      Xq.narrow(0, s, static_cast<int64_t>(local.size())).copy_(h);
      Y.narrow(0, s, static_cast<int64_t>(local.size())).copy_(h);
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
    torch::serialize::InputArchive ar;
    ar.load_from((state / fmt::format("rank{}_cache_after_{}.pt", rank, start_block - 1)).string());
    torch::Tensor x, y;
    ar.read("xq", x);
    ar.read("y", y);
    Xq.copy_(x);
    Y.copy_(y);
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

    const auto params = tr.all();
    for (auto& p : params) p.set_requires_grad(true);
    // Start point = RTN.
    log.start_train_mse = eval_mse(run, *block, Xq, Y, data, train_g, chunk, comm);
    log.start_val_mse = val_g.empty() ? log.start_train_mse : eval_mse(run, *block, Xq, Y, data, val_g, chunk, comm);
    const auto rtn_state = snapshot(params);
    auto best_state = rtn_state;
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
          const double cosf = 0.5 * (1 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(total)));
          for (size_t gi = 0; gi < base_lr.size(); ++gi)
            set_lr(opt, gi, base_lr[gi] * lr_factor * (o.min_lr_ratio + (1 - o.min_lr_ratio) * cosf));
          opt.zero_grad();
          double local_loss = 0;
          if (!mine.empty()) {
            auto loss = run.sse(*block, Xq, Y, mine) / denom;
            if (bi == o.nan_block && step == o.nan_step) loss = loss * std::numeric_limits<float>::quiet_NaN();
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
          best_state = snapshot(params);
          log.best_epoch = ep + 1;
          bad_epochs = 0;
        } else if (patience > 0 && ++bad_epochs >= patience) {
          spdlog::debug("block {}: early stop after epoch {} ({} epochs without improvement)", bi, ep + 1, bad_epochs);
          break;
        }
      }
      restore(params, best_state);
      log.best_val_mse = best;
    }
    for (auto& p : params) p.set_requires_grad(false);
    for (auto& p : params) p.mutable_grad() = torch::Tensor();

    // Pack and measure what will be saved.
    pack_block(*block, tr.modules, o.device);
    log.end_train_mse = eval_mse(run, *block, Xq, Y, data, train_g, chunk, comm);
    log.end_val_mse = val_g.empty() ? log.end_train_mse : eval_mse(run, *block, Xq, Y, data, val_g, chunk, comm);
    if (log.end_val_mse > log.start_val_mse && !tr.modules.empty()) {
      // Training did not beat RTN: keep RTN (the original weights, fresh init).
      auto fresh = model::load_any_block(folder, bi, {o.device});
      fresh->eval();
      for (auto& p : fresh->parameters()) p.set_requires_grad(false);
      auto mods = fake_quantize_block(*fresh, prefix, plan, o);
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
      save_tensors_atomic({{"xq", Xq}, {"y", Y}}, state / fmt::format("rank{}_cache_after_{}.pt", rank, bi));
      barrier(comm);
      if (rank == 0) {
        save_module_atomic(*block, state / fmt::format("block_{}.pt", bi));
        json logs = json::array();
        for (const auto& l : res.logs) logs.push_back(block_log_to_json(l));
        json p{{"format", "mpqat-block-ap-state"},
               {"version", 1},
               {"fingerprint", fp},
               {"next_block", bi + 1},
               {"num_blocks", nb},
               {"rng", "per (seed, block, epoch) permutation; no global RNG state"},
               {"logs", logs}};
        util::write_file_atomic((state / "progress.json").string(), p.dump(1) + "\n");
      }
      barrier(comm);
      if (bi > 0) fs::remove(state / fmt::format("rank{}_cache_after_{}.pt", rank, bi - 1));
    }
    // The finished float block, its optimizer state and snapshots are freed; glibc keeps such
    // freed heap memory in the process unless asked, which made the peak grow with depth
    // (tools/bench_train_depth.sh: 765 -> 531 MiB at 32 blocks with a fixed mmap threshold).
#if defined(__GLIBC__)
    ::malloc_trim(0);
#endif
    if (o.after_block) o.after_block(bi);
  }
  if (spill && o.cache_dir.empty() && o.state_dir.empty()) fs::remove_all(cdir);
  res.seconds = since(t_all);
  return res;
}

// ---------------------------------------------------------------------------------------------
// E2E-QP

namespace {

// A packed linear whose integer codes are fixed and whose step sizes train:
// W^ = (q - Z) * s, s (out, groups) fp32.
class StepSizeLinearImpl : public model::LinearImpl {
 public:
  explicit StepSizeLinearImpl(const quant::QuantLinearImpl& q)
      : model::LinearImpl(q.in_features(), q.out_features(), q.has_bias()), spec_(q.spec()) {
    torch::NoGradGuard ng;
    parameters_.erase("weight");
    weight = torch::Tensor();
    const int64_t out = q.out_features(), in = q.in_features();
    const int64_t groups = quant::num_groups(in, spec_.group_size);
    auto qw = q.qweight.to(torch::kCPU).contiguous();
    auto qz = q.qzeros.to(torch::kCPU).contiguous();
    auto c = quant::unpack_qweight(qw.data_ptr<int32_t>(), out, in, spec_.bits);
    auto z = quant::unpack_qzeros(qz.data_ptr<int32_t>(), groups, out, spec_.bits);
    codes_ = torch::from_blob(c.data(), {out, in}, torch::kInt).clone();
    zeros_ = torch::from_blob(z.data(), {groups, out}, torch::kInt).t().contiguous();  // (out, groups)
    g_idx_ = q.g_idx.to(torch::kCPU).to(torch::kLong);
    qz_ = register_buffer("qz", (codes_ - zeros_.index_select(1, g_idx_)).to(torch::kShort));
    scale = register_parameter("scale", q.scales.to(torch::kCPU).to(torch::kFloat).t().contiguous());
    if (q.has_bias()) bias.copy_(q.bias.detach().to(torch::kCPU));
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    auto w = qz_.to(torch::kFloat) * scale.index_select(1, g_idx_.to(scale.device()));
    return torch::linear(x, w, bias);
  }
  quant::QuantLinearPtr repack() const {
    torch::NoGradGuard ng;
    auto sc = scale.detach().to(torch::kCPU).clamp(1e-4, 1e4).to(torch::kHalf).to(torch::kFloat);
    return quant::QuantLinearImpl::from_codes(codes_, zeros_, sc,
                                             bias.defined() ? bias.detach().to(torch::kCPU) : torch::Tensor(), spec_);
  }
  torch::Tensor scale;

 private:
  quant::QuantSpec spec_;
  torch::Tensor codes_, zeros_, g_idx_, qz_;
};

}  // namespace

void e2e_qp(QatResult& r, const TokenBatch& data, const E2eOptions& o, dist::Communicator* comm) {
  const auto t0 = Clock::now();
  if (!r.shell->is_causal_lm())
    throw InputError("E2E-QP trains on next-token loss and needs a causal language model (this is a classifier)");
  if (data.size() < 1) throw InputError("E2E-QP needs at least one sequence");
  const int world = world_of(comm), rank = rank_of(comm);
  const Shard shard = make_shard(data, rank, world);
  const auto device = r.shell->parameters().empty() ? torch::Device(torch::kCPU) : r.shell->parameters()[0].device();

  // Swap every QuantLinear for a step-size-trainable one.
  std::vector<std::pair<size_t, std::pair<std::string, std::shared_ptr<StepSizeLinearImpl>>>> swapped;
  std::vector<torch::Tensor> params;
  for (size_t bi = 0; bi < r.blocks.size(); ++bi)
    for (const auto& [rel, lin] : r.blocks[bi]->linears())
      if (auto q = std::dynamic_pointer_cast<quant::QuantLinearImpl>(lin)) {
        auto s = std::make_shared<StepSizeLinearImpl>(*q);
        s->to(device);
        r.blocks[bi]->set_linear(rel, s);
        for (auto& p : s->parameters()) p.set_requires_grad(false);
        s->scale.set_requires_grad(true);
        params.push_back(s->scale);
        swapped.push_back({bi, {rel, s}});
      }
  if (params.empty()) throw InputError("E2E-QP: the model has no quantized linear");

  // Sum of next-token cross-entropy over the local sequences `local` and its token count.
  auto loss_sum = [&](const std::vector<int64_t>& local) {
    auto idx = torch::tensor(local, torch::kLong);
    auto ids = shard.ids.index_select(0, idx).to(device);
    torch::Tensor mask;
    if (shard.mask.defined()) mask = shard.mask.index_select(0, idx).to(device);
    auto ctx = r.shell->context(ids, mask);
    auto h = r.shell->embed(ids, ctx);
    for (auto& b : r.blocks) h = b->run(h, ctx);
    auto logits = r.shell->head(h, ctx);
    const int64_t T = ids.size(1);
    auto lg = logits.narrow(1, 0, T - 1).reshape({-1, logits.size(-1)});
    auto tgt = ids.narrow(1, 1, T - 1).reshape({-1});
    auto ce = torch::nn::functional::cross_entropy(
        lg, tgt, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    if (mask.defined()) ce = ce * mask.narrow(1, 1, T - 1).reshape({-1}).to(torch::kFloat);
    return ce.sum();
  };
  auto global_tokens = [&](const std::vector<int64_t>& gs) {
    if (!data.mask.defined()) return static_cast<double>(gs.size()) * static_cast<double>(data.ids.size(1) - 1);
    double n = 0;
    for (auto g : gs) n += data.mask[g].narrow(0, 1, data.ids.size(1) - 1).ne(0).sum().item<double>();
    return n;
  };
  std::vector<int64_t> all_g(data.size());
  for (int64_t g = 0; g < data.size(); ++g) all_g[g] = g;
  auto eval_loss = [&] {
    torch::NoGradGuard ng;
    double s = 0;
    const auto n = static_cast<int64_t>(shard.global.size());
    for (int64_t k = 0; k < n; k += std::max<int64_t>(1, o.batch_size)) {
      std::vector<int64_t> part;
      for (int64_t j = k; j < std::min(n, k + std::max<int64_t>(1, o.batch_size)); ++j) part.push_back(j);
      s += loss_sum(part).item<double>();
    }
    return reduce_sum(comm, s) / global_tokens(all_g);
  };

  E2eLog log;
  log.start_loss = eval_loss();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(o.lr).weight_decay(0));
  const int64_t B = std::max<int64_t>(1, o.batch_size);
  const int64_t spe = (data.size() + B - 1) / B;
  const int64_t total = std::max<int64_t>(1, spe * o.epochs);
  const int64_t warm = static_cast<int64_t>(std::ceil(o.warmup_ratio * static_cast<double>(total)));
  double lr_factor = 1.0;
  int64_t step = 0;
  for (int ep = 0; ep < o.epochs; ++ep) {
    const auto perm = permutation(data.size(), mix(mix(o.seed, 0xe2e), ep + 1));
    for (int64_t s = 0; s < spe; ++s, ++step) {
      std::vector<int64_t> batch_g, mine;
      for (int64_t k = s * B; k < std::min<int64_t>((s + 1) * B, data.size()); ++k) {
        batch_g.push_back(perm[k]);
        if (shard.local_of[perm[k]] >= 0) mine.push_back(shard.local_of[perm[k]]);
      }
      double lr = o.lr;
      if (step < warm) lr *= static_cast<double>(step + 1) / static_cast<double>(warm);
      else lr *= 0.5 * (1 + std::cos(M_PI * static_cast<double>(step - warm) / static_cast<double>(std::max<int64_t>(1, total - warm))));
      set_lr(opt, 0, lr * lr_factor);
      opt.zero_grad();
      double local = 0;
      if (!mine.empty()) {
        auto loss = loss_sum(mine) / global_tokens(batch_g);
        loss.backward();
        local = loss.item<double>();
      }
      const double sl = reduce_sum(comm, local);
      if (!(reduce_grads(params, comm) && std::isfinite(sl))) {
        ++log.nan_steps;
        lr_factor *= 0.5;
        spdlog::warn("E2E-QP step {}: non-finite loss or gradient; step discarded, learning rate halved", step);
        continue;
      }
      if (o.grad_clip > 0) torch::nn::utils::clip_grad_norm_(params, o.grad_clip);
      opt.step();
      ++log.steps;
    }
  }
  for (auto& p : params) p.set_requires_grad(false);
  // Re-pack with fp16 step sizes.
  for (auto& [bi, named] : swapped) {
    auto q = named.second->repack();
    q->to(device);
    r.blocks[bi]->set_linear(named.first, q);
  }
  log.end_loss = eval_loss();
  log.seconds = since(t0);
  spdlog::info("E2E-QP: {} steps, next-token loss {:.4f} -> {:.4f} ({:.1f} s)", log.steps, log.start_loss,
                 log.end_loss, log.seconds);
  r.e2e = log;
  r.seconds += log.seconds;
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
