#include "mpqat/io/recipe.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::io {
namespace fs = std::filesystem;
using nlohmann::json;

const char* key_type_name(KeyType t) {
  switch (t) {
    case KeyType::String: return "a string";
    case KeyType::Int: return "an integer";
    case KeyType::Float: return "a number";
    case KeyType::Bool: return "a boolean (true/false)";
    case KeyType::StringList: return "a list of strings";
    case KeyType::IntList: return "a list of integers";
    case KeyType::FloatList: return "a list of numbers";
    case KeyType::IntMap: return "a map of string -> integer";
  }
  return "?";
}

namespace {

std::string show(const YAML::Node& node) {
  YAML::Emitter e;
  e << YAML::Flow << node;
  std::string s = e.c_str();
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return "'" + s + "'";
}

// Section paths ("training", "training.e2e") and leaf paths directly under `parent`.
std::vector<std::string> children_of(const std::string& parent) {
  std::vector<std::string> out;
  const std::string prefix = parent.empty() ? "" : parent + ".";
  for (const auto& k : recipe_schema()) {
    if (!util::starts_with(k.path, prefix)) continue;
    const std::string rest = k.path.substr(prefix.size());
    const std::string first = rest.substr(0, rest.find('.'));
    if (std::find(out.begin(), out.end(), first) == out.end()) out.push_back(first);
  }
  return out;
}

bool is_section(const std::string& path) {
  for (const auto& k : recipe_schema()) {
    if (util::starts_with(k.path, path + ".")) return true;
  }
  return false;
}

std::vector<std::string> all_paths() {
  std::vector<std::string> out;
  for (const auto& k : recipe_schema()) out.push_back(k.path);
  return out;
}

[[noreturn]] void type_error(const std::string& source, const KeySpec& k, const YAML::Node& n) {
  throw InputError(fmt::format("{}: {} must be {}, got {}", source, k.path,
                               key_type_name(k.type), show(n)));
}

void check_choice(const std::string& source, const KeySpec& k, const std::string& v,
                  const std::string& shown) {
  if (k.choices.empty()) return;
  if (std::find(k.choices.begin(), k.choices.end(), v) != k.choices.end()) return;
  // sensitivity.metrics also takes combinations "a+b" (mean normalised rank of the parts).
  if (k.path == "sensitivity.metrics" && v.find('+') != std::string::npos) {
    bool all = true;
    for (const auto& part : util::split(v, '+'))
      all = all && std::find(k.choices.begin(), k.choices.end(), part) != k.choices.end();
    if (all) return;
  }
  std::string allowed;
  for (std::size_t i = 0; i < k.choices.size(); ++i) allowed += (i ? "|" : "") + k.choices[i];
  const std::string near = util::closest_match(v, k.choices);
  throw InputError(fmt::format("{}: {} must be one of {}, got {}{}", source, k.path, allowed,
                               shown, near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near)));
}

void check_range(const std::string& source, const KeySpec& k, double v) {
  if (!std::isfinite(v)) {
    throw InputError(fmt::format("{}: {} must be a finite number, got {}", source, k.path, v));
  }
  if ((k.min && v < *k.min) || (k.max && v > *k.max)) {
    std::string range;
    if (k.min && k.max) range = fmt::format("between {} and {}", *k.min, *k.max);
    else if (k.min) range = fmt::format(">= {}", *k.min);
    else range = fmt::format("<= {}", *k.max);
    throw InputError(fmt::format("{}: {} must be {}, got {}", source, k.path, range, v));
  }
}

json scalar_to_json(const std::string& source, const KeySpec& k, KeyType t, const YAML::Node& n) {
  if (!n.IsScalar()) type_error(source, k, n);
  try {
    switch (t) {
      case KeyType::String: {
        const auto v = n.as<std::string>();
        check_choice(source, k, v, show(n));
        return v;
      }
      case KeyType::Int: {
        const auto v = n.as<int64_t>();
        check_choice(source, k, std::to_string(v), show(n));
        check_range(source, k, static_cast<double>(v));
        return v;
      }
      case KeyType::Float: {
        const auto v = n.as<double>();
        check_range(source, k, v);
        return v;
      }
      case KeyType::Bool: return n.as<bool>();
      default: break;
    }
  } catch (const YAML::BadConversion&) {
    type_error(source, k, n);
  }
  type_error(source, k, n);
}

