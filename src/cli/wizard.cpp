// `mpqat wizard`: the seeds' interactive menu as a line-by-line session that writes a recipe.
// Each question prints a heading, a one-line explanation, its choices and a prompt with the
// default in brackets; Enter takes the default, a bad answer is refused with the allowed values
// and asked again. The answers map onto recipe keys (docs/wizard.md has the table).
#include "mpqat/cli/wizard.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <istream>
#include <optional>
#include <ostream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mpqat/io/recipe.h"
#include "mpqat/model/config.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {
namespace fs = std::filesystem;

namespace {

// ------------------------------------------------------------------------------------------
// Questions

struct MenuItem {
  std::string label;  // "K-means (recommended)"
  std::string alias;  // "kmeans": accepted besides the number
};

// Returns "" when `answer` is accepted, else why not (naming what is allowed).
using Check = std::function<std::string(const std::string& answer)>;

class Session {
 public:
  explicit Session(WizardIO& io) : io_(io) {}

  // Prints the question and reads answers until `check` accepts one; returns it (trimmed; the
  // default when the line was empty). `def` empty = no default: an answer is required.
  std::string ask(const std::string& title, const std::string& explain,
                  const std::vector<std::string>& lines, const std::string& def,
                  const Check& check, const std::string& shown = "") {
    const std::size_t rule = title.size() < 60 ? 60 - title.size() : 2;
    io_.out << "\n-- " << title << " " << std::string(rule, '-')
            << "\n  " << explain << "\n";
    for (const auto& l : lines) io_.out << "    " << l << "\n";
    for (;;) {
      const std::string bracket = shown.empty() ? def : shown;
      io_.out << "  " << title << (bracket.empty() ? "" : " [" + bracket + "]") << ": "
              << std::flush;
      std::string line;
      if (!std::getline(io_.in, line)) {
        io_.out << "\n";
        throw InputError(fmt::format("wizard: input ended at question '{}'", title));
      }
      line = util::trim(line);  // also drops a '\r' from CRLF input
      const std::string answer = line.empty() ? def : line;
      if (!io_.interactive) io_.out << answer << "\n";
      if (answer.empty()) {
        io_.out << "  ! an answer is required here (no default)\n";
        continue;
      }
      const std::string why = check(answer);
      if (why.empty()) return answer;
      io_.out << "  ! " << why << "\n";
    }
  }

  // A numbered menu; returns the index chosen (by number or alias, case-insensitive).
  std::size_t choose(const std::string& title, const std::string& explain,
                     const std::vector<MenuItem>& items, std::size_t def) {
    std::vector<std::string> lines;
    std::string numbers, aliases;
    for (std::size_t i = 0; i < items.size(); ++i) {
      lines.push_back(fmt::format("{}. {}", i + 1, items[i].label));
      numbers += fmt::format("{}{}", i ? ", " : "", i + 1);
      if (!items[i].alias.empty()) aliases += (aliases.empty() ? "" : ", ") + items[i].alias;
    }
    const std::string allowed =
        aliases.empty() ? numbers : fmt::format("{} (or {})", numbers, aliases);
    std::size_t picked = def;
    ask(title, explain, lines, std::to_string(def + 1), [&](const std::string& a) {
      const auto idx = match(a, items);
      if (!idx) return fmt::format("'{}' is not a choice here; allowed: {}", a, allowed);
      picked = *idx;
      return std::string();
    });
    return picked;
  }

  void note(const std::string& msg) { io_.out << "  " << msg << "\n"; }
  void warn(const std::string& msg) { io_.out << "  ! " << msg << "\n"; }
  std::ostream& out() { return io_.out; }

 private:
  static std::optional<std::size_t> match(const std::string& answer,
                                          const std::vector<MenuItem>& items) {
    const std::string a = util::to_lower(answer);
    const auto digit = [](unsigned char c) { return std::isdigit(c) != 0; };
    if (!a.empty() && std::all_of(a.begin(), a.end(), digit)) {
      if (a.size() > 3) return std::nullopt;
      const std::size_t n = std::stoul(a);
      if (n >= 1 && n <= items.size()) return n - 1;
      return std::nullopt;
    }
    for (std::size_t i = 0; i < items.size(); ++i) {
      if (!items[i].alias.empty() && a == util::to_lower(items[i].alias)) return i;
    }
    return std::nullopt;
  }

