// Recipe files: one YAML schema for every stage, defaults in one place (recipe_schema()),
// validation before any work starts, `a.b.c=value` overrides from the command line.
//
// A Recipe is always fully resolved: every key of the schema has a value (the user's or the
// default), so stages read typed values without re-checking.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpqat::io {

enum class KeyType { String, Int, Float, Bool, StringList, IntList, FloatList, IntMap };

// "a string", "an integer", ...
const char* key_type_name(KeyType t);

struct KeySpec {
  std::string path;           // "training.e2e.lr"
  KeyType type = KeyType::String;
  std::string default_yaml;   // YAML text of the default ("2", "[2, 4]", "''", "{}")
  std::string doc;            // one line for docs/recipes.md and --dry-run comments
  std::vector<std::string> choices;  // allowed values (each list element too); empty = any
  bool required = false;
  std::optional<double> min, max;    // numeric bounds (each list element too)
};

// The schema: every recipe key, in the order they are documented and printed.
const std::vector<KeySpec>& recipe_schema();
const KeySpec* find_key(const std::string& path);

// docs/recipes.md's key table, generated from the schema.
std::string recipe_schema_markdown();

class Recipe {
 public:
  // All defaults (no file).
  Recipe();

  // Parses YAML text; `source` names it in errors (a file path). Overrides ("a.b=1") are
  // applied after the file. Throws InputError on any unknown key, wrong type, value out of
  // range, missing required key or inconsistent combination.
  static Recipe from_yaml(const std::string& text, const std::string& source,
                          const std::vector<std::string>& overrides = {});
  static Recipe from_file(const std::string& path, const std::vector<std::string>& overrides = {});

  // Applies one "a.b.c=value" override (value parsed as YAML: 3, 1e-4, true, [2, 4]).
  void apply_override(const std::string& assignment);
  // Sets one key from YAML text, validating it; `source` names the origin in errors.
  void set(const std::string& path, const std::string& yaml_value, const std::string& source);

  // Checks required keys and combinations across keys (budget given once, preset length,
  // calibration data distinct from evaluation data, ...). from_yaml calls it.
  void validate() const;

  std::string str(const std::string& path) const;
  int64_t integer(const std::string& path) const;
  double number(const std::string& path) const;
  bool flag(const std::string& path) const;
  std::vector<std::string> strings(const std::string& path) const;
  std::vector<int64_t> integers(const std::string& path) const;
  std::vector<double> numbers(const std::string& path) const;
  std::map<std::string, int64_t> int_map(const std::string& path) const;

  // True when the value came from the file or an override rather than the default.
  bool is_set(const std::string& path) const { return user_set_.count(path) > 0; }

  // The fully resolved recipe as YAML (schema order, nested sections) and as JSON.
  std::string to_yaml() const;
  nlohmann::json to_json() const;
  // Writes <dir>/recipe.yaml atomically.
  void write_resolved(const std::string& dir) const;

  const std::string& source() const { return source_; }

 private:
  const nlohmann::json& value(const std::string& path, KeyType expect) const;

  std::map<std::string, nlohmann::json> values_;
  std::set<std::string> user_set_;
  std::string source_ = "<defaults>";
};

}  // namespace mpqat::io
