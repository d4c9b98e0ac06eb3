// Layer sensitivity from representation similarity ([M4], mode "output"): for each block
// linear l, 1 - similarity(Y_l, Y_l^q) over calibration tokens, where Y_l is the module's
// full-precision output and Y_l^q its output with only l quantized (RTN at the probe bits and
// group). With only l quantized the module's input is the full-precision one, so both come from
// one full-precision pass: Y = X W^T + b, Y^q = X Q(W)^T + b, rows = tokens.
//
// Metrics ("1 - similarity", higher = more sensitive):
//   cka           linear CKA over every token, streamed from fp64 moments (LinearCkaAccumulator)
//   cca           mean canonical correlation        } on a seeded subsample of max_rows tokens
//   svcca         SVCCA mean rho (top-k / variance)  } (the same rows for every module)
//   pwcca         google/svcca compute_pwcca         }
//   cka-rbf       RBF CKA, bandwidth 0.5 x median distance
//   cka-debiased  debiased linear CKA
// CCA, SVCCA and PWCCA are ill-posed for modules whose output is wider than their input (e.g.
// gate/up projections): the output has rank <= in_features, its covariance is singular and the
// result hangs on the epsilon ridge; prefer cka there (BRIEF §5 prefers CKA for this mode anyway).
// The pass is block-major: block i runs every sequence from a cache of its inputs (the outputs of
// block i-1), with only its own linears observed, so one block is in memory at a time when the
// source streams (model/block_source.h).
// Memory: one block; two activation caches of tokens x hidden (CacheOptions: in memory up to a
// limit, else files); per module of the current block, 16 * min(tokens, max_rows) *
// out_features bytes for the subsampled rows (only when a subsample metric is asked for) plus
// the CKA moments (8 * (in+out)^2-ish bytes).
// Distributed: not split yet; every rank computes the same result on all calibration data.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "mpqat/model/activation_cache.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/model.h"

namespace mpqat::sensitivity {

struct OutputSensitivityOptions {
  std::vector<std::string> metrics = {"cka"};
  int probe_bits = 3;
  int64_t group_size = 128;
  int svcca_k = 20;               // 0 = by variance fraction
  double svcca_variance = 0.99;
  int64_t max_rows = 4096;        // tokens subsampled for cca / svcca / pwcca / rbf / debiased
  uint64_t seed = 0;
  model::CacheOptions cache;      // block inputs / outputs
};

// The metric names accepted above.
const std::vector<std::string>& output_metric_names();
bool is_output_metric(const std::string& name);
// Similarity of two row-aligned matrices by metric name for the subsampled metrics (cca, svcca,
// pwcca, cka-rbf, cka-debiased; "cka" is streamed by its callers and is not handled here).
double subsample_similarity(const std::string& name, const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y,
                            int svcca_k, double svcca_variance);

struct OutputSensitivity {
  std::vector<std::string> names;  // full linear names, named_linears() order
  std::map<std::string, std::vector<double>> metric;  // metric -> 1 - similarity per module
  int64_t rows = 0;          // tokens seen
  int64_t sampled_rows = 0;  // tokens in the subsample
};

// Runs each sequence (batch 1) block by block with the block's linears observed, then restores
// the linears. Throws InputError for an unknown metric or empty data, and passes on the metrics'
// own InputErrors (e.g. fewer subsampled rows than a CCA needs).
OutputSensitivity output_sensitivity(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                                     const OutputSensitivityOptions& opts);
// The same on a model held in memory.
OutputSensitivity output_sensitivity(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& sequences,
                                     const OutputSensitivityOptions& opts);

}  // namespace mpqat::sensitivity
