// Runs `mpqat eval ARGS...` in-process (the command's CLI11 parser and callback) and returns
// what it printed on stdout; exceptions propagate so tests can check the error type.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mpqat/cli/commands.h"

namespace mpqat::testing {

inline std::string run_eval_cli(const std::vector<std::string>& args) {
  CLI::App app;
  cli::add_eval_command(app);
  std::vector<const char*> argv = {"mpqat", "eval"};
  for (const auto& a : args) argv.push_back(a.c_str());
  ::testing::internal::CaptureStdout();
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (...) {
    ::testing::internal::GetCapturedStdout();
    throw;
  }
  return ::testing::internal::GetCapturedStdout();
}

}  // namespace mpqat::testing