json node_to_json(const std::string& source, const KeySpec& k, const YAML::Node& n) {
  switch (k.type) {
    case KeyType::String:
    case KeyType::Int:
    case KeyType::Float:
    case KeyType::Bool: return scalar_to_json(source, k, k.type, n);
    case KeyType::StringList:
    case KeyType::IntList:
    case KeyType::FloatList: {
      const KeyType elem = k.type == KeyType::StringList ? KeyType::String
                           : k.type == KeyType::IntList  ? KeyType::Int
                                                         : KeyType::Float;
      json arr = json::array();
      if (n.IsSequence()) {
        for (const auto& e : n) {
          if (!e.IsScalar()) type_error(source, k, n);
          arr.push_back(scalar_to_json(source, k, elem, e));
        }
      } else if (n.IsScalar()) {
        // "a,b,c" is accepted so that command-line overrides stay short.
        for (const auto& part : util::split(n.as<std::string>(), ',')) {
          const std::string p = util::trim(part);
          if (p.empty()) continue;
          arr.push_back(scalar_to_json(source, k, elem, YAML::Node(p)));
        }
      } else {
        type_error(source, k, n);
      }
      return arr;
    }
    case KeyType::IntMap: {
      if (!n.IsMap()) type_error(source, k, n);
      json obj = json::object();
      for (const auto& kv : n) {
        int64_t v = 0;
        try {
          v = kv.second.as<int64_t>();
        } catch (const YAML::BadConversion&) {
          throw InputError(fmt::format("{}: {}.\"{}\" must be an integer, got {}", source, k.path,
                                       kv.first.as<std::string>(), show(kv.second)));
        }
        obj[kv.first.as<std::string>()] = v;
      }
      return obj;
    }
  }
  type_error(source, k, n);
}

json parse_default(const KeySpec& k) {
  return node_to_json("recipe schema", k, YAML::Load(k.default_yaml));
}

}  // namespace

Recipe::Recipe() {
  for (const auto& k : recipe_schema()) values_[k.path] = parse_default(k);
}

namespace {

void walk(Recipe& r, const YAML::Node& node, const std::string& parent, const std::string& source) {
  if (!node.IsMap()) {
    throw InputError(fmt::format("{}: {} must be a mapping of keys, got {}", source,
                                 parent.empty() ? "the recipe" : parent, show(node)));
  }
  for (const auto& kv : node) {
    const std::string name = kv.first.as<std::string>();
    const std::string path = parent.empty() ? name : parent + "." + name;
    if (find_key(path)) {
      if (kv.second.IsNull()) continue;  // "key:" with no value keeps the default
      YAML::Emitter e;
      e << kv.second;
      r.set(path, e.c_str(), source);
    } else if (is_section(path)) {
      if (kv.second.IsNull()) continue;
      walk(r, kv.second, path, source);
    } else {
      const auto siblings = children_of(parent);
      std::string near = util::closest_match(name, siblings);
      if (near.empty()) {
        // The key may belong to another section ("epochs" at the top level).
        for (const auto& p : all_paths()) {
          if (util::ends_with(p, "." + name)) {
            near = p;
            break;
          }
        }
      } else if (!parent.empty()) {
        near = parent + "." + near;
      }
      std::string valid;
      for (std::size_t i = 0; i < siblings.size(); ++i) valid += (i ? ", " : "") + siblings[i];
      throw InputError(fmt::format(
          "{}: unknown key '{}' at {}{}; valid keys there: {}", source, name,
          parent.empty() ? "the top level" : "'" + parent + "'",
          near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near), valid));
    }
  }
}

// yaml-cpp keeps the last of two equal keys in one mapping without a word: refuse them, naming
// the key and both lines.
void check_duplicate_keys(const YAML::Node& n, const std::string& prefix, const std::string& source) {
  if (n.IsSequence())
    for (const auto& c : n) check_duplicate_keys(c, prefix, source);
  if (!n.IsMap()) return;
  std::map<std::string, int> seen;  // key -> line
  for (const auto& kv : n) {
    const std::string key = kv.first.as<std::string>();
    const int line = kv.first.Mark().line + 1;
    const std::string path = prefix.empty() ? key : prefix + "." + key;
    if (auto it = seen.find(key); it != seen.end())
      throw InputError(fmt::format("{}: key '{}' is given twice (lines {} and {}); keep one", source, path,
                                   it->second, line));
    seen.emplace(key, line);
    check_duplicate_keys(kv.second, path, source);
  }
}

}  // namespace

