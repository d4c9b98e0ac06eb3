// 1-D clustering of sensitivity scores and the SGRA rank mapping.
#include "mpqat/alloc/cluster.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "mpqat/util/error.h"

namespace mpqat::alloc {

ClusterMethod parse_cluster_method(const std::string& s) {
  if (s == "kmeans") return ClusterMethod::KMeans;
  if (s == "percentile") return ClusterMethod::Percentile;
  if (s == "hierarchical") return ClusterMethod::Hierarchical;
  throw InputError("unknown clustering method '" + s + "' (accepted: kmeans, percentile, hierarchical)");
}

namespace {

// Indices sorted by score descending, ties by index: position 0 = most sensitive.
std::vector<std::size_t> by_score_desc(const std::vector<double>& v) {
  std::vector<std::size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return v[a] > v[b]; });
  return idx;
}

// Renumbers groups so that 0 has the highest mean score.
std::vector<int> order_groups(const std::vector<double>& v, const std::vector<int>& g) {
  const int k = g.empty() ? 0 : *std::max_element(g.begin(), g.end()) + 1;
  std::vector<double> sum(k, 0);
  std::vector<int> cnt(k, 0);
  for (std::size_t i = 0; i < v.size(); ++i) {
    sum[g[i]] += v[i];
    cnt[g[i]]++;
  }
  std::vector<int> ids(k);
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int a, int b) { return sum[a] / cnt[a] > sum[b] / cnt[b]; });
  std::vector<int> rename(k);
  for (int r = 0; r < k; ++r) rename[ids[r]] = r;
  std::vector<int> out(g.size());
  for (std::size_t i = 0; i < g.size(); ++i) out[i] = rename[g[i]];
  return out;
}

std::vector<int> kmeans_exact(const std::vector<double>& v, int k) {
  const std::size_t n = v.size();
  const auto ord = by_score_desc(v);
  std::vector<double> x(n), p1(n + 1, 0), p2(n + 1, 0);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = v[ord[i]];
    p1[i + 1] = p1[i] + x[i];
    p2[i + 1] = p2[i] + x[i] * x[i];
  }
  // SSE of x[a, b): sum x^2 - (sum x)^2 / m; clamp the rounding below zero.
  auto sse = [&](std::size_t a, std::size_t b) {
    const double m = static_cast<double>(b - a), s = p1[b] - p1[a];
    return std::max(0.0, (p2[b] - p2[a]) - s * s / m);
  };
  const double inf = std::numeric_limits<double>::infinity();
  // D[g][i]: best SSE of the first i values in g groups; S[g][i]: start of the last group.
  std::vector<std::vector<double>> D(k + 1, std::vector<double>(n + 1, inf));
  std::vector<std::vector<std::size_t>> S(k + 1, std::vector<std::size_t>(n + 1, 0));
  D[0][0] = 0;
  for (int g = 1; g <= k; ++g)
    for (std::size_t i = g; i <= n; ++i)
      for (std::size_t j = g - 1; j < i; ++j) {
        const double c = D[g - 1][j] + sse(j, i);
        if (c < D[g][i]) {
          D[g][i] = c;
          S[g][i] = j;
        }
      }
  std::vector<int> grp(n);
  std::size_t i = n;
  for (int g = k; g >= 1; --g) {
    const std::size_t j = S[g][i];
    for (std::size_t t = j; t < i; ++t) grp[ord[t]] = g - 1;
    i = j;
  }
  return grp;
}

std::vector<int> ward(const std::vector<double>& v, int k) {
  const std::size_t n = v.size();
  struct Cl {
    double sum;
    double cnt;
    std::vector<std::size_t> members;
  };
  std::vector<Cl> cl;
  for (std::size_t i = 0; i < n; ++i) cl.push_back({v[i], 1.0, {i}});
  while (cl.size() > static_cast<std::size_t>(k)) {
    std::size_t ba = 0, bb = 1;
    double best = std::numeric_limits<double>::infinity();
    for (std::size_t a = 0; a < cl.size(); ++a)
      for (std::size_t b = a + 1; b < cl.size(); ++b) {
        const double d = cl[a].sum / cl[a].cnt - cl[b].sum / cl[b].cnt;
        const double cost = cl[a].cnt * cl[b].cnt / (cl[a].cnt + cl[b].cnt) * d * d;
        if (cost < best) {
          best = cost;
          ba = a;
          bb = b;
        }
      }
    cl[ba].sum += cl[bb].sum;
    cl[ba].cnt += cl[bb].cnt;
    cl[ba].members.insert(cl[ba].members.end(), cl[bb].members.begin(), cl[bb].members.end());
    cl.erase(cl.begin() + static_cast<std::ptrdiff_t>(bb));
  }
  std::vector<int> grp(n);
  for (std::size_t c = 0; c < cl.size(); ++c)
    for (auto i : cl[c].members) grp[i] = static_cast<int>(c);
  return grp;
}

}  // namespace

std::vector<int> cluster_scores(const std::vector<double>& scores, int k, ClusterMethod method) {
  if (k < 1) throw InputError("number of groups must be >= 1, got " + std::to_string(k));
  for (double s : scores)
    if (!std::isfinite(s)) throw InputError("sensitivity scores must be finite numbers to cluster them");
  const int n = static_cast<int>(scores.size());
  if (n == 0) return {};
  k = std::min(k, n);
  std::vector<int> g;
  switch (method) {
    case ClusterMethod::KMeans: g = kmeans_exact(scores, k); break;
    case ClusterMethod::Hierarchical: g = ward(scores, k); break;
    case ClusterMethod::Percentile: {
      g.assign(n, 0);
      const auto ord = by_score_desc(scores);
      for (int r = 0; r < n; ++r) g[ord[r]] = static_cast<int>(static_cast<int64_t>(r) * k / n);
      return g;  // already most sensitive first
    }
  }
  return order_groups(scores, g);
}

double grouping_sse(const std::vector<double>& v, const std::vector<int>& g) {
  const int k = g.empty() ? 0 : *std::max_element(g.begin(), g.end()) + 1;
  std::vector<double> sum(k, 0), cnt(k, 0);
  for (std::size_t i = 0; i < v.size(); ++i) {
    sum[g[i]] += v[i];
    cnt[g[i]] += 1;
  }
  double e = 0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const double d = v[i] - sum[g[i]] / cnt[g[i]];
    e += d * d;
  }
  return e;
}

std::vector<SgraSettings> sgra_settings(const std::vector<double>& scores, const SgraRanges& r) {
  if (r.epochs_min > r.epochs_max || r.lr_min > r.lr_max || r.patience_min > r.patience_max)
    throw InputError("SGRA ranges must be [least, most] with least <= most");
  const std::size_t n = scores.size();
  std::vector<std::size_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return scores[a] < scores[b]; });
  std::vector<SgraSettings> out(n);
  for (std::size_t rank = 0; rank < n; ++rank) {
    const double t = n > 1 ? static_cast<double>(rank) / static_cast<double>(n - 1) : 1.0;
    SgraSettings s;
    s.rank = t;
    s.epochs = static_cast<int>(std::lround(r.epochs_min + t * (r.epochs_max - r.epochs_min)));
    s.lr_scale = r.lr_min + t * (r.lr_max - r.lr_min);
    s.patience = static_cast<int>(std::lround(r.patience_min + t * (r.patience_max - r.patience_min)));
    out[idx[rank]] = s;
  }
  return out;
}

}  // namespace mpqat::alloc
