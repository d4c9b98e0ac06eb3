#include "mpqat/sensitivity/similarity.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "mpqat/util/error.h"

#ifndef MPQAT_NO_LAPACK
// LAPACK's divide-and-conquer SVD (what numpy.linalg.svd calls). Used for the whitened
// cross-covariance so that singular-vector signs match google/svcca: PWCCA adds the neuron
// means after projecting, which makes its value depend on those (otherwise arbitrary) signs.
extern "C" void dgesdd_(const char* jobz, const int* m, const int* n, double* a, const int* lda,
                        double* s, double* u, const int* ldu, double* vt, const int* ldvt,
                        double* work, const int* lwork, int* iwork, int* info);
#endif

namespace mpqat::sensitivity {
namespace {

using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::RowVectorXd;
using Eigen::VectorXd;

std::string shape_str(const MatrixXd& A) {
  return "(" + std::to_string(A.rows()) + " rows, " + std::to_string(A.cols()) + " columns)";
}

void check_finite(const MatrixXd& A, const char* name, const char* metric) {
  if (A.allFinite()) return;
  for (Index j = 0; j < A.cols(); ++j)
    for (Index i = 0; i < A.rows(); ++i)
      if (!std::isfinite(A(i, j)))
        throw InputError(std::string(metric) + ": " + name + " row " + std::to_string(i) +
                         ", column " + std::to_string(j) + " is " +
                         (std::isnan(A(i, j)) ? "NaN" : "Inf") +
                         " (activations must be finite numbers)");
}

// Common checks for every paired metric: non-empty, same datapoints, finite.
void check_pair(const MatrixXd& X, const MatrixXd& Y, const char* metric) {
  if (X.size() == 0 || Y.size() == 0)
    throw InputError(std::string(metric) + ": " + (X.size() == 0 ? "X" : "Y") +
                     " is empty " + shape_str(X.size() == 0 ? X : Y) +
                     " (need at least one row and one column on each side)");
  if (X.rows() != Y.rows())
    throw InputError(std::string(metric) + ": X has " + std::to_string(X.rows()) +
                     " rows but Y has " + std::to_string(Y.rows()) +
                     " (rows are datapoints and must be the same datapoints on both sides)");
  check_finite(X, "X", metric);
  check_finite(Y, "Y", metric);
}

void check_cca_rows(Index n, Index dx, Index dy, const char* metric) {
  const Index need = std::max(dx, dy) + 1;
  if (n < need)
    throw InputError(std::string(metric) + ": " + std::to_string(n) + " rows is too few for " +
                     std::to_string(dx) + " X columns and " + std::to_string(dy) +
                     " Y columns: CCA needs at least max(dx, dy) + 1 = " + std::to_string(need) +
                     " rows (datapoints); give more rows, reduce columns (SVCCA k), or use CKA");
}

MatrixXd centred(const MatrixXd& A) { return A.rowwise() - A.colwise().mean(); }

// Symmetric S^-1/2. Eigenvalues below a relative tolerance (or negative from round-off) are
// treated as zero, i.e. the pseudo-inverse square root, so rank-deficient input stays finite.
MatrixXd inv_sqrt_psd(const MatrixXd& S) {
  Eigen::SelfAdjointEigenSolver<MatrixXd> es(S);
  if (es.info() != Eigen::Success) throw Error("CCA: eigendecomposition of a covariance failed");
  const VectorXd& w = es.eigenvalues();
  const double wmax = w.size() ? w.maxCoeff() : 0.0;
  const double tol = std::max(wmax, 0.0) * static_cast<double>(S.rows()) *
                     std::numeric_limits<double>::epsilon();
  VectorXd d(w.size());
  for (Index i = 0; i < w.size(); ++i) d(i) = w(i) > tol ? 1.0 / std::sqrt(w(i)) : 0.0;
  return es.eigenvectors() * d.asDiagonal() * es.eigenvectors().transpose();
}

MatrixXd take_cols(const MatrixXd& A, const std::vector<Index>& idx) {
  MatrixXd out(A.rows(), static_cast<Index>(idx.size()));
  for (std::size_t j = 0; j < idx.size(); ++j) out.col(static_cast<Index>(j)) = A.col(idx[j]);
  return out;
}

MatrixXd take_block(const MatrixXd& A, const std::vector<Index>& r, const std::vector<Index>& c) {
  MatrixXd out(static_cast<Index>(r.size()), static_cast<Index>(c.size()));
  for (std::size_t i = 0; i < r.size(); ++i)
    for (std::size_t j = 0; j < c.size(); ++j)
      out(static_cast<Index>(i), static_cast<Index>(j)) = A(r[i], c[j]);
  return out;
}

MatrixXd take_rows(const MatrixXd& A, const std::vector<Index>& idx) {
  MatrixXd out(static_cast<Index>(idx.size()), A.cols());
  for (std::size_t i = 0; i < idx.size(); ++i) out.row(static_cast<Index>(i)) = A.row(idx[i]);
  return out;
}

// Kornblith's "feature space" helper: the unbiased HSIC of two centred linear Grams, up to a
// constant factor, from ||Y'X||^2, the per-row squared norms and their totals.
double debiased_dot(double xty_sq, const VectorXd& rows_x, const VectorXd& rows_y, double n) {
  const double sx = rows_x.sum(), sy = rows_y.sum();
  return xty_sq - n / (n - 2.0) * rows_x.dot(rows_y) + sx * sy / ((n - 1.0) * (n - 2.0));
}

struct Svd {
  VectorXd s;  // descending
  MatrixXd U;  // (m, min(m, n))
  MatrixXd V;  // (n, min(m, n))
};

Svd svd_full(const MatrixXd& M) {
  const Index m = M.rows(), n = M.cols(), k = std::min(m, n);
  Svd out;
#ifndef MPQAT_NO_LAPACK
  if (m > std::numeric_limits<int>::max() / std::max<Index>(n, 1))
    throw InputError("CCA: cross-covariance too large for LAPACK (" + std::to_string(m) + " x " +
                     std::to_string(n) + ")");
  const int im = static_cast<int>(m), in = static_cast<int>(n);
  MatrixXd A = M;  // column-major, overwritten by LAPACK
  MatrixXd U(m, m), VT(n, n);
  out.s.resize(k);
  std::vector<int> iwork(static_cast<std::size_t>(8 * k));
  int lwork = -1, info = 0;
  double wq = 0.0;
  dgesdd_("A", &im, &in, A.data(), &im, out.s.data(), U.data(), &im, VT.data(), &in, &wq, &lwork,
          iwork.data(), &info);
  lwork = static_cast<int>(wq);
  std::vector<double> work(static_cast<std::size_t>(std::max(lwork, 1)));
  if (info == 0)
    dgesdd_("A", &im, &in, A.data(), &im, out.s.data(), U.data(), &im, VT.data(), &in,
            work.data(), &lwork, iwork.data(), &info);
  if (info != 0)
    throw Error("CCA: SVD of the whitened cross-covariance did not converge (LAPACK dgesdd info " +
                std::to_string(info) + ")");
  out.U = U.leftCols(k);
  out.V = VT.topRows(k).transpose();
#else
  Eigen::BDCSVD<MatrixXd> svd(M, Eigen::ComputeThinU | Eigen::ComputeThinV);
  out.s = svd.singularValues();
  out.U = svd.matrixU();
  out.V = svd.matrixV();
#endif
  return out;
}

}  // namespace

// ---------------------------------------------------------------- CCA

CcaResult cca(const MatrixXd& X, const MatrixXd& Y, double epsilon) {
  check_pair(X, Y, "CCA");
  if (!(epsilon >= 0.0 && epsilon < 1.0))
    throw InputError("CCA: epsilon must be in [0, 1) (a ridge relative to the largest variance), "
                     "got " + std::to_string(epsilon));
  const Index n = X.rows(), dx = X.cols(), dy = Y.cols();
  check_cca_rows(n, dx, dy, "CCA");

  CcaResult r;
  r.x_mean = X.colwise().mean();
  r.y_mean = Y.colwise().mean();
  const MatrixXd Xc = X.rowwise() - r.x_mean;  // (n, dx)
  const MatrixXd Yc = Y.rowwise() - r.y_mean;  // (n, dy)
  const double denom = static_cast<double>(n - 1);
  MatrixXd Sxx = Xc.transpose() * Xc / denom;  // (dx, dx)
  MatrixXd Syy = Yc.transpose() * Yc / denom;  // (dy, dy)
  MatrixXd Sxy = Xc.transpose() * Yc / denom;  // (dx, dy)

  // Normalising by the largest entry makes epsilon (ridge and drop threshold) relative to the
  // data's scale, as in google/svcca; correlations themselves are scale-free.
  const double xmax = Sxx.cwiseAbs().maxCoeff(), ymax = Syy.cwiseAbs().maxCoeff();
  if (!(xmax > 0.0) || !(ymax > 0.0))
    throw InputError(std::string("CCA: ") + (xmax > 0.0 ? "Y" : "X") +
                     " has zero variance in every column (constant activations have no "
                     "canonical correlations)");
  Sxx /= xmax;
  Syy /= ymax;
  Sxy /= std::sqrt(xmax * ymax);

  for (Index i = 0; i < dx; ++i)
    if (std::abs(Sxx(i, i)) >= epsilon) r.x_kept.push_back(i);
  for (Index i = 0; i < dy; ++i)
    if (std::abs(Syy(i, i)) >= epsilon) r.y_kept.push_back(i);
  const Index kx = static_cast<Index>(r.x_kept.size()), ky = static_cast<Index>(r.y_kept.size());
  const Index k = std::min(kx, ky);

  MatrixXd Sxx_k = take_block(Sxx, r.x_kept, r.x_kept);
  MatrixXd Syy_k = take_block(Syy, r.y_kept, r.y_kept);
  const MatrixXd Sxy_k = take_block(Sxy, r.x_kept, r.y_kept);
  Sxx_k.diagonal().array() += epsilon;
  Syy_k.diagonal().array() += epsilon;
  r.x_whiten = inv_sqrt_psd(Sxx_k);
  r.y_whiten = inv_sqrt_psd(Syy_k);

  const MatrixXd M = r.x_whiten * Sxy_k * r.y_whiten;  // (kx, ky)
  const Svd svd = svd_full(M);
  r.x_coef = svd.U;
  r.y_coef = svd.V;
  r.rho = VectorXd::Zero(std::min(dx, dy));
  for (Index i = 0; i < k; ++i) r.rho(i) = std::clamp(svd.s(i), 0.0, 1.0);
  return r;
}

SvccaResult svcca(const MatrixXd& X, const MatrixXd& Y, const SvccaOptions& opts) {
  check_pair(X, Y, "SVCCA");
  if (opts.k < 0) throw InputError("SVCCA: k must be >= 0 (0 = choose by variance fraction)");
  if (opts.k == 0 && !(opts.var_fraction > 0.0 && opts.var_fraction <= 1.0))
    throw InputError("SVCCA: variance fraction must be in (0, 1], got " +
                     std::to_string(opts.var_fraction));

  // Reduce one side to its top singular directions: Xc V_k = U_k S_k, shape (n, k).
  auto reduce = [&](const MatrixXd& A) -> MatrixXd {
    const MatrixXd Ac = centred(A);
    Eigen::BDCSVD<MatrixXd> svd(Ac, Eigen::ComputeThinU);
    const VectorXd& s = svd.singularValues();
    Index k = 0;
    if (opts.k > 0) {
      k = std::min<Index>(opts.k, s.size());
    } else {
      const VectorXd s2 = s.array().square();
      const double total = s2.sum();
      if (!(total > 0.0)) return MatrixXd(A.rows(), 0);
      double acc = 0.0;
      while (k < s2.size()) {
        acc += s2(k++);
        if (acc >= opts.var_fraction * total) break;
      }
    }
    return svd.matrixU().leftCols(k) * s.head(k).asDiagonal();
  };
  const MatrixXd Xr = reduce(X), Yr = reduce(Y);
  if (Xr.cols() == 0 || Yr.cols() == 0)
    throw InputError(std::string("SVCCA: ") + (Xr.cols() == 0 ? "X" : "Y") +
                     " has zero variance in every column");
  check_cca_rows(X.rows(), Xr.cols(), Yr.cols(), "SVCCA");
  const CcaResult c = cca(Xr, Yr, opts.epsilon);
  SvccaResult out;
  out.rho = c.rho;
  out.kx = Xr.cols();
  out.ky = Yr.cols();
  out.mean_rho = c.mean_rho();
  return out;
}

PwccaResult pwcca(const MatrixXd& X, const MatrixXd& Y, double epsilon) {
  const CcaResult c = cca(X, Y, epsilon);  // validates input
  if (c.x_kept.size() > c.y_kept.size()) {
    // Weights come from the narrower side. Swapping the arguments (rather than reading Y's
    // singular vectors here) makes this exactly google's compute_pwcca(Y, X): the SVD of the
    // transposed matrix may return other signs, and this metric depends on them.
    PwccaResult r = pwcca(Y, X, epsilon);
    r.weights_from_x = false;
    return r;
  }
  PwccaResult out;
  out.weights_from_x = true;
  const MatrixXd& A = X;
  const auto& kept = c.x_kept;
  const MatrixXd& coef = c.x_coef;  // (kx, k), k = kx: X is the narrower side
  const RowVectorXd& mean = c.x_mean;
  const Index k = coef.cols();

  const MatrixXd Ak = take_cols(A, kept);  // (n, k) raw activations of the kept neurons
  RowVectorXd mean_k(k);
  for (Index i = 0; i < k; ++i) mean_k(i) = mean(kept[static_cast<std::size_t>(i)]);
  // Same construction as the reference (which omits the whitening here): (n, k).
  const MatrixXd dirns = (Ak.rowwise() - mean_k) * coef + MatrixXd::Ones(Ak.rows(), 1) * mean_k;
  Eigen::HouseholderQR<MatrixXd> qr(dirns);
  const MatrixXd P = qr.householderQ() * MatrixXd::Identity(dirns.rows(), k);  // (n, k)
  VectorXd w = (P.transpose() * Ak).cwiseAbs().rowwise().sum();                // (k)
  const double total = w.sum();
  if (!(total > 0.0)) throw Error("PWCCA: projection weights sum to zero");
  out.weights = w / total;
  out.rho = c.rho.head(k);
  out.value = out.weights.dot(out.rho);
  return out;
}

// ---------------------------------------------------------------- CKA

double linear_cka(const MatrixXd& X, const MatrixXd& Y) {
  check_pair(X, Y, "linear CKA");
  const MatrixXd Xc = centred(X), Yc = centred(Y);
  const double xx = (Xc.transpose() * Xc).norm();
  const double yy = (Yc.transpose() * Yc).norm();
  if (!(xx > 0.0) || !(yy > 0.0))
    throw InputError(std::string("linear CKA: ") + (xx > 0.0 ? "Y" : "X") +
                     " has zero variance in every column (CKA is undefined for constants)");
  return (Yc.transpose() * Xc).squaredNorm() / (xx * yy);
}

double debiased_linear_cka(const MatrixXd& X, const MatrixXd& Y) {
  check_pair(X, Y, "debiased CKA");
  const Index n = X.rows();
  if (n < 4)
    throw InputError("debiased CKA: needs at least 4 rows, got " + std::to_string(n));
  const MatrixXd Xc = centred(X), Yc = centred(Y);
  const VectorXd rx = Xc.rowwise().squaredNorm(), ry = Yc.rowwise().squaredNorm();
  const double nd = static_cast<double>(n);
  const double xy = debiased_dot((Yc.transpose() * Xc).squaredNorm(), rx, ry, nd);
  const double xx = debiased_dot((Xc.transpose() * Xc).squaredNorm(), rx, rx, nd);
  const double yy = debiased_dot((Yc.transpose() * Yc).squaredNorm(), ry, ry, nd);
  if (!(xx > 0.0) || !(yy > 0.0))
    throw InputError(std::string("debiased CKA: the unbiased self-similarity of ") +
                     (xx > 0.0 ? "Y" : "X") +
                     " is not positive (constant or near-constant activations, or too few rows)");
  return xy / std::sqrt(xx * yy);
}

void LinearCkaAccumulator::add(const MatrixXd& Xb, const MatrixXd& Yb) {
  if (Xb.rows() != Yb.rows())
    throw InputError("linear CKA accumulator: X batch has " + std::to_string(Xb.rows()) +
                     " rows but Y batch has " + std::to_string(Yb.rows()) +
                     " (batches must hold the same datapoints)");
  if (Xb.rows() == 0) return;
  if (Xb.cols() == 0 || Yb.cols() == 0)
    throw InputError("linear CKA accumulator: batch has no columns on " +
                     std::string(Xb.cols() == 0 ? "X" : "Y"));
  check_finite(Xb, "X batch", "linear CKA accumulator");
  check_finite(Yb, "Y batch", "linear CKA accumulator");
  if (n_ == 0) {
    shift_x_ = Xb.colwise().mean();
    shift_y_ = Yb.colwise().mean();
    sum_x_ = RowVectorXd::Zero(Xb.cols());
    sum_y_ = RowVectorXd::Zero(Yb.cols());
    xtx_ = MatrixXd::Zero(Xb.cols(), Xb.cols());
    yty_ = MatrixXd::Zero(Yb.cols(), Yb.cols());
    ytx_ = MatrixXd::Zero(Yb.cols(), Xb.cols());
  } else if (Xb.cols() != shift_x_.size() || Yb.cols() != shift_y_.size()) {
    throw InputError("linear CKA accumulator: batch has " + std::to_string(Xb.cols()) + " X / " +
                     std::to_string(Yb.cols()) + " Y columns but earlier batches had " +
                     std::to_string(shift_x_.size()) + " / " + std::to_string(shift_y_.size()));
  }
  const MatrixXd Xs = Xb.rowwise() - shift_x_;  // (b, dx)
  const MatrixXd Ys = Yb.rowwise() - shift_y_;  // (b, dy)
  sum_x_ += Xs.colwise().sum();
  sum_y_ += Ys.colwise().sum();
  xtx_.noalias() += Xs.transpose() * Xs;
  yty_.noalias() += Ys.transpose() * Ys;
  ytx_.noalias() += Ys.transpose() * Xs;
  n_ += Xb.rows();
}

double LinearCkaAccumulator::result() const {
  if (n_ < 2)
    throw InputError("linear CKA accumulator: needs at least 2 rows, has " + std::to_string(n_));
  const double n = static_cast<double>(n_);
  // Centred cross-products: A'B - n mean_a' mean_b = A'B - sum_a' sum_b / n.
  const MatrixXd cxx = xtx_ - sum_x_.transpose() * sum_x_ / n;
  const MatrixXd cyy = yty_ - sum_y_.transpose() * sum_y_ / n;
  const MatrixXd cyx = ytx_ - sum_y_.transpose() * sum_x_ / n;
  const double xx = cxx.norm(), yy = cyy.norm();
  if (!(xx > 0.0) || !(yy > 0.0))
    throw InputError(std::string("linear CKA accumulator: ") + (xx > 0.0 ? "Y" : "X") +
                     " has zero variance in every column");
  return cyx.squaredNorm() / (xx * yy);
}

std::vector<Index> subsample_rows(Index n, const SubsampleOptions& opts) {
  std::vector<Index> idx(static_cast<std::size_t>(std::max<Index>(n, 0)));
  std::iota(idx.begin(), idx.end(), Index{0});
  if (opts.max_rows <= 0 || opts.max_rows >= n) return idx;
  // Partial Fisher-Yates: the first max_rows slots end up a uniform sample without replacement.
  std::mt19937_64 rng(opts.seed);
  const auto m = static_cast<std::size_t>(opts.max_rows);
  for (std::size_t i = 0; i < m; ++i) {
    std::uniform_int_distribution<std::size_t> pick(i, idx.size() - 1);
    std::swap(idx[i], idx[pick(rng)]);
  }
  idx.resize(m);
  std::sort(idx.begin(), idx.end());
  return idx;
}

MatrixXd linear_gram(const MatrixXd& X) { return X * X.transpose(); }

MatrixXd rbf_gram(const MatrixXd& X, double threshold) {
  if (!(threshold > 0.0) || !std::isfinite(threshold))
    throw InputError("RBF CKA: bandwidth fraction must be > 0, got " + std::to_string(threshold));
  const MatrixXd Xc = centred(X);  // distances are shift-invariant; centring limits cancellation
  const VectorXd sq = Xc.rowwise().squaredNorm();
  MatrixXd D = -2.0 * (Xc * Xc.transpose());  // (n, n) squared distances after the next lines
  D.colwise() += sq;
  D.rowwise() += sq.transpose();
  D = D.cwiseMax(0.0);
  D.diagonal().setZero();

  // numpy's median over all n^2 entries: mean of the two middle values when the count is even.
  std::vector<double> v(D.data(), D.data() + D.size());
  const std::size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
  double med = v[mid];
  if (v.size() % 2 == 0) med = 0.5 * (med + *std::max_element(v.begin(), v.begin() + mid));
  if (!(med > 0.0))
    throw InputError("RBF CKA: the median squared distance between rows is 0 (most rows are "
                     "identical); RBF bandwidth is undefined, use linear CKA");
  return (-D / (2.0 * threshold * threshold * med)).array().exp().matrix();
}

double gram_cka(const MatrixXd& Kx, const MatrixXd& Ky, bool debiased) {
  if (Kx.rows() != Kx.cols() || Ky.rows() != Ky.cols() || Kx.rows() != Ky.rows() || Kx.size() == 0)
    throw InputError("Gram CKA: Grams must be square, non-empty and of the same size, got " +
                     shape_str(Kx) + " and " + shape_str(Ky));
  const Index n = Kx.rows();
  if (debiased && n < 4)
    throw InputError("debiased CKA: needs at least 4 rows, got " + std::to_string(n));
  auto centre = [&](MatrixXd G) -> MatrixXd {
    const double nd = static_cast<double>(n);
    if (debiased) {
      // U-centring (Song et al. 2012): zero diagonal, then remove adjusted row/column means.
      G.diagonal().setZero();
      VectorXd means = G.colwise().sum().transpose() / (nd - 2.0);
      means.array() -= means.sum() / (2.0 * (nd - 1.0));
      G.colwise() -= means;
      G.rowwise() -= means.transpose();
      G.diagonal().setZero();
    } else {
      VectorXd means = G.colwise().mean().transpose();
      means.array() -= means.mean() / 2.0;
      G.colwise() -= means;
      G.rowwise() -= means.transpose();
    }
    return G;
  };
  const MatrixXd Cx = centre(Kx), Cy = centre(Ky);
  const double nx = Cx.norm(), ny = Cy.norm();
  if (!(nx > 0.0) || !(ny > 0.0))
    throw InputError(std::string("Gram CKA: the centred Gram of ") + (nx > 0.0 ? "Y" : "X") +
                     " is zero (constant activations)");
  return Cx.cwiseProduct(Cy).sum() / (nx * ny);
}

double rbf_cka(const MatrixXd& X, const MatrixXd& Y, double threshold, bool debiased,
               const SubsampleOptions& sub) {
  check_pair(X, Y, "RBF CKA");
  const auto idx = subsample_rows(X.rows(), sub);
  if (static_cast<Index>(idx.size()) == X.rows())
    return gram_cka(rbf_gram(X, threshold), rbf_gram(Y, threshold), debiased);
  return gram_cka(rbf_gram(take_rows(X, idx), threshold), rbf_gram(take_rows(Y, idx), threshold),
                  debiased);
}

// ---------------------------------------------------------------- combining metrics

std::vector<double> mean_normalised_rank(const std::vector<std::vector<double>>& metrics) {
  if (metrics.empty()) throw InputError("rank combination: no metrics given");
  const std::size_t L = metrics.front().size();
  if (L == 0) throw InputError("rank combination: metric 0 has no layers");
  std::vector<double> score(L, 0.0);
  for (std::size_t m = 0; m < metrics.size(); ++m) {
    const auto& v = metrics[m];
    if (v.size() != L)
      throw InputError("rank combination: metric " + std::to_string(m) + " has " +
                       std::to_string(v.size()) + " values but metric 0 has " + std::to_string(L) +
                       " (all metrics must cover the same layers)");
    for (std::size_t i = 0; i < L; ++i)
      if (!std::isfinite(v[i]))
        throw InputError("rank combination: metric " + std::to_string(m) + ", layer " +
                         std::to_string(i) + " is not finite");
    std::vector<std::size_t> order(L);
    std::iota(order.begin(), order.end(), std::size_t{0});
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return v[a] < v[b]; });
    for (std::size_t i = 0; i < L;) {
      std::size_t j = i;
      while (j + 1 < L && v[order[j + 1]] == v[order[i]]) ++j;
      const double rank = 0.5 * static_cast<double>(i + j) + 1.0;  // mean of ranks i+1 .. j+1
      const double norm = L == 1 ? 0.5 : (rank - 1.0) / static_cast<double>(L - 1);
      for (std::size_t t = i; t <= j; ++t) score[order[t]] += norm;
      i = j + 1;
    }
  }
  for (auto& s : score) s /= static_cast<double>(metrics.size());
  return score;
}

}  // namespace mpqat::sensitivity
