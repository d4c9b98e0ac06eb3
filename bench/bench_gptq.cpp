// GPTQ on one random Llama block, as `mpqat quantize --method gptq` runs it (train::gptq_block:
// the probe forward, per true-sequential group the forward up to the group's input with the fp64
// X^T X accumulation, the all-reduce-free solve of every linear, the QuantLinear swap), then the
// propagation of the block's inputs through the quantized block; beside it, Block-AP's
// optimisation step on the same block (fused fake-quant, forward + backward + AdamW).
//
//   mpqat_bench_gptq [--hidden 4096] [--intermediate 11008] [--heads 32] [--kv-heads 32]
//                    [--context 2048] [--seqs 2] [--target-seqs 128] [--bits 4] [--group 128]
//                    [--act-order] [--block-ap-steps 1] [--epochs 2] [--threads 0]
//
// Defaults: a Llama-2-7B block at context 2048. The Hessian statistics are gathered over --seqs
// sequences (measured) and scaled linearly to --target-seqs (the forwards and X^T X are linear in
// tokens; the solve does not depend on them). Block-AP: 1 warm-up step + median of
// --block-ap-steps steps of 1 x context tokens, scaled to --epochs epochs over --target-seqs
// sequences (training steps only). Prints a Markdown table; every extrapolated figure says so.
#include <torch/torch.h>

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "mpqat/model/activation_cache.h"
#include "mpqat/model/config.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/model.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/train/block_ap.h"
#include "mpqat/train/block_runner.h"
#include "mpqat/train/gptq.h"
#include "mpqat/train/steps.h"
#include "mpqat/util/error.h"
#include "bench_block.h"

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Args {
  int64_t hidden = 4096, intermediate = 11008, heads = 32, kv_heads = 32, context = 2048;
  int64_t seqs = 2, target_seqs = 128, group = 128;
  int bits = 4, block_ap_steps = 1, epochs = 2, threads = 0;
  bool act_order = false;
};

mpqat::model::ModelConfig config_of(const Args& a) {
  return mpqat::bench::llama_block_config(a.hidden, a.intermediate, a.heads, a.kv_heads, a.context, 1024);
}

// Seconds of one Block-AP step (median after a warm-up) on `block`'s float copy.
double block_ap_step(const Args& a, const mpqat::model::ModelConfig& cfg) {
  namespace quant = mpqat::quant;
  if (a.block_ap_steps < 1) return std::nan("");
  torch::manual_seed(1);
  auto block = std::make_shared<mpqat::model::LlamaBlock>(cfg);
  block->reset_parameters();
  block->eval();
  for (auto& p : block->parameters()) p.set_requires_grad(false);
  mpqat::model::RotaryEmbedding rope(cfg);
  mpqat::model::BlockContext ctx;
  ctx.batch = 1;
  ctx.length = a.context;
  std::tie(ctx.cos, ctx.sin) = rope.get(0, a.context, torch::kCPU);
  torch::Tensor x, y;
  {
    torch::NoGradGuard ng;
    x = torch::randn({1, a.context, cfg.hidden_size});
    y = block->run(x, ctx);
  }
  const quant::QuantSpec spec{a.bits, a.group, false};
  std::vector<torch::Tensor> w, q;
  for (const auto& [rel, lin] : block->linears()) {
    auto fq = std::make_shared<quant::FakeQuantLinearImpl>(*lin, spec);
    block->set_linear(rel, fq);
    w.push_back(fq->weight);
    q.push_back(fq->scale);
    q.push_back(fq->zero);
  }
  for (auto* v : {&w, &q})
    for (auto& p : *v) p.set_requires_grad(true);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(w, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-5).weight_decay(0)));
  groups.emplace_back(q, std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(1e-4).weight_decay(0)));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(1e-4).weight_decay(0));
  std::vector<double> t;
  for (int s = 0; s <= a.block_ap_steps; ++s) {
    const auto t0 = Clock::now();
    opt.zero_grad();
    auto loss = (block->run(x, ctx) - y).pow(2).sum() / static_cast<double>(x.numel());
    loss.backward();
    std::vector<torch::Tensor> all(w);
    all.insert(all.end(), q.begin(), q.end());
    if (!mpqat::train::reduce_grads(all, nullptr)) throw mpqat::Error("non-finite gradient in the Block-AP step");
    opt.step();
    const double sec = since(t0);
    std::fprintf(stderr, "Block-AP %s step: %.2f s, loss %.6g\n", s == 0 ? "warm-up" : "timed", sec,
                 loss.item<double>());
    if (s > 0) t.push_back(sec);
  }
  return mpqat::bench::median(t);
}

