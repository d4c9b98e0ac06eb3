// The CPU allocator of include/mpqat/util/host_allocator.h.
#include "mpqat/util/host_allocator.h"

#include <sys/mman.h>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <new>
#include <unordered_map>

namespace mpqat::util {

namespace {

constexpr std::size_t kHugePage = std::size_t{2} << 20;

// Own mappings by start address (the deleter gets only the data pointer: LibTorch's raw
// allocation interface needs context == data).
std::mutex g_mu;
std::unordered_map<void*, std::size_t>& own_mappings() {
  static auto* m = new std::unordered_map<void*, std::size_t>();  // never destroyed: frees may come late
  return *m;
}

void host_free(void* p) {
  if (!p) return;
  std::size_t len = 0;
  {
    std::lock_guard<std::mutex> g(g_mu);
    auto& m = own_mappings();
    auto it = m.find(p);
    if (it != m.end()) {
      len = it->second;
      m.erase(it);
    }
  }
  if (len) ::munmap(p, len);
  else c10::free_cpu(p);
}

void* host_alloc(std::size_t n) {
  if (n < kOwnMappingBytes) return c10::alloc_cpu(n);
  // Map one huge page more than needed and cut the start to a 2 MiB boundary, so that whole
  // huge pages cover the buffer.
  const std::size_t len = (n + kHugePage - 1) / kHugePage * kHugePage;
  void* raw = ::mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto a = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t aligned = (a + kHugePage - 1) & ~(std::uintptr_t{kHugePage} - 1);
  if (aligned > a) ::munmap(raw, aligned - a);
  const std::uintptr_t end = aligned + len, raw_end = a + len + kHugePage;
  if (raw_end > end) ::munmap(reinterpret_cast<void*>(end), raw_end - end);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  ::madvise(p, len, MADV_HUGEPAGE);
#endif
  std::lock_guard<std::mutex> g(g_mu);
  own_mappings()[p] = len;
  return p;
}

// Both LibTorch interfaces are implemented: allocate() is const in 1.x and not in 2.x, and 2.x
// adds copy_data(); a member that does not override in one version is an unused extra there.
class HostAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) const { return make(n); }
  c10::DataPtr allocate(std::size_t n) { return make(n); }
  c10::DeleterFnPtr raw_deleter() const override { return &host_free; }
  void copy_data(void* dest, const void* src, std::size_t count) const { std::memcpy(dest, src, count); }

 private:
  static c10::DataPtr make(std::size_t n) {
    void* p = n ? host_alloc(n) : nullptr;
    return c10::DataPtr(p, p, &host_free, c10::Device(c10::DeviceType::CPU));
  }
};

}  // namespace

void install_host_allocator() {
  static std::once_flag once;
  std::call_once(once, [] {
    static HostAllocator alloc;
    c10::SetCPUAllocator(&alloc, /*priority=*/10);
  });
}

}  // namespace mpqat::util