  WizardIO& io_;
};

std::optional<int64_t> parse_count(const std::string& s, int64_t min) {
  if (s.empty() || s.size() > 12) return std::nullopt;
  if (!std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); })) {
    return std::nullopt;
  }
  const int64_t v = std::stoll(s);
  if (v < min) return std::nullopt;
  return v;
}

std::string join(const std::vector<std::string>& v, const std::string& sep = ", ") {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? sep : "") + v[i];
  return s;
}

std::string join_ints(const std::vector<int64_t>& v) {
  std::vector<std::string> s;
  for (const auto x : v) s.push_back(std::to_string(x));
  return "[" + join(s) + "]";
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

std::string pick_field(const std::vector<std::string>& columns,
                       const std::vector<std::string>& preferred) {
  for (const auto& p : preferred) {
    if (std::find(columns.begin(), columns.end(), p) != columns.end()) return p;
  }
  return "";
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
  return fs::path(a).lexically_normal() == fs::path(b).lexically_normal();
}

// A data file question's result: the path and the columns it will be read with.
struct DataChoice {
  std::string path;
  DataFileInfo info;
  std::string text_field, label_field;  // "" = not found in the header (or plain text)
};

DataChoice ask_data_file(Session& s, const std::string& title, const std::string& explain,
                         const std::string& def, const std::string& other_title,
                         const std::string& other_path) {
  DataChoice d;
  d.path = s.ask(title, explain, {}, def, [&](const std::string& a) {
    if (!fs::is_regular_file(a)) {
      return fmt::format("'{}' is not a file; give a TSV/CSV (header row), JSONL or text file", a);
    }
    d.info = inspect_data_file(a);
    if (!d.info.readable) return fmt::format("cannot read '{}'; give a readable file", a);
    if (d.info.rows == 0) {
      return fmt::format("'{}' holds no examples; give a file with data rows", a);
    }
    if (!other_path.empty() && same_file(a, other_path)) {
      return fmt::format("'{}' is the {} file too; use a different split (train for "
                         "calibration, test/dev for evaluation) so the result does not leak",
                         a, other_title);
    }
    return std::string();
  });
  if (d.info.format == "text") {
    s.note("plain text: read as one token stream (labels, stratified sampling and row counts "
           "need a TSV/CSV/JSONL file)");
    return d;
  }
  d.text_field = pick_field(d.info.columns, {"text", "sentence", "review", "content", "document"});
  d.label_field = pick_field(d.info.columns, {"label", "labels", "sentiment", "class"});
  s.note(fmt::format("{} examples, columns: {}", d.info.rows, join(d.info.columns)));
  if (d.text_field.empty()) {
    s.warn(fmt::format("no text column (text, sentence, review, content) among: {}; set the "
                       "text_field key in the recipe by hand", join(d.info.columns)));
  }
  if (d.label_field.empty()) {
    s.warn(fmt::format("no label column (label, labels, sentiment, class) among: {}",
                       join(d.info.columns)));
  }
  return d;
}

// 5k / 10k / 25k / [all] / custom, capped by the file's row count when known.
int64_t ask_size(Session& s, const std::string& title, const std::string& explain,
                 const std::vector<MenuItem>& items, const std::vector<int64_t>& sizes,
                 const DataFileInfo& info, const std::string& what) {
  const std::size_t idx = s.choose(title, explain, items, 0);
  int64_t n = idx < sizes.size() ? sizes[idx] : -1;
  if (n < 0) {  // custom
    s.ask("custom " + title, "number of examples (a whole number >= 1)", {}, "",
          [&](const std::string& a) {
            const auto v = parse_count(a, 1);
            if (!v) return fmt::format("'{}' is not a whole number >= 1", a);
            n = *v;
            return std::string();
          });
  }
  if (n > 0 && info.rows > 0 && n > info.rows) {
    s.warn(fmt::format("the {} file holds {} examples: using {} instead of {}", what, info.rows,
                       info.rows, n));
    n = info.rows;
  }
  return n;  // 0 = all (evaluation only)
}

// "16,8,4" / "16 8 4" / "[16, 8, 4]" -> bits, or why not.
std::string parse_bits(const std::string& text, int64_t groups, std::vector<int64_t>& bits) {
  const io::KeySpec* k = io::find_key("allocation.preset");
  const std::vector<std::string> allowed = k ? k->choices : std::vector<std::string>{};
  std::string t = text;
  for (auto& c : t) {
    if (c == ',' || c == '[' || c == ']' || c == '/') c = ' ';
  }
  std::istringstream ss(t);
  std::vector<int64_t> v;
  std::string tok;
  const std::string expected = fmt::format(
      "give {} bit-widths, most sensitive group first, each one of {} (e.g. {})", groups,
      join(allowed), groups == 4 ? "32,16,8,4" : "16,8,4");
  while (ss >> tok) {
    if (std::find(allowed.begin(), allowed.end(), tok) == allowed.end()) {
      return fmt::format("'{}' is not an allowed bit-width; {}", tok, expected);
    }
    v.push_back(std::stoll(tok));
  }
  if (static_cast<int64_t>(v.size()) != groups) {
    return fmt::format("'{}' has {} bit-widths for {} groups; {}", text, v.size(), groups,
                       expected);
  }
  bits = v;
  return "";
}

// ------------------------------------------------------------------------------------------
// The recipe text

struct Entry {
  std::string path, value, comment;
};

bool plain_scalar_ok(const std::string& s) {
  if (s.empty()) return false;
  static const char* kWords[] = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"};
  const std::string l = util::to_lower(s);
  for (const char* w : kWords) {
    if (l == w) return false;
  }
  if (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+' ||
      s[0] == '.') {
    // could read as a number (or be a path like ./x, which quoting keeps exact anyway)
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == '/';
  });
}

