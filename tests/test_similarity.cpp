// Similarity metrics (CCA, SVCCA, PWCCA, CKA) and the numeric CSV reader.
// Numbers are checked against the numpy reference values in shared/reference/similarity,
// closed forms (canonical variates' correlations) and invariances.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <nlohmann/json.hpp>

#include "mpqat/io/csv_matrix.h"
#include "mpqat/sensitivity/similarity.h"
#include "mpqat/util/error.h"
#include "test_util.h"

namespace sim = mpqat::sensitivity;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;

namespace {

MatrixXd randn(Index r, Index c, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  MatrixXd m(r, c);
  for (Index j = 0; j < c; ++j)
    for (Index i = 0; i < r; ++i) m(i, j) = nd(rng);
  return m;
}

MatrixXd random_orthogonal(Index d, std::uint64_t seed) {
  Eigen::HouseholderQR<MatrixXd> qr(randn(d, d, seed));
  return qr.householderQ() * MatrixXd::Identity(d, d);
}

// Y = nonlinear mix of X plus noise: related, but not perfectly.
MatrixXd related(const MatrixXd& X, Index dy, std::uint64_t seed) {
  MatrixXd W = randn(X.cols(), dy, seed);
  MatrixXd Y = X * W + 0.7 * randn(X.rows(), dy, seed + 1);
  Y.col(0) = Y.col(0).array().tanh().matrix();
  return Y;
}

struct Reference {
  MatrixXd X, Y;
  nlohmann::json expected;
};

// Loads shared/reference/similarity/basic_*; returns false when the shared folder is absent.
bool load_reference(Reference& ref) {
  const std::string dir = mpqat::testing::shared_dir();
  if (dir.empty()) return false;
  const std::string base = dir + "/reference/similarity/";
  ref.X = mpqat::io::read_csv_matrix(base + "basic_X.csv").data;
  ref.Y = mpqat::io::read_csv_matrix(base + "basic_Y.csv").data;
  std::ifstream in(base + "basic_expected.json");
  ref.expected = nlohmann::json::parse(in);
  return true;
}

std::string temp_file(const std::string& name, const std::string& content) {
  const auto p = std::filesystem::temp_directory_path() / ("mpqat_test_sim_" + name);
  std::ofstream(p, std::ios::binary) << content;
  return p.string();
}

template <class F>
std::string input_error_message(F&& f) {
  try {
    f();
  } catch (const mpqat::InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO EXCEPTION";
}

constexpr double kRefTol = 1e-6;

}  // namespace

// ------------------------------------------------------------------ reference values

TEST(SimilarityReference, AllMetricsMatchNumpyReference) {
  Reference ref;
  if (!load_reference(ref)) GTEST_SKIP() << "shared data not found (set MPQAT_SHARED_DIR)";
  const auto& e = ref.expected;
  const double eps = e.at("epsilon").get<double>();

  const sim::CcaResult c = sim::cca(ref.X, ref.Y, eps);
  const auto rho = e.at("cca_rho").get<std::vector<double>>();
  ASSERT_EQ(c.rho.size(), static_cast<Index>(rho.size()));
  for (std::size_t i = 0; i < rho.size(); ++i)
    EXPECT_NEAR(c.rho(static_cast<Index>(i)), rho[i], kRefTol) << "rho " << i;
  EXPECT_NEAR(c.mean_rho(), e.at("cca_mean_rho").get<double>(), kRefTol);

  sim::SvccaOptions so;
  so.k = e.at("svcca_top_k").get<int>();
  so.epsilon = eps;
  const sim::SvccaResult s = sim::svcca(ref.X, ref.Y, so);
  EXPECT_EQ(s.kx, so.k);
  EXPECT_EQ(s.ky, so.k);
  EXPECT_NEAR(s.mean_rho, e.at("svcca_mean_rho").get<double>(), kRefTol);

  const sim::PwccaResult p = sim::pwcca(ref.X, ref.Y, eps);
  EXPECT_TRUE(p.weights_from_x);  // equal widths: the reference takes X's side
#ifndef MPQAT_NO_LAPACK
  EXPECT_NEAR(p.value, e.at("pwcca_google_svcca").get<double>(), kRefTol);
#else
  EXPECT_NEAR(p.value, e.at("pwcca_google_svcca").get<double>(), 2e-3);  // sign-dependent
#endif

  EXPECT_NEAR(sim::linear_cka(ref.X, ref.Y), e.at("cka_linear").get<double>(), kRefTol);
  EXPECT_NEAR(sim::rbf_cka(ref.X, ref.Y, 0.5), e.at("cka_rbf_sigma_0.5_of_median").get<double>(),
              kRefTol);
  EXPECT_NEAR(sim::debiased_linear_cka(ref.X, ref.Y), e.at("cka_linear_debiased").get<double>(),
              kRefTol);
  // The Gram route (U-centred linear Grams) must give the same debiased value.
  EXPECT_NEAR(sim::gram_cka(sim::linear_gram(ref.X), sim::linear_gram(ref.Y), true),
              e.at("cka_linear_debiased").get<double>(), kRefTol);
}

TEST(SimilarityReference, StreamingCkaMatchesReference) {
  Reference ref;
  if (!load_reference(ref)) GTEST_SKIP() << "shared data not found (set MPQAT_SHARED_DIR)";
  sim::LinearCkaAccumulator acc;
  for (Index start = 0; start < ref.X.rows(); start += 13) {
    const Index b = std::min<Index>(13, ref.X.rows() - start);
    acc.add(ref.X.middleRows(start, b), ref.Y.middleRows(start, b));
  }
  EXPECT_EQ(acc.rows(), ref.X.rows());
  EXPECT_NEAR(acc.result(), ref.expected.at("cka_linear").get<double>(), kRefTol);
}

// ------------------------------------------------------------------ CCA

TEST(Cca, CorrelationsAreThoseOfTheCanonicalVariates) {
  const MatrixXd X = randn(300, 6, 1), Y = related(X, 4, 2);
  const sim::CcaResult c = sim::cca(X, Y);
  ASSERT_EQ(c.rho.size(), 4);
  const MatrixXd U = (X.rowwise() - c.x_mean) * c.x_weights();  // (n, 4)
  const MatrixXd V = (Y.rowwise() - c.y_mean) * c.y_weights();  // (n, 4)
  const double n1 = static_cast<double>(X.rows() - 1);
  const MatrixXd Cuu = U.transpose() * U / n1, Cvv = V.transpose() * V / n1;
  const MatrixXd Cuv = U.transpose() * V / n1;
  for (Index i = 0; i < 4; ++i) {
    if (i > 0) EXPECT_GE(c.rho(i - 1), c.rho(i));
    const double corr = Cuv(i, i) / std::sqrt(Cuu(i, i) * Cvv(i, i));
    EXPECT_NEAR(std::abs(corr), c.rho(i), 1e-8);
    for (Index k = 0; k < 4; ++k)
      if (k != i) {
        EXPECT_NEAR(Cuu(i, k) / std::sqrt(Cuu(i, i) * Cuu(k, k)), 0.0, 1e-8);
        EXPECT_NEAR(Cuv(i, k), 0.0, 1e-8);
      }
  }
}

TEST(Cca, InvariantToInvertibleLinearMapsAndShifts) {
  const MatrixXd X = randn(200, 5, 3), Y = related(X, 5, 4);
  const MatrixXd A = randn(5, 5, 5) + 3.0 * MatrixXd::Identity(5, 5);
  const MatrixXd B = randn(5, 5, 6) + 3.0 * MatrixXd::Identity(5, 5);
  ASSERT_GT(std::abs(A.determinant()), 1e-3);
  ASSERT_GT(std::abs(B.determinant()), 1e-3);
  const VectorXd r0 = sim::cca(X, Y).rho;
  MatrixXd Xs = X * A;
  Xs.rowwise() += Eigen::RowVectorXd::Constant(5, 42.0);
  const VectorXd r1 = sim::cca(Xs, Y * B).rho;
  EXPECT_LT((r0 - r1).cwiseAbs().maxCoeff(), 1e-7) << r0.transpose() << "\n" << r1.transpose();
  EXPECT_LT(std::abs(sim::svcca(X, Y, {}).mean_rho - sim::svcca(X, Y, {}).mean_rho), 1e-15);
}

TEST(Cca, IdenticalInputsGiveOne) {
  const MatrixXd X = randn(150, 6, 7);
  const sim::CcaResult c = sim::cca(X, X);
  EXPECT_NEAR(c.rho.minCoeff(), 1.0, 1e-7);
  EXPECT_LE(c.rho.maxCoeff(), 1.0);  // clamped
  EXPECT_NEAR(sim::svcca(X, X, {}).mean_rho, 1.0, 1e-7);
  EXPECT_NEAR(sim::pwcca(X, X).value, 1.0, 1e-7);
}

TEST(Cca, ConstantColumnIsDroppedAndReportedAsZero) {
  MatrixXd X = randn(100, 4, 8);
  X.col(2).setConstant(3.0);
  const MatrixXd Y = randn(100, 4, 9);
  const sim::CcaResult c = sim::cca(X, Y);
  ASSERT_EQ(c.rho.size(), 4);
  EXPECT_EQ(c.x_kept.size(), 3u);
  EXPECT_EQ(c.rho(3), 0.0);
  EXPECT_TRUE(c.rho.allFinite());
}

TEST(Svcca, VarianceFractionPicksTheFewestDirections) {
  // Centred orthonormal columns scaled by s = 10, 3, 1, 0.1: s^2 = 100, 9, 1, 0.01.
  MatrixXd Z = randn(400, 4, 10);
  Z = Z.rowwise() - Z.colwise().mean();
  Eigen::HouseholderQR<MatrixXd> qr(Z);
  MatrixXd Q = qr.householderQ() * MatrixXd::Identity(400, 4);
  const VectorXd s = (VectorXd(4) << 10, 3, 1, 0.1).finished();
  const MatrixXd X = Q * s.asDiagonal() * random_orthogonal(4, 11);
  const MatrixXd Y = randn(400, 3, 12);
  sim::SvccaOptions o;
  o.var_fraction = 0.99;  // 109 / 110.01 >= 0.99 -> 2 directions
  EXPECT_EQ(sim::svcca(X, Y, o).kx, 2);
  o.var_fraction = 0.999;  // needs 110 / 110.01 -> 3 directions
  EXPECT_EQ(sim::svcca(X, Y, o).kx, 3);
  o.var_fraction = 0.5;
  EXPECT_EQ(sim::svcca(X, Y, o).kx, 1);
  o.k = 9;  // more than available: clamped
  EXPECT_EQ(sim::svcca(X, Y, o).kx, 4);
}

TEST(Pwcca, WeightsAreADistributionFromTheNarrowerSide) {
  const MatrixXd X = randn(300, 7, 13), Y = related(X, 4, 14);
  const sim::PwccaResult p = sim::pwcca(X, Y);
  EXPECT_FALSE(p.weights_from_x);  // Y has fewer neurons
  ASSERT_EQ(p.weights.size(), 4);
  EXPECT_NEAR(p.weights.sum(), 1.0, 1e-12);
  EXPECT_GE(p.weights.minCoeff(), 0.0);
  EXPECT_GE(p.value, p.rho.minCoeff() - 1e-12);
  EXPECT_LE(p.value, p.rho.maxCoeff() + 1e-12);
  const sim::PwccaResult q = sim::pwcca(Y, X);
  EXPECT_TRUE(q.weights_from_x);
  EXPECT_NEAR(p.value, q.value, 1e-12);  // argument order does not matter
}

// ------------------------------------------------------------------ CKA

TEST(Cka, InvariantToOrthogonalMapsAndIsotropicScalingButNotColumnScaling) {
  const MatrixXd X = randn(250, 6, 20), Y = related(X, 6, 21);
  const MatrixXd Q = random_orthogonal(6, 22);
  const double lin = sim::linear_cka(X, Y), rbf = sim::rbf_cka(X, Y, 0.5);
  const double deb = sim::debiased_linear_cka(X, Y);
  const MatrixXd Xq = 3.7 * X * Q, Yq = 0.2 * Y * random_orthogonal(6, 23);
  EXPECT_NEAR(sim::linear_cka(Xq, Yq), lin, 1e-10);
  EXPECT_NEAR(sim::rbf_cka(Xq, Yq, 0.5), rbf, 1e-10);
  EXPECT_NEAR(sim::debiased_linear_cka(Xq, Yq), deb, 1e-10);

  // Per-channel scaling (what per-channel quantisation does) must change CKA.
  VectorXd scale(6);
  scale << 1, 10, 0.1, 1, 5, 0.5;
  const MatrixXd Xd = X * scale.asDiagonal();
  EXPECT_GT(std::abs(sim::linear_cka(Xd, Y) - lin), 1e-2);
  EXPECT_GT(std::abs(sim::rbf_cka(Xd, Y, 0.5) - rbf), 1e-2);
  // ... while CCA does not care (without the ridge, which is relative to the largest variance).
  EXPECT_LT((sim::cca(Xd, Y, 0.0).rho - sim::cca(X, Y, 0.0).rho).cwiseAbs().maxCoeff(), 1e-9);
}

TEST(Cka, IdenticalInputsGiveOne) {
  const MatrixXd X = randn(120, 5, 24);
  EXPECT_NEAR(sim::linear_cka(X, X), 1.0, 1e-12);
  EXPECT_NEAR(sim::rbf_cka(X, X, 0.5), 1.0, 1e-12);
  EXPECT_NEAR(sim::debiased_linear_cka(X, X), 1.0, 1e-12);
  EXPECT_NEAR(sim::rbf_cka(X, X, 1.0, /*debiased=*/true), 1.0, 1e-12);
}

TEST(Cka, IndependentInputsGiveNearZero) {
  const MatrixXd X = randn(2000, 5, 25), Y = randn(2000, 5, 26);
  const double lin = sim::linear_cka(X, Y);
  const double deb = sim::debiased_linear_cka(X, Y);
  EXPECT_LT(lin, 0.05);
  EXPECT_LT(sim::rbf_cka(X, Y, 0.5, false, {0, 0}), 0.05);
  EXPECT_LT(std::abs(deb), lin);  // the biased estimator's floor is gone
  EXPECT_LT(std::abs(deb), 0.01);
}

TEST(Cka, GramAndFeatureSpaceRoutesAgree) {
  const MatrixXd X = randn(80, 4, 27), Y = related(X, 7, 28);
  EXPECT_NEAR(sim::gram_cka(sim::linear_gram(X), sim::linear_gram(Y), false),
              sim::linear_cka(X, Y), 1e-12);
  EXPECT_NEAR(sim::gram_cka(sim::linear_gram(X), sim::linear_gram(Y), true),
              sim::debiased_linear_cka(X, Y), 1e-12);
}

TEST(Cka, StreamingInChunksEqualsOneShot) {
  MatrixXd X = randn(1001, 9, 29), Y = related(X, 3, 30);
  X.array() += 1e4;  // a large offset: the shifted sums keep the centring exact
  const double oneshot = sim::linear_cka(X, Y);
  for (Index chunk : {1, 7, 64, 1001}) {
    sim::LinearCkaAccumulator acc;
    for (Index s = 0; s < X.rows(); s += chunk) {
      const Index b = std::min(chunk, X.rows() - s);
      acc.add(X.middleRows(s, b), Y.middleRows(s, b));
    }
    EXPECT_NEAR(acc.result(), oneshot, 1e-10) << "chunk " << chunk;
  }
  sim::LinearCkaAccumulator acc;
  acc.add(X.topRows(10), Y.topRows(10));
  EXPECT_THROW(acc.add(X.topRows(5).leftCols(8), Y.topRows(5)), mpqat::InputError);
  EXPECT_THROW(acc.add(X.topRows(5), Y.topRows(4)), mpqat::InputError);
  EXPECT_THROW(sim::LinearCkaAccumulator().result(), mpqat::InputError);
}

TEST(Cka, RbfSubsampleIsSeededAndBounded) {
  const MatrixXd X = randn(500, 4, 31), Y = related(X, 4, 32);
  const auto idx = sim::subsample_rows(500, {100, 7});
  ASSERT_EQ(idx.size(), 100u);
  for (std::size_t i = 1; i < idx.size(); ++i) EXPECT_LT(idx[i - 1], idx[i]);
  EXPECT_EQ(idx, sim::subsample_rows(500, {100, 7}));
  EXPECT_NE(idx, sim::subsample_rows(500, {100, 8}));
  EXPECT_EQ(sim::subsample_rows(50, {100, 7}).size(), 50u);
  EXPECT_EQ(sim::subsample_rows(50, {0, 7}).size(), 50u);
  const double a = sim::rbf_cka(X, Y, 0.5, false, {100, 7});
  EXPECT_EQ(a, sim::rbf_cka(X, Y, 0.5, false, {100, 7}));
  EXPECT_NEAR(a, sim::rbf_cka(X, Y, 0.5, false, {0, 0}), 0.1);  // a fair estimate
}

// ------------------------------------------------------------------ ranking

TEST(Ranking, MeanOfNormalisedRanksWithTies) {
  const auto r = sim::mean_normalised_rank({{1.0, 2.0, 2.0, 3.0}});
  ASSERT_EQ(r.size(), 4u);
  EXPECT_DOUBLE_EQ(r[0], 0.0);
  EXPECT_DOUBLE_EQ(r[1], 0.5);  // ranks 2 and 3 shared -> 2.5 -> (2.5-1)/3
  EXPECT_DOUBLE_EQ(r[2], 0.5);
  EXPECT_DOUBLE_EQ(r[3], 1.0);
  const auto m = sim::mean_normalised_rank({{0.3, 0.1, 0.2}, {30.0, 20.0, 10.0}});
  EXPECT_DOUBLE_EQ(m[0], 1.0);   // (1 + 1) / 2
  EXPECT_DOUBLE_EQ(m[1], 0.25);  // (0 + 0.5) / 2
  EXPECT_DOUBLE_EQ(m[2], 0.25);  // (0.5 + 0) / 2
  EXPECT_DOUBLE_EQ(sim::mean_normalised_rank({{7.0}})[0], 0.5);
  EXPECT_THROW(sim::mean_normalised_rank({{1, 2}, {1, 2, 3}}), mpqat::InputError);
  EXPECT_THROW(sim::mean_normalised_rank({}), mpqat::InputError);
  EXPECT_THROW(sim::mean_normalised_rank({{1.0, NAN}}), mpqat::InputError);
}

// ------------------------------------------------------------------ errors

TEST(SimilarityErrors, BadInputsThrowInputErrorWithUsefulMessages) {
  const MatrixXd X = randn(20, 3, 40), Y = randn(21, 3, 41);
  std::string msg = input_error_message([&] { sim::cca(X, Y); });
  EXPECT_NE(msg.find("20"), std::string::npos) << msg;
  EXPECT_NE(msg.find("21"), std::string::npos) << msg;
  msg = input_error_message([&] { sim::linear_cka(X, Y); });
  EXPECT_NE(msg.find("21"), std::string::npos) << msg;

  MatrixXd Xn = randn(20, 3, 42);
  Xn(4, 2) = NAN;
  msg = input_error_message([&] { sim::linear_cka(Xn, X); });
  EXPECT_NE(msg.find("NaN"), std::string::npos) << msg;
  EXPECT_NE(msg.find("row 4"), std::string::npos) << msg;
  Xn(4, 2) = INFINITY;
  msg = input_error_message([&] { sim::rbf_cka(X, Xn, 0.5); });
  EXPECT_NE(msg.find("Inf"), std::string::npos) << msg;

  // 8 rows, 10 columns: CCA needs 11 rows.
  msg = input_error_message([&] { sim::cca(randn(8, 10, 43), randn(8, 2, 44)); });
  EXPECT_NE(msg.find("11"), std::string::npos) << msg;
  msg = input_error_message([&] { sim::pwcca(randn(8, 10, 43), randn(8, 2, 44)); });
  EXPECT_NE(msg.find("11"), std::string::npos) << msg;
  // CKA has no such requirement.
  EXPECT_NO_THROW(sim::linear_cka(randn(8, 10, 43), randn(8, 2, 44)));

  msg = input_error_message([&] { sim::linear_cka(MatrixXd(0, 3), MatrixXd(0, 3)); });
  EXPECT_NE(msg.find("empty"), std::string::npos) << msg;
  EXPECT_THROW(sim::cca(MatrixXd(), MatrixXd()), mpqat::InputError);
  EXPECT_THROW(sim::linear_cka(MatrixXd::Ones(10, 2), X.topRows(10)), mpqat::InputError);
  EXPECT_THROW(sim::cca(X, X, -1.0), mpqat::InputError);
  EXPECT_THROW(sim::rbf_cka(X, X, 0.0), mpqat::InputError);
  EXPECT_THROW(sim::debiased_linear_cka(X.topRows(3), X.topRows(3)), mpqat::InputError);
  sim::SvccaOptions bad;
  bad.var_fraction = 1.5;
  EXPECT_THROW(sim::svcca(X, X, bad), mpqat::InputError);
}

// ------------------------------------------------------------------ CSV reader

TEST(CsvMatrix, ReadsNumbersWithAndWithoutHeader) {
  const auto a = mpqat::io::parse_csv_matrix("1, 2.5,-3e-2\n+4,5,6\n", "a.csv");
  ASSERT_EQ(a.data.rows(), 2);
  ASSERT_EQ(a.data.cols(), 3);
  EXPECT_TRUE(a.header.empty());
  EXPECT_DOUBLE_EQ(a.data(0, 2), -0.03);
  EXPECT_DOUBLE_EQ(a.data(1, 0), 4.0);

  const auto b = mpqat::io::parse_csv_matrix("# comment\r\nn0,n1\r\n\r\n1,2\r\n3,4\r\n", "b.csv");
  ASSERT_EQ(b.header.size(), 2u);
  EXPECT_EQ(b.header[1], "n1");
  ASSERT_EQ(b.data.rows(), 2);
  EXPECT_DOUBLE_EQ(b.data(1, 1), 4.0);

  mpqat::io::CsvReadOptions forced;
  forced.header = mpqat::io::HeaderMode::Yes;
  EXPECT_EQ(mpqat::io::parse_csv_matrix("1,2\n3,4\n", "c.csv", forced).data.rows(), 1);
  forced.header = mpqat::io::HeaderMode::No;
  EXPECT_THROW(mpqat::io::parse_csv_matrix("x,y\n3,4\n", "c.csv", forced), mpqat::InputError);
  forced.header = mpqat::io::HeaderMode::Auto;
  forced.delimiter = '\t';
  EXPECT_EQ(mpqat::io::parse_csv_matrix("1\t2\n3\t4", "t.tsv", forced).data(1, 1), 4.0);

  const std::string path = temp_file("ok.csv", "a,b\n0.5,1\n");
  const auto f = mpqat::io::read_csv_matrix(path);
  EXPECT_DOUBLE_EQ(f.data(0, 0), 0.5);
  std::filesystem::remove(path);
}

TEST(CsvMatrix, ErrorsNameFileLineAndColumn) {
  using mpqat::io::parse_csv_matrix;
  std::string msg = input_error_message([] { parse_csv_matrix("1,2\n3,x\n", "f.csv"); });
  EXPECT_NE(msg.find("f.csv"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("column 2"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;

  msg = input_error_message([] { parse_csv_matrix("1,2\n3,4,5\n", "g.csv"); });
  EXPECT_NE(msg.find("line 2 has 3 fields"), std::string::npos) << msg;
  EXPECT_NE(msg.find("line 1"), std::string::npos) << msg;

  msg = input_error_message([] { parse_csv_matrix("1,2\nnan,4\n", "h.csv"); });
  EXPECT_NE(msg.find("line 2, column 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("not finite"), std::string::npos) << msg;
  msg = input_error_message([] { parse_csv_matrix("1,-inf\n", "h.csv"); });
  EXPECT_NE(msg.find("not finite"), std::string::npos) << msg;
  msg = input_error_message([] { parse_csv_matrix("1,1e999\n", "h.csv"); });
  EXPECT_NE(msg.find("not finite"), std::string::npos) << msg;

  msg = input_error_message([] { parse_csv_matrix("", "e.csv"); });
  EXPECT_NE(msg.find("no numeric data"), std::string::npos) << msg;
  msg = input_error_message([] { parse_csv_matrix("a,b\n", "e.csv"); });
  EXPECT_NE(msg.find("after the header"), std::string::npos) << msg;
  // A first line mixing names and numbers is not taken for a header.
  msg = input_error_message([] { parse_csv_matrix("a,1\n2,3\n", "m.csv"); });
  EXPECT_NE(msg.find("line 1, column 1"), std::string::npos) << msg;
  msg = input_error_message([] { parse_csv_matrix("1,,3\n", "m.csv"); });
  EXPECT_NE(msg.find("column 2"), std::string::npos) << msg;

  msg = input_error_message([] { mpqat::io::read_csv_matrix("/nonexistent/dir/x.csv"); });
  EXPECT_NE(msg.find("/nonexistent/dir/x.csv"), std::string::npos) << msg;
}
