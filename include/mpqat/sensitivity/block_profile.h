// The seeds' layer-to-layer profile and layer statistics ([M4], sensitivity mode "profile" /
// "layer-to-layer"): one full-precision pass, block by block, over the calibration sequences.
// For block i with input hidden states H_i and output H_{i+1} (rows = tokens):
//   change_i[metric] = 1 - similarity(H_i, H_{i+1})   how much the block rewrites its input
// for the CCA family (cka over every token, streamed; cca / svcca / pwcca / cka-rbf /
// cka-debiased on a seeded subsample of max_rows tokens, the same rows for every block), and
// statistics of H_{i+1} over every token: mean, standard deviation, max |x|, and sparsity (the
// fraction of entries with |x| < 1e-3 * max |x| of that block, a scale-free "near zero").
// In the same pass, stats[i].attention: the attention entropy and head specialisation of
// block i (layer_profile.h), empty for blocks that compute no attention.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mpqat/model/activation_cache.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/model.h"
#include "mpqat/sensitivity/sensitivity_json.h"

namespace mpqat::sensitivity {

struct BlockProfileOptions {
  std::vector<std::string> metrics = {"cka"};  // output_metric_names()
  int svcca_k = 20;
  double svcca_variance = 0.99;
  int64_t max_rows = 4096;
  uint64_t seed = 0;
  model::CacheOptions cache;  // block inputs / outputs
};

struct BlockProfile {
  std::vector<std::map<std::string, double>> change;  // per block: metric -> 1 - similarity
  std::vector<BlockStats> stats;                      // per block output
  int64_t rows = 0, sampled_rows = 0;
};

// Sequences run one at a time (their own lengths; classifiers' examples need no padding), block
// by block from a cache of each block's inputs: one block in memory when the source streams.
// Throws InputError for an unknown metric or no sequences.
BlockProfile block_profile(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                           const BlockProfileOptions& opts);
// The same on a model held in memory.
BlockProfile block_profile(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                           const BlockProfileOptions& opts);

}  // namespace mpqat::sensitivity
