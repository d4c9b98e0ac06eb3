// Representation similarity between two activation matrices of the same datapoints:
// the CCA family (CCA, SVCCA, PWCCA) and CKA (linear, RBF, debiased).
//
// Link: uses LAPACK's dgesdd (liblapack / OpenBLAS) unless compiled with MPQAT_NO_LAPACK.
//
// Layout everywhere: rows = datapoints (tokens), columns = neurons, i.e. X is (n, dx) and
// Y is (n, dy). google/svcca takes the transpose; results are the same.
// All arithmetic is fp64. Bad input (empty, row counts differ, NaN/Inf, too few rows for CCA)
// throws mpqat::InputError naming "X"/"Y" and what would be accepted.
#pragma once

#include <cstdint>
#include <vector>

#include <Eigen/Dense>

namespace mpqat::sensitivity {

// ---------------------------------------------------------------- CCA family

struct CcaResult {
  // Canonical correlations, descending, clamped to [0, 1]; length min(dx, dy). Neurons whose
  // (normalised) variance is below epsilon are dropped first, as google/svcca does; the
  // correlations they would have contributed are reported as trailing zeros.
  Eigen::VectorXd rho;
  double mean_rho() const { return rho.size() ? rho.mean() : 0.0; }

  // Indices of the neurons kept (variance >= epsilon), ascending.
  std::vector<Eigen::Index> x_kept, y_kept;
  // Whitening maps of the kept neurons: Sxx^-1/2 and Syy^-1/2 of the normalised covariances.
  Eigen::MatrixXd x_whiten;  // (kx, kx)
  Eigen::MatrixXd y_whiten;  // (ky, ky)
  // Singular vectors of Sxx^-1/2 Sxy Syy^-1/2, one column per correlation in `rho` order,
  // with the signs LAPACK dgesdd gives them (numpy's svd does the same); PWCCA depends on them.
  Eigen::MatrixXd x_coef;  // (kx, k), k = min(kx, ky)
  Eigen::MatrixXd y_coef;  // (ky, k)
  // Column means of the inputs (all neurons).
  Eigen::RowVectorXd x_mean;  // (dx)
  Eigen::RowVectorXd y_mean;  // (dy)

  // Canonical weights on the centred kept neurons: (X_c[:, kept]) * x_weights() are the
  // canonical variates, uncorrelated with unit variance (up to epsilon).
  Eigen::MatrixXd x_weights() const { return x_whiten * x_coef; }  // (kx, k)
  Eigen::MatrixXd y_weights() const { return y_whiten * y_coef; }  // (ky, k)
};

// Plain CCA. `epsilon` is a ridge added to the covariances after they are normalised by their
// largest absolute entry (so it is relative); it must be in [0, 1).
// Needs n >= max(dx, dy) + 1 rows.
CcaResult cca(const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y, double epsilon = 1e-10);

struct SvccaOptions {
  // Keep this many top singular directions per side (clamped to the rank available);
  // 0 = keep the fewest that explain `var_fraction` of the variance (sum of s^2).
  int k = 0;
  double var_fraction = 0.99;
  double epsilon = 1e-10;
};

struct SvccaResult {
  Eigen::VectorXd rho;  // canonical correlations of the reduced representations
  Eigen::Index kx = 0, ky = 0;  // directions kept on each side
  double mean_rho = 0.0;
};

// SVCCA: centre, keep the top singular directions of each side, then CCA; mean rho.
SvccaResult svcca(const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y, const SvccaOptions& opts = {});

struct PwccaResult {
  double value = 0.0;        // sum_i alpha_i rho_i
  Eigen::VectorXd weights;   // alpha, sums to 1
  Eigen::VectorXd rho;       // the correlations they weight
  bool weights_from_x = true;
};

// Projection-weighted CCA, matching google/svcca compute_pwcca: the weights come from the side
// with fewer kept neurons (X on a tie). Like the reference, the "directions" orthonormalised by
// QR are u^T applied to the centred activations plus the neuron means, and each weight is the
// sum of |<P_i, a_j>| over the raw (uncentred) neuron columns a_j of that side. (The reference
// mixes up X and Y when Y is the smaller side and fails; here that case is computed as
// pwcca(Y, X), so the result does not depend on the argument order.)
// Because the means are added after projecting, the value depends on the singular vectors'
// signs (about 1e-3 apart over all choices); the SVD is LAPACK's dgesdd, as in numpy, so the
// reference value is reproduced. Built with -DMPQAT_NO_LAPACK (Eigen SVD), it agrees only
// within that spread.
PwccaResult pwcca(const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y, double epsilon = 1e-10);

// ---------------------------------------------------------------- CKA

// Linear CKA = ||Yc'Xc||_F^2 / (||Xc'Xc||_F ||Yc'Yc||_F), computed in feature space
// (O(n d^2) time, O(d^2) memory: no n x n Gram). Throws when either side has no variance.
double linear_cka(const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y);

// Debiased linear CKA (unbiased HSIC estimator, Kornblith's `debiased=True`), exact over all
// rows, also in feature space. Needs n >= 4.
double debiased_linear_cka(const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y);

// Streams batches of rows and gives the exact linear CKA of all rows seen. Keeps fp64 sums
// (of rows shifted by the first batch's column means, to keep cancellation small):
// sum x, sum y, X'X, Y'Y, Y'X and n; centring is applied at result() time.
class LinearCkaAccumulator {
 public:
  // X_batch (b, dx), Y_batch (b, dy); dx, dy fixed by the first batch. Empty batches are no-ops.
  void add(const Eigen::MatrixXd& X_batch, const Eigen::MatrixXd& Y_batch);
  // Needs at least 2 rows and variance on both sides.
  double result() const;
  Eigen::Index rows() const { return n_; }
  void reset() { *this = LinearCkaAccumulator(); }