int run(const Args& a) {
  namespace quant = mpqat::quant;
  namespace train = mpqat::train;
  if (a.threads > 0) at::set_num_threads(a.threads);
  else {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) at::set_num_threads(CPU_COUNT(&set));
  }
  const auto cfg = config_of(a);
  torch::manual_seed(0);
  auto shell = mpqat::model::build_model(cfg);
  shell->eval();
  for (auto& p : shell->parameters()) p.set_requires_grad(false);
  auto block = shell->block(0);
  const std::string prefix = shell->block_prefix(0);
  quant::BitPlan plan;
  for (const auto& [rel, lin] : block->linears()) {
    quant::ModulePlan m;
    m.bits = a.bits;
    m.group_size = a.group;
    plan.modules[prefix + rel] = m;
  }
  // The calibration inputs: random token ids through the embedding, cached as Block-AP does.
  std::vector<std::vector<int32_t>> ids(a.seqs, std::vector<int32_t>(a.context));
  for (int64_t s = 0; s < a.seqs; ++s)
    for (int64_t t = 0; t < a.context; ++t) ids[s][t] = static_cast<int32_t>((s * 7919 + t * 104729) % 1024);
  const auto data = train::stack_sequences(ids);
  const auto shard = train::make_shard(data, 0, 1);
  const train::BlockRunner runner{*shell, shard, torch::kCPU};
  train::GptqRunOptions o;
  o.gptq.act_order = a.act_order;
  mpqat::model::CacheBudget budget(o.cache);
  mpqat::model::ActivationCache X(budget, a.seqs, a.context, cfg.hidden_size, "bench");
  {
    torch::NoGradGuard ng;
    for (const auto& local : train::BlockRunner::chunks(a.seqs, o.chunk))
      X.put(local, shell->embed(shard.ids.index_select(0, torch::tensor(local, torch::kLong)), runner.ctx(local)));
  }
  const double base = mpqat::bench::status_mib("VmHWM:");
  const auto t0 = Clock::now();
  const auto log = train::gptq_block(*block, 0, prefix, plan, runner, X, o);
  const double t_gptq = since(t0);
  const auto t1 = Clock::now();
  runner.apply(*block, X, o.chunk);
  const double t_prop = since(t1);
  const double peak = mpqat::bench::status_mib("VmHWM:");

  double solve = 0;
  for (const auto& m : log.modules) solve += m.seconds;
  const double stats = t_gptq - solve;  // probe + forwards to each group's input + X^T X
  const double scale = static_cast<double>(a.target_seqs) / static_cast<double>(a.seqs);
  const double tokens = static_cast<double>(a.seqs * a.context);
  std::printf("GPTQ of one Llama block: hidden %lld, intermediate %lld, %lld heads / %lld kv heads, w%dg%lld%s, "
              "fp32 on CPU, %d threads; Hessians over %lld x %lld tokens (measured)\n\n",
              static_cast<long long>(a.hidden), static_cast<long long>(a.intermediate),
              static_cast<long long>(a.heads), static_cast<long long>(a.kv_heads), a.bits,
              static_cast<long long>(a.group), a.act_order ? " act-order" : "", at::get_num_threads(),
              static_cast<long long>(a.seqs), static_cast<long long>(a.context));
  std::printf("| module | shape (out x in) | solve s | GPTQ / RTN proxy loss |\n|---|---|---:|---:|\n");
  for (const auto& m : log.modules) {
    auto lin = block->linear(m.name);
    std::printf("| %s | %lld x %lld | %.2f | %.3f |\n", m.name.c_str(), static_cast<long long>(lin->out_features()),
                static_cast<long long>(lin->in_features()), m.seconds,
                m.rtn_proxy_loss > 0 ? m.proxy_loss / m.rtn_proxy_loss : std::nan(""));
  }
  std::printf("\n| part | measured s (%.0f tokens) | at %lld x %lld tokens (extrapolated, linear in tokens) |\n",
              tokens, static_cast<long long>(a.target_seqs), static_cast<long long>(a.context));
  std::printf("|---|---:|---:|\n");
  std::printf("| Hessian statistics (forwards to each group's input + fp64 X^T X) | %.1f | %.0f |\n", stats,
              stats * scale);
  std::printf("| solve, 7 linears, with the proxy-loss measure (does not depend on tokens) | %.1f | %.1f |\n", solve, solve);
  std::printf("| propagation through the quantized block | %.1f | %.0f |\n", t_prop, t_prop * scale);
  std::printf("| **GPTQ, one block** | **%.1f** | **%.0f** |\n", t_gptq + t_prop,
              (stats + t_prop) * scale + solve);
  std::printf("\npeak RSS during GPTQ: %.0f MiB (%.0f MiB before it: model shell, block, input cache)\n", peak, base);
  const double step = block_ap_step(a, cfg);
  if (std::isfinite(step)) {
    const double steps = static_cast<double>(a.epochs) * static_cast<double>(a.target_seqs);
    std::printf("\nBlock-AP on the same block: %.1f s per step of 1 x %lld tokens (median of %d after a warm-up); "
                "%d epochs over %lld x %lld tokens = %.0f steps = %.0f s (extrapolated; training steps only, no "
                "target / validation forwards) = %.0fx GPTQ's time for the block\n",
                step, static_cast<long long>(a.context), a.block_ap_steps, a.epochs,
                static_cast<long long>(a.target_seqs), static_cast<long long>(a.context), steps, steps * step,
                steps * step / ((stats + t_prop) * scale + solve));
  }
  return 0;
}

