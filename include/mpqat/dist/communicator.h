// The distributed runtime every stage uses: a c10d process group built from torchrun's
// environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_USE_AGENT_STORE), Gloo for CPU tensors and NCCL when LibTorch has CUDA, and a
// single-process fallback when no such environment is set. A peer that dies or a collective
// that outlives the timeout makes every rank throw DistributedError: never a hang.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <ATen/core/Tensor.h>

namespace mpqat::dist {

// torchrun's variables, parsed and checked.
struct LaunchEnv {
  bool present = false;  // WORLD_SIZE (or RANK) was set
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // TORCHELASTIC_USE_AGENT_STORE=True: the agent hosts the store
  int restart_count = 0;     // TORCHELASTIC_RESTART_COUNT
};

// Reads the environment; throws InputError naming the variable when a value is malformed
// (e.g. RANK >= WORLD_SIZE).
LaunchEnv read_launch_env();

struct Options {
  std::string backend = "auto";  // auto | gloo | nccl
  std::chrono::seconds timeout{600};
};

class Communicator {
 public:
  // Single process: every collective is the identity.
  Communicator();
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // Builds the process group from the environment (single process when none is set).
  static std::unique_ptr<Communicator> from_env(const Options& opts = {});
  // Builds it from explicit settings (tests run several ranks as threads this way).
  static std::unique_ptr<Communicator> create(const LaunchEnv& env, const Options& opts);

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }
  bool distributed() const { return world_size_ > 1; }
  bool is_main() const { return rank_ == 0; }
  const std::string& backend() const { return backend_; }

  // In place, on every rank. Tensors may be on CPU (Gloo) or CUDA (NCCL; CPU tensors are
  // staged through the GPU). Mean = sum / world_size (Gloo has no AVG).
  void all_reduce_sum(at::Tensor& t);
  void all_reduce_mean(at::Tensor& t);
  void broadcast(at::Tensor& t, int root = 0);
  void barrier();
  // Scalar conveniences (fp64).
  double all_reduce_sum(double v);
  double all_reduce_max(double v);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, world_size_ = 1, local_rank_ = 0;
  std::string backend_ = "none";
};

// The compute device of this rank for a device setting `name` (auto | cpu | cuda; `context`
// names the setting in errors): auto = CUDA when LibTorch sees a GPU; with several ranks each
// takes cuda:LOCAL_RANK. Throws InputError for cuda without a GPU, a rank without its own GPU,
// or an unknown name.
c10::Device resolve_device(const std::string& name, const Communicator& comm, const std::string& context);

}  // namespace mpqat::dist
