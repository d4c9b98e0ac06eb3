// Test faults for Block-AP (include/mpqat/train/fault_injection.h).
#include "mpqat/train/fault_injection.h"

#include <csignal>
#include <cstdlib>
#include <string>

#include "mpqat/util/error.h"

namespace mpqat::train {

FaultInjection& fault_injection() {
  static FaultInjection f = [] {
    FaultInjection r;
    if (const char* h = std::getenv("MPQAT_TEST_NAN_AT")) {
      const std::string s(h);
      const auto c = s.find(':');
      if (c == std::string::npos) throw InputError("MPQAT_TEST_NAN_AT must be BLOCK:STEP, got '" + s + "'");
      r.nan_block = std::stoll(s.substr(0, c));
      r.nan_step = std::stoll(s.substr(c + 1));
    }
    if (const char* k = std::getenv("MPQAT_TEST_KILL_AFTER_BLOCK")) {
      const int64_t kb = std::stoll(k);
      r.after_block = [kb](int64_t b) {
        if (b == kb) std::raise(SIGKILL);
      };
    }
    return r;
  }();
  return f;
}

}  // namespace mpqat::train
