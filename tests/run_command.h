// Runs the built mpqat binary (MPQAT_BINARY) through the shell and captures its outcome.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace mpqat::testing {

struct CommandResult {
  int code = -1;
  std::string out, err;
};

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `args` is appended to the binary's path as shell text; `prefix` goes before it (env vars).
inline CommandResult run_mpqat(const std::string& args, const std::string& prefix = "") {
  static int counter = 0;
  const std::string base = (std::filesystem::temp_directory_path() /
                            ("mpqat_cmd_" + std::to_string(::getpid()) + "_" +
                             std::to_string(counter++))).string();
  const std::string cmd = prefix + " " + MPQAT_BINARY + " " + args + " >" + base + ".out 2>" +
                          base + ".err </dev/null";
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = slurp(base + ".out");
  r.err = slurp(base + ".err");
  std::filesystem::remove(base + ".out");
  std::filesystem::remove(base + ".err");
  return r;
}

}  // namespace mpqat::testing