const char* kUsage =
    "usage: %s [--hidden 4096] [--intermediate 11008] [--heads 32] [--kv-heads 32] [--context 2048] [--seqs 2]\n"
    "          [--target-seqs 128] [--bits 4] [--group 128] [--act-order] [--block-ap-steps 1] [--epochs 2]\n"
    "          [--threads 0 (= all CPUs)]\n";

}  // namespace

int main(int argc, char** argv) {
  Args a;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      const bool has = i + 1 < argc;
      auto num = [&] { return std::stoll(argv[++i]); };
      if (k == "--act-order") a.act_order = true;
      else if (k == "--hidden" && has) a.hidden = num();
      else if (k == "--intermediate" && has) a.intermediate = num();
      else if (k == "--heads" && has) a.heads = num();
      else if (k == "--kv-heads" && has) a.kv_heads = num();
      else if (k == "--context" && has) a.context = num();
      else if (k == "--seqs" && has) a.seqs = num();
      else if (k == "--target-seqs" && has) a.target_seqs = num();
      else if (k == "--bits" && has) a.bits = static_cast<int>(num());
      else if (k == "--group" && has) a.group = num();
      else if (k == "--block-ap-steps" && has) a.block_ap_steps = static_cast<int>(num());
      else if (k == "--epochs" && has) a.epochs = static_cast<int>(num());
      else if (k == "--threads" && has) a.threads = static_cast<int>(num());
      else {
        std::fprintf(stderr, "error: unknown option '%s'\n", k.c_str());
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    }
  } catch (const std::exception&) {
    std::fprintf(stderr, "error: option values must be integers\n");
    std::fprintf(stderr, kUsage, argv[0]);
    return 2;
  }
  if (a.seqs < 1 || a.target_seqs < 1 || a.context < 2 || a.hidden % a.heads != 0) {
    std::fprintf(stderr, "error: --seqs, --target-seqs >= 1, --context >= 2, --hidden divisible by --heads\n");
    return 2;
  }
  try {
    return run(a);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
