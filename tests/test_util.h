#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>
namespace mpqat::testing {
// Folder of the shared data (../shared next to the repo), or "" when absent.
inline std::string shared_dir() {
  if (const char* e = std::getenv("MPQAT_SHARED_DIR")) return e;
  for (auto p : {std::string(MPQAT_SOURCE_DIR) + "/../shared", std::string("../shared"), std::string("../../shared")})
    if (std::filesystem::exists(p + "/data/SOURCES.md")) return std::filesystem::canonical(p).string();
  return "";
}
}  // namespace mpqat::testing
