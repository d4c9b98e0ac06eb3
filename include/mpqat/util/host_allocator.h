// LibTorch's CPU allocator for mpqat processes: buffers of 4 MiB and more (weights, gradients,
// activations of a block) get their own mapping, backed by transparent huge pages where the
// kernel offers them (madvise), and are unmapped when freed.
//
// Why: block-at-a-time passes allocate and free block-sized buffers thousands of times. Through
// glibc's heap those end up fragmented, so a freed block's memory stays resident and peak memory
// grows with depth; returning it (malloc_trim) makes every later buffer fault in 4 KiB pages,
// which on these machines cost more than the arithmetic. Own mappings are returned at once, and
// 2 MiB pages fault 512 times less often. Smaller buffers come from c10::alloc_cpu, as with
// LibTorch's default (without its profiler hooks).
// No torch in this header.
#pragma once

#include <cstddef>

namespace mpqat::util {

// Installs the allocator for the whole process (idempotent). main() calls it first thing.
void install_host_allocator();
// Buffers at least this large get their own mapping.
constexpr std::size_t kOwnMappingBytes = std::size_t{4} << 20;

}  // namespace mpqat::util
