// Checks shared by the tests that run `mpqat run`: the written report is the typed report's JSON
// form, whole.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>

#include <nlohmann/json.hpp>

#include "mpqat/eval/run_report.h"
#include "run_command.h"  // slurp

namespace mpqat::testing {

// report.json read back (eval::run_report_from_json) and written again is the same document
// (no key lost, no number changed), and report.txt, rendered from the struct in memory, is what
// a re-render of report.json gives.
inline void expect_report_round_trips(const std::filesystem::path& run) {
  const auto rep = nlohmann::json::parse(slurp((run / "report.json").string()));
  const auto typed = eval::run_report_from_json(rep);
  EXPECT_EQ(eval::to_json(typed).dump(2), rep.dump(2)) << "report.json of " << run.string();
  if (std::filesystem::exists(run / "report.txt"))
    EXPECT_EQ(eval::render_run_report_text(typed), slurp((run / "report.txt").string()));
}

}  // namespace mpqat::testing
