// E2E-QP with block-wise recomputation (include/mpqat/train/e2e_qp.h).
#include "mpqat/train/e2e_qp.h"

#include <chrono>
#include <cmath>

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "mpqat/dist/communicator.h"
#include "mpqat/model/block_source.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/train/steps.h"
#include "mpqat/util/error.h"

namespace mpqat::train {

namespace {

using Clock = std::chrono::steady_clock;

// A packed linear whose integer codes are fixed and whose step sizes train:
// W^ = (q - Z) * s with s (out, groups) fp32. It holds the packed codes only (through a copy of
// the QuantLinear with unit scales, whose dequantize() is exactly q - Z) and dequantizes per
// forward, so a model of these weighs what the packed model weighs.
class StepSizeLinearImpl : public model::LinearImpl {
 public:
  explicit StepSizeLinearImpl(const quant::QuantLinearImpl& q)
      : model::LinearImpl(q.in_features(), q.out_features(), q.has_bias()), spec_(q.spec()) {
    torch::NoGradGuard ng;
    parameters_.erase("weight");
    weight = torch::Tensor();
    unit_ = std::make_shared<quant::QuantLinearImpl>(q.in_features(), q.out_features(), false, spec_);
    unit_->qweight.set_data(q.qweight);
    unit_->qzeros.set_data(q.qzeros);
    unit_->g_idx.set_data(q.g_idx);
    unit_->scales.set_data(torch::ones_like(q.scales));
    register_module("unit", unit_);  // moves with .to(device)
    scale = register_parameter("scale", q.scales.to(torch::kFloat).t().contiguous());  // (out, groups)
    if (q.has_bias()) bias.copy_(q.bias.detach());
  }
  torch::Tensor forward(const torch::Tensor& x) override {
    torch::Tensor qz;
    {
      torch::NoGradGuard ng;
      qz = unit_->dequantize();  // (out, in): q - Z, exact in fp32
    }
    auto w = qz * scale.index_select(1, unit_->g_idx.to(torch::kLong).to(scale.device()));
    return torch::linear(x, w, bias);
  }
  // The packed module with fp16 step sizes: the same codes and zeros, new scales.
  quant::QuantLinearPtr repack() const {
    torch::NoGradGuard ng;
    auto q = std::make_shared<quant::QuantLinearImpl>(in_features(), out_features(), has_bias(), spec_);
    q->qweight.set_data(unit_->qweight);
    q->qzeros.set_data(unit_->qzeros);
    q->g_idx.set_data(unit_->g_idx);
    q->scales.set_data(scale.detach().clamp(1e-4, 1e4).to(torch::kHalf).t().contiguous());
    if (has_bias()) q->bias.copy_(bias.detach());
    return q;
  }
  torch::Tensor scale;

