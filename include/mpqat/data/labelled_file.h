// Labelled text files for classification (calibration and evaluation): TSV as GLUE writes it,
// CSV with RFC 4180 quoting, JSONL; labels mapped to ids in a stable order. No torch here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace mpqat::data {

struct ClassificationReadOptions {
  std::string text_field = "sentence";
  std::string label_field = "label";
  // "auto" picks by extension: .tsv -> tab, .csv -> comma, .jsonl / .json -> one object per line.
  std::string format = "auto";
  // Explicit label order (label text -> id = position). Empty: the distinct labels sorted
  // (numerically when all are integers, else as strings).
  std::vector<std::string> labels;
};

struct ClassificationData {
  std::string path;
  std::vector<std::string> texts;
  std::vector<int64_t> labels;           // ids into label_names
  std::vector<std::string> label_names;  // id -> label text
};

// Reads a labelled TSV / CSV (header row required; CSV fields may be quoted with "" escapes) or
// JSONL file. Throws InputError naming the file and the column (listing the available ones) when a
// column is missing, naming the file and line for a malformed row, and for a label not in
// `labels` when that list is given.
ClassificationData read_classification_file(const std::string& path, const ClassificationReadOptions& opts = {});

// One CSV record split into fields (RFC 4180 quoting: "a, b" and "" inside quotes). Exposed for tests.
std::vector<std::string> split_csv_record(const std::string& line, char sep = ',');

}  // namespace mpqat::data
