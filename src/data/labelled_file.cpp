// Labelled files (include/mpqat/data/labelled_file.h).
#include "mpqat/data/labelled_file.h"

#include <algorithm>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::data {

namespace {

using nlohmann::json;

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (std::size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out;
}

struct Record {
  std::size_t line = 0;  // 1-based line where the record starts
  std::vector<std::string> fields;
};

// CSV records over the whole text, so a quoted field may hold newlines.
std::vector<Record> parse_csv(const std::string& text, char sep, const std::string& path) {
  std::vector<Record> out;
  Record cur;
  std::string field;
  bool in_quotes = false, field_started = false;
  std::size_t line = 1;
  cur.line = 1;
  auto end_field = [&] {
    cur.fields.push_back(field);
    field.clear();
    field_started = false;
  };
  auto end_record = [&] {
    end_field();
    const bool blank = cur.fields.size() == 1 && cur.fields[0].empty();
    if (!blank) out.push_back(cur);
    cur = Record{};
    cur.line = line;
  };
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char ch = text[i];
    if (in_quotes) {
      if (ch == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          in_quotes = false;
        }
      } else {
        if (ch == '\n') ++line;
        field += ch;
      }
      continue;
    }
    if (ch == '"' && !field_started) {
      in_quotes = true;
      field_started = true;
    } else if (ch == sep) {
      end_field();
    } else if (ch == '\n') {
      ++line;
      if (!field.empty() && field.back() == '\r') field.pop_back();
      end_record();
    } else {
      field += ch;
      field_started = true;
    }
  }
  if (in_quotes) throw InputError(path + ":" + std::to_string(cur.line) + ": unterminated quoted field");
  if (!field.empty() || !cur.fields.empty()) {
    if (!field.empty() && field.back() == '\r') field.pop_back();
    end_record();
  }
  return out;
}

// TSV as GLUE writes it: no quoting, one record per line.
std::vector<Record> parse_tsv(const std::string& text) {
  std::vector<Record> out;
  const auto lines = util::split(text, '\n');
  for (std::size_t i = 0; i < lines.size(); ++i) {
    std::string l = lines[i];
    if (!l.empty() && l.back() == '\r') l.pop_back();
    if (l.empty()) continue;
    out.push_back({i + 1, util::split(l, '\t')});
  }
  return out;
}

bool is_integer(const std::string& s) {
  if (s.empty()) return false;
  std::size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i)
    if (s[i] < '0' || s[i] > '9') return false;
  return true;
}

std::string json_label(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<int64_t>());
  if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
  return v.dump();
}

}  // namespace

std::vector<std::string> split_csv_record(const std::string& line, char sep) {
  auto recs = parse_csv(line, sep, "<record>");
  return recs.empty() ? std::vector<std::string>{""} : recs[0].fields;
}

ClassificationData read_classification_file(const std::string& path, const ClassificationReadOptions& opts) {
  std::string format = opts.format;
  if (format == "auto") {
    const auto low = util::to_lower(path);
    if (util::ends_with(low, ".tsv")) format = "tsv";
    else if (util::ends_with(low, ".csv")) format = "csv";
    else if (util::ends_with(low, ".jsonl") || util::ends_with(low, ".json")) format = "jsonl";
    else
      throw InputError("cannot tell the format of '" + path + "' from its extension (expected .tsv, .csv or .jsonl)");
  }
  if (format != "tsv" && format != "csv" && format != "jsonl")
    throw InputError("unknown classification file format '" + format + "' (expected tsv, csv or jsonl)");
  const std::string text = util::read_file(path);
  ClassificationData d;
  d.path = path;
  std::vector<std::string> raw_labels;
  if (format == "jsonl") {
    const auto lines = util::split(text, '\n');
    for (std::size_t i = 0; i < lines.size(); ++i) {
      if (util::trim(lines[i]).empty()) continue;
      const std::string where = path + ":" + std::to_string(i + 1);
      json j;
      try {
        j = json::parse(lines[i]);
      } catch (const json::exception&) {
        throw InputError(where + ": not a JSON object (expected one object per line)");
      }
      if (!j.is_object()) throw InputError(where + ": not a JSON object (expected one object per line)");
      for (const auto* f : {&opts.text_field, &opts.label_field}) {
        if (!j.contains(*f)) {
          std::vector<std::string> keys;
          for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
          throw InputError(where + ": no field '" + *f + "' (available: " + join(keys) + ")");
        }
      }
      if (!j[opts.text_field].is_string())
        throw InputError(where + ": field '" + opts.text_field + "' is not a string");
      d.texts.push_back(j[opts.text_field].get<std::string>());
      raw_labels.push_back(json_label(j[opts.label_field]));
    }
  } else {
    const auto recs = format == "tsv" ? parse_tsv(text) : parse_csv(text, ',', path);
    if (recs.empty()) throw InputError("'" + path + "' is empty (expected a header row naming the columns)");
    const auto& header = recs[0].fields;
    auto column = [&](const std::string& name) {
      for (std::size_t c = 0; c < header.size(); ++c)
        if (util::trim(header[c]) == name) return c;
      throw InputError("'" + path + "' has no column '" + name + "' (available: " + join(header) + ")");
    };
    const auto tc = column(opts.text_field), lc = column(opts.label_field);
    for (std::size_t r = 1; r < recs.size(); ++r) {
      const auto& f = recs[r].fields;
      if (f.size() != header.size())
        throw InputError(path + ":" + std::to_string(recs[r].line) + ": " + std::to_string(f.size()) +
                         " fields, but the header has " + std::to_string(header.size()));
      d.texts.push_back(f[tc]);
      raw_labels.push_back(util::trim(f[lc]));
    }
  }
  if (d.texts.empty()) throw InputError("'" + path + "' holds no examples");

  if (!opts.labels.empty()) {
    d.label_names = opts.labels;
  } else {
    std::set<std::string> distinct(raw_labels.begin(), raw_labels.end());
    d.label_names.assign(distinct.begin(), distinct.end());
    const bool numeric = std::all_of(d.label_names.begin(), d.label_names.end(), is_integer);
    if (numeric)
      std::sort(d.label_names.begin(), d.label_names.end(),
                [](const std::string& a, const std::string& b) { return std::stoll(a) < std::stoll(b); });
  }
  std::map<std::string, int64_t> id;
  for (std::size_t i = 0; i < d.label_names.size(); ++i) id[d.label_names[i]] = static_cast<int64_t>(i);
  for (std::size_t i = 0; i < raw_labels.size(); ++i) {
    const auto it = id.find(raw_labels[i]);
    if (it == id.end())
      throw InputError("'" + path + "' example " + std::to_string(i + 1) + ": label '" + raw_labels[i] +
                       "' is not one of the given labels (" + join(d.label_names) + ")");
    d.labels.push_back(it->second);
  }
  return d;
}

}  // namespace mpqat::data
