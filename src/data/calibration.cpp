#include "mpqat/data/calibration.h"

#include <algorithm>
#include <fstream>
#include <random>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::data {
namespace {

// Uniform in [0, n) from the raw generator; the modulo bias is negligible for n << 2^64 and the
// result is the same on every standard library.
uint64_t draw(std::mt19937_64& rng, uint64_t n) { return rng() % n; }

// Fisher-Yates with draw(), for the same reason.
template <typename T>
void shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[draw(rng, i)]);
}

}  // namespace

std::vector<int32_t> tokenize_calibration_file(const std::string& path, const Tokenizer& tok) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot read calibration file " + path);
  if (!util::ends_with(util::to_lower(path), ".jsonl")) {
    std::stringstream ss;
    ss << in.rdbuf();
    return tok.encode(ss.str(), true, false);
  }
  std::vector<int32_t> out;
  std::string line;
  int64_t lineno = 0, docs = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (util::trim(line).empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception&) {
      throw InputError(path + ":" + std::to_string(lineno) + ": not a JSON object (expected {\"text\": ...})");
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string())
      throw InputError(path + ":" + std::to_string(lineno) + ": no string field \"text\"");
    if (docs > 0 && tok.eos_id() >= 0) out.push_back(tok.eos_id());
    auto ids = tok.encode(j["text"].get<std::string>(), true, false);
    out.insert(out.end(), ids.begin(), ids.end());
    ++docs;
  }
  return out;
}

TokenCalibration sample_token_windows(const std::vector<int32_t>& tokens, const std::string& path,
                                      const CalibrationOptions& opts) {
  if (opts.samples < 1) throw InputError("calibration samples must be >= 1, got " + std::to_string(opts.samples));
  if (opts.seqlen < 1) throw InputError("calibration seqlen must be >= 1, got " + std::to_string(opts.seqlen));
  TokenCalibration c;
  c.path = path;
  c.total_tokens = static_cast<int64_t>(tokens.size());
  const int64_t L = opts.seqlen, N = opts.samples, T = c.total_tokens;
  if (T < L)
    throw InputError("calibration file " + path + " is too short: " + std::to_string(T) + " tokens found, " +
                     std::to_string(L) + " needed for one sequence of seqlen " + std::to_string(L));
  std::vector<int64_t> starts;
  if (T >= N * L) {
    std::mt19937_64 rng(opts.seed);
    for (int64_t i = 0; i < N; ++i) starts.push_back(static_cast<int64_t>(draw(rng, static_cast<uint64_t>(T - L + 1))));
  } else {
    c.consecutive = true;
    for (int64_t i = 0; i < std::min(N, T / L); ++i) starts.push_back(i * L);
  }
  for (int64_t s : starts) c.sequences.emplace_back(tokens.begin() + s, tokens.begin() + s + L);
  return c;
}

TokenCalibration load_token_calibration(const std::string& path, const Tokenizer& tok,
                                        const CalibrationOptions& opts) {
  return sample_token_windows(tokenize_calibration_file(path, tok), path, opts);
}

Sampling parse_sampling(const std::string& s) {
  if (s == "random") return Sampling::Random;
  if (s == "stratified") return Sampling::Stratified;
  throw InputError("unknown calibration sampling '" + s + "' (accepted: random, stratified)");
}

const char* sampling_name(Sampling s) { return s == Sampling::Random ? "random" : "stratified"; }

LabelledCalibration sample_labelled(const data::ClassificationData& data, int64_t n, Sampling sampling,
                                    uint64_t seed) {
  if (n < 1) throw InputError("calibration samples must be >= 1, got " + std::to_string(n));
  if (data.texts.empty()) throw InputError("calibration file " + data.path + " has no examples");
  const std::size_t take = std::min<std::size_t>(static_cast<std::size_t>(n), data.texts.size());
  std::mt19937_64 rng(seed);
  std::vector<int64_t> chosen;
  if (sampling == Sampling::Random) {
    std::vector<int64_t> idx(data.texts.size());
    for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
    shuffle(idx, rng);
    chosen.assign(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(take));
  } else {
    int64_t num_labels = static_cast<int64_t>(data.label_names.size());
    for (int64_t l : data.labels) num_labels = std::max(num_labels, l + 1);
    std::vector<std::vector<int64_t>> by_label(static_cast<std::size_t>(num_labels));
    for (std::size_t i = 0; i < data.labels.size(); ++i)
      by_label[static_cast<std::size_t>(data.labels[i])].push_back(static_cast<int64_t>(i));
    for (auto& v : by_label) shuffle(v, rng);
    std::vector<std::size_t> pos(by_label.size(), 0);
    while (chosen.size() < take) {
      for (std::size_t l = 0; l < by_label.size() && chosen.size() < take; ++l)
        if (pos[l] < by_label[l].size()) chosen.push_back(by_label[l][pos[l]++]);
    }
  }
  LabelledCalibration c;
  c.path = data.path;
  c.label_names = data.label_names;
  for (int64_t i : chosen) {
    c.texts.push_back(data.texts[static_cast<std::size_t>(i)]);
    c.labels.push_back(data.labels[static_cast<std::size_t>(i)]);
    c.source_index.push_back(i);
  }
  return c;
}

LabelledCalibration load_labelled_calibration(const std::string& path, int64_t n, Sampling sampling,
                                              uint64_t seed, const data::ClassificationReadOptions& read_opts) {
  auto data = data::read_classification_file(path, read_opts);
  data.path = path;
  return sample_labelled(data, n, sampling, seed);
}

}  // namespace mpqat::data
