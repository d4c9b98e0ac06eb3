// MCKP solvers: exact Pareto-front DP with bound pruning, Lagrangian bisection, brute force.
#include "mpqat/alloc/solver.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "mpqat/util/error.h"

namespace mpqat::alloc {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Lagr {
  std::vector<int> choice;
  uint64_t cost = 0;
  double value = 0;
  double dual = 0;  // sum_j min_o (v + lambda c) - lambda * capacity
};

// Per-class argmin of value + lambda * cost; ties go to the cheaper option, then the lower index,
// so a large lambda always reaches the cheapest selection.
Lagr lagrangian_eval(const std::vector<std::vector<McOption>>& classes, uint64_t capacity, double lambda) {
  Lagr r;
  r.choice.resize(classes.size());
  double dual = 0;
  for (std::size_t j = 0; j < classes.size(); ++j) {
    const auto& cl = classes[j];
    int best = 0;
    double bv = kInf;
    for (std::size_t o = 0; o < cl.size(); ++o) {
      const double v = cl[o].value + lambda * static_cast<double>(cl[o].cost);
      if (v < bv || (v == bv && cl[o].cost < cl[best].cost)) {
        bv = v;
        best = static_cast<int>(o);
      }
    }
    r.choice[j] = best;
    r.cost += cl[best].cost;
    r.value += cl[best].value;
    dual += bv;
  }
  r.dual = dual - lambda * static_cast<double>(capacity);
  return r;
}

// Spends leftover capacity: repeatedly applies the single-class switch with the best value
// decrease per extra byte that still fits (then per absolute decrease), until none helps.
void greedy_fill(const std::vector<std::vector<McOption>>& classes, uint64_t capacity, McResult& r) {
  if (!r.feasible) return;
  for (int pass = 0; pass < 2; ++pass) {
    while (true) {
      int bj = -1, bo = -1;
      double best = 0;
      for (std::size_t j = 0; j < classes.size(); ++j) {
        const auto& cur = classes[j][r.choice[j]];
        for (std::size_t o = 0; o < classes[j].size(); ++o) {
          const auto& op = classes[j][o];
          if (op.value >= cur.value) continue;
          if (op.cost > cur.cost && op.cost - cur.cost > capacity - r.cost) continue;
          const double gain = cur.value - op.value;
          const double extra = op.cost > cur.cost ? static_cast<double>(op.cost - cur.cost) : 0.0;
          const double score = pass == 0 ? (extra > 0 ? gain / extra : std::numeric_limits<double>::max()) : gain;
          if (score > best) {
            best = score;
            bj = static_cast<int>(j);
            bo = static_cast<int>(o);
          }
        }
      }
      if (bj < 0) break;
      const auto& cur = classes[bj][r.choice[bj]];
      const auto& op = classes[bj][bo];
      r.cost = r.cost - cur.cost + op.cost;
      r.value = r.value - cur.value + op.value;
      r.choice[bj] = bo;
    }
  }
  // Re-sum so the reported value does not carry the updates' rounding.
  r.value = 0;
  r.cost = 0;
  for (std::size_t j = 0; j < classes.size(); ++j) {
    r.value += classes[j][r.choice[j]].value;
    r.cost += classes[j][r.choice[j]].cost;
  }
}

void check_classes(const std::vector<std::vector<McOption>>& classes) {
  for (std::size_t j = 0; j < classes.size(); ++j)
    if (classes[j].empty())
      throw Error("knapsack class " + std::to_string(j) + " has no option");
}

}  // namespace

uint64_t mckp_min_cost(const std::vector<std::vector<McOption>>& classes) {
  uint64_t s = 0;
  for (const auto& cl : classes) {
    uint64_t m = std::numeric_limits<uint64_t>::max();
    for (const auto& o : cl) m = std::min(m, o.cost);
    if (!cl.empty()) s += m;
  }
  return s;
}