std::string yaml_string(const std::string& s) {
  if (plain_scalar_ok(s)) return s;
  std::string q = "'";
  for (const char c : s) q += c == '\'' ? std::string("''") : std::string(1, c);
  return q + "'";
}

std::string yaml_list(const std::vector<std::string>& v) { return "[" + join(v) + "]"; }

// Nested YAML from dotted paths, in schema order (a section is written once, its keys together).
std::string emit_yaml(std::vector<Entry> entries, const std::vector<std::string>& header) {
  const auto& schema = io::recipe_schema();
  const auto rank = [&](const std::string& p) {
    for (std::size_t i = 0; i < schema.size(); ++i) {
      if (schema[i].path == p) return i;
    }
    throw Error("internal: wizard wrote unknown recipe key " + p);
  };
  std::stable_sort(entries.begin(), entries.end(),
                   [&](const Entry& a, const Entry& b) { return rank(a.path) < rank(b.path); });
  std::string out;
  for (const auto& h : header) out += "# " + h + "\n";
  std::vector<std::string> open;
  for (const auto& e : entries) {
    auto parts = util::split(e.path, '.');
    const std::string leaf = parts.back();
    parts.pop_back();
    std::size_t common = 0;
    while (common < open.size() && common < parts.size() && open[common] == parts[common]) {
      ++common;
    }
    if (common == 0) out += "\n";
    open.resize(common);
    for (std::size_t i = common; i < parts.size(); ++i) {
      out += std::string(2 * i, ' ') + parts[i] + ":\n";
      open.push_back(parts[i]);
    }
    out += std::string(2 * parts.size(), ' ') + leaf + ": " + e.value;
    if (!e.comment.empty()) out += "  # " + e.comment;
    out += "\n";
  }
  return out;
}

std::string run_name_of(const std::string& model_dir) {
  fs::path p = fs::path(model_dir).lexically_normal();
  std::string name = p.filename().string();
  if (name.empty() || name == "." || name == "..") {
    std::error_code ec;
    name = fs::weakly_canonical(model_dir, ec).filename().string();
  }
  for (auto& c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) c = '_';
  }
  return name.empty() ? "mpqat" : name;
}

}  // namespace

