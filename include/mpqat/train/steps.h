// Pieces every training loop of the train layer shares (Block-AP, E2E-QP, fit): a rank's share
// of the calibration sequences, seeded permutations, the gradient all-reduce with its finiteness
// check, and the learning-rate schedules.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace mpqat::dist {
class Communicator;
}

namespace mpqat::train {

struct TokenBatch;

int world_of(dist::Communicator* c);
int rank_of(dist::Communicator* c);
// Sum over ranks (identity in one process).
double reduce_sum(dist::Communicator* c, double v);
void barrier(dist::Communicator* c);

// Seeded permutation of 0..n-1, independent of the standard library's distributions.
std::vector<int64_t> permutation(int64_t n, uint64_t seed);
// Combines two seeds (per block, per epoch).
uint64_t mix(uint64_t a, uint64_t b);

// This rank's sequences: global indices g with g % world == rank.
struct Shard {
  std::vector<int64_t> global;    // global index of each local sequence
  torch::Tensor ids, mask;        // local (n, L)
  std::vector<int64_t> local_of;  // global -> local position (-1 = other rank)
};
Shard make_shard(const TokenBatch& data, int rank, int world);

// Sums gradients over ranks (the loss is already divided by the global element count), making
// undefined gradients zero first. Returns false when any gradient is not finite.
bool reduce_grads(const std::vector<torch::Tensor>& params, dist::Communicator* comm);

// SGRA at equal optimisation steps (allocation.sgra.equal_steps): `epochs` (one entry per
// trained block, each >= 1) rescaled in proportion so that they sum to `total` (>= their count):
// floor of each share, at least 1, the rest to the largest remainders (ties: lower index), or
// taken from the largest entries when the minimum of 1 overshoots. The order of the entries is
// kept (a block with more SGRA epochs never gets fewer than one with less).
std::vector<int> equalize_epochs(const std::vector<int>& epochs, int64_t total);


// Learning rate of parameter group `group`.
void set_lr(torch::optim::Optimizer& opt, size_t group, double lr);

// The lr factor at `step` of `total`: linear warm-up over the first `warmup` steps ((step + 1) /
// warmup), then cosine from 1 down to `min_ratio` over the remaining steps (t = (step - warmup) /
// (total - warmup); at_last: / (total - warmup - 1) and clamped, so the last step is at the floor).
double cosine_factor(int64_t step, int64_t total, int64_t warmup = 0, double min_ratio = 0.0, bool at_last = false);

}  // namespace mpqat::train
