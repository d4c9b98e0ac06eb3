#include "mpqat/eval/tasks.h"

#include <bzlib.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::eval {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kPiqaLayout =
    "expected piqa/valid.jsonl (one {\"goal\",\"sol1\",\"sol2\"} object per line) and piqa/valid-labels.lst "
    "(one 0/1 label per line)";
const char* kArcLayout =
    "expected the Hugging Face ai2_arc layout, one {\"question\", \"choices\": {\"text\": [...], \"label\": [...]}, "
    "\"answerKey\"} object per line";
const char* kHellaswagLayout =
    "expected bzip2 text with 6 lines per item: \"activity_label: ctx\", the gold label 0-3, then 4 endings";

std::string join(const std::vector<std::string>& v, const std::string& sep) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + v[i];
  return out;
}

std::vector<std::string> read_lines(const std::string& path, const std::string& layout) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("task file '" + path + "' not found (" + layout + ")");
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  while (!lines.empty() && util::trim(lines.back()).empty()) lines.pop_back();
  return lines;
}

json parse_line(const std::string& path, std::size_t lineno, const std::string& line, const std::string& layout) {
  try {
    return json::parse(line);
  } catch (const json::exception& e) {
    throw InputError(path + ":" + std::to_string(lineno) + ": not a JSON object (" + layout + ")");
  }
}

std::string get_string(const json& j, const char* key, const std::string& where, const std::string& layout) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_string())
    throw InputError(where + ": missing string field \"" + key + "\" (" + layout + ")");
  return j[key].get<std::string>();
}

MultipleChoiceItem make_item(std::string context, std::vector<std::string> choices, int gold) {
  MultipleChoiceItem it;
  it.context = std::move(context);
  for (const auto& c : choices) it.continuations.push_back(" " + c);
  it.choices = std::move(choices);
  it.gold = gold;
  return it;
}

MultipleChoiceTask load_piqa(const fs::path& dir, const std::string& split) {
  if (split != "validation")
    throw InputError("piqa: split '" + split + "' is not available (only validation: piqa/valid.jsonl)");
  MultipleChoiceTask t{"piqa", split, (dir / "piqa/valid.jsonl").string(), {}};
  const auto lines = read_lines(t.path, kPiqaLayout);
  const auto lpath = (dir / "piqa/valid-labels.lst").string();
  const auto labels = read_lines(lpath, kPiqaLayout);
  if (labels.size() != lines.size())
    throw InputError("piqa: '" + lpath + "' has " + std::to_string(labels.size()) + " labels but '" + t.path +
                     "' has " + std::to_string(lines.size()) + " items (" + kPiqaLayout + ")");
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string where = t.path + ":" + std::to_string(i + 1);
    const auto j = parse_line(t.path, i + 1, lines[i], kPiqaLayout);
    const auto lab = util::trim(labels[i]);
    if (lab != "0" && lab != "1")
      throw InputError(lpath + ":" + std::to_string(i + 1) + ": label '" + lab + "' is not 0 or 1");
    t.items.push_back(make_item("Question: " + get_string(j, "goal", where, kPiqaLayout) + "\nAnswer:",
                                {get_string(j, "sol1", where, kPiqaLayout), get_string(j, "sol2", where, kPiqaLayout)},
                                lab == "1" ? 1 : 0));
  }
  return t;
}

