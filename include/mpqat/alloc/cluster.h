// The seeds' clustering path (1-D, by sensitivity score) and SGRA. No torch here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpqat::alloc {

enum class ClusterMethod { KMeans, Percentile, Hierarchical };
ClusterMethod parse_cluster_method(const std::string& s);  // "kmeans" | "percentile" | "hierarchical"

// Group of every value, 0 = the most sensitive group (highest mean score), k groups (fewer
// only when there are fewer values). Deterministic for equal inputs:
// - KMeans: the exact 1-D k-means optimum (min total within-group squared error) by DP over
//   the sorted values (optimal 1-D clusters are contiguous); ties -> the earliest split.
// - Percentile: equal-count buckets by rank (rank r of n -> floor(r * k / n)), rank by score
//   descending then by index.
// - Hierarchical: agglomerative Ward linkage from singletons; each step merges the pair with
//   the least increase in squared error, ties -> the pair with the lowest indices.
std::vector<int> cluster_scores(const std::vector<double>& scores, int k, ClusterMethod method);

// Within-group sum of squared errors of a grouping (for tests and reports).
double grouping_sse(const std::vector<double>& scores, const std::vector<int>& group);

struct SgraRanges {
  int epochs_min = 2, epochs_max = 4;
  double lr_min = 0.5, lr_max = 1.5;
  int patience_min = 2, patience_max = 5;
};
struct SgraSettings {
  int epochs = 2;
  double lr_scale = 1.0;
  int patience = 2;
  double rank = 0;  // normalised rank in [0, 1], 1 = most sensitive
};
// t = r / (n - 1) with r the ascending rank of the score (ties by index; t = 1 when n == 1);
// epochs = round(min + t (max - min)), lr = min + t (max - min), patience likewise rounded.
std::vector<SgraSettings> sgra_settings(const std::vector<double>& scores, const SgraRanges& r);

}  // namespace mpqat::alloc