uint64_t mckp_max_cost(const std::vector<std::vector<McOption>>& classes) {
  uint64_t s = 0;
  for (const auto& cl : classes) {
    uint64_t m = 0;
    for (const auto& o : cl) m = std::max(m, o.cost);
    s += m;
  }
  return s;
}

McResult solve_mckp_lagrangian(const std::vector<std::vector<McOption>>& classes, uint64_t capacity) {
  check_classes(classes);
  McResult res;
  if (mckp_min_cost(classes) > capacity) return res;
  double best_dual = -kInf;
  auto take = [&](const Lagr& l, double lambda) {
    if (l.dual > best_dual) {
      best_dual = l.dual;
      res.dual_lambda = lambda;
    }
    if (l.cost <= capacity && (!res.feasible || l.value < res.value ||
                               (l.value == res.value && l.cost < res.cost))) {
      res.feasible = true;
      res.choice = l.choice;
      res.cost = l.cost;
      res.value = l.value;
      res.lambda = lambda;
    }
    return l.cost <= capacity;
  };
  if (take(lagrangian_eval(classes, capacity, 0.0), 0.0)) {
    res.lower_bound = res.value;  // unconstrained optimum fits: optimal
    return res;
  }
  // Bracket lambda geometrically (values and costs can live on any scale), then bisect.
  double hi = 1.0;
  if (take(lagrangian_eval(classes, capacity, hi), hi)) {
    while (hi > 1e-300 && take(lagrangian_eval(classes, capacity, hi / 4), hi / 4)) hi /= 4;
  } else {
    while (hi < 1e300 && !take(lagrangian_eval(classes, capacity, hi * 4), hi * 4)) hi *= 4;
    hi *= 4;
  }
  double lo = hi / 4;
  for (int it = 0; it < 200 && lo < hi; ++it) {
    const double mid = 0.5 * (lo + hi);
    if (mid <= lo || mid >= hi) break;
    if (take(lagrangian_eval(classes, capacity, mid), mid)) hi = mid;
    else lo = mid;
  }
  if (!res.feasible) {  // lambda overflowed on a degenerate menu: the cheapest selection fits
    Lagr l;
    l.choice.resize(classes.size());
    for (std::size_t j = 0; j < classes.size(); ++j) {
      int b = 0;
      for (std::size_t o = 1; o < classes[j].size(); ++o)
        if (classes[j][o].cost < classes[j][b].cost) b = static_cast<int>(o);
      l.choice[j] = b;
      l.cost += classes[j][b].cost;
      l.value += classes[j][b].value;
    }
    l.dual = -kInf;
    take(l, hi);
  }
  res.lower_bound = best_dual;
  greedy_fill(classes, capacity, res);
  return res;
}

namespace {
McResult solve_dp_ordered(const std::vector<std::vector<McOption>>& classes, uint64_t capacity,
                          std::size_t max_states);
}  // namespace

McResult solve_mckp_dp(const std::vector<std::vector<McOption>>& classes_in, uint64_t capacity,
                       std::size_t max_states) {
  check_classes(classes_in);
  // Order: classes whose Lagrangian choice is clear-cut (large reduced-cost margin to the
  // runner-up) first, ambiguous ones last, so the front only branches where it must.
  const McResult lag = solve_mckp_lagrangian(classes_in, capacity);
  const double lam = lag.dual_lambda;
  const std::size_t n = classes_in.size();
  std::vector<double> margin(n, 0);
  for (std::size_t j = 0; j < n; ++j) {
    double b1 = kInf, b2 = kInf;
    for (const auto& o : classes_in[j]) {
      const double r = o.value + lam * static_cast<double>(o.cost);
      if (r < b1) { b2 = b1; b1 = r; } else if (r < b2) b2 = r;
    }
    margin[j] = b2 - b1;
  }
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return margin[a] > margin[b]; });
  std::vector<std::vector<McOption>> classes(n);
  for (std::size_t k = 0; k < n; ++k) classes[k] = classes_in[order[k]];
  McResult r = solve_dp_ordered(classes, capacity, max_states);
  if (r.feasible) {
    std::vector<int> ch(n);
    for (std::size_t k = 0; k < n; ++k) ch[order[k]] = r.choice[k];
    r.choice = ch;
  }
  return r;
}

