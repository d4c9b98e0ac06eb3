#define MPQAT_COMPAT_C10D
#include "mpqat/dist/communicator.h"

#include <cstdlib>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"
#include "mpqat/util/torch_compat.h"

#ifdef MPQAT_HAVE_NCCL
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace mpqat::dist {
namespace {

int env_int(const char* name, int fallback, int min_value) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < min_value || x > 1000000) {
    throw InputError(fmt::format("environment variable {}='{}' is not an integer >= {}", name, v,
                                 min_value));
  }
  return static_cast<int>(x);
}

}  // namespace

LaunchEnv read_launch_env() {
  LaunchEnv e;
  e.present = std::getenv("WORLD_SIZE") != nullptr || std::getenv("RANK") != nullptr;
  if (!e.present) return e;
  e.world_size = env_int("WORLD_SIZE", 1, 1);
  e.rank = env_int("RANK", 0, 0);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0);
  e.local_world_size = env_int("LOCAL_WORLD_SIZE", e.world_size, 1);
  if (e.rank >= e.world_size) {
    throw InputError(fmt::format("environment: RANK={} must be below WORLD_SIZE={}", e.rank,
                                 e.world_size));
  }
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500, 1);
  if (e.master_port > 65535) {
    throw InputError(fmt::format("environment: MASTER_PORT={} is not a TCP port", e.master_port));
  }
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  e.agent_store = agent && std::string(agent) == "True";
  e.restart_count = env_int("TORCHELASTIC_RESTART_COUNT", 0, 0);
  return e;
}

struct Communicator::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<compat::BackendBase> pg;
  bool nccl = false;
  std::chrono::milliseconds timeout{600000};
  at::Device device = at::kCPU;
};

Communicator::Communicator() = default;
Communicator::~Communicator() = default;

std::unique_ptr<Communicator> Communicator::from_env(const Options& opts) {
  const LaunchEnv env = read_launch_env();
  if (!env.present || env.world_size == 1) {
    auto c = std::make_unique<Communicator>();
    if (env.present && opts.backend == "nccl") {
      spdlog::debug("single rank: no process group needed");
    }
    return c;
  }
  return create(env, opts);
}

std::unique_ptr<Communicator> Communicator::create(const LaunchEnv& env, const Options& opts) {
  auto c = std::make_unique<Communicator>();
  c->rank_ = env.rank;
  c->world_size_ = env.world_size;
  c->local_rank_ = env.local_rank;
  if (env.world_size == 1) return c;
  c->impl_ = std::make_unique<Impl>();
  auto& impl = *c->impl_;
  impl.timeout = std::chrono::duration_cast<std::chrono::milliseconds>(opts.timeout);

  bool use_nccl = false;
  if (opts.backend == "nccl") {
#ifdef MPQAT_HAVE_NCCL
    if (!torch::cuda::is_available()) {
      throw InputError("distributed.backend nccl needs CUDA, and no GPU is visible; use gloo");
    }
    use_nccl = true;
#else
    throw InputError("distributed.backend nccl: this LibTorch has no NCCL (CPU build); use gloo "
                     "or auto");
#endif
  } else if (opts.backend == "auto") {
#ifdef MPQAT_HAVE_NCCL
    use_nccl = torch::cuda::is_available();
#endif
  } else if (opts.backend != "gloo") {
    throw InputError(fmt::format("distributed backend '{}' is not one of auto, gloo, nccl",
                                 opts.backend));
  }

  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(env.master_port);
    // Under torchrun's agent store the agent is the server and every rank a client.
    so.isServer = !env.agent_store && env.rank == 0;
    so.numWorkers = env.agent_store ? c10::nullopt : c10::optional<std::size_t>(env.world_size);
    so.waitWorkers = false;
    so.timeout = impl.timeout;
    c10::intrusive_ptr<c10d::Store> tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
    if (env.agent_store) {
      tcp = c10::make_intrusive<c10d::PrefixStore>(
          fmt::format("/worker/attempt_{}", env.restart_count), tcp);
    }
    impl.store = c10::make_intrusive<c10d::PrefixStore>("mpqat", tcp);
#ifdef MPQAT_HAVE_NCCL
    if (use_nccl) {
      impl.nccl = true;
      impl.device = at::Device(at::kCUDA, env.local_rank);
      c10::cuda::set_device(env.local_rank);
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = impl.timeout;
      impl.pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl.store, env.rank, env.world_size, o);
      c->backend_ = "nccl";
    }
