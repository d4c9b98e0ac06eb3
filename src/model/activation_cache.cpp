// Activation caches in memory or in an unlinked, fully reserved file
// (include/mpqat/model/activation_cache.h).
#include "mpqat/model/activation_cache.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "mpqat/io/safetensors.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;

namespace mpqat::model {

namespace {

constexpr char kMagic[8] = {'M', 'P', 'Q', 'A', 'T', 'A', 'C', '1'};

int dtype_code(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat: return 0;
    case torch::kHalf: return 1;
    case torch::kBFloat16: return 2;
    default: throw Error("activation cache: unsupported dtype (float32, float16, bfloat16 are)");
  }
}

std::string errno_text(int e) { return std::strerror(e); }

uint64_t free_bytes(const std::string& dir) {
  struct statvfs st {};
  if (::statvfs(dir.c_str(), &st) != 0) return 0;
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

}  // namespace

CacheOptions cache_options(const std::string& dtype, const std::string& limit, const std::string& dir,
                           const std::vector<std::string>& keys) {
  CacheOptions o;
  o.dtype = scalar_type(io::parse_float_dtype(dtype, keys.at(0)), keys.at(0));
  o.memory_limit = util::parse_bytes(limit, keys.at(1));
  o.dir = dir;
  o.limit_key = keys.at(1);
  o.dir_key = keys.at(2);
  return o;
}

CacheBudget::CacheBudget(CacheOptions opts) : opts_(std::move(opts)) { dtype_code(opts_.dtype); }

ActivationCache::ActivationCache(CacheBudget& budget, int64_t n, int64_t length, int64_t width,
                                 const std::string& name)
    : ActivationCache(budget, std::vector<int64_t>(static_cast<size_t>(n), length), width, name) {}

ActivationCache::ActivationCache(CacheBudget& budget, std::vector<int64_t> lengths, int64_t width,
                                 const std::string& name)
    : budget_(budget), name_(name), lengths_(std::move(lengths)), width_(width), dtype_(budget.options().dtype) {
  offsets_.reserve(lengths_.size());
  for (auto l : lengths_) {
    if (l < 0) throw Error("activation cache '" + name + "': negative item length");
    offsets_.push_back(rows_);
    rows_ += l;
  }
  bytes_ = static_cast<uint64_t>(rows_) * static_cast<uint64_t>(width_) * c10::elementSize(dtype_);
  const auto& o = budget_.options();
  if (budget_.used_ + bytes_ <= o.memory_limit) {
    mem_ = torch::empty({rows_, width_}, torch::TensorOptions().dtype(dtype_));
    budget_.used_ += bytes_;
    return;
  }
  // Spill: one file, its size reserved now, unlinked at once.
  const std::string dir = o.dir.empty() ? fs::temp_directory_path().string() : o.dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  static std::atomic<uint64_t> counter{0};
  const std::string path =
      (fs::path(dir) / ("mpqat-cache-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" + name + ".bin"))
          .string();
  const std::string need = util::format_bytes(bytes_) + " for the " + name + " activation cache (in-memory caches past " +
                           o.limit_key + " = " + util::format_bytes(o.memory_limit) + " go to disk)";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd_ < 0)
    throw InputError("cannot create a file in the cache folder '" + dir + "' (" + errno_text(errno) + "): it needs " +
                     need + "; set " + o.dir_key + " to a writable folder");
  ::unlink(path.c_str());
  if (bytes_ > 0) {
    const int e = ::posix_fallocate(fd_, 0, static_cast<off_t>(bytes_));
    if (e != 0) {
      ::close(fd_);
      fd_ = -1;
      throw InputError("the cache folder '" + dir + "' has " + util::format_bytes(free_bytes(dir)) + " free but needs " +
                       need + " (" + errno_text(e) + "); set " + o.dir_key + " to a folder with room or raise " +
                       o.limit_key);
    }
  }
  budget_.disk_ += bytes_;
}

ActivationCache::~ActivationCache() {
  if (fd_ >= 0) {
    ::close(fd_);
    budget_.disk_ -= bytes_;
  } else {
    budget_.used_ -= bytes_;
  }
}

void ActivationCache::read_rows(int64_t row, int64_t rows, void* dst) const {
  const size_t esz = c10::elementSize(dtype_);
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(width_) * esz;
  if (fd_ < 0) {
    std::memcpy(dst, static_cast<const char*>(mem_.data_ptr()) + static_cast<size_t>(row) * width_ * esz, n);
    return;
  }
  size_t done = 0;
  const off_t base = static_cast<off_t>(static_cast<size_t>(row) * width_ * esz);
  while (done < n) {
    const ssize_t r = ::pread(fd_, static_cast<char*>(dst) + done, n - done, base + static_cast<off_t>(done));
    if (r <= 0) throw Error("reading the " + name_ + " activation cache failed (" + errno_text(errno) + ")");
    done += static_cast<size_t>(r);
  }
}

void ActivationCache::write_rows(int64_t row, int64_t rows, const void* src) {
  const size_t esz = c10::elementSize(dtype_);
  const size_t n = static_cast<size_t>(rows) * static_cast<size_t>(width_) * esz;
  if (fd_ < 0) {
    std::memcpy(static_cast<char*>(mem_.data_ptr()) + static_cast<size_t>(row) * width_ * esz, src, n);
    return;
  }
  size_t done = 0;
  const off_t base = static_cast<off_t>(static_cast<size_t>(row) * width_ * esz);
  while (done < n) {
    const ssize_t r = ::pwrite(fd_, static_cast<const char*>(src) + done, n - done, base + static_cast<off_t>(done));
    if (r <= 0) throw Error("writing the " + name_ + " activation cache failed (" + errno_text(errno) + ")");
    done += static_cast<size_t>(r);
  }
}