MultipleChoiceTask load_arc(const fs::path& dir, const std::string& name, const std::string& split) {
  if (split != "test" && split != "validation")
    throw InputError(name + ": split '" + split + "' is not available (test or validation)");
  const std::string stem = name == "arc_easy" ? "ARC-Easy" : "ARC-Challenge";
  MultipleChoiceTask t{name, split, (dir / "arc" / (stem + "-" + split + ".jsonl")).string(), {}};
  const auto lines = read_lines(t.path, kArcLayout);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string where = t.path + ":" + std::to_string(i + 1);
    const auto j = parse_line(t.path, i + 1, lines[i], kArcLayout);
    const auto question = get_string(j, "question", where, kArcLayout);
    const auto key = get_string(j, "answerKey", where, kArcLayout);
    if (!j.contains("choices") || !j["choices"].is_object() || !j["choices"].contains("text") ||
        !j["choices"].contains("label") || !j["choices"]["text"].is_array() || !j["choices"]["label"].is_array() ||
        j["choices"]["text"].size() != j["choices"]["label"].size() || j["choices"]["text"].empty())
      throw InputError(where + ": \"choices\" must hold equally long \"text\" and \"label\" arrays (" + kArcLayout + ")");
    std::vector<std::string> texts, labels;
    try {
      texts = j["choices"]["text"].get<std::vector<std::string>>();
      labels = j["choices"]["label"].get<std::vector<std::string>>();
    } catch (const json::exception&) {
      throw InputError(where + ": \"choices\" entries must be strings (" + kArcLayout + ")");
    }
    // lm-eval: doc_to_target = choices.label.index(answerKey); keys are "A".."E" or "1".."5".
    int gold = -1;
    for (std::size_t c = 0; c < labels.size(); ++c)
      if (labels[c] == key) gold = static_cast<int>(c);
    if (gold < 0)
      throw InputError(where + ": answerKey '" + key + "' is not one of the choice labels " + join(labels, ","));
    t.items.push_back(make_item("Question: " + question + "\nAnswer:", texts, gold));
  }
  return t;
}

MultipleChoiceTask load_hellaswag(const fs::path& dir, const std::string& split) {
  if (split != "validation")
    throw InputError("hellaswag: split '" + split +
                     "' is not available (only validation: hellaswag/hellaswag_val_full.txt.bz2)");
  MultipleChoiceTask t{"hellaswag", split, (dir / "hellaswag/hellaswag_val_full.txt.bz2").string(), {}};
  if (!fs::exists(t.path)) throw InputError("task file '" + t.path + "' not found (" + kHellaswagLayout + ")");
  const auto text = read_bz2_file(t.path);
  std::vector<std::string> lines = util::split(text, '\n');
  for (auto& l : lines)
    if (!l.empty() && l.back() == '\r') l.pop_back();
  while (!lines.empty() && util::trim(lines.back()).empty()) lines.pop_back();
  if (lines.size() % 6 != 0)
    throw InputError("'" + t.path + "' has " + std::to_string(lines.size()) + " lines, not a multiple of 6 (" +
                     kHellaswagLayout + ")");
  for (std::size_t i = 0; i < lines.size(); i += 6) {
    const auto lab = util::trim(lines[i + 1]);
    if (lab.size() != 1 || lab[0] < '0' || lab[0] > '3')
      throw InputError(t.path + ":" + std::to_string(i + 2) + ": gold label '" + lab + "' is not 0-3 (" +
                       kHellaswagLayout + ")");
    std::vector<std::string> endings;
    for (int e = 0; e < 4; ++e) endings.push_back(hellaswag_preprocess(lines[i + 2 + e]));
    t.items.push_back(make_item(hellaswag_query(lines[i]), endings, lab[0] - '0'));
  }
  return t;
}

}  // namespace

std::vector<std::string> known_tasks() { return {"piqa", "arc_easy", "arc_challenge", "hellaswag"}; }

MultipleChoiceTask load_task(const std::string& name, const std::string& task_dir, const std::string& split) {
  const fs::path dir(task_dir);
  if (name == "piqa") return load_piqa(dir, split.empty() ? "validation" : split);
  if (name == "arc_easy" || name == "arc_challenge") return load_arc(dir, name, split.empty() ? "test" : split);
  if (name == "hellaswag") return load_hellaswag(dir, split.empty() ? "validation" : split);
  std::string msg = "unknown task '" + name + "' (known: " + join(known_tasks(), ", ") + ")";
  const auto near = util::closest_match(name, known_tasks());
  if (!near.empty()) msg += "; did you mean '" + near + "'?";
  throw InputError(msg);
}

