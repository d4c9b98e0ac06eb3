// GPTQ block by block (include/mpqat/train/gptq.h, docs/quantization.md).
#include "mpqat/train/gptq.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "mpqat/dist/communicator.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/train/block_runner.h"
#include "mpqat/util/error.h"
#include "mpqat/util/memory.h"

using nlohmann::json;

namespace mpqat::train {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Records which tensor each linear reads (the tensor is kept alive, so its storage cannot be
// reused by a later input during the probe).
class ProbeLinear : public model::LinearImpl {
 public:
  ProbeLinear(model::LinearPtr inner, std::string name, std::vector<std::pair<std::string, torch::Tensor>>* calls)
      : model::LinearImpl(inner->in_features(), inner->out_features(), false),
        inner_(std::move(inner)),
        name_(std::move(name)),
        calls_(calls) {}
  torch::Tensor forward(const torch::Tensor& x) override {
    calls_->emplace_back(name_, x);
    return inner_->forward(x);
  }

 private:
  model::LinearPtr inner_;
  std::string name_;
  std::vector<std::pair<std::string, torch::Tensor>>* calls_;
};

// Thrown by CaptureLinear once it has recorded its input: the rest of the block is not needed.
struct StopForward {};

// Accumulates X^T X (fp64) of its input over the valid positions, then stops the forward.
class CaptureLinear : public model::LinearImpl {
 public:
  CaptureLinear(const model::LinearImpl& like, torch::Tensor* h, double* rows)
      : model::LinearImpl(like.in_features(), like.out_features(), false), h_(h), rows_(rows) {}
  torch::Tensor mask;  // (k, L) of the current chunk, undefined = all tokens
  torch::Tensor forward(const torch::Tensor& x) override {
    auto x2 = x.reshape({-1, in_features_});
    if (mask.defined()) x2 = x2.index_select(0, mask.reshape({-1}).ne(0).nonzero().squeeze(1));
    auto xd = x2.to(torch::kDouble);
    h_->addmm_(xd.t(), xd);
    *rows_ += static_cast<double>(x2.size(0));
    throw StopForward{};
  }

 private:
  torch::Tensor* h_;
  double* rows_;
};

const quant::ModulePlan* planned(const quant::BitPlan& plan, const std::string& name) {
  auto it = plan.modules.find(name);
  return it != plan.modules.end() && it->second.quantized() ? &it->second : nullptr;
}

}  // namespace

std::vector<std::vector<std::string>> sequential_groups(model::Block& block, model::TransformerModel& shell,
                                                        torch::Device device) {
  torch::NoGradGuard ng;
  const auto originals = block.linears();
  std::vector<std::pair<std::string, torch::Tensor>> calls;
  for (const auto& [rel, lin] : originals) block.set_linear(rel, std::make_shared<ProbeLinear>(lin, rel, &calls));
  std::vector<std::vector<std::string>> groups;
  try {
    auto ids = torch::zeros({1, 2}, torch::TensorOptions().dtype(torch::kLong).device(device));
    auto ctx = shell.context(ids, torch::Tensor());
    auto hidden = shell.embed(ids, ctx);
    block.run(hidden, ctx);
  } catch (...) {
    for (const auto& [rel, lin] : originals) block.set_linear(rel, lin);
    throw;
  }
  for (const auto& [rel, lin] : originals) block.set_linear(rel, lin);
  std::vector<const void*> keys;  // storage of each group's input
  std::set<std::string> seen;
  for (const auto& [name, x] : calls) {
    if (!seen.insert(name).second) continue;  // a linear called twice belongs to its first group
    const void* key = x.data_ptr();
    size_t g = 0;
    while (g < keys.size() && keys[g] != key) ++g;
    if (g == keys.size()) {
      keys.push_back(key);
      groups.emplace_back();
    }
    groups[g].push_back(name);
  }
  for (const auto& [rel, lin] : originals)
    if (!seen.count(rel)) groups.push_back({rel});  // not called by this forward: alone, last
  // Inside a group, the block's own order (linears()).
  std::map<std::string, size_t> order;
  for (const auto& [rel, lin] : originals) order.emplace(rel, order.size());
  for (auto& g : groups) std::sort(g.begin(), g.end(), [&](const auto& a, const auto& b) { return order[a] < order[b]; });
  return groups;
}

GptqBlockLog gptq_block(model::Block& block, int64_t index, const std::string& prefix, const quant::BitPlan& plan,
                        const BlockRunner& run, const model::ActivationCache& x, const GptqRunOptions& o) {
  torch::NoGradGuard ng;
  const auto t_block = Clock::now();
  GptqBlockLog log;
  log.block = index;
  const auto groups = sequential_groups(block, run.shell, run.device);
  const auto chunks = BlockRunner::chunks(x.items(), std::max<int64_t>(1, o.chunk));
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    std::vector<std::string> todo;
    for (const auto& rel : groups[gi])
      if (planned(plan, prefix + rel)) todo.push_back(rel);
    if (todo.empty()) continue;
    // The group's Hessian: every rank's valid tokens, the forward stopped at the group's input.
    auto first = block.linear(todo.front());
    const int64_t in = first->in_features();
    auto H = torch::zeros({in, in}, torch::TensorOptions().dtype(torch::kDouble).device(run.device));
    double rows = 0;
    auto cap = std::make_shared<CaptureLinear>(*first, &H, &rows);
    block.set_linear(todo.front(), cap);
    for (const auto& local : chunks) {
      cap->mask = run.mask(local);
      try {
        block.run(x.get(local, run.device), run.ctx(local));
      } catch (const StopForward&) {
      }
    }
    block.set_linear(todo.front(), first);
    if (o.comm && o.comm->distributed()) {
      o.comm->all_reduce_sum(H);
      rows = o.comm->all_reduce_sum(rows);
    }
    if (rows <= 0)
      throw InputError("GPTQ block " + std::to_string(index) + ": no calibration tokens reached '" + prefix +
                       todo.front() + "'");
    H.mul_(2.0 / rows);
    log.tokens = rows;
    for (const auto& rel : todo) {
      const auto t0 = Clock::now();
      auto lin = block.linear(rel);
      const auto spec = planned(plan, prefix + rel)->spec();
      auto r = quant::gptq_quantize(lin->weight, H, spec, o.gptq, o.init, prefix + rel);
      auto q = quant::QuantLinearImpl::from_codes(r.codes, quant::zero_codes(r.zero, spec), r.scale,
                                                  lin->has_bias() ? lin->bias.detach() : torch::Tensor(), spec);
      q->g_idx.copy_(r.g_idx);
      q->to(run.device);
      block.set_linear(rel, q);
      GptqModuleLog ml;
      ml.name = rel;
      ml.spec = spec;
      ml.group = static_cast<int64_t>(gi);
      ml.proxy_loss = r.proxy_loss;
      ml.rtn_proxy_loss = r.rtn_proxy_loss;
      ml.damp = r.damp;
      ml.retries = r.retries;
      ml.dead_columns = r.dead_columns;
      ml.permuted_groups = !r.default_groups();
      ml.seconds = since(t0);
      log.modules.push_back(ml);
    }
  }
  for (auto& p : block.parameters()) p.set_requires_grad(false);
  log.seconds = since(t_block);
  return log;
}

