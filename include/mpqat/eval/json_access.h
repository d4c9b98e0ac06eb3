// Lenient access to a stored JSON document read back (run_report_json, scores, study_report):
// a missing key, a null or a value of another type reads as absent instead of throwing, so an
// older or partial report still renders. Light: nlohmann::json only.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace mpqat::eval::json_access {

// obj[key] when obj is an object holding key, else a null value.
const nlohmann::json& field(const nlohmann::json& obj, const char* key);
// A number as double; absent for any other type (bools are not numbers in nlohmann::json).
std::optional<double> number(const nlohmann::json& v);
std::optional<double> number(const nlohmann::json& obj, const char* key);
// A string's text, else "".
std::string string_of(const nlohmann::json& v);

}  // namespace mpqat::eval::json_access