void ActivationCache::put(int64_t i, const torch::Tensor& x) {
  const int64_t T = length(i);
  if (x.numel() != T * width_)
    throw Error("activation cache '" + name_ + "': item " + std::to_string(i) + " expects " + std::to_string(T) + " x " +
                std::to_string(width_) + " values, got " + std::to_string(x.numel()));
  auto c = x.detach().to(torch::kCPU, dtype_).contiguous();
  write_rows(offsets_[static_cast<size_t>(i)], T, c.data_ptr());
}

torch::Tensor ActivationCache::get(int64_t i, const torch::Device& device) const {
  const int64_t T = length(i);
  auto buf = torch::empty({1, T, width_}, torch::TensorOptions().dtype(dtype_));
  read_rows(offsets_[static_cast<size_t>(i)], T, buf.data_ptr());
  if (dtype_ == torch::kFloat) return device.is_cpu() ? buf : buf.to(device);
  return buf.to(device, torch::kFloat);
}

void ActivationCache::put(const std::vector<int64_t>& items, const torch::Tensor& x) {
  if (x.dim() != 3 || x.size(0) != static_cast<int64_t>(items.size()))
    throw Error("activation cache '" + name_ + "': put of " + std::to_string(items.size()) + " items needs (k, L, C)");
  auto c = x.detach().to(torch::kCPU, dtype_).contiguous();
  const size_t stride = static_cast<size_t>(x.size(1) * width_) * c10::elementSize(dtype_);
  for (size_t k = 0; k < items.size(); ++k) {
    if (length(items[k]) != x.size(1))
      throw Error("activation cache '" + name_ + "': item " + std::to_string(items[k]) + " has another length");
    write_rows(offsets_[static_cast<size_t>(items[k])], x.size(1), static_cast<const char*>(c.data_ptr()) + k * stride);
  }
}

torch::Tensor ActivationCache::get(const std::vector<int64_t>& items, const torch::Device& device) const {
  const int64_t L = items.empty() ? 0 : length(items.front());
  auto buf = torch::empty({static_cast<int64_t>(items.size()), L, width_}, torch::TensorOptions().dtype(dtype_));
  const size_t stride = static_cast<size_t>(L * width_) * c10::elementSize(dtype_);
  for (size_t k = 0; k < items.size(); ++k) {
    if (length(items[k]) != L)
      throw Error("activation cache '" + name_ + "': stacked items must have equal lengths");
    read_rows(offsets_[static_cast<size_t>(items[k])], L, static_cast<char*>(buf.data_ptr()) + k * stride);
  }
  if (dtype_ == torch::kFloat) return device.is_cpu() ? buf : buf.to(device);
  return buf.to(device, torch::kFloat);
}

void ActivationCache::copy_from(const ActivationCache& other) {
  if (other.lengths_ != lengths_ || other.width_ != width_ || other.dtype_ != dtype_)
    throw Error("activation cache '" + name_ + "': copy from a cache of another shape");
  // Item by item: bounded memory whatever the backends.
  for (int64_t i = 0; i < items(); ++i) {
    auto buf = torch::empty({length(i), width_}, torch::TensorOptions().dtype(dtype_));
    other.read_rows(other.offsets_[static_cast<size_t>(i)], length(i), buf.data_ptr());
    write_rows(offsets_[static_cast<size_t>(i)], length(i), buf.data_ptr());
  }
}

void ActivationCache::save(const std::string& path) const {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot write '" + tmp + "' (" + errno_text(errno) + ")");
  auto write_all = [&](const void* p, size_t n) {
    size_t done = 0;
    while (done < n) {
      const ssize_t r = ::write(fd, static_cast<const char*>(p) + done, n - done);
      if (r <= 0) {
        const int e = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        throw Error("writing '" + tmp + "' failed (" + errno_text(e) + ")");
      }
      done += static_cast<size_t>(r);
    }
  };
  const int64_t header[3] = {rows_, width_, dtype_code(dtype_)};
  write_all(kMagic, sizeof kMagic);
  write_all(header, sizeof header);
  for (int64_t i = 0; i < items(); ++i) {
    auto buf = torch::empty({length(i), width_}, torch::TensorOptions().dtype(dtype_));
    read_rows(offsets_[static_cast<size_t>(i)], length(i), buf.data_ptr());
    write_all(buf.data_ptr(), buf.nbytes());
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw Error("writing '" + tmp + "' failed (" + errno_text(errno) + ")");
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw Error("cannot rename '" + tmp + "' to '" + path + "' (" + ec.message() + ")");
}

void ActivationCache::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot read the activation cache file '" + path + "'");
  char magic[8];
  int64_t header[3];
  in.read(magic, sizeof magic);
  in.read(reinterpret_cast<char*>(header), sizeof header);
  if (!in || std::memcmp(magic, kMagic, sizeof kMagic) != 0 || header[0] != rows_ || header[1] != width_ ||
      header[2] != dtype_code(dtype_))
    throw InputError("'" + path + "' is not an activation cache of " + std::to_string(rows_) + " x " +
                     std::to_string(width_) + " values of this run's dtype (remove the state folder to start over)");
  for (int64_t i = 0; i < items(); ++i) {
    auto buf = torch::empty({length(i), width_}, torch::TensorOptions().dtype(dtype_));
    in.read(static_cast<char*>(buf.data_ptr()), static_cast<std::streamsize>(buf.nbytes()));
    if (!in) throw InputError("'" + path + "' is truncated (remove the state folder to start over)");
    write_rows(offsets_[static_cast<size_t>(i)], length(i), buf.data_ptr());
  }
}

}  // namespace mpqat::model
