// One Block-AP optimisation step on a random Llama block, as src/train/block_ap.cpp runs it:
//   x, target (B, T, C) fp16 caches -> fp32; forward of the fake-quantized block; loss = sum of
//   squared errors / (B * T * C); backward; the non-finite guard (every gradient concatenated
//   and checked); AdamW (no weight decay) over the linears' weights (lr 1e-5) and their scales
//   + zeros (lr 1e-4), with the cosine learning rate set per step.
// Two variants of the fake quantizer: `fused` = FakeQuantLinear as is (the hand-written CPU
// loop), `ops` = the same module with quant::fake_quant_torch_ops (plain LibTorch ops, same
// autograd semantics, bitwise-identical W^).
//
//   mpqat_bench_train [--hidden 4096] [--intermediate 11008] [--heads 32] [--kv-heads 32]
//                     [--context 2048] [--batch 1] [--bits 4] [--group 128] [--steps 3]
//                     [--threads 0 = every CPU of the affinity mask] [--variant fused|ops|both]
//                     [--device cpu|cuda]
// Defaults are a Llama-2-7B block at context 2048. Each variant runs in its own process (the
// binary runs itself with --variant X --machine), so that peak RSS (VmHWM) belongs to that
// variant alone. Prints a Markdown table (median of --steps steps after 1 warm-up step) and the
// extrapolation to EfficientQAT's Llama-2-7B Block-AP workload.
#include <torch/torch.h>

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpqat/model/config.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/model.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/quant/quantizer.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/util/error.h"
#include "bench_block.h"

