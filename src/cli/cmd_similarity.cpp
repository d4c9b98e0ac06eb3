// `mpqat similarity --x X.csv --y Y.csv [--metric all] [--json]`: representation similarity
// between two activation matrices (rows = datapoints, columns = neurons).
#include <CLI/CLI.hpp>
#include <fmt/core.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpqat/cli/commands.h"
#include "mpqat/io/csv_matrix.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/util/error.h"

namespace mpqat::cli {
namespace {

struct SimilarityOpts {
  std::string x, y;
  std::string metric = "all";
  int svcca_k = 0;
  double svcca_var = 0.99;
  double rbf_sigma = 0.5;
  double epsilon = 1e-10;
  long long max_rows = 2048;
  unsigned long long seed = 0;
  bool json = false;
};

void run_similarity(const SimilarityOpts& o) {
  namespace sim = mpqat::sensitivity;
  const Eigen::MatrixXd X = io::read_csv_matrix(o.x).data;  // (n, dx)
  const Eigen::MatrixXd Y = io::read_csv_matrix(o.y).data;  // (n, dy)
  if (X.rows() != Y.rows())
    throw InputError("similarity: " + o.x + " has " + std::to_string(X.rows()) + " rows but " +
                     o.y + " has " + std::to_string(Y.rows()) +
                     " (both files must hold the same datapoints, one per row)");

  const bool all = o.metric == "all";
  auto want = [&](const char* m) { return all || o.metric == m; };

  nlohmann::json j;
  j["rows"] = X.rows();
  j["x_cols"] = X.cols();
  j["y_cols"] = Y.cols();
  // (label, value) in computation order, for the table.
  std::vector<std::pair<std::string, double>> rows;

  if (want("cca") || want("pwcca")) {
    const sim::CcaResult c = sim::cca(X, Y, o.epsilon);
    j["cca_rho"] = std::vector<double>(c.rho.data(), c.rho.data() + c.rho.size());
    if (want("cca")) {
      j["cca_mean_rho"] = c.mean_rho();
      rows.emplace_back("CCA mean rho", c.mean_rho());
    }
  }
  if (want("svcca")) {
    sim::SvccaOptions so;
    so.k = o.svcca_k;
    so.var_fraction = o.svcca_var;
    so.epsilon = o.epsilon;
    const sim::SvccaResult s = sim::svcca(X, Y, so);
    j["svcca_mean_rho"] = s.mean_rho;
    j["svcca_kx"] = s.kx;
    j["svcca_ky"] = s.ky;
    rows.emplace_back(fmt::format("SVCCA mean rho (k = {}, {})", s.kx, s.ky), s.mean_rho);
  }
  if (want("pwcca")) {
    const sim::PwccaResult p = sim::pwcca(X, Y, o.epsilon);
    j["pwcca"] = p.value;
    rows.emplace_back(fmt::format("PWCCA (weights from {})", p.weights_from_x ? "X" : "Y"),
                      p.value);
  }
  if (want("cka")) {
    const double v = sim::linear_cka(X, Y);
    j["cka_linear"] = v;
    rows.emplace_back("CKA linear", v);
  }
  sim::SubsampleOptions sub;
  sub.max_rows = static_cast<Eigen::Index>(o.max_rows);
  sub.seed = o.seed;
  if (want("cka-rbf")) {
    const double v = sim::rbf_cka(X, Y, o.rbf_sigma, false, sub);
    j["cka_rbf"] = v;
    const auto used = sim::subsample_rows(X.rows(), sub).size();
    if (static_cast<Eigen::Index>(used) < X.rows()) j["cka_rbf_rows"] = used;
    rows.emplace_back(fmt::format("CKA RBF (sigma {} x median, {} rows)", o.rbf_sigma, used), v);
  }
  if (want("cka-debiased")) {
    const double v = sim::debiased_linear_cka(X, Y);
    j["cka_debiased"] = v;
    rows.emplace_back("CKA linear, debiased", v);
  }

  if (o.json) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  fmt::print("X: {} ({} rows x {} cols)   Y: {} ({} cols)\n", o.x, X.rows(), X.cols(), o.y,
             Y.cols());
  std::size_t w = 6;
  for (const auto& r : rows) w = std::max(w, r.first.size());
  fmt::print("{:<{}}  {:>10}\n", "metric", w, "value");
  fmt::print("{:-<{}}  {:->10}\n", "", w, "");
  for (const auto& r : rows) fmt::print("{:<{}}  {:>10.6f}\n", r.first, w, r.second);
}

}  // namespace

void add_similarity_command(CLI::App& app) {
  auto o = std::make_shared<SimilarityOpts>();
  auto* sub = app.add_subcommand(
      "similarity",
      "CCA / SVCCA / PWCCA / CKA between two activation CSVs (rows = datapoints, cols = neurons)");
  sub->add_option("--x", o->x, "activations of the first representation (CSV, optional header)")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--y", o->y, "activations of the second representation, same rows (CSV)")
      ->required()
      ->check(CLI::ExistingFile);
  sub->add_option("--metric", o->metric, "which metric(s) to compute")
      ->check(CLI::IsMember({"cca", "svcca", "pwcca", "cka", "cka-rbf", "cka-debiased", "all"}))
      ->capture_default_str();
  sub->add_option("--svcca-k", o->svcca_k,
                  "SVCCA: singular directions kept per side (0 = use --svcca-var)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--svcca-var", o->svcca_var,
                  "SVCCA: variance fraction (of s^2) the kept directions must explain")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  sub->add_option("--rbf-sigma", o->rbf_sigma,
                  "RBF CKA bandwidth as a fraction of the median pairwise distance")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  sub->add_option("--epsilon", o->epsilon, "CCA ridge, relative to the largest covariance entry")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--max-rows", o->max_rows,
                  "RBF CKA: rows subsampled for the n x n Grams (0 = all rows)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "RBF CKA: subsampling seed")->capture_default_str();
  sub->add_flag("--json", o->json, "print one JSON object instead of a table")
      ->capture_default_str();
  sub->callback([o] { run_similarity(*o); });
}

}  // namespace mpqat::cli