 private:
  quant::QuantSpec spec_;
  quant::QuantLinearPtr unit_;
};

// A block's QuantLinear swapped for a step-size-trainable one.
struct SwappedLinear {
  size_t block;
  std::string rel;
  std::shared_ptr<StepSizeLinearImpl> linear;
};

// Every QuantLinear becomes a StepSizeLinear whose step sizes (only) train; all else is frozen.
std::vector<SwappedLinear> swap_in_step_sizes(QatResult& r, const torch::Device& device) {
  std::vector<SwappedLinear> swapped;
  for (size_t bi = 0; bi < r.blocks.size(); ++bi) {
    for (auto& p : r.blocks[bi]->parameters()) p.set_requires_grad(false);
    for (const auto& [rel, lin] : r.blocks[bi]->linears())
      if (auto q = std::dynamic_pointer_cast<quant::QuantLinearImpl>(lin)) {
        auto s = std::make_shared<StepSizeLinearImpl>(*q);
        s->to(device);
        r.blocks[bi]->set_linear(rel, s);
        for (auto& p : s->parameters()) p.set_requires_grad(false);
        s->scale.set_requires_grad(true);
        swapped.push_back({bi, rel, s});
      }
  }
  if (swapped.empty()) throw InputError("E2E-QP: the model has no quantized linear");
  for (auto& p : r.shell->parameters()) p.set_requires_grad(false);
  return swapped;
}

// Back to packed QuantLinears, with the trained step sizes stored in fp16.
void repack_step_sizes(QatResult& r, const std::vector<SwappedLinear>& swapped, const torch::Device& device) {
  for (const auto& w : swapped) {
    auto q = w.linear->repack();
    q->to(device);
    r.blocks[w.block]->set_linear(w.rel, q);
  }
}

}  // namespace

void e2e_qp(QatResult& r, const TokenBatch& data, const E2eOptions& o, dist::Communicator* comm) {
  const auto t0 = Clock::now();
  if (!r.shell->is_causal_lm())
    throw InputError("E2E-QP trains on next-token loss and needs a causal language model (this is a classifier)");
  if (data.size() < 1) throw InputError("E2E-QP needs at least one sequence");
  const int world = world_of(comm), rank = rank_of(comm);
  const Shard shard = make_shard(data, rank, world);
  const auto device = r.shell->parameters().empty() ? torch::Device(torch::kCPU) : r.shell->parameters()[0].device();
  const int64_t nb = static_cast<int64_t>(r.blocks.size());
  const int64_t L = data.ids.size(1), C = r.config.hidden_size;

  std::vector<SwappedLinear> swapped = swap_in_step_sizes(r, device);
  std::vector<torch::Tensor> params;
  for (auto& w : swapped) params.push_back(w.linear->scale);

  struct Batch {
    torch::Tensor ids, mask;
    model::BlockContext ctx;
  };
  auto batch_of = [&](const std::vector<int64_t>& local) {
    Batch b;
    auto idx = torch::tensor(local, torch::kLong);
    b.ids = shard.ids.index_select(0, idx).to(device);
    if (shard.mask.defined()) b.mask = shard.mask.index_select(0, idx).to(device);
    b.ctx = r.shell->context(b.ids, b.mask);
    return b;
  };
  // Sum of next-token cross-entropy over the batch from the last hidden state h (B, T, C).
  auto loss_sum = [&](const Batch& b, const torch::Tensor& h) {
    auto logits = r.shell->head(h, b.ctx);
    const int64_t T = b.ids.size(1);
    auto lg = logits.narrow(1, 0, T - 1).reshape({-1, logits.size(-1)});
    auto tgt = b.ids.narrow(1, 1, T - 1).reshape({-1});
    auto ce = torch::nn::functional::cross_entropy(
        lg, tgt, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
    if (b.mask.defined()) ce = ce * b.mask.narrow(1, 1, T - 1).reshape({-1}).to(torch::kFloat);
    return ce.sum();
  };
  auto global_tokens = [&](const std::vector<int64_t>& gs) {
    if (!data.mask.defined()) return static_cast<double>(gs.size()) * static_cast<double>(L - 1);
    double n = 0;
    for (auto g : gs) n += data.mask[g].narrow(0, 1, L - 1).ne(0).sum().item<double>();
    return n;
  };
  std::vector<int64_t> all_g(data.size());
  for (int64_t g = 0; g < data.size(); ++g) all_g[g] = g;
  const int64_t B = std::max<int64_t>(1, o.batch_size);
  auto eval_loss = [&] {
    torch::NoGradGuard ng;
    double s = 0;
    const auto n = static_cast<int64_t>(shard.global.size());
    for (int64_t k = 0; k < n; k += B) {
      std::vector<int64_t> part;
      for (int64_t j = k; j < std::min(n, k + B); ++j) part.push_back(j);
      const auto b = batch_of(part);
      auto h = r.shell->embed(b.ids, b.ctx);
      for (auto& blk : r.blocks) h = blk->run(h, b.ctx);
      s += loss_sum(b, h).item<double>();
    }
    return reduce_sum(comm, s) / global_tokens(all_g);
  };
  model::CacheBudget budget(o.cache);

  E2eLog log;
  log.start_loss = eval_loss();
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(o.lr).weight_decay(0));
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
      set_lr(opt, 0, o.lr * cosine_factor(step, total, warm) * lr_factor);
      opt.zero_grad();
      double local = 0;
      if (!mine.empty()) {
        const auto b = batch_of(mine);
        const int64_t k = static_cast<int64_t>(mine.size());
        std::vector<int64_t> rows(static_cast<size_t>(k));
        for (int64_t j = 0; j < k; ++j) rows[static_cast<size_t>(j)] = j;
        // Forward without autograd, caching every block's input.
        std::vector<std::unique_ptr<model::ActivationCache>> xs;
        torch::Tensor h;
        {
          torch::NoGradGuard ng;
          h = r.shell->embed(b.ids, b.ctx);
          for (int64_t i = 0; i < nb; ++i) {
            xs.push_back(std::make_unique<model::ActivationCache>(budget, k, L, C, "e2e-block-input"));
            xs.back()->put(rows, h);
            h = r.blocks[static_cast<size_t>(i)]->run(h, b.ctx);
          }
        }
        // The loss and its gradient at the top, then the blocks downward.
        torch::Tensor g;
        {
          auto top = h.detach().requires_grad_(true);
          auto loss = loss_sum(b, top) / global_tokens(batch_g);
          loss.backward();
          local = loss.item<double>();
          g = top.grad();
        }
        for (int64_t i = nb - 1; i >= 0; --i) {
          g = model::block_backward(*r.blocks[static_cast<size_t>(i)], xs[static_cast<size_t>(i)]->get(rows, device),
                                    b.ctx, g, /*input_grad=*/i > 0);
          xs[static_cast<size_t>(i)].reset();
        }
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
  repack_step_sizes(r, swapped, device);
  log.end_loss = eval_loss();
  log.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  spdlog::info("E2E-QP: {} steps, next-token loss {:.4f} -> {:.4f} ({:.1f} s)", log.steps, log.start_loss,
               log.end_loss, log.seconds);
  r.e2e = log;
  r.seconds += log.seconds;
}

}  // namespace mpqat::train
