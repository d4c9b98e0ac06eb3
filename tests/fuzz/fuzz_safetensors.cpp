// libFuzzer harness for the safetensors reader (header parsing, validation, index parsing).
// Every input must either open cleanly or throw mpqat::Error; anything else (a crash, an
// out-of-bounds read, another exception type) is a bug. Build and run from the repo root:
//
//   clang++ -std=c++17 -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
//     src/io/safetensors.cpp tests/fuzz/fuzz_safetensors.cpp -o /tmp/fuzz_safetensors
//   mkdir -p /tmp/fuzz_st_corpus && /tmp/fuzz_safetensors -max_total_time=60 \
//     -max_len=4096 /tmp/fuzz_st_corpus
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

#include "mpqat/io/safetensors.h"
#include "mpqat/util/error.h"

namespace {

// One private folder per process: libFuzzer may run several jobs side by side.
const std::string& work_dir() {
  static const std::string dir = [] {
    std::string d = std::filesystem::temp_directory_path().string() + "/mpqat_fuzz_st_" +
                    std::to_string(::getpid());
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

void put(const std::string& path, const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) __builtin_trap();
  if (size && std::fwrite(data, 1, size, f) != size) __builtin_trap();
  std::fclose(f);
}

// Reads every byte the reader hands out, so a bad offset faults here instead of passing.
volatile uint8_t g_sink;
void touch(const mpqat::io::SafetensorsFile& f) {
  for (const auto& name : f.names()) {
    const auto& info = f.info(name);
    const uint8_t* p = f.data(name);
    uint8_t acc = 0;
    for (uint64_t i = 0; i < info.nbytes(); ++i) acc ^= p[i];
    g_sink = acc;
  }
  for (const auto& kv : f.metadata())
    g_sink = static_cast<uint8_t>(kv.first.size() + kv.second.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& dir = work_dir();
  const std::string st = dir + "/input.safetensors";
  put(st, data, size);
  try {
    mpqat::io::SafetensorsFile f(st);
    touch(f);
  } catch (const mpqat::Error&) {
  }

  // The same bytes as a shard index next to a valid shard.
  static const bool shard_ready = [&] {
    const uint8_t bytes[4] = {1, 2, 3, 4};
    mpqat::io::write_safetensors(dir + "/model-00001-of-00001.safetensors",
                                 {{"a", mpqat::io::DType::U8, {4}, bytes, 4}});
    return true;
  }();
  (void)shard_ready;
  const std::string idx = dir + "/model.safetensors.index.json";
  put(idx, data, size);
  try {
    mpqat::io::SafetensorsCheckpoint ck(idx);
    for (const auto& n : ck.names()) {
      if (ck.info(n).nbytes() > 0) g_sink = ck.data(n)[0];
    }
    (void)ck.metadata();
  } catch (const mpqat::Error&) {
  }
  return 0;
}