namespace {

using mpqat::bench::median;
using mpqat::bench::status_mib;

using Clock = std::chrono::steady_clock;

struct Args {
  int64_t hidden = 4096, intermediate = 11008, heads = 32, kv_heads = 32;
  int64_t context = 2048, batch = 1;
  int bits = 4;
  int64_t group = 128;
  int steps = 3, threads = 0;  // 0 = every CPU this process may run on
  std::string variant = "both";
  std::string device = "cpu";  // or cuda: the block, caches and optimizer state on the GPU
  bool machine = false;  // child mode: print one RESULT line on stdout
};

// EfficientQAT's published Block-AP run for Llama-2-7B: 3.3 h on one A100 for 32 blocks x
// 2 epochs x 4096 samples x 2048 tokens.
constexpr double kPaperHours = 3.3;
constexpr double kPaperBlocks = 32, kPaperEpochs = 2, kPaperSamples = 4096, kPaperTokens = 2048;

// FakeQuantLinear whose forward quantizes with the plain LibTorch-ops path instead of the fused
// CPU loop. Same parameters, same init, same autograd semantics.
class OpsFakeQuantLinearImpl : public mpqat::quant::FakeQuantLinearImpl {
 public:
  using FakeQuantLinearImpl::FakeQuantLinearImpl;
  torch::Tensor forward(const torch::Tensor& x) override {
    return torch::linear(x, mpqat::quant::fake_quant_torch_ops(weight, scale, zero, spec()), bias);
  }
};

struct Result {
  std::string variant;
  int threads = 0;
  double step_s = 0, fwd_s = 0, bwd_s = 0, guard_s = 0, adam_s = 0, warmup_s = 0;
  double tokens_per_s = 0;
  double loss_first = 0, loss_last = 0;
  double base_mib = 0, setup_mib = 0, peak_mib = 0;  // VmHWM before the block, after setup, at the end
  double param_bytes = 0, grad_bytes = 0, adam_bytes = 0;
  int64_t trainable = 0;  // fp32 trainable values (weights + scales + zeros)
};

std::string to_line(const Result& r) {
  nlohmann::json j{{"variant", r.variant},       {"threads", r.threads},       {"step_s", r.step_s},
                   {"fwd_s", r.fwd_s},           {"bwd_s", r.bwd_s},           {"guard_s", r.guard_s},
                   {"adam_s", r.adam_s},         {"warmup_s", r.warmup_s},     {"tokens_per_s", r.tokens_per_s},
                   {"loss_first", r.loss_first}, {"loss_last", r.loss_last},   {"base_mib", r.base_mib},
                   {"setup_mib", r.setup_mib},   {"peak_mib", r.peak_mib},     {"param_bytes", r.param_bytes},
                   {"grad_bytes", r.grad_bytes}, {"adam_bytes", r.adam_bytes}, {"trainable", r.trainable}};
  return "RESULT " + j.dump();
}

Result from_json(const nlohmann::json& j) {
  Result r;
  r.variant = j.at("variant").get<std::string>();
  r.threads = j.at("threads").get<int>();
  r.step_s = j.at("step_s").get<double>();
  r.fwd_s = j.at("fwd_s").get<double>();
  r.bwd_s = j.at("bwd_s").get<double>();
  r.guard_s = j.at("guard_s").get<double>();
  r.adam_s = j.at("adam_s").get<double>();
  r.warmup_s = j.at("warmup_s").get<double>();
  r.tokens_per_s = j.at("tokens_per_s").get<double>();
  r.loss_first = j.at("loss_first").get<double>();
  r.loss_last = j.at("loss_last").get<double>();
  r.base_mib = j.at("base_mib").get<double>();
  r.setup_mib = j.at("setup_mib").get<double>();
  r.peak_mib = j.at("peak_mib").get<double>();
  r.param_bytes = j.at("param_bytes").get<double>();
  r.grad_bytes = j.at("grad_bytes").get<double>();
  r.adam_bytes = j.at("adam_bytes").get<double>();
  r.trainable = j.at("trainable").get<int64_t>();
  return r;
}

mpqat::model::ModelConfig block_config(const Args& a) {
  return mpqat::bench::llama_block_config(a.hidden, a.intermediate, a.heads, a.kv_heads, a.context, 32000);
}

// Runs warm-up + a.steps Block-AP steps of one variant in this process.
Result run_variant(const Args& a, const std::string& variant) {
  namespace quant = mpqat::quant;
  Result r;
  r.variant = variant;
  r.threads = at::get_num_threads();
  torch::manual_seed(0);
  (void)torch::ones({8}).sum().item<float>();  // LibTorch's lazy initialisation, before the baseline
  r.base_mib = status_mib("VmHWM:");

  const auto cfg = block_config(a);
  const int64_t B = a.batch, T = a.context, C = cfg.hidden_size;
  const quant::QuantSpec spec{a.bits, a.group, false};
  quant::validate_spec(spec, "--bits / --group");

  // Float block, calibration input and its float target, kept as fp16 caches like Block-AP's.
  const torch::Device dev(a.device == "cuda" ? torch::Device(torch::kCUDA, 0) : torch::Device(torch::kCPU));
  auto block = std::make_shared<mpqat::model::LlamaBlock>(cfg);
  block->reset_parameters();
  block->to(dev);
  block->eval();
  for (auto& p : block->parameters()) p.set_requires_grad(false);
  mpqat::model::RotaryEmbedding rope(cfg);
  mpqat::model::BlockContext ctx;
  ctx.batch = B;
  ctx.length = T;
  std::tie(ctx.cos, ctx.sin) = rope.get(0, T, dev);
  torch::Tensor Xc, Yc;  // (B, T, C) fp16
  {
    torch::NoGradGuard ng;
    auto x = torch::randn({B, T, C}).to(dev);
    Xc = x.to(torch::kHalf);
    Yc = block->run(Xc.to(torch::kFloat), ctx).to(torch::kHalf);
  }

  // Fake-quantize every linear (RTN init), as fake_quantize_block does.
  std::vector<std::shared_ptr<quant::FakeQuantLinearImpl>> fqs;
  for (const auto& [rel, lin] : block->linears()) {
    std::shared_ptr<quant::FakeQuantLinearImpl> fq;
    if (variant == "ops") fq = std::make_shared<OpsFakeQuantLinearImpl>(*lin, spec);
    else fq = std::make_shared<quant::FakeQuantLinearImpl>(*lin, spec);
    block->set_linear(rel, fq);
    fqs.push_back(fq);
  }
  std::vector<torch::Tensor> weights, qparams, params;
  for (const auto& fq : fqs) {
    weights.push_back(fq->weight);
    qparams.push_back(fq->scale);
    if (fq->zero.requires_grad()) qparams.push_back(fq->zero);
  }
  params = weights;
  params.insert(params.end(), qparams.begin(), qparams.end());
  for (auto& p : params) {
    p.set_requires_grad(true);
    r.trainable += p.numel();
    r.param_bytes += static_cast<double>(p.numel() * p.element_size());
  }

  const double lr_w = 1e-5, lr_q = 1e-4, min_ratio = 0.05;
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(weights, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(lr_w).weight_decay(0)));
  groups.emplace_back(qparams, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(lr_q).weight_decay(0)));
  torch::optim::AdamW opt(groups, torch::optim::AdamWOptions(lr_q).weight_decay(0));
  const double base_lr[2] = {lr_w, lr_q};
  r.setup_mib = status_mib("VmHWM:");

  const int total = a.steps + 1;
  const double denom = static_cast<double>(B * T * C);
  std::vector<double> t_step, t_fwd, t_bwd, t_guard, t_adam;
  for (int s = 0; s < total; ++s) {
    const double cosf = 0.5 * (1 + std::cos(M_PI * s / total));
    for (size_t g = 0; g < 2; ++g)
      static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[g].options())
          .lr(base_lr[g] * (min_ratio + (1 - min_ratio) * cosf));
    const auto t0 = Clock::now();
    opt.zero_grad();
    auto x = Xc.to(torch::kFloat), t = Yc.to(torch::kFloat);
    auto loss = (block->run(x, ctx) - t).pow(2).sum() / denom;
    const auto t1 = Clock::now();
    loss.backward();
    const double lv = loss.item<double>();
    const auto t2 = Clock::now();
    // Block-AP's guard: undefined grads -> zeros, all gradients concatenated, checked finite.
    std::vector<torch::Tensor> flat;
    for (const auto& p : params) {
      auto& gr = p.mutable_grad();
      if (!gr.defined()) gr = torch::zeros_like(p);
      flat.push_back(gr.reshape(-1));
    }
    const bool finite = torch::isfinite(torch::cat(flat)).all().item<bool>() && std::isfinite(lv);
    flat.clear();
    const auto t3 = Clock::now();
    if (finite) opt.step();
    if (dev.is_cuda()) torch::cuda::synchronize();
    const auto t4 = Clock::now();
    if (!finite) throw mpqat::Error("non-finite loss or gradient in the benchmark step " + std::to_string(s));
    const double step = std::chrono::duration<double>(t4 - t0).count();
    std::fprintf(stderr, "%s: %s step %d/%d %.2f s, loss %.6g\n", variant.c_str(), s == 0 ? "warm-up" : "timed",
                 s, a.steps, step, lv);
    if (s == 0) {
      r.loss_first = lv;
      r.warmup_s = step;
      continue;
    }
    r.loss_last = lv;
    t_step.push_back(step);
    t_fwd.push_back(std::chrono::duration<double>(t1 - t0).count());
    t_bwd.push_back(std::chrono::duration<double>(t2 - t1).count());
    t_guard.push_back(std::chrono::duration<double>(t3 - t2).count());
    t_adam.push_back(std::chrono::duration<double>(t4 - t3).count());
  }
  r.step_s = median(t_step);
  r.fwd_s = median(t_fwd);
  r.bwd_s = median(t_bwd);
  r.guard_s = median(t_guard);
  r.adam_s = median(t_adam);
  r.tokens_per_s = static_cast<double>(B * T) / r.step_s;
  for (const auto& p : params)
    if (p.grad().defined()) r.grad_bytes += static_cast<double>(p.grad().numel() * p.grad().element_size());
  for (const auto& kv : opt.state()) {
    const auto* st = dynamic_cast<const torch::optim::AdamWParamState*>(kv.second.get());
    if (st == nullptr) continue;
    for (const auto& t : {st->exp_avg(), st->exp_avg_sq(), st->max_exp_avg_sq()})
      if (t.defined()) r.adam_bytes += static_cast<double>(t.numel() * t.element_size());
  }
  r.peak_mib = status_mib("VmHWM:");
  return r;
}