#endif
    if (!use_nccl) {
      auto o = c10d::ProcessGroupGloo::Options::create(impl.timeout);
      if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (env.master_addr == "127.0.0.1" || env.master_addr == "localhost") {
        o->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        o->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      impl.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl.store, env.rank, env.world_size, o);
      c->backend_ = "gloo";
    }
  } catch (const mpqat::Error&) {
    throw;
  } catch (const std::exception& e) {
    throw DistributedError(fmt::format(
        "rank {}/{}: could not join the process group at {}:{} within {} s: {}", env.rank,
        env.world_size, env.master_addr, env.master_port, opts.timeout.count(),
        util::split(e.what(), '\n').front()));
  }
  spdlog::debug("rank {}/{} joined the {} process group", env.rank, env.world_size, c->backend_);
  return c;
}

namespace {

template <typename F>
void run_collective(const char* what, int rank, int world, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    throw DistributedError(fmt::format(
        "rank {}/{}: {} failed, another rank died or timed out: {}", rank, world, what,
        util::split(e.what(), '\n').front()));
  }
}

}  // namespace

void Communicator::all_reduce_sum(at::Tensor& t) {
  if (!distributed()) return;
  run_collective("all-reduce", rank_, world_size_, [&] {
    const bool stage = impl_->nccl && !t.is_cuda();
    std::vector<at::Tensor> v{stage ? t.to(impl_->device) : t.contiguous()};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = impl_->timeout;
    impl_->pg->allreduce(v, o)->wait(impl_->timeout);
    if (stage || !t.is_contiguous()) t.copy_(v[0]);
    else if (v[0].data_ptr() != t.data_ptr()) t.copy_(v[0]);
  });
}

void Communicator::all_reduce_mean(at::Tensor& t) {
  all_reduce_sum(t);
  if (distributed()) t.div_(world_size_);
}

void Communicator::broadcast(at::Tensor& t, int root) {
  if (!distributed()) return;
  run_collective("broadcast", rank_, world_size_, [&] {
    const bool stage = impl_->nccl && !t.is_cuda();
    std::vector<at::Tensor> v{stage ? t.to(impl_->device) : t.contiguous()};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = impl_->timeout;
    impl_->pg->broadcast(v, o)->wait(impl_->timeout);
    if (v[0].data_ptr() != t.data_ptr()) t.copy_(v[0]);
  });
}

void Communicator::barrier() {
  if (!distributed()) return;
  run_collective("barrier", rank_, world_size_, [&] {
    c10d::BarrierOptions o;
    o.timeout = impl_->timeout;
    if (impl_->nccl) o.device_ids = {local_rank_};
    impl_->pg->barrier(o)->wait(impl_->timeout);
  });
}

double Communicator::all_reduce_sum(double v) {
  if (!distributed()) return v;
  auto t = torch::tensor({v}, torch::kFloat64);
  all_reduce_sum(t);
  return t.item<double>();
}

double Communicator::all_reduce_max(double v) {
  if (!distributed()) return v;
  auto t = torch::tensor({v}, torch::kFloat64);
  run_collective("all-reduce(max)", rank_, world_size_, [&] {
    const bool stage = impl_->nccl;
    std::vector<at::Tensor> vec{stage ? t.to(impl_->device) : t};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::MAX;
    o.timeout = impl_->timeout;
    impl_->pg->allreduce(vec, o)->wait(impl_->timeout);
    if (stage) t.copy_(vec[0]);
  });
  return t.item<double>();
}

c10::Device resolve_device(const std::string& name, const Communicator& comm, const std::string& context) {
  const bool cuda_ok = torch::cuda::is_available();
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "cuda" && !cuda_ok)
    throw InputError(context + " cuda: LibTorch sees no CUDA device (use cpu or auto)");
  if (name != "cuda" && name != "auto")
    throw InputError(context + " must be auto, cpu or cuda, got '" + name + "'");
  if (!cuda_ok) return c10::Device(c10::kCPU);
  const auto n = static_cast<int>(torch::cuda::device_count());
  const int idx = comm.distributed() ? comm.local_rank() : 0;
  if (idx >= n)
    throw InputError("rank with LOCAL_RANK " + std::to_string(idx) + " has no GPU (" + std::to_string(n) +
                     " visible); launch at most one rank per GPU or set " + context + " cpu");
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(idx));
}

}  // namespace mpqat::dist
