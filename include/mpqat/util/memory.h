// Process memory as the kernel counts it (Linux /proc), for stage reports, benchmarks and the
// choice between holding a whole model and streaming it block by block. No torch here.
//
//   rss   resident set: anonymous pages (heap: weights, activations, caches in memory) plus
//         file-backed pages (the memory-mapped checkpoint, which the kernel can drop at will)
//   anon  the anonymous part alone: what a stage really needs
//   file  the file-backed part
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

namespace mpqat::util {

struct MemoryUsage {
  uint64_t rss = 0, anon = 0, file = 0;  // bytes now
  uint64_t hwm = 0;                      // peak rss since start or the last reset_peak_rss()
};

// /proc/self/status; zeros where the kernel does not report a field.
MemoryUsage memory_usage();

// Resets the kernel's peak-rss counter (VmHWM) of this process (/proc/self/clear_refs "5").
// Returns false where the kernel refuses it; the peak then stays that of the whole process.
bool reset_peak_rss();

// Returns memory the allocator holds but no longer uses to the system (glibc: malloc_trim).
// Block-at-a-time passes call it after freeing a block: glibc's dynamic mmap threshold makes
// block-sized buffers heap memory after the first free, and a heap fragmented by activations
// would otherwise keep every freed block resident (peak memory then grows with depth).
void release_free_memory();

// MemAvailable of /proc/meminfo: what the host can give without swapping (0 when unknown).
uint64_t available_memory();

// Samples anon / file every `interval_ms` on a thread of its own, from construction until
// stop(): the kernel keeps a peak only of rss as a whole. Construction also resets VmHWM.
class PeakMemory {
 public:
  struct Peak {
    uint64_t rss = 0;   // VmHWM over the interval (exact, kernel counted)
    uint64_t anon = 0;  // sampled maximum of RssAnon
    uint64_t file = 0;  // sampled maximum of RssFile
  };
  explicit PeakMemory(int interval_ms = 20);
  ~PeakMemory();
  PeakMemory(const PeakMemory&) = delete;
  PeakMemory& operator=(const PeakMemory&) = delete;
  // Ends sampling (idempotent) and returns the peaks.
  Peak stop();
  // False where the kernel refused to reset VmHWM: Peak::rss is then the process's peak.
  bool peak_rss_exact() const { return hwm_reset_; }

 private:
  void sample();
  std::atomic<bool> running_{true};
  std::atomic<uint64_t> anon_{0}, file_{0};
  bool hwm_reset_ = false;
  uint64_t rss_at_start_ = 0;
  Peak result_;
  bool stopped_ = false;
  int interval_ms_;
  std::thread thread_;
};

}  // namespace mpqat::util
