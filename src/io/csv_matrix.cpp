#include "mpqat/io/csv_matrix.h"

#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>
#include <string_view>

#include "mpqat/util/error.h"

namespace mpqat::io {
namespace {

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::vector<std::string_view> split(std::string_view line, char delim) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  while (true) {
    const auto pos = line.find(delim, start);
    if (pos == std::string_view::npos) {
      out.push_back(trim(line.substr(start)));
      break;
    }
    out.push_back(trim(line.substr(start, pos - start)));
    start = pos + 1;
  }
  return out;
}

enum class FieldKind { Finite, NonFinite, NotANumber };

// from_chars is locale-independent, unlike strtod, so "1.5" parses the same everywhere.
FieldKind parse_field(std::string_view f, double& value) {
  if (!f.empty() && f.front() == '+') f.remove_prefix(1);
  if (f.empty()) return FieldKind::NotANumber;
  const char* end = f.data() + f.size();
  const auto res = std::from_chars(f.data(), end, value);
  if (res.ec == std::errc::result_out_of_range) return FieldKind::NonFinite;
  if (res.ec != std::errc() || res.ptr != end) return FieldKind::NotANumber;
  return std::isfinite(value) ? FieldKind::Finite : FieldKind::NonFinite;
}

std::string quote(std::string_view f) {
  constexpr std::size_t kMax = 40;
  std::string s(f.substr(0, kMax));
  if (f.size() > kMax) s += "...";
  return "'" + s + "'";
}

}  // namespace

CsvMatrix parse_csv_matrix(const std::string& text, const std::string& name,
                           const CsvReadOptions& opts) {
  CsvMatrix out;
  std::vector<double> values;  // row-major, grown as lines arrive
  std::size_t cols = 0, rows = 0;
  std::size_t cols_line = 0;  // the line that fixed the column count
  bool first_line_seen = false;

  std::size_t line_no = 0, pos = 0;
  while (pos <= text.size()) {
    auto nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    const auto t = trim(line);
    if (t.empty() || t.front() == '#') {
      if (nl == text.size()) break;
      continue;
    }
    const auto fields = split(t, opts.delimiter);

    if (!first_line_seen) {
      first_line_seen = true;
      bool any_num = false, any_text = false;
      for (auto f : fields) {
        double v;
        (parse_field(f, v) == FieldKind::NotANumber ? any_text : any_num) = true;
      }
      const bool is_header = opts.header == HeaderMode::Yes ||
                             (opts.header == HeaderMode::Auto && any_text && !any_num);
      if (is_header) {
        for (auto f : fields) out.header.emplace_back(f);
        cols = fields.size();
        cols_line = line_no;
        if (nl == text.size()) break;
        continue;
      }
    }

    if (cols == 0) {
      cols = fields.size();
      cols_line = line_no;
    }
    if (fields.size() != cols) {
      throw InputError(name + ": line " + std::to_string(line_no) + " has " +
                       std::to_string(fields.size()) + " fields but " +
                       (out.header.empty() ? "the first row" : "the header") + " (line " +
                       std::to_string(cols_line) + ") has " + std::to_string(cols) +
                       " (every row needs the same number of columns)");
    }
    for (std::size_t c = 0; c < fields.size(); ++c) {
      double v = 0.0;
      const auto kind = parse_field(fields[c], v);
      if (kind != FieldKind::Finite) {
        throw InputError(name + ": line " + std::to_string(line_no) + ", column " +
                         std::to_string(c + 1) + ": " + quote(fields[c]) +
                         (kind == FieldKind::NonFinite
                              ? " is not finite (NaN/Inf are not accepted)"
                              : " is not a number (expected a decimal like -1.25 or 3e-4)"));
      }
      values.push_back(v);
    }
    ++rows;
    if (nl == text.size()) break;
  }

  if (rows == 0) {
    throw InputError(name + ": no numeric data rows" +
                     std::string(out.header.empty() ? "" : " after the header line") +
                     " (expected at least one line of comma-separated numbers)");
  }
  out.data.resize(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c)
      out.data(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(c)) = values[r * cols + c];
  return out;
}

CsvMatrix read_csv_matrix(const std::string& path, const CsvReadOptions& opts) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": cannot open CSV file (check the path and permissions)");
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw InputError(path + ": read error while loading CSV file");
  return parse_csv_matrix(ss.str(), path, opts);
}

}  // namespace mpqat::io
