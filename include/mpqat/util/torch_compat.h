// The only place where LibTorch version differences (1.13 on Debian 12 vs 2.x) are handled.
#pragma once

#include <torch/version.h>

#define MPQAT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||       \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))

namespace mpqat::util {

// "1.13.0" style version string of the LibTorch we were built against.
inline const char* torch_version_string() { return TORCH_VERSION; }

}  // namespace mpqat::util

// ---- c10d (only for TUs that define MPQAT_COMPAT_C10D before including this header) -----
// 1.13: backends derive from c10d::ProcessGroup, Work is ProcessGroup::Work.
// 2.x:  backends derive from c10d::Backend, Work is c10d::Work.
#ifdef MPQAT_COMPAT_C10D
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MPQAT_HAVE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace mpqat::compat {
#if MPQAT_TORCH_AT_LEAST(2, 0)
using BackendBase = c10d::Backend;
#else
using BackendBase = c10d::ProcessGroup;
#endif
}  // namespace mpqat::compat
#endif  // MPQAT_COMPAT_C10D
