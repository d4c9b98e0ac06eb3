#include "mpqat/util/fingerprint.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

#include <fmt/format.h>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;

namespace mpqat::util {

std::string file_fingerprint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("cannot read '{}' to fingerprint it: {}", path, std::strerror(errno)));
  const uint64_t size = fs::file_size(path);
  uint64_t h = fnv1a64(std::to_string(size));
  std::string buf;
  auto take = [&](uint64_t offset, uint64_t n) {
    if (offset >= size) return;
    n = std::min(n, size - offset);
    buf.resize(static_cast<size_t>(n));
    in.seekg(static_cast<std::streamoff>(offset));
    in.read(buf.data(), static_cast<std::streamsize>(n));
    if (!in) throw Error(fmt::format("cannot read '{}' at offset {} to fingerprint it", path, offset));
    h = fnv1a64(buf, h);
  };
  constexpr uint64_t kHead = 1 << 20, kPage = 4096;
  take(0, kHead);
  if (size > kHead) {
    for (uint64_t k = 1; k <= 64; ++k) take(kHead + (size - kHead) / 65 * k, kPage);
    take(size > kPage ? size - kPage : 0, kPage);
  }
  return fmt::format("{:016x}", h);
}

std::string model_folder_fingerprint(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (e.is_regular_file() && (n == "config.json" || ends_with(n, ".safetensors"))) names.push_back(n);
  }
  std::sort(names.begin(), names.end());
  std::string all;
  for (const auto& n : names) all += n + ":" + file_fingerprint((fs::path(dir) / n).string()) + ";";
  return fnv1a64_hex(all);
}

}  // namespace mpqat::util