// Runs this binary again for one variant and parses its RESULT line.
Result run_child(const Args& a, const std::string& variant) {
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) throw mpqat::Error("cannot read /proc/self/exe to start the per-variant process");
  exe[n] = '\0';
  std::ostringstream cmd;
  cmd << "'" << exe << "' --machine --variant " << variant << " --hidden " << a.hidden << " --intermediate "
      << a.intermediate << " --heads " << a.heads << " --kv-heads " << a.kv_heads << " --context " << a.context
      << " --batch " << a.batch << " --bits " << a.bits << " --group " << a.group << " --steps " << a.steps
      << " --threads " << a.threads << " --device " << a.device;
  FILE* p = ::popen(cmd.str().c_str(), "r");
  if (p == nullptr) throw mpqat::Error("cannot start the per-variant process: " + cmd.str());
  std::string out;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int rc = ::pclose(p);
  std::istringstream lines(out);
  std::string line;
  while (std::getline(lines, line))
    if (line.rfind("RESULT ", 0) == 0) return from_json(nlohmann::json::parse(line.substr(7)));
  throw mpqat::Error("the " + variant + " process (exit status " + std::to_string(rc) + ") printed no result");
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

void print_table(const Args& a, const std::vector<Result>& rs) {
  const int64_t head_dim = a.hidden / a.heads;
  std::printf("Block-AP step: Llama block hidden %lld, intermediate %lld, %lld heads / %lld kv heads (head_dim %lld), "
              "w%dg%lld, B=%lld x T=%lld, fp32 on CPU, %d threads; 1 warm-up step + median of %d\n",
              static_cast<long long>(a.hidden), static_cast<long long>(a.intermediate),
              static_cast<long long>(a.heads), static_cast<long long>(a.kv_heads), static_cast<long long>(head_dim),
              a.bits, static_cast<long long>(a.group), static_cast<long long>(a.batch),
              static_cast<long long>(a.context), rs.empty() ? 0 : rs.front().threads, a.steps);
  std::printf("Each variant in its own process; peak RSS = that process's VmHWM, base = VmHWM before the block "
              "was built (LibTorch loaded), setup = after block, caches, target and fake-quant init.\n\n");
  std::printf("| variant | step s | fwd s | bwd s | guard s | AdamW s | tokens/s | loss (warm-up / last) | "
              "base MiB | setup MiB | peak RSS MiB | peak - base MiB | params MiB | grads MiB | AdamW state MiB |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rs)
    std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.1f | %.6g / %.6g | %.0f | %.0f | %.0f | %.0f | %.1f | %.1f | "
                "%.1f |\n",
                r.variant.c_str(), r.step_s, r.fwd_s, r.bwd_s, r.guard_s, r.adam_s, r.tokens_per_s, r.loss_first,
                r.loss_last, r.base_mib, r.setup_mib, r.peak_mib, r.peak_mib - r.base_mib, mib(r.param_bytes),
                mib(r.grad_bytes), mib(r.adam_bytes));
  if (rs.size() == 2 && rs[1].step_s > 0)
    std::printf("\n%s / %s step time: %.2fx\n", rs[1].variant.c_str(), rs[0].variant.c_str(),
                rs[1].step_s / rs[0].step_s);

  const double work = kPaperBlocks * kPaperEpochs * kPaperSamples * kPaperTokens;
  const bool is7b = a.hidden == 4096 && a.intermediate == 11008 && a.heads == 32 && a.kv_heads == 32 &&
                    a.context == 2048;
  std::printf("\nEXTRAPOLATION (not measured): EfficientQAT's Llama-2-7B Block-AP workload = 32 blocks x 2 epochs x "
              "4096 samples x 2048 tokens = %.3g block-token passes; published: %.1f h on one A100.\n",
              work, kPaperHours);
  if (!is7b)
    std::printf("(this run's block is NOT the Llama-2-7B shape at context 2048: the hours below do not describe "
                "that workload)\n");
  for (const auto& r : rs)
    std::printf("  %s: %.3g / %.1f tokens/s = %.1f h on this CPU (%.0fx the A100 figure); training "
                "steps only (no target / validation forwards)\n",
                r.variant.c_str(), work, r.tokens_per_s, work / r.tokens_per_s / 3600.0,
                work / r.tokens_per_s / 3600.0 / kPaperHours);
}