GptqModelResult gptq_model(const model::ModelFolder& folder, const quant::BitPlan& plan, const TokenBatch& data,
                           const GptqRunOptions& o) {
  const auto t_all = Clock::now();
  if (quant::is_quantized_folder(folder.dir()))
    throw InputError("model folder '" + folder.dir() + "' is already quantized (GPTQ needs the float model)");
  if (data.size() < 1) throw InputError("GPTQ needs at least one calibration sequence");
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
  GptqModelResult res;
  auto& m = res.model;
  m.config = cfg;
  m.shell = model::load_any_model_shell(folder, {o.device});
  for (auto& p : m.shell->parameters()) p.set_requires_grad(false);
  const Shard shard = make_shard(data, rank, world);
  const BlockRunner runner{*m.shell, shard, o.device};
  const int64_t n_local = static_cast<int64_t>(shard.global.size()), L = data.ids.size(1);
  model::CacheBudget budget(o.cache);
  model::ActivationCache X(budget, n_local, L, cfg.hidden_size, "quantized-input");
  m.cache_disk_bytes = budget.on_disk();
  {
    torch::NoGradGuard ng;
    for (const auto& local : BlockRunner::chunks(n_local, std::max<int64_t>(1, o.chunk))) {
      auto idx = torch::tensor(local, torch::kLong);
      X.put(local, m.shell->embed(shard.ids.index_select(0, idx).to(o.device), runner.ctx(local)));
    }
  }
  for (int64_t bi = 0; bi < nb; ++bi) {
    auto block = model::load_any_block(folder, bi, {o.device});
    block->eval();
    for (auto& p : block->parameters()) p.set_requires_grad(false);
    const auto t0 = Clock::now();
    auto log = gptq_block(*block, bi, model::family_block_prefix(cfg, bi), plan, runner, X, o);
    runner.apply(*block, X, std::max<int64_t>(1, o.chunk));  // the quantized chain moves on
    log.seconds = since(t0);
    double gptq = 0, rtn = 0;
    for (const auto& ml : log.modules) gptq += ml.proxy_loss, rtn += ml.rtn_proxy_loss;
    spdlog::info("GPTQ block {}/{}: {} linears, proxy loss {:.4g} (RTN {:.4g}), {:.1f} s", bi + 1, nb,
                 log.modules.size(), gptq, rtn, log.seconds);
    m.blocks.push_back(block);
    res.logs.push_back(log);
    util::release_free_memory();
  }
  m.seconds = since(t_all);
  return res;
}

