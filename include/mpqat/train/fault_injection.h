// Faults the tests inject into Block-AP, kept out of the production options (BlockApOptions):
// a NaN loss at one optimisation step, and a callback after each finished block (to simulate a
// kill). Process-wide and off by default; on first use it reads the environment, which is how
// the command-line tests reach a subprocess:
//   MPQAT_TEST_NAN_AT=BLOCK:STEP        the loss of step STEP (0-based, within the block) is NaN
//   MPQAT_TEST_KILL_AFTER_BLOCK=N       SIGKILL once block N is finished and saved
// In-process tests set the fields and call reset() when done (ScopedFaults does both).
#pragma once

#include <cstdint>
#include <functional>

namespace mpqat::train {

struct FaultInjection {
  int64_t nan_block = -1, nan_step = -1;
  std::function<void(int64_t block)> after_block;
  void reset() { *this = FaultInjection{}; }
};

// The process's faults (initialised from the environment once). Throws InputError for a
// malformed MPQAT_TEST_NAN_AT.
FaultInjection& fault_injection();

// Sets faults for a scope and clears them on exit.
class ScopedFaults {
 public:
  explicit ScopedFaults(FaultInjection f) { fault_injection() = std::move(f); }
  ~ScopedFaults() { fault_injection().reset(); }
  ScopedFaults(const ScopedFaults&) = delete;
  ScopedFaults& operator=(const ScopedFaults&) = delete;
};

}  // namespace mpqat::train