std::string shell_quote(const std::string& s) {
  const bool safe = !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == '/' || c == '=' ||
           c == ':' || c == ',' || c == '+';
  });
  if (safe) return s;
  std::string q = "'";
  for (const char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

DataFileInfo inspect_data_file(const std::string& path) {
  DataFileInfo info;
  std::ifstream in(path);
  if (!in) return info;
  info.readable = true;
  const std::string ext = util::to_lower(fs::path(path).extension().string());
  std::string line;
  if (ext == ".tsv" || ext == ".csv") {
    info.format = ext.substr(1);
    const char sep = ext == ".tsv" ? '\t' : ',';
    bool header = true;
    int64_t rows = 0;
    while (std::getline(in, line)) {
      if (util::trim(line).empty()) continue;
      if (header) {
        for (auto c : util::split(line, sep)) {
          c = util::trim(c);
          if (c.size() >= 2 && c.front() == '"' && c.back() == '"') c = c.substr(1, c.size() - 2);
          info.columns.push_back(c);
        }
        header = false;
        continue;
      }
      ++rows;
    }
    info.rows = rows;
  } else if (ext == ".jsonl" || ext == ".json") {
    info.format = "jsonl";
    int64_t rows = 0;
    while (std::getline(in, line)) {
      if (util::trim(line).empty()) continue;
      if (rows == 0) {
        const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_object()) {
          for (const auto& item : j.items()) info.columns.push_back(item.key());
        }
      }
      ++rows;
    }
    info.rows = rows;
  } else {
    info.format = "text";
  }
  return info;
}

