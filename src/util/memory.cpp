// Process memory from /proc (include/mpqat/util/memory.h).
#include "mpqat/util/memory.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>

namespace mpqat::util {

namespace {

// "Key:   1234 kB" lines of a /proc file -> bytes of the requested keys.
template <size_t N>
void read_kib_fields(const char* path, const char* const (&keys)[N], uint64_t* (&out)[N]) {
  std::ifstream in(path);
  std::string key;
  while (in >> key) {
    uint64_t kib = 0;
    bool matched = false;
    for (size_t i = 0; i < N; ++i)
      if (key == keys[i]) {
        if (in >> kib) *out[i] = kib * 1024;
        matched = true;
      }
    if (!matched) in.ignore(4096, '\n');
  }
}

}  // namespace

MemoryUsage memory_usage() {
  MemoryUsage u;
  static const char* const keys[] = {"VmRSS:", "VmHWM:", "RssAnon:", "RssFile:"};
  uint64_t* out[] = {&u.rss, &u.hwm, &u.anon, &u.file};
  read_kib_fields("/proc/self/status", keys, out);
  return u;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return static_cast<bool>(f);
}

void release_free_memory() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

uint64_t available_memory() {
  uint64_t avail = 0;
  static const char* const keys[] = {"MemAvailable:"};
  uint64_t* out[] = {&avail};
  read_kib_fields("/proc/meminfo", keys, out);
  return avail;
}

PeakMemory::PeakMemory(int interval_ms) : interval_ms_(std::max(1, interval_ms)) {
  hwm_reset_ = reset_peak_rss();
  const auto u = memory_usage();
  rss_at_start_ = u.rss;
  anon_ = u.anon;
  file_ = u.file;
  thread_ = std::thread([this] {
    while (running_.load()) {
      sample();
      std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms_));
    }
  });
}

PeakMemory::~PeakMemory() { stop(); }

void PeakMemory::sample() {
  const auto u = memory_usage();
  uint64_t a = anon_.load();
  while (u.anon > a && !anon_.compare_exchange_weak(a, u.anon)) {
  }
  uint64_t f = file_.load();
  while (u.file > f && !file_.compare_exchange_weak(f, u.file)) {
  }
}

PeakMemory::Peak PeakMemory::stop() {
  if (stopped_) return result_;
  stopped_ = true;
  running_ = false;
  if (thread_.joinable()) thread_.join();
  sample();
  const auto u = memory_usage();
  result_.anon = anon_.load();
  result_.file = file_.load();
  // After the reset VmHWM is this interval's peak; where the kernel refused the reset it is
  // the whole process's peak, an upper bound.
  result_.rss = std::max(u.hwm, rss_at_start_);
  return result_;
}

}  // namespace mpqat::util
