// Numeric CSV -> Eigen::MatrixXd (fp64), for activation dumps and similar tables.
//
// Accepted: one row per line, fields separated by `delimiter` (default ','), surrounding
// blanks ignored, '\r\n' line ends, blank lines and lines starting with '#' skipped.
// The first data line may be a header of column names (see HeaderMode). Every other field
// must be a finite number; anything else throws mpqat::InputError naming file, line, column.
#pragma once

#include <string>
#include <vector>

#include <Eigen/Dense>

namespace mpqat::io {

enum class HeaderMode {
  Auto,  // header iff every field of the first line is non-numeric (a mixed line is an error)
  Yes,   // the first line is always a header
  No,    // the first line is always data
};

struct CsvReadOptions {
  char delimiter = ',';
  HeaderMode header = HeaderMode::Auto;
};

struct CsvMatrix {
  Eigen::MatrixXd data;             // (rows, cols)
  std::vector<std::string> header;  // empty when the file has no header line
};

// Reads the whole file. Throws InputError when the file cannot be opened, is empty (no data
// rows), has ragged rows, or holds a field that is not a finite number.
CsvMatrix read_csv_matrix(const std::string& path, const CsvReadOptions& opts = {});

// Same rules, on text already in memory; `name` stands for the file in error messages.
CsvMatrix parse_csv_matrix(const std::string& text, const std::string& name,
                           const CsvReadOptions& opts = {});

}  // namespace mpqat::io