namespace {

// A data file's recipe entries under `section`: path, and the text / label columns when chosen.
void add_data_entries(std::vector<Entry>& e, const std::string& section, const DataChoice& d) {
  e.push_back({section + ".path", yaml_string(d.path), ""});
  if (!d.text_field.empty()) e.push_back({section + ".text_field", yaml_string(d.text_field), ""});
  if (!d.label_field.empty()) e.push_back({section + ".label_field", yaml_string(d.label_field), ""});
}

// run_wizard's questions, one function per part of the recipe. Each appends its entries to `e`.

// The model folder; notes what config.json holds.
std::string ask_model(Session& s, const WizardOptions& o, std::vector<Entry>& e) {
  std::string model_def = o.model_default;
  if (model_def.empty() && fs::is_regular_file("config.json")) model_def = ".";
  const std::string model = s.ask(
      "model folder", "the Hugging Face folder of the classifier to quantize (config.json, "
      "*.safetensors, tokenizer files)", {}, model_def, [](const std::string& a) {
        if (!fs::is_directory(a)) {
          return fmt::format("'{}' is not a folder; give a model folder that holds config.json", a);
        }
        if (!fs::is_regular_file(fs::path(a) / "config.json")) {
          return fmt::format("'{}' has no config.json; give a Hugging Face model folder", a);
        }
        return std::string();
      });
  try {
    const model::ModelConfig c = model::load_model_config(model);
    s.note(fmt::format("found {}: {} layers, hidden size {}", c.architecture,
                       c.num_hidden_layers, c.hidden_size));
    if (!util::ends_with(c.architecture, "ForSequenceClassification")) {
      s.warn("not a ...ForSequenceClassification model: classification metrics need one");
    }
  } catch (const Error& err) {
    s.warn("config.json: " + first_line(err.what()));
  }
  e.push_back({"model.path", yaml_string(model), ""});

  return model;
}

// 1 = sensitivity only, 2 = quantize with a sensitivity file, 3 = both.
std::size_t ask_phase(Session& s) {
  return 1 + s.choose(
      "phase", "phase 1 measures how sensitive each layer is; phase 2 groups the layers by it, "
      "quantizes and evaluates",
      {{"Phase 1: Sensitivity analysis", "sensitivity"},
       {"Phase 2: Quantization & evaluation (with a sensitivity file from phase 1)", "quantize"},
       {"Run both phases (recommended for a first run)", "both"}},
      2);

}

// Phase 1: calibration data, its size and sampling, the metrics. Returns the calibration path.
std::string ask_sensitivity_phase(Session& s, const WizardOptions& o, std::vector<Entry>& e) {
  // ---- calibration data, size, sampling
  DataChoice cal = ask_data_file(
      s, "calibration data", "labelled examples the sensitivities are measured on (a train "
      "split: TSV/CSV with a header row, JSONL, or plain text)", o.calibration_default, "", "");
  add_data_entries(e, "data.calibration", cal);
  const int64_t n = ask_size(
      s, "calibration size", "how many examples the sensitivities are computed from "
      "(sensitivity converges around 10k)",
      {{"5k (fast, noisy)", "5k"},
       {"10k (stable)", "10k"},
       {"25k (full IMDB train in the seeds; final results)", "25k"},
       {"custom", "custom"}},
      {5000, 10000, 25000}, cal.info, "calibration");
  e.push_back({"data.calibration.samples", std::to_string(n), ""});
  const bool labelled = cal.info.format != "text" && !cal.label_field.empty();
  const std::size_t sampling = s.choose(
      "sampling", "how examples are drawn from the calibration file",
      {{"Stratified sampling (recommended: balances the labels)", "stratified"},
       {"Random sampling", "random"}},
      labelled ? 0 : 1);
  if (sampling == 0 && !labelled) {
    s.warn("stratified sampling needs a label column; the run will refuse this file");
  }
  e.push_back({"data.calibration.sampling", sampling == 0 ? "stratified" : "random", ""});

  // ---- metrics
  const std::size_t m = s.choose(
      "metrics", "how each layer's sensitivity is measured (several are combined by rank)",
      {{"PWCCA + CKA (recommended: two complementary views)", "pwcca+cka"},
       {"PWCCA only (faster)", "pwcca"},
       {"SVCCA only (top-k singular directions)", "svcca"},
       {"CKA only (robust, no hyperparameters)", "cka"},
       {"All three: PWCCA, SVCCA, CKA (thorough, slowest)", "all"},
       {"Fisher information of the classification loss (gradient-based)", "fisher"}},
      0);
  static const std::vector<std::vector<std::string>> kMetrics = {
      {"pwcca", "cka"}, {"pwcca"}, {"svcca"}, {"cka"}, {"pwcca", "svcca", "cka"}, {"fisher"}};
  e.push_back({"sensitivity.metrics", yaml_list(kMetrics[m]), ""});
  if (m == 2 || m == 4) {
    const io::KeySpec* k = io::find_key("sensitivity.svcca_k");
    const std::string def = k ? k->default_yaml : "20";
    const std::string topk = s.ask(
        "SVCCA top-k", "singular directions SVCCA keeps (0 = enough for 99% of the variance)",
        {}, def, [](const std::string& a) {
          return parse_count(a, 0) ? std::string()
                                   : fmt::format("'{}' is not a whole number >= 0", a);
        });
    e.push_back({"sensitivity.svcca_k", std::to_string(*parse_count(topk, 0)), ""});
  }
  return cal.path;
}

// Phase 2 alone: the sensitivity file phase 1 wrote.
void ask_sensitivity_file(Session& s, std::vector<Entry>& e) {
  const std::string sens = s.ask(
      "sensitivity file", "the sensitivity.json phase 1 wrote (mpqat sensitivity, or a run "
      "folder's)", {}, "", [](const std::string& a) {
        return fs::is_regular_file(a)
                   ? std::string()
                   : fmt::format("'{}' is not a file; give the sensitivity.json of phase 1", a);
      });
  e.push_back({"sensitivity.file", yaml_string(sens), "from phase 1"});
}

// Bits per group, most sensitive first: a preset of the menu or a typed list.
std::vector<int64_t> ask_bit_preset(Session& s, int64_t groups) {
  std::vector<int64_t> preset = {16, 8, 4};
  std::vector<MenuItem> items;
  std::vector<std::vector<int64_t>> presets;
  if (groups == 3) {
    items = {{"[16, 8, 4] conservative (recommended)", "conservative"},
             {"[8, 4, 2] aggressive", "aggressive"},
             {"custom (type the bits, e.g. 16,8,4)", "custom"}};
    presets = {{16, 8, 4}, {8, 4, 2}};
  } else {
    items = {{"[32, 16, 8, 4] conservative (recommended)", "conservative"},
             {"[16, 8, 4, 2] moderate", "moderate"},
             {"[8, 4, 2, 2] aggressive", "aggressive"},
             {"custom (type the bits, e.g. 32,16,8,4)", "custom"}};
    presets = {{32, 16, 8, 4}, {16, 8, 4, 2}, {8, 4, 2, 2}};
  }
  // The menu also takes a bit list typed directly ("8,4,2").
  std::vector<std::string> lines, aliases;
  for (std::size_t i = 0; i < items.size(); ++i) {
    lines.push_back(fmt::format("{}. {}", i + 1, items[i].label));
    aliases.push_back(items[i].alias);
  }
  bool custom = false;
  s.ask("bit preset", "bits per group, most sensitive group first (16/32 = keep that float "
        "width)", lines, "1", [&](const std::string& a) {
          const std::string l = util::to_lower(a);
          for (std::size_t i = 0; i < items.size(); ++i) {
            if (l == std::to_string(i + 1) || l == aliases[i]) {
              custom = i == presets.size();
              if (!custom) preset = presets[i];
              return std::string();
            }
          }
          if (a.find_first_of(", /[") != std::string::npos) {
            std::vector<int64_t> bits;
            const std::string why = parse_bits(a, groups, bits);
            if (why.empty()) preset = bits;
            return why;
          }
          return fmt::format("'{}' is not a choice here; allowed: 1-{} (or {}), or a list of {} "
                             "bit-widths such as {}", a, items.size(), join(aliases), groups,
                             groups == 4 ? "32,16,8,4" : "16,8,4");
        });
  if (custom) {
    s.ask("custom bits", fmt::format("{} bit-widths, most sensitive group first, comma-separated",
                                     groups),
          {}, "", [&](const std::string& a) {
            std::vector<int64_t> bits;
            const std::string why = parse_bits(a, groups, bits);
            if (why.empty()) preset = bits;
            return why;
          });
  }
  return preset;
}

struct GroupingChoice {
  std::size_t grouping = 0;  // kmeans, percentile, hierarchical
  int64_t groups = 3;
  std::vector<int64_t> preset = {16, 8, 4};
};

// Phase 2: evaluation data and size, then the grouping, the number of groups and their bits.
GroupingChoice ask_quantization_phase(Session& s, const WizardOptions& o, const std::string& calibration,
                                      std::vector<Entry>& e) {
  GroupingChoice c;
  std::size_t& grouping = c.grouping;
  int64_t& groups = c.groups;
  DataChoice ev = ask_data_file(
      s, "evaluation data", "labelled test examples for accuracy, precision, recall and F1 "
      "before and after quantization (a test/dev split)", o.evaluation_default,
      "calibration", calibration);
  add_data_entries(e, "evaluation.classification", ev);
  const int64_t n = ask_size(
      s, "evaluation size", "how many test examples are evaluated (more = steadier numbers)",
      {{"5k (fast iteration)", "5k"},
       {"10k", "10k"},
       {"25k (full IMDB test in the seeds; final numbers)", "25k"},
       {"all examples in the file", "all"},
       {"custom", "custom"}},
      {5000, 10000, 25000, 0}, ev.info, "evaluation");
  e.push_back({"evaluation.classification.limit", std::to_string(n), n == 0 ? "all" : ""});

  grouping = s.choose("grouping", "how layers are grouped by sensitivity; each group gets one "
                      "bit-width",
                      {{"K-means (recommended)", "kmeans"},
                       {"Percentile bucketing (sorted, split at quantiles)", "percentile"},
                       {"Hierarchical clustering (bottom-up)", "hierarchical"}},
                      0);
  std::string g;
  s.ask("groups", "number of precision groups: 3 = simpler (~2x smaller), 4 = finer control "
        "(better accuracy)", {}, "3", [&](const std::string& a) {
          if (a != "3" && a != "4") return fmt::format("'{}' is not allowed; answer 3 or 4", a);
          g = a;
          return std::string();
        });
  groups = std::stoll(g);
  c.preset = ask_bit_preset(s, groups);
  return c;
}

// Where the run writes; phase 1 alone stops after the sensitivity stage.
void ask_output(Session& s, const std::string& model, std::size_t phase, std::vector<Entry>& e) {
  const std::string out_dir = s.ask(
      "output folder", "where the run writes sensitivities, reports and the quantized model "
      "({name} = model folder's name, {timestamp} = start time)", {},
      io::find_key("output.dir")->default_yaml, [](const std::string& a) {
        return fs::exists(a) && !fs::is_directory(a)
                   ? fmt::format("'{}' is a file; give a folder (new or existing)", a)
                   : std::string();
      });
  e.push_back({"output.dir", yaml_string(out_dir), ""});
  e.push_back({"output.name", yaml_string(run_name_of(model)), "model folder's name"});
  if (phase == 1) e.push_back({"output.stop_after", "sensitivity", "phase 1 only"});
}

// The recipe: checked by the recipe reader, written atomically, shown; then "run it now?".
WizardResult finish_wizard(WizardIO& io, Session& s, const WizardOptions& o, const std::vector<Entry>& e,
                           std::size_t phase) {
  static const char* kPhase[] = {"", "phase 1: sensitivity analysis",
                                 "phase 2: quantization and evaluation",
                                 "phases 1 and 2: sensitivity, then quantization and evaluation"};
  std::vector<std::string> header = {
      fmt::format("mpqat recipe written by `mpqat wizard` ({})", kPhase[phase]),
      fmt::format("run it with: {} run {}", o.command_name, shell_quote(o.out_path))};

  WizardResult r;
  r.path = o.out_path;
  r.yaml = emit_yaml(e, header);
  r.command = fmt::format("{} run {}", o.command_name, shell_quote(o.out_path));
  try {
    io::Recipe::from_yaml(r.yaml, o.out_path);
  } catch (const InputError& err) {
    throw Error(std::string("internal: the wizard built a recipe mpqat run refuses: ") +
                err.what());
  }

  io.out << "\n";
  if (o.write) {
    const fs::path parent = fs::path(o.out_path).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    util::write_file_atomic(o.out_path, r.yaml);
    io.out << "recipe written to " << o.out_path << ":\n";
  } else {
    io.out << "recipe (not written):\n";
  }
  io.out << r.yaml << "\nthe equivalent command:\n  " << r.command << "\n";

  s.ask("run it now?", "y runs the command above now; n leaves it for later", {}, "n",
        [&](const std::string& a) {
          const std::string l = util::to_lower(a);
          if (l == "y" || l == "yes") {
            r.run_requested = true;
          } else if (l != "n" && l != "no") {
            return fmt::format("'{}' is not allowed; answer y or n", a);
          }
          return std::string();
        },
        "y/N");
  return r;
}

}  // namespace