std::string hellaswag_preprocess(const std::string& text) {
  std::string s = util::trim(text);
  // " [title]" -> ". "
  std::string a;
  for (std::size_t i = 0; i < s.size();) {
    if (s.compare(i, 8, " [title]") == 0) {
      a += ". ";
      i += 8;
    } else {
      a += s[i++];
    }
  }
  // re.sub(r"\[.*?\]", "", a): a '[' with no later ']' stays.
  std::string b;
  for (std::size_t i = 0; i < a.size();) {
    if (a[i] == '[') {
      const auto close = a.find(']', i + 1);
      if (close != std::string::npos) {
        i = close + 1;
        continue;
      }
    }
    b += a[i++];
  }
  // str.replace("  ", " "): one left-to-right pass, so three spaces become two.
  std::string c;
  for (std::size_t i = 0; i < b.size();) {
    if (i + 1 < b.size() && b[i] == ' ' && b[i + 1] == ' ') {
      c += ' ';
      i += 2;
    } else {
      c += b[i++];
    }
  }
  return c;
}

std::string hellaswag_query(const std::string& line) {
  std::string s = line;
  const auto colon = s.find(": ");
  const std::size_t body = colon == std::string::npos ? 0 : colon + 2;
  std::size_t frag = std::string::npos;
  for (const char* end : {". ", "? ", "! "}) {
    const auto p = s.rfind(end);
    if (p != std::string::npos && p >= body && (frag == std::string::npos || p + 2 > frag)) frag = p + 2;
  }
  if (frag != std::string::npos && frag < s.size() && std::islower(static_cast<unsigned char>(s[frag])) &&
      s.find_first_of(".?!", frag) == std::string::npos) {
    // Python's str.capitalize: first character upper, the rest lower.
    s[frag] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[frag])));
    for (std::size_t i = frag + 1; i < s.size(); ++i)
      s[i] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[i])));
  }
  return hellaswag_preprocess(s);
}

int64_t utf8_length(const std::string& text) {
  int64_t n = 0;
  for (unsigned char c : text)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

std::string read_bz2_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw InputError("cannot open '" + path + "' (expected a bzip2-compressed text file)");
  std::string out;
  // A .bz2 file may hold several concatenated streams (pbzip2); read them all.
  std::string leftover;
  for (;;) {
    int err = BZ_OK;
    BZFILE* bz = BZ2_bzReadOpen(&err, f, 0, 0, leftover.empty() ? nullptr : leftover.data(),
                                static_cast<int>(leftover.size()));
    if (err != BZ_OK) {
      BZ2_bzReadClose(&err, bz);
      std::fclose(f);
      throw InputError("cannot read '" + path + "' as bzip2");
    }
    char buf[1 << 16];
    for (;;) {
      const int got = BZ2_bzRead(&err, bz, buf, sizeof buf);
      if (err != BZ_OK && err != BZ_STREAM_END) {
        int e2;
        BZ2_bzReadClose(&e2, bz);
        std::fclose(f);
        throw InputError("'" + path + "' is not valid bzip2 data (error " + std::to_string(err) +
                         "; expected a .bz2 text file)");
      }
      out.append(buf, static_cast<std::size_t>(got));
      if (err == BZ_STREAM_END) break;
    }
    void* unused = nullptr;
    int nunused = 0;
    BZ2_bzReadGetUnused(&err, bz, &unused, &nunused);
    leftover.assign(static_cast<char*>(unused), static_cast<std::size_t>(nunused));
    BZ2_bzReadClose(&err, bz);
    if (leftover.empty()) {
      const int c = std::fgetc(f);
      if (c == EOF) break;
      std::ungetc(c, f);
    }
  }
  std::fclose(f);
  return out;
}

}  // namespace mpqat::eval
