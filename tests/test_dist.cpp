// The distributed runtime: collectives over Gloo with 2 ranks (threads in-process, and
// processes through `mpqat launch`), and failures that must end in an error, never a hang.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <thread>

#include <torch/torch.h>

#include "mpqat/dist/communicator.h"
#include "mpqat/dist/launcher.h"
#include "mpqat/util/error.h"
#include "run_command.h"

using mpqat::dist::Communicator;
using mpqat::dist::LaunchEnv;
using mpqat::testing::run_mpqat;

namespace {

LaunchEnv env_for(int rank, int world, int port) {
  LaunchEnv e;
  e.present = true;
  e.rank = rank;
  e.local_rank = rank;
  e.world_size = world;
  e.local_world_size = world;
  e.master_port = port;
  return e;
}

}  // namespace

TEST(Dist, SingleProcessFallbackIsIdentity) {
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("RANK");
  auto c = Communicator::from_env();
  EXPECT_FALSE(c->distributed());
  auto t = torch::arange(4, torch::kFloat32);
  c->all_reduce_sum(t);
  c->barrier();
  EXPECT_TRUE(torch::equal(t, torch::arange(4, torch::kFloat32)));
  EXPECT_EQ(c->all_reduce_sum(2.5), 2.5);
}

TEST(Dist, TwoRanksGlooCollectives) {
  const int port = mpqat::dist::find_free_port();
  mpqat::dist::Options opts;
  opts.backend = "gloo";
  opts.timeout = std::chrono::seconds(30);
  std::vector<torch::Tensor> sums(2), means(2), bcast(2);
  std::vector<double> scalars(2), maxes(2);
  std::vector<std::string> errors(2);
  auto body = [&](int r) {
    try {
      auto c = Communicator::create(env_for(r, 2, port), opts);
      EXPECT_EQ(c->backend(), "gloo");
      auto s = torch::tensor({1.0 + r, 10.0 * (r + 1)}, torch::kFloat32);
      c->all_reduce_sum(s);
      sums[r] = s;
      auto m = torch::full({3}, static_cast<float>(r * 4), torch::kFloat32);
      c->all_reduce_mean(m);
      means[r] = m;
      auto b = torch::full({2, 2}, r == 1 ? 7.0f : 0.0f);
      c->broadcast(b, 1);
      bcast[r] = b;
      c->barrier();
      scalars[r] = c->all_reduce_sum(0.5 + r);
      maxes[r] = c->all_reduce_max(static_cast<double>(r * 3));
    } catch (const std::exception& e) {
      errors[r] = e.what();
    }
  };
  std::thread t0(body, 0), t1(body, 1);
  t0.join();
  t1.join();
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r], "") << "rank " << r;
    EXPECT_TRUE(torch::allclose(sums[r], torch::tensor({3.0f, 30.0f})));
    EXPECT_TRUE(torch::allclose(means[r], torch::full({3}, 2.0f)));
    EXPECT_TRUE(torch::equal(bcast[r], torch::full({2, 2}, 7.0f)));
    EXPECT_DOUBLE_EQ(scalars[r], 2.0);
    EXPECT_DOUBLE_EQ(maxes[r], 3.0);
  }
}

TEST(Dist, MissingPeerTimesOutWithClearError) {
  const int port = mpqat::dist::find_free_port();
  mpqat::dist::Options opts;
  opts.backend = "gloo";
  opts.timeout = std::chrono::seconds(2);
  const auto start = std::chrono::steady_clock::now();
  try {
    // Rank 1 never comes.
    auto c = Communicator::create(env_for(0, 2, port), opts);
    auto t = torch::ones({1});
    c->all_reduce_sum(t);
    FAIL() << "expected a DistributedError";
  } catch (const mpqat::DistributedError& e) {
    EXPECT_NE(std::string(e.what()).find("rank 0/2"), std::string::npos) << e.what();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(s, 60.0) << "the timeout was not honoured";
}

TEST(Dist, EnvironmentIsValidated) {
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "5", 1);
  EXPECT_THROW(mpqat::dist::read_launch_env(), mpqat::InputError);
  ::setenv("RANK", "x", 1);
  EXPECT_THROW(mpqat::dist::read_launch_env(), mpqat::InputError);
  ::setenv("RANK", "1", 1);
  ::setenv("MASTER_PORT", "4242", 1);
  ::setenv("TORCHELASTIC_USE_AGENT_STORE", "True", 1);
  const auto e = mpqat::dist::read_launch_env();
  EXPECT_EQ(e.rank, 1);
  EXPECT_EQ(e.world_size, 2);
  EXPECT_EQ(e.master_port, 4242);
  EXPECT_TRUE(e.agent_store);
  for (const char* v : {"WORLD_SIZE", "RANK", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"}) ::unsetenv(v);
}

TEST(Dist, LaunchTwoRanksRunsCollectives) {
  const auto r = run_mpqat("launch -n 2 -- dist-check --timeout 30");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("\"world_size\":2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"ok\":true"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\"sum\":3.0"), std::string::npos) << r.out;
}

TEST(Dist, LaunchStopsEveryRankWhenOneDies) {
  const auto start = std::chrono::steady_clock::now();
  const auto r = run_mpqat("launch -n 2 --grace 2 -- dist-check --timeout 120 --fail-rank 1");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.code, 3) << r.err;
  EXPECT_NE(r.err.find("rank 1 exited with code 3"), std::string::npos) << r.err;
  EXPECT_LT(s, 60.0) << "ranks were not stopped promptly";
}

// An input error every rank hits is one line, not one per rank.
TEST(Dist, AnErrorEveryRankHitsIsPrintedOnce) {
  const auto r = run_mpqat("launch -n 2 -- eval /nonexistent-mpqat-model --ppl /nonexistent.txt");
  EXPECT_EQ(r.code, 2) << r.err;
  const std::string line = "mpqat: error: model folder '/nonexistent-mpqat-model' does not exist";
  size_t count = 0;
  for (size_t p = r.err.find(line); p != std::string::npos; p = r.err.find(line, p + 1)) ++count;
  EXPECT_EQ(count, 1u) << r.err;
}

TEST(Dist, SurvivingRankFailsWithoutLauncher) {
  // As under torchrun: two independent processes; rank 1 dies; rank 0 must exit with an error
  // (code 1) within its timeout instead of hanging.
  const int port = mpqat::dist::find_free_port();
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port);
  const std::string rank1 = "RANK=1 " + env + " " + MPQAT_BINARY +
                            " dist-check --timeout 5 --fail-rank 1 >/dev/null 2>&1 &";
  const auto r = run_mpqat("dist-check --timeout 5", rank1 + " RANK=0 " + env);
  EXPECT_EQ(r.code, 1) << r.err;
  EXPECT_NE(r.err.find("rank 0/2"), std::string::npos) << r.err;
}