const char* kUsage =
    "usage: %s [--hidden 4096] [--intermediate 11008] [--heads 32] [--kv-heads 32] [--context 2048] [--batch 1]\n"
    "          [--bits 4] [--group 128] [--steps 3] [--threads 0 (= all CPUs)] [--variant fused|ops|both]\n"
    "          [--device cpu|cuda]\n";

}  // namespace

int main(int argc, char** argv) {
  Args a;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string k = argv[i];
      const bool has = i + 1 < argc;
      if (k == "--machine") a.machine = true;
      else if (k == "--variant" && has) a.variant = argv[++i];
      else if (k == "--hidden" && has) a.hidden = std::stoll(argv[++i]);
      else if (k == "--intermediate" && has) a.intermediate = std::stoll(argv[++i]);
      else if (k == "--heads" && has) a.heads = std::stoll(argv[++i]);
      else if (k == "--kv-heads" && has) a.kv_heads = std::stoll(argv[++i]);
      else if (k == "--context" && has) a.context = std::stoll(argv[++i]);
      else if (k == "--batch" && has) a.batch = std::stoll(argv[++i]);
      else if (k == "--bits" && has) a.bits = std::stoi(argv[++i]);
      else if (k == "--group" && has) a.group = std::stoll(argv[++i]);
      else if (k == "--steps" && has) a.steps = std::stoi(argv[++i]);
      else if (k == "--threads" && has) a.threads = std::stoi(argv[++i]);
      else if (k == "--device" && has) a.device = argv[++i];
      else {
        std::fprintf(stderr, kUsage, argv[0]);
        return 2;
      }
    }
  } catch (const std::exception&) {
    std::fprintf(stderr, "error: option values must be integers\n");
    std::fprintf(stderr, kUsage, argv[0]);
    return 2;
  }
  if (a.device != "cpu" && a.device != "cuda") {
    std::fprintf(stderr, "error: --device '%s': accepted are cpu, cuda\n", a.device.c_str());
    return 2;
  }
  if (a.device == "cuda" && !torch::cuda::is_available()) {
    std::fprintf(stderr, "error: --device cuda: LibTorch sees no CUDA device\n");
    return 2;
  }
  if (a.variant != "fused" && a.variant != "ops" && a.variant != "both") {
    std::fprintf(stderr, "error: --variant '%s': accepted are fused, ops, both\n", a.variant.c_str());
    return 2;
  }
  if (a.hidden <= 0 || a.intermediate <= 0 || a.heads <= 0 || a.kv_heads <= 0 || a.context <= 0 || a.batch <= 0 ||
      a.steps < 1 || a.threads < 0) {
    std::fprintf(stderr, "error: shapes, --context and --batch must be positive, --steps >= 1, --threads >= 0\n");
    return 2;
  }
  try {
    // LibTorch's own default can be 1 (Debian's 1.13 build: omp_get_max_threads() = 1), so the
    // default is every CPU in this process's affinity mask; OpenBLAS (OpenMP build) follows it.
    if (a.threads == 0) {
      cpu_set_t set;
      CPU_ZERO(&set);
      a.threads = ::sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    }
    at::set_num_threads(a.threads);
    std::vector<Result> rs;
    if (a.variant == "both") {
      block_config(a);  // shape errors before any child starts
      mpqat::quant::validate_spec({a.bits, a.group, false}, "--bits / --group");
      rs.push_back(run_child(a, "fused"));
      rs.push_back(run_child(a, "ops"));
    } else {
      rs.push_back(run_variant(a, a.variant));
    }
    if (a.machine) {
      std::printf("%s\n", to_line(rs.front()).c_str());
      return 0;
    }
    print_table(a, rs);
    return 0;
  } catch (const mpqat::InputError& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
