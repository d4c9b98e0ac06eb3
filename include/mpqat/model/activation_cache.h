// Activation caches of block-at-a-time passes (sensitivity, Block-AP, E2E-QP): for each item
// (a calibration sequence) a (length, width) matrix of hidden states or gradients, kept in host
// memory while a shared budget allows, else in a file.
//
//   CacheBudget budget(opts);                          // limit, dtype, folder for spilled caches
//   ActivationCache x(budget, lengths, C, "inputs");   // memory or file, decided here
//   x.put(i, h);                                       // h (T_i, C) or (1, T_i, C), any device
//   auto h = x.get(i, device);                         // (1, T_i, C) fp32, a new tensor
//
// A spilled cache is one file, created with its full size reserved (posix_fallocate) and unlinked
// at once: a full disk fails at creation with one line naming the folder and the bytes needed
// (never later as a crash), and a killed process leaves no file behind. Reads and writes go
// through pread / pwrite, so the pages count as page cache, not as this process's memory.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace mpqat::model {

struct CacheOptions {
  torch::ScalarType dtype = torch::kFloat;  // kFloat, kHalf or kBFloat16
  uint64_t memory_limit = 4ull << 30;       // bytes held in memory by all caches of one budget
  std::string dir;                          // folder for spilled caches ("" = system temp folder)
  // The recipe keys named in error messages (which setting the user should change).
  std::string dir_key = "cache_dir", limit_key = "cache_memory_limit";
};

// From the user's words: dtype "float32" / "float16" / "bfloat16" (io::parse_float_dtype's
// spellings), limit a byte size ("4GiB"), dir a folder; `keys` name the three settings in error
// messages (recipe keys or command-line options), in that order.
CacheOptions cache_options(const std::string& dtype, const std::string& limit, const std::string& dir,
                           const std::vector<std::string>& keys);

// The shared memory allowance of a set of caches.
class CacheBudget {
 public:
  explicit CacheBudget(CacheOptions opts);
  const CacheOptions& options() const { return opts_; }
  uint64_t in_memory() const { return used_; }
  uint64_t on_disk() const { return disk_; }

 private:
  friend class ActivationCache;
  CacheOptions opts_;
  uint64_t used_ = 0, disk_ = 0;
};

class ActivationCache {
 public:
  // Items with the given lengths (rows), each row `width` values of the budget's dtype.
  ActivationCache(CacheBudget& budget, std::vector<int64_t> lengths, int64_t width, const std::string& name);
  // Equal lengths: n items of `length` rows.
  ActivationCache(CacheBudget& budget, int64_t n, int64_t length, int64_t width, const std::string& name);
  ~ActivationCache();
  ActivationCache(const ActivationCache&) = delete;
  ActivationCache& operator=(const ActivationCache&) = delete;

  int64_t items() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t length(int64_t i) const { return lengths_.at(static_cast<size_t>(i)); }
  int64_t width() const { return width_; }
  torch::ScalarType dtype() const { return dtype_; }
  bool on_disk() const { return fd_ >= 0; }
  uint64_t bytes() const { return bytes_; }

  // x (T_i, C) or (1, T_i, C), any float dtype and device; rounded to the cache dtype.
  void put(int64_t i, const torch::Tensor& x);
  // (1, T_i, C) fp32 on `device`, a new tensor.
  torch::Tensor get(int64_t i, const torch::Device& device = torch::kCPU) const;
  // Items of equal length stacked: x (k, L, C) <-> items.
  void put(const std::vector<int64_t>& items, const torch::Tensor& x);
  torch::Tensor get(const std::vector<int64_t>& items, const torch::Device& device = torch::kCPU) const;
  // Every item of `other` (same lengths and width).
  void copy_from(const ActivationCache& other);

  // The whole contents as one file (atomic: temp file, fsync, rename) and back; load checks the
  // file's shape and dtype and throws InputError naming it when they differ.
  void save(const std::string& path) const;
  void load(const std::string& path);

 private:
  void read_rows(int64_t row, int64_t rows, void* dst) const;
  void write_rows(int64_t row, int64_t rows, const void* src);
  CacheBudget& budget_;
  std::string name_;
  std::vector<int64_t> lengths_, offsets_;  // rows
  int64_t width_ = 0, rows_ = 0;
  torch::ScalarType dtype_;
  uint64_t bytes_ = 0;
  torch::Tensor mem_;  // (rows, width) when in memory
  int fd_ = -1;        // when on disk
};

}  // namespace mpqat::model
