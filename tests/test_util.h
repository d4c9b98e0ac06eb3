#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>

#include <unistd.h>
namespace mpqat::testing {
// Folder of the shared data (../shared next to the repo), or "" when absent.
inline std::string shared_dir() {
  if (const char* e = std::getenv("MPQAT_SHARED_DIR")) return e;
  for (auto p : {std::string(MPQAT_SOURCE_DIR) + "/../shared", std::string("../shared"), std::string("../../shared")})
    if (std::filesystem::exists(p + "/data/SOURCES.md")) return std::filesystem::canonical(p).string();
  return "";
}

// An empty folder <system temp>/mpqat_<suite>_<name>_<pid>, made afresh (any old one removed):
// the pid keeps parallel ctest runs of one suite apart.
inline std::filesystem::path fresh_temp_dir(const std::string& suite, const std::string& name) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("mpqat_" + suite + "_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}
}  // namespace mpqat::testing
