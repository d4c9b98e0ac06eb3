// `mpqat launch -n N -- <command>`: N local ranks without torchrun; and the hidden
// `mpqat dist-check`, a smoke test of the process group used by the test suite and by users
// checking a multi-node setup (`torchrun ... --no-python mpqat dist-check`).
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "mpqat/cli/commands.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/dist/launcher.h"
#include "mpqat/util/error.h"

namespace mpqat::cli {
namespace {

std::string self_exe() {
  char buf[PATH_MAX];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n <= 0) throw Error("launch: cannot find this program's path (/proc/self/exe)");
  return std::string(buf, static_cast<std::size_t>(n));
}

struct CheckArgs {
  int fail_rank = -1;
  int timeout_s = 60;
  std::string backend = "auto";
};

// Every rank contributes known values, so the result can be checked against a closed form.
void dist_check(const CheckArgs& a) {
  dist::Options opts;
  opts.backend = a.backend;
  opts.timeout = std::chrono::seconds(a.timeout_s);
  auto comm = dist::Communicator::from_env(opts);
  const int r = comm->rank(), n = comm->world_size();
  if (r == a.fail_rank) {
    spdlog::warn("dist-check: rank {} exits on purpose (--fail-rank)", r);
    std::_Exit(3);
  }
  auto t = torch::full({4}, static_cast<double>(r + 1), torch::kFloat64);
  comm->all_reduce_sum(t);
  const double sum = t[0].item<double>();
  auto m = torch::full({2}, static_cast<double>(r), torch::kFloat32);
  comm->all_reduce_mean(m);
  auto b = torch::full({3}, r == 0 ? 42.0 : -1.0, torch::kFloat32);
  comm->broadcast(b, 0);
  comm->barrier();
  const double expect_sum = n * (n + 1) / 2.0;
  const double expect_mean = (n - 1) / 2.0;
  const bool ok = sum == expect_sum && std::abs(m[0].item<double>() - expect_mean) < 1e-6 &&
                  b[2].item<float>() == 42.0f;
  if (comm->is_main()) {
    nlohmann::json j{{"world_size", n},       {"backend", comm->backend()},
                     {"sum", sum},            {"expected_sum", expect_sum},
                     {"mean", m[0].item<double>()}, {"broadcast", b[2].item<float>()},
                     {"ok", ok}};
    std::cout << j.dump() << std::endl;
  }
  if (!ok) throw Error(fmt::format("dist-check: rank {} got wrong collective results", r));
}

}  // namespace

void add_launch_command(CLI::App& app) {
  auto opts = std::make_shared<dist::LaunchOptions>();
  auto cmd = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
      "launch", "Start N local ranks of an mpqat command (like torchrun --nproc-per-node N "
                "--no-python mpqat ...)");
  sub->add_option("-n,--nproc", opts->nprocs, "number of ranks")->check(CLI::Range(1, 1024));
  sub->add_option("--master-port", opts->master_port, "TCP port of the store (0 = a free port)")
      ->check(CLI::Range(0, 65535));
  sub->add_option("--master-addr", opts->master_addr, "address of the store");
  sub->add_option("--grace", opts->grace_seconds,
                  "seconds between SIGTERM and SIGKILL when stopping ranks after a failure");
  sub->add_option("command", *cmd, "the mpqat command to run on every rank, after --")
      ->required();
  sub->callback([opts, cmd] {
    const int code = dist::launch_local(self_exe(), *cmd, *opts);
    if (code != 0) throw ExitRequest{code};
  });

  auto check = std::make_shared<CheckArgs>();
  auto* dc = app.add_subcommand("dist-check", "Check the process group: all-reduce, broadcast, "
                                              "barrier on every rank; prints JSON on rank 0");
  dc->group("");  // hidden: a diagnostic, not part of the pipeline
  dc->add_option("--fail-rank", check->fail_rank, "this rank exits at once (failure test)");
  dc->add_option("--timeout", check->timeout_s, "collective timeout in seconds")
      ->check(CLI::Range(1, 86400));
  dc->add_option("--backend", check->backend, "auto, gloo or nccl")
      ->check(CLI::IsMember({"auto", "gloo", "nccl"}));
  dc->callback([check] { dist_check(*check); });
}

}  // namespace mpqat::cli