json gptq_log_to_json(const GptqBlockLog& l) {
  json mods = json::array();
  for (const auto& m : l.modules)
    mods.push_back({{"name", m.name},
                    {"bits", m.spec.bits},
                    {"group_size", m.spec.group_size},
                    {"sym", m.spec.sym},
                    {"group", m.group},
                    {"proxy_loss", m.proxy_loss},
                    {"rtn_proxy_loss", m.rtn_proxy_loss},
                    {"damp", m.damp},
                    {"damp_retries", m.retries},
                    {"dead_columns", m.dead_columns},
                    {"permuted_groups", m.permuted_groups},
                    {"seconds", m.seconds}});
  return {{"block", l.block}, {"gptq", {{"tokens", l.tokens}, {"modules", mods}, {"seconds", l.seconds}}}};
}

std::string gptq_log_jsonl(const std::vector<GptqBlockLog>& logs) {
  std::ostringstream os;
  for (const auto& l : logs) os << gptq_log_to_json(l).dump() << "\n";
  return os.str();
}

std::string gptq_summary_table(const std::vector<GptqBlockLog>& logs) {
  std::ostringstream os;
  os << fmt::format("{:>5} {:<24} {:>10} {:>12} {:>12} {:>7} {:>8}\n", "block", "module", "scheme", "GPTQ loss",
                    "RTN loss", "damp", "seconds");
  double secs = 0, g = 0, r = 0;
  for (const auto& l : logs) {
    for (const auto& m : l.modules) {
      os << fmt::format("{:>5} {:<24} {:>10} {:>12.4g} {:>12.4g} {:>7.3g} {:>8.2f}\n", l.block, m.name,
                        quant::spec_str(m.spec) + (m.permuted_groups ? "*" : ""), m.proxy_loss, m.rtn_proxy_loss,
                        m.damp, m.seconds);
      g += m.proxy_loss;
      r += m.rtn_proxy_loss;
    }
    secs += l.seconds;
  }
  os << fmt::format("total GPTQ time {:.1f} s; proxy loss tr((W-Q)H(W-Q)^T) {:.4g} vs RTN {:.4g}{}\n", secs, g, r,
                    r > 0 ? fmt::format(" ({:.1f}% of RTN)", 100.0 * g / r) : "");
  return os.str();
}

}  // namespace mpqat::train