WizardResult run_wizard(WizardIO& io, const WizardOptions& o) {
  Session s(io);
  io.out << "mpqat wizard: the seeds' two-phase workflow as a recipe. Press Enter to take the "
            "default in [brackets].\n";
  std::vector<Entry> e;
  const std::string model = ask_model(s, o, e);
  const std::size_t phase = ask_phase(s);
  std::string calibration;
  if (phase != 2) calibration = ask_sensitivity_phase(s, o, e);
  else ask_sensitivity_file(s, e);
  // The seeds score and group whole layers (blocks), not single linear modules.
  e.push_back({"sensitivity.unit", "block", "one score per layer, as the seeds"});
  GroupingChoice g;
  if (phase != 1) g = ask_quantization_phase(s, o, calibration, e);
  const std::size_t grouping = g.grouping;
  const int64_t groups = g.groups;
  const std::vector<int64_t>& preset = g.preset;
  static const char* kGrouping[] = {"kmeans", "percentile", "hierarchical"};
  e.push_back({"allocation.method", kGrouping[grouping], phase == 1 ? "phase 2's default" : ""});
  e.push_back({"allocation.unit", "block", "one bit-width per layer, as the seeds"});
  e.push_back({"allocation.groups", std::to_string(groups), ""});
  e.push_back({"allocation.preset", join_ints(preset), ""});
  e.push_back({"training.method", "rtn",
               "post-training quantization as the seeds (gptq = post-training with calibration "
               "Hessians; block-ap = QAT)"});
  ask_output(s, model, phase, e);
  return finish_wizard(io, s, o, e, phase);
}

}  // namespace mpqat::cli