 private:
  Eigen::Index n_ = 0;
  Eigen::RowVectorXd shift_x_, shift_y_;  // (dx), (dy)
  Eigen::RowVectorXd sum_x_, sum_y_;      // (dx), (dy)
  Eigen::MatrixXd xtx_;                   // (dx, dx)
  Eigen::MatrixXd yty_;                   // (dy, dy)
  Eigen::MatrixXd ytx_;                   // (dy, dx)
};

// Rows subsampled for the n x n Gram based metrics (RBF CKA): without replacement, seeded.
struct SubsampleOptions {
  Eigen::Index max_rows = 2048;  // 0 = use every row
  std::uint64_t seed = 0;
};

// Sorted indices of min(n, max_rows) distinct rows out of n (all rows when max_rows is 0 or >= n).
std::vector<Eigen::Index> subsample_rows(Eigen::Index n, const SubsampleOptions& opts);

// Gram matrices. RBF follows Kornblith's notebook: K = exp(-d^2 / (2 t^2 median(d^2))), the
// median taken over all n^2 squared distances (zeros on the diagonal included).
Eigen::MatrixXd linear_gram(const Eigen::MatrixXd& X);                    // (n, n)
Eigen::MatrixXd rbf_gram(const Eigen::MatrixXd& X, double threshold);     // (n, n)

// CKA of two Gram matrices: HSIC with centred Grams (debiased: U-centred, needs n >= 4).
double gram_cka(const Eigen::MatrixXd& Kx, const Eigen::MatrixXd& Ky, bool debiased = false);

// RBF CKA with bandwidth `threshold` x sqrt(median squared distance), on a row subsample.
double rbf_cka(const Eigen::MatrixXd& X, const Eigen::MatrixXd& Y, double threshold = 0.5,
               bool debiased = false, const SubsampleOptions& sub = {});

// ---------------------------------------------------------------- combining metrics

// Combines several per-layer metrics into one score per layer: the mean over metrics of each
// layer's normalised rank. Within a metric, layers are ranked ascending (1 = smallest value)
// and tied values share the mean of the ranks they span ("fractional ranking"); rank r of L
// layers is normalised to (r - 1) / (L - 1) in [0, 1] (0.5 when L == 1). So a larger score
// means larger metric values: pass sensitivity-like metrics (e.g. 1 - CKA, not CKA).
// Every metric must have the same (non-zero) length and finite values.
std::vector<double> mean_normalised_rank(const std::vector<std::vector<double>>& metrics);

}  // namespace mpqat::sensitivity
