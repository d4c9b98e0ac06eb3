// Shared pieces of the training loops (include/mpqat/train/steps.h).
#include "mpqat/train/steps.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "mpqat/dist/communicator.h"
#include "mpqat/train/block_ap.h"
#include "mpqat/util/error.h"

namespace mpqat::train {

int world_of(dist::Communicator* c) { return c ? c->world_size() : 1; }
int rank_of(dist::Communicator* c) { return c ? c->rank() : 0; }
double reduce_sum(dist::Communicator* c, double v) { return c && c->distributed() ? c->all_reduce_sum(v) : v; }
void barrier(dist::Communicator* c) {
  if (c && c->distributed()) c->barrier();
}

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

double cosine_factor(int64_t step, int64_t total, int64_t warmup, double min_ratio, bool at_last) {
  if (warmup > 0 && step < warmup) return static_cast<double>(step + 1) / static_cast<double>(warmup);
  const int64_t span = std::max<int64_t>(1, total - warmup - (at_last ? 1 : 0));
  // The order of operations is part of the contract: a checkpoint trained before this function
  // existed is reproduced bit for bit.
  double cosf;
  if (at_last) {
    const double t = std::clamp(static_cast<double>(step - warmup) / static_cast<double>(span), 0.0, 1.0);
    cosf = 0.5 * (1 + std::cos(M_PI * t));
  } else {
    cosf = 0.5 * (1 + std::cos(M_PI * static_cast<double>(step - warmup) / static_cast<double>(span)));
  }
  return min_ratio + (1 - min_ratio) * cosf;
}

std::vector<int> equalize_epochs(const std::vector<int>& epochs, int64_t total) {
  const auto n = static_cast<int64_t>(epochs.size());
  if (n == 0) return {};
  if (total < n)
    throw InputError("SGRA at equal steps: " + std::to_string(total) + " epochs cannot give each of " +
                     std::to_string(n) + " blocks at least one");
  int64_t sum = 0;
  for (int e : epochs) {
    if (e < 1) throw InputError("SGRA at equal steps: every block needs at least one epoch, got " + std::to_string(e));
    sum += e;
  }
  std::vector<int> out(epochs.size());
  std::vector<double> rem(epochs.size());  // exact share minus what was given (negative when clamped to 1)
  int64_t given = 0;
  for (std::size_t i = 0; i < epochs.size(); ++i) {
    const double share = static_cast<double>(epochs[i]) * static_cast<double>(total) / static_cast<double>(sum);
    out[i] = std::max(1, static_cast<int>(std::floor(share + 1e-9)));
    rem[i] = share - out[i];
    given += out[i];
  }
  // Short: one more to the largest remainders (ties: the larger entry). Over (the minimum of 1
  // overshot): one less from the largest, among equals the one with the smaller entry. Both keep
  // the entries' order.
  while (given < total) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < out.size(); ++i)
      if (rem[i] > rem[best] || (rem[i] == rem[best] && epochs[i] > epochs[best])) best = i;
    ++out[best], rem[best] -= 1, ++given;
  }
  while (given > total) {
    std::size_t best = 0;
    for (std::size_t i = 1; i < out.size(); ++i)
      if (out[i] > out[best] || (out[i] == out[best] && epochs[i] < epochs[best])) best = i;
    --out[best], rem[best] += 1, --given;
  }
  return out;
}

}  // namespace mpqat::train