namespace {
McResult solve_dp_ordered(const std::vector<std::vector<McOption>>& classes, uint64_t capacity,
                          std::size_t max_states) {
  McResult res;
  const std::size_t n = classes.size();
  if (mckp_min_cost(classes) > capacity) return res;
  if (n == 0) {
    res.feasible = true;
    return res;
  }

  // Within a class an option is useless when another costs no more and is no worse.
  std::vector<std::vector<int>> keep(n);
  for (std::size_t j = 0; j < n; ++j) {
    std::vector<int> idx(classes[j].size());
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) {
      const auto &x = classes[j][a], &y = classes[j][b];
      return x.cost != y.cost ? x.cost < y.cost : x.value < y.value;
    });
    double best = kInf;
    for (int o : idx)
      if (classes[j][o].value < best) {
        keep[j].push_back(o);
        best = classes[j][o].value;
      }
  }

  // Incumbent and dual bound from the Lagrangian relaxation.
  const McResult lag = solve_mckp_lagrangian(classes, capacity);
  if (lag.lambda == 0.0 && lag.feasible && lag.lower_bound == lag.value) {
    McResult r = lag;
    r.max_front = 1;
    return r;
  }
  const double ub = lag.value;
  // The lambda with the best dual bound: re-derive it by evaluating at the incumbent's lambda
  // (the bisection's feasible end) — any lambda >= 0 gives a valid bound.
  const double lam = lag.dual_lambda;
  std::vector<double> m_lam(n), m_val(n);
  std::vector<uint64_t> m_cost(n);
  double scale = 0;
  for (std::size_t j = 0; j < n; ++j) {
    m_lam[j] = kInf;
    m_val[j] = kInf;
    m_cost[j] = std::numeric_limits<uint64_t>::max();
    double amax = 0;
    for (const auto& o : classes[j]) {
      m_lam[j] = std::min(m_lam[j], o.value + lam * static_cast<double>(o.cost));
      m_val[j] = std::min(m_val[j], o.value);
      m_cost[j] = std::min(m_cost[j], o.cost);
      amax = std::max(amax, std::fabs(o.value));
    }
    scale += amax + std::fabs(lam) * static_cast<double>(mckp_max_cost({classes[j]}));
  }
  // Suffix sums over the classes not yet processed.
  std::vector<double> rem_lam(n + 1, 0), rem_val(n + 1, 0);
  std::vector<uint64_t> rem_cost(n + 1, 0);
  for (std::size_t j = n; j-- > 0;) {
    rem_lam[j] = rem_lam[j + 1] + m_lam[j];
    rem_val[j] = rem_val[j + 1] + m_val[j];
    rem_cost[j] = rem_cost[j + 1] + m_cost[j];
  }
  // Pruning keeps every state whose bound is within rounding of the incumbent: summation
  // order differs between the bound and the DP, so compare with a relative tolerance.
  const double tol = 1e-9 * (scale + std::fabs(ub)) + 1e-300;
  const double capd = static_cast<double>(capacity);

  struct St {
    uint64_t cost;
    double value;
    uint32_t parent;
    uint32_t opt;
  };
  // Fronts of all prefixes in one buffer: stage j occupies [begin[j], begin[j + 1]).
  std::vector<St> all;
  std::vector<std::size_t> begin{0, 1};
  all.push_back({0, 0.0, 0, 0});
  std::vector<St> cand, merged;
  for (std::size_t j = 0; j < n; ++j) {
    const std::size_t f0 = begin[j], f1 = begin[j + 1];
    cand.clear();
    // One cost-sorted run per option; merged below.
    std::vector<std::size_t> run_begin;
    for (int o : keep[j]) {
      run_begin.push_back(cand.size());
      const auto& op = classes[j][o];
      for (std::size_t s = f0; s < f1; ++s) {
        const uint64_t c = all[s].cost + op.cost;
        if (c + rem_cost[j + 1] > capacity) break;  // the front is cost-sorted
        const double v = all[s].value + op.value;
        const double lb = v + std::max(rem_val[j + 1], rem_lam[j + 1] - lam * (capd - static_cast<double>(c)));
        if (lb > ub + tol) continue;
        cand.push_back({c, v, static_cast<uint32_t>(s - f0), static_cast<uint32_t>(o)});
      }
    }
    run_begin.push_back(cand.size());
    res.states += cand.size();
    if (cand.size() > max_states)
      throw Error("exact allocation needs more than " + std::to_string(max_states) +
                  " states at unit " + std::to_string(j) + " of " + std::to_string(n) +
                  "; use the lagrangian solver for this menu");
    auto less = [](const St& a, const St& b) { return a.cost != b.cost ? a.cost < b.cost : a.value < b.value; };
    while (run_begin.size() > 2) {
      std::vector<std::size_t> nb;
      merged.resize(cand.size());
      std::size_t k = 0;
      for (; k + 2 < run_begin.size(); k += 2) {
        std::merge(cand.begin() + run_begin[k], cand.begin() + run_begin[k + 1], cand.begin() + run_begin[k + 1],
                   cand.begin() + run_begin[k + 2], merged.begin() + run_begin[k], less);
        nb.push_back(run_begin[k]);
      }
      if (k + 1 < run_begin.size()) {
        std::copy(cand.begin() + run_begin[k], cand.begin() + run_begin[k + 1], merged.begin() + run_begin[k]);
        nb.push_back(run_begin[k]);
      }
      nb.push_back(cand.size());
      cand.swap(merged);
      run_begin.swap(nb);
    }
    double best = kInf;
    for (const auto& st : cand)
      if (st.value < best) {
        all.push_back(st);
        best = st.value;
      }
    begin.push_back(all.size());
    res.max_front = std::max(res.max_front, begin[j + 2] - begin[j + 1]);
    if (begin[j + 2] == begin[j + 1]) break;  // cannot happen: the incumbent's prefix survives
  }
  if (begin.size() != n + 2 || begin[n + 1] == begin[n]) {  // defensive: keep the incumbent
    McResult r = lag;
    r.max_front = res.max_front;
    r.states = res.states;
    return r;
  }
  std::size_t s = begin[n + 1] - begin[n] - 1;  // cost ascending, value strictly descending
  res.feasible = true;
  res.cost = all[begin[n] + s].cost;
  res.value = all[begin[n] + s].value;
  res.choice.assign(n, 0);
  for (std::size_t j = n; j-- > 0;) {
    const St& st = all[begin[j + 1] + s];
    res.choice[j] = static_cast<int>(st.opt);
    s = st.parent;
  }
  res.lower_bound = lag.lower_bound;
  res.lambda = lam;
  return res;
}
}  // namespace

McResult solve_mckp_brute(const std::vector<std::vector<McOption>>& classes, uint64_t capacity) {
  check_classes(classes);
  McResult res;
  const std::size_t n = classes.size();
  std::vector<int> cur(n, 0);
  while (true) {
    uint64_t c = 0;
    double v = 0;
    for (std::size_t j = 0; j < n; ++j) {
      c += classes[j][cur[j]].cost;
      v += classes[j][cur[j]].value;
    }
    if (c <= capacity && (!res.feasible || v < res.value)) {
      res.feasible = true;
      res.value = v;
      res.cost = c;
      res.choice = cur;
    }
    std::size_t j = 0;
    while (j < n && ++cur[j] == static_cast<int>(classes[j].size())) cur[j++] = 0;
    if (j == n) break;
  }
  return res;
}

}  // namespace mpqat::alloc
