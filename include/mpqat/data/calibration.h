// Calibration data for sensitivity and QAT ([M4]): N sequences of L tokens from a text or JSONL
// file, or labelled examples for classifiers. Everything is seeded and deterministic (the
// generator is std::mt19937_64 used through plain modulo, so the draw does not depend on the
// standard library's distribution implementation).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpqat/data/labelled_file.h"
#include "mpqat/data/tokenizer.h"

namespace mpqat::data {

struct CalibrationOptions {
  int64_t samples = 128;  // N
  int64_t seqlen = 512;   // L
  uint64_t seed = 0;
};

struct TokenCalibration {
  std::string path;
  int64_t total_tokens = 0;  // tokens in the whole tokenized file
  bool consecutive = false;  // true: the file was too short for N random windows
  std::vector<std::vector<int32_t>> sequences;  // each of length L
};

// The whole file as one token stream. ".jsonl" files: one JSON object per line, field `text`;
// documents concatenated as BOS d1 EOS BOS d2 EOS ... (BOS / EOS left out when the tokenizer
// has none). Any other file: the whole text encoded once with BOS. Throws InputError naming the
// file (and line) when it cannot be read or a JSONL line has no string `text`.
std::vector<int32_t> tokenize_calibration_file(const std::string& path, const Tokenizer& tok);

// N windows of L tokens from `tokens`: when the stream holds at least N * L tokens, N random
// window starts in [0, total - L] (seeded; windows may overlap); otherwise consecutive
// non-overlapping windows from the start, min(N, total / L) of them. Throws InputError naming
// `path`, the tokens found and the tokens needed when total < L, and for N or L < 1.
TokenCalibration sample_token_windows(const std::vector<int32_t>& tokens, const std::string& path,
                                      const CalibrationOptions& opts);

// tokenize_calibration_file + sample_token_windows.
TokenCalibration load_token_calibration(const std::string& path, const Tokenizer& tok,
                                        const CalibrationOptions& opts);

enum class Sampling { Random, Stratified };
// "random" | "stratified"; InputError otherwise.
Sampling parse_sampling(const std::string& s);
const char* sampling_name(Sampling s);

struct LabelledCalibration {
  std::string path;
  std::vector<std::string> texts;
  std::vector<int64_t> labels;           // ids into label_names
  std::vector<std::string> label_names;
  std::vector<int64_t> source_index;     // row of each example in the source data
};

// min(n, rows) examples of `data`. Random: a seeded shuffle, first n. Stratified: each label's
// rows shuffled (seeded), then taken one label at a time in label order, round robin, so that
// per-label counts differ by at most one unless a label runs out. Throws InputError for n < 1
// or empty data.
LabelledCalibration sample_labelled(const data::ClassificationData& data, int64_t n, Sampling sampling,
                                    uint64_t seed);

// data::read_classification_file + sample_labelled.
LabelledCalibration load_labelled_calibration(const std::string& path, int64_t n, Sampling sampling,
                                              uint64_t seed,
                                              const data::ClassificationReadOptions& read_opts = {});

}  // namespace mpqat::data
