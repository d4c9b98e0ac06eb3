#include "mpqat/eval/json_access.h"

namespace mpqat::eval::json_access {

using nlohmann::json;

const json& field(const json& obj, const char* key) {
  static const json null_value;
  if (!obj.is_object()) return null_value;
  auto it = obj.find(key);
  return it == obj.end() ? null_value : *it;
}

std::optional<double> number(const json& v) {
  if (!v.is_number()) return std::nullopt;
  return v.get<double>();
}

std::optional<double> number(const json& obj, const char* key) { return number(field(obj, key)); }

std::string string_of(const json& v) { return v.is_string() ? v.get<std::string>() : std::string(); }

}  // namespace mpqat::eval::json_access
