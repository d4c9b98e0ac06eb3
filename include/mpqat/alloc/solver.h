// Multiple-choice knapsack (MCKP): pick exactly one option per class, minimise the summed
// value subject to summed cost <= capacity. Costs are exact integers (bytes), values doubles.
// No torch here. docs/allocation.md proves the DP exact.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mpqat::alloc {

struct McOption {
  uint64_t cost = 0;
  double value = 0;
};

struct McResult {
  bool feasible = false;
  std::vector<int> choice;  // option index per class (indices into the caller's lists)
  uint64_t cost = 0;
  double value = 0;
  double lower_bound = 0;   // best Lagrangian dual bound seen (<= optimum)
  double lambda = 0;        // multiplier of the Lagrangian solution
  double dual_lambda = 0;   // multiplier of lower_bound
  std::size_t max_front = 0;  // DP: largest Pareto front held
  std::size_t states = 0;     // DP: states generated in all
};

// Exact optimum: dynamic programming over the Pareto front of (cost, value) per prefix of
// classes, pruned by (a) dominance, (b) capacity minus the cheapest completion, (c) a
// Lagrangian lower bound against the Lagrangian feasible incumbent. Every pruned state
// provably cannot complete to a strictly better solution, so the result is optimal.
// Throws Error when the front would exceed `max_states` (use the Lagrangian solver then).
McResult solve_mckp_dp(const std::vector<std::vector<McOption>>& classes, uint64_t capacity,
                       std::size_t max_states = 20'000'000);

// Lagrangian relaxation: bisection on lambda for min sum(value + lambda * cost); returns the
// feasible side (cost <= capacity). Optimal on the convex hull only: its value minus the DP's
// is the gap (>= 0), and lower_bound is a valid dual bound.
McResult solve_mckp_lagrangian(const std::vector<std::vector<McOption>>& classes, uint64_t capacity);

// Enumerates every combination (tests only: product of menu sizes must be small).
McResult solve_mckp_brute(const std::vector<std::vector<McOption>>& classes, uint64_t capacity);

// Sum of the cheapest / dearest option cost per class.
uint64_t mckp_min_cost(const std::vector<std::vector<McOption>>& classes);
uint64_t mckp_max_cost(const std::vector<std::vector<McOption>>& classes);

}  // namespace mpqat::alloc