Recipe Recipe::from_yaml(const std::string& text, const std::string& source,
                         const std::vector<std::string>& overrides) {
  Recipe r;
  r.source_ = source;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw InputError(fmt::format("{}: not valid YAML at line {}, column {}: {}", source,
                                 e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  check_duplicate_keys(root, "", source);
  if (!root.IsNull()) walk(r, root, "", source);
  for (const auto& o : overrides) r.apply_override(o);
  r.validate();
  return r;
}

Recipe Recipe::from_file(const std::string& path, const std::vector<std::string>& overrides) {
  if (!fs::is_regular_file(path)) {
    throw InputError(fmt::format("recipe file {} does not exist (give a YAML file, e.g. "
                                 "recipes/quickstart.yaml)", path));
  }
  return from_yaml(util::read_file(path), path, overrides);
}

void Recipe::apply_override(const std::string& assignment) {
  const auto eq = assignment.find('=');
  const std::string source = fmt::format("override '{}'", assignment);
  if (eq == std::string::npos || eq == 0) {
    throw InputError(fmt::format("{}: overrides are written key.path=value, e.g. "
                                 "training.epochs=3", source));
  }
  const std::string path = util::trim(assignment.substr(0, eq));
  const std::string value = assignment.substr(eq + 1);
  if (!find_key(path)) {
    const std::string near = util::closest_match(path, all_paths());
    throw InputError(fmt::format("{}: unknown key '{}'{}", source, path,
                                 near.empty() ? "" : fmt::format(" (did you mean '{}'?)", near)));
  }
  set(path, value.empty() ? "''" : value, source);
  user_set_.insert(path);
}

void Recipe::set(const std::string& path, const std::string& yaml_value, const std::string& source) {
  const KeySpec* k = find_key(path);
  if (!k) throw InputError(fmt::format("{}: unknown key '{}'", source, path));
  YAML::Node n;
  try {
    n = YAML::Load(yaml_value);
  } catch (const YAML::Exception& e) {
    throw InputError(fmt::format("{}: value of {} is not valid YAML: {}", source, path, e.msg));
  }
  if (n.IsNull()) n = YAML::Node(std::string());
  values_[path] = node_to_json(source, *k, n);
  user_set_.insert(path);
}

void Recipe::validate() const {
  const auto fail = [&](const std::string& msg) { throw InputError(source_ + ": " + msg); };
  for (const auto& k : recipe_schema()) {
    if (k.required && k.type == KeyType::String && str(k.path).empty()) {
      fail(fmt::format("{} is required ({})", k.path, k.doc));
    }
  }
  // Budget: at most one form; the budget-driven methods need one.
  const bool has_bytes = !str("allocation.budget.bytes").empty();
  const bool has_avg = number("allocation.budget.avg_bits") > 0;
  const bool has_comp = number("allocation.budget.compression") > 0;
  const bool has_code = number("allocation.budget.code_bits") > 0;
  const int budgets = int(has_bytes) + int(has_avg) + int(has_comp) + int(has_code);
  if (budgets > 1) {
    fail("give exactly one of allocation.budget.bytes, allocation.budget.avg_bits, "
         "allocation.budget.code_bits, allocation.budget.compression");
  }
  if (has_bytes) util::parse_bytes(str("allocation.budget.bytes"), source_ + ": allocation.budget.bytes");
  const std::string method = str("allocation.method");
  if ((method == "qbo" || method == "mpq") && budgets == 0) {
    fail(fmt::format("allocation.method {} needs a budget: set allocation.budget.bytes (e.g. "
                     "700MiB), allocation.budget.avg_bits (e.g. 3.5), allocation.budget.code_bits (e.g. "
                     "3.0) or allocation.budget.compression (e.g. 4)", method));
  }
  if (method == "plan" && str("allocation.plan").empty()) {
    fail("allocation.method plan needs allocation.plan (a bitplan.json)");
  }
  if ((method == "kmeans" || method == "percentile" || method == "hierarchical") &&
      static_cast<int64_t>(integers("allocation.preset").size()) != integer("allocation.groups")) {
    fail(fmt::format("allocation.preset has {} entries but allocation.groups is {}; give one "
                     "bit-width per group", integers("allocation.preset").size(),
                     integer("allocation.groups")));
  }
  if (integer("allocation.min_bits") > integer("allocation.max_bits")) {
    fail("allocation.min_bits must not exceed allocation.max_bits");
  }
  if (integers("allocation.bits").empty()) fail("allocation.bits must list at least one bit-width");
  for (const char* p : {"allocation.sgra.epochs", "allocation.sgra.patience"}) {
    const auto v = integers(p);
    if (v.size() != 2 || v[0] > v[1]) fail(fmt::format("{} must be [low, high] with low <= high", p));
  }
  {
    const auto v = numbers("allocation.sgra.lr_scale");
    if (v.size() != 2 || v[0] > v[1]) {
      fail("allocation.sgra.lr_scale must be [low, high] with low <= high");
    }
  }
  for (const char* p : {"training.cache_memory_limit", "sensitivity.cache_memory_limit", "output.shard_size"}) {
    util::parse_bytes(str(p), source_ + ": " + p);
  }
  if (util::to_lower(str("model.memory_limit")) != "auto")
    util::parse_bytes(str("model.memory_limit"), source_ + ": model.memory_limit (or auto)");
  // Calibrating on the data that is evaluated leaks the test set into the result.
  const std::string calib = str("data.calibration.path");
  if (!calib.empty() && !flag("data.allow_eval_overlap")) {
    const auto same = [](const std::string& a, const std::string& b) {
      std::error_code ec;
      if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
      return fs::path(a).lexically_normal() == fs::path(b).lexically_normal();
    };
    auto evals = strings("evaluation.perplexity");
    if (!str("evaluation.classification.path").empty()) {
      evals.push_back(str("evaluation.classification.path"));
    }
    for (const auto& e : evals) {
      if (same(calib, e)) {
        fail(fmt::format("data.calibration.path {} is also evaluated ({}); calibrate on a "
                         "different split (e.g. train) or set data.allow_eval_overlap: true",
                         calib, e));
      }
    }
  }
}

const json& Recipe::value(const std::string& path, KeyType expect) const {
  const auto it = values_.find(path);
  const KeySpec* k = find_key(path);
  if (it == values_.end() || !k || k->type != expect) {
    throw Error(fmt::format("internal: recipe key {} read as {}", path, key_type_name(expect)));
  }
  return it->second;
}

std::string Recipe::str(const std::string& p) const { return value(p, KeyType::String).get<std::string>(); }
int64_t Recipe::integer(const std::string& p) const { return value(p, KeyType::Int).get<int64_t>(); }
double Recipe::number(const std::string& p) const { return value(p, KeyType::Float).get<double>(); }
bool Recipe::flag(const std::string& p) const { return value(p, KeyType::Bool).get<bool>(); }
std::vector<std::string> Recipe::strings(const std::string& p) const {
  return value(p, KeyType::StringList).get<std::vector<std::string>>();
}
std::vector<int64_t> Recipe::integers(const std::string& p) const {
  return value(p, KeyType::IntList).get<std::vector<int64_t>>();
}
std::vector<double> Recipe::numbers(const std::string& p) const {
  return value(p, KeyType::FloatList).get<std::vector<double>>();
}
std::map<std::string, int64_t> Recipe::int_map(const std::string& p) const {
  return value(p, KeyType::IntMap).get<std::map<std::string, int64_t>>();
}

nlohmann::json Recipe::to_json() const {
  json root = json::object();
  for (const auto& k : recipe_schema()) {
    json* cur = &root;
    const auto parts = util::split(k.path, '.');
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) cur = &(*cur)[parts[i]];
    (*cur)[parts.back()] = values_.at(k.path);
  }
  return root;
}

namespace {

void emit_value(YAML::Emitter& e, const json& v) {
  if (v.is_array()) {
    e << YAML::Flow << YAML::BeginSeq;
    for (const auto& x : v) emit_value(e, x);
    e << YAML::EndSeq;
  } else if (v.is_object()) {
    e << YAML::Flow << YAML::BeginMap;
    for (auto it = v.begin(); it != v.end(); ++it) {
      e << YAML::Key << it.key() << YAML::Value;
      emit_value(e, it.value());
    }
    e << YAML::EndMap;
  } else if (v.is_boolean()) {
    e << v.get<bool>();
  } else if (v.is_number_integer()) {
    e << v.get<int64_t>();
  } else if (v.is_number_float()) {
    // Shortest text that reads back to the same double.
    std::string s = fmt::format("{}", v.get<double>());
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
    e << s;
  } else {
    const std::string s = v.get<std::string>();
    if (s.empty()) e << YAML::SingleQuoted << s;
    else e << s;
  }
}

}  // namespace

std::string Recipe::to_yaml() const {
  YAML::Emitter e;
  e << YAML::BeginMap;
  std::vector<std::string> open;  // section path components currently open
  for (const auto& k : recipe_schema()) {
    auto parts = util::split(k.path, '.');
    const std::string leaf = parts.back();
    parts.pop_back();
    std::size_t common = 0;
    while (common < open.size() && common < parts.size() && open[common] == parts[common]) ++common;
    while (open.size() > common) {
      e << YAML::EndMap;
      open.pop_back();
    }
    while (open.size() < parts.size()) {
      e << YAML::Key << parts[open.size()] << YAML::Value << YAML::BeginMap;
      open.push_back(parts[open.size()]);
    }
    e << YAML::Key << leaf << YAML::Value;
    emit_value(e, values_.at(k.path));
    e << YAML::Comment(k.doc);
  }
  while (!open.empty()) {
    e << YAML::EndMap;
    open.pop_back();
  }
  e << YAML::EndMap;
  return std::string(e.c_str()) + "\n";
}

void Recipe::write_resolved(const std::string& dir) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create output folder {}: {}", dir, ec.message()));
  util::write_file_atomic((fs::path(dir) / "recipe.yaml").string(),
                          "# mpqat resolved recipe (source: " + source_ + ")\n" + to_yaml());
}

}  // namespace mpqat::io
