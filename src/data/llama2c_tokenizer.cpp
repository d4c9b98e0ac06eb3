#include "mpqat/data/llama2c_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "mpqat/util/error.h"

namespace mpqat::data {

namespace {

// llama2.c starts its search at best_score = -1e10 with a strict '>', so pieces scored at or
// below that never merge; kept for exactness.
constexpr float kNoMergeScore = -1e10f;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// "<0xNN>" -> NN, else -1.
int byte_piece_value(const std::string& p) {
  if (p.size() != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return -1;
  int hi = hex_value(p[3]), lo = hex_value(p[4]);
  if (hi < 0 || lo < 0) return -1;
  return hi * 16 + lo;
}

size_t utf8_char_count(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

}  // namespace

Llama2cTokenizer::Llama2cTokenizer(const std::string& path) : path_(path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot open llama2.c tokenizer file '" + path + "'");
  std::vector<char> buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t n = buf.size();
  auto where = [&](size_t idx) {
    return "llama2.c tokenizer file '" + path + "' is corrupt at token " + std::to_string(idx);
  };
  if (n < 4)
    throw InputError("llama2.c tokenizer file '" + path +
                     "' is too short (expected int32 max_token_length then token records)");
  std::memcpy(&max_token_length_, buf.data(), 4);
  if (max_token_length_ <= 0 || max_token_length_ > (1 << 20))
    throw InputError("llama2.c tokenizer file '" + path + "' has an invalid max_token_length " +
                     std::to_string(max_token_length_));
  size_t off = 4;
  std::vector<std::string> pieces;
  std::vector<float> scores;
  while (off < n) {
    const size_t idx = pieces.size();
    if (n - off < 8)
      throw InputError(where(idx) + ": truncated record header (need f32 score + i32 length)");
    float score;
    int32_t len;
    std::memcpy(&score, buf.data() + off, 4);
    std::memcpy(&len, buf.data() + off + 4, 4);
    off += 8;
    if (len < 0 || len > max_token_length_ * 4 + 16)
      throw InputError(where(idx) + ": invalid piece length " + std::to_string(len) +
                       " (max_token_length is " + std::to_string(max_token_length_) + ")");
    if (n - off < static_cast<size_t>(len))
      throw InputError(where(idx) + ": truncated piece (" + std::to_string(len) +
                       " bytes declared, " + std::to_string(n - off) + " left)");
    pieces.emplace_back(buf.data() + off, static_cast<size_t>(len));
    scores.push_back(score);
    off += static_cast<size_t>(len);
  }
  if (pieces.size() < 259)
    throw InputError("llama2.c tokenizer file '" + path + "' has " +
                     std::to_string(pieces.size()) +
                     " tokens; expected at least 259 (unk, bos, eos, 256 byte-fallback pieces)");
  // llama2.c looks every piece up (specials included) and merges into any of them.
  const std::vector<char> mergeable(pieces.size(), 1);
  bpe_ = ScoreBpe(std::move(pieces), std::move(scores), mergeable, {}, kNoMergeScore);
}

int32_t Llama2cTokenizer::piece_id(const std::string& piece) const { return bpe_.find(piece); }

std::vector<int32_t> Llama2cTokenizer::encode(const std::string& text, bool add_bos,
                                              bool add_eos) const {
  std::vector<ScoreBpe::Symbol> syms;
  syms.reserve(text.size() + 3);
  auto push_id = [&](int32_t id) {
    syms.emplace_back();
    syms.back().id = id;
  };
  if (add_bos) push_id(1);
  if (!text.empty()) {
    int32_t dummy = piece_id(" ");
    push_id(dummy >= 0 ? dummy : ' ' + 3);
  }
  // Group bytes into codepoints the way run.c does (a lead byte resets, at most 4 bytes).
  std::string cp;
  for (size_t i = 0; i < text.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c & 0xC0) != 0x80) cp.clear();
    cp.push_back(static_cast<char>(c));
    const bool next_cont =
        i + 1 < text.size() && (static_cast<unsigned char>(text[i + 1]) & 0xC0) == 0x80;
    if (next_cont && cp.size() < 4) continue;
    const int32_t id = piece_id(cp);
    if (id >= 0) {
      push_id(id);
    } else {
      for (unsigned char b : cp) push_id(static_cast<int32_t>(b) + 3);
    }
    cp.clear();
  }
  std::vector<int32_t> toks;
  toks.reserve(syms.size() + 1);
  for (const ScoreBpe::Symbol& s : bpe_.merge(std::move(syms))) toks.push_back(s.id);
  if (add_eos) toks.push_back(2);
  return toks;
}

std::string Llama2cTokenizer::decode_piece(int32_t prev, int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw InputError("token id " + std::to_string(id) + " is out of range for tokenizer '" +
                     path_ + "' (vocab size " + std::to_string(vocab_size()) + ")");
  if (id <= 2) return "";
  const std::string& p = piece(id);
  const int b = byte_piece_value(p);
  if (b >= 0) return std::string(1, static_cast<char>(b));
  if (prev == 1 && !p.empty() && p[0] == ' ') return p.substr(1);
  return p;
}

std::string Llama2cTokenizer::decode(const std::vector<int32_t>& ids) const {
  // The sequence start behaves like BOS so the dummy-prefix space is dropped even without
  // an explicit BOS (SentencePiece decodes the same way).
  std::string out;
  int32_t prev = 1;
  for (int32_t id : ids) {
    out += decode_piece(prev, id);
    prev = id;
  }
  return out;
}

void write_hf_tokenizer_files(const Llama2cTokenizer& tok, const std::string& dir) {
  using ojson = nlohmann::ordered_json;
  namespace fs = std::filesystem;
  const std::string kMeta = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space
  auto to_hf = [&](const std::string& p) {
    std::string out;
    for (char c : p) {
      if (c == ' ') out += kMeta;
      else out.push_back(c);
    }
    return out;
  };
  const int32_t V = tok.vocab_size();
  std::vector<std::string> hf(static_cast<size_t>(V));
  hf[0] = "<unk>";
  hf[1] = "<s>";
  hf[2] = "</s>";
  for (int32_t i = 3; i < V; ++i) hf[static_cast<size_t>(i)] = to_hf(tok.piece(i));

  ojson vocab = ojson::object();
  std::unordered_map<std::string, int32_t> hf_index;
  for (int32_t i = 0; i < V; ++i) {
    if (!hf_index.emplace(hf[static_cast<size_t>(i)], i).second) {
      // A repeated piece cannot be a JSON key twice; llama2.c would use the first one anyway.
      continue;
    }
    vocab[hf[static_cast<size_t>(i)]] = i;
  }

  // Every split of a normal piece into two normal pieces is a merge; rank by the merged
  // piece's score (descending) so BPE rank order is llama2.c's merge priority.
  struct M {
    float score;
    int32_t id;
    size_t split;
  };
  std::vector<M> merges;
  auto is_normal = [&](int32_t id) {
    return id >= 3 && !(id <= 258 && byte_piece_value(tok.piece(id)) >= 0);
  };
  for (int32_t i = 3; i < V; ++i) {
    if (!is_normal(i)) continue;
    const std::string& p = tok.piece(i);
    if (utf8_char_count(p) < 2 || tok.piece_id(p) != i) continue;
    for (size_t k = 1; k < p.size(); ++k) {
      if ((static_cast<unsigned char>(p[k]) & 0xC0) == 0x80) continue;  // not a char boundary
      const int32_t a = tok.piece_id(p.substr(0, k)), b = tok.piece_id(p.substr(k));
      if (a >= 0 && b >= 0 && is_normal(a) && is_normal(b)) merges.push_back(M{tok.score(i), i, k});
    }
  }
  std::stable_sort(merges.begin(), merges.end(), [](const M& x, const M& y) {
    if (x.score != y.score) return x.score > y.score;
    if (x.id != y.id) return x.id < y.id;
    return x.split < y.split;
  });
  ojson merge_list = ojson::array();
  for (const M& m : merges) {
    const std::string& p = tok.piece(m.id);
    merge_list.push_back(to_hf(p.substr(0, m.split)) + " " + to_hf(p.substr(m.split)));
  }

  auto added = [](int id, const std::string& content) {
    return ojson{{"id", id},           {"content", content}, {"single_word", false},
                 {"lstrip", false},    {"rstrip", false},    {"normalized", false},
                 {"special", true}};
  };
  auto str_pattern = [](const std::string& s) { return ojson{{"String", s}}; };
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = ojson::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")});
  j["normalizer"] = ojson{
      {"type", "Sequence"},
      {"normalizers",
       ojson::array({ojson{{"type", "Prepend"}, {"prepend", kMeta}},
                     ojson{{"type", "Replace"}, {"pattern", str_pattern(" ")}, {"content", kMeta}}})}};
  j["pre_tokenizer"] = nullptr;
  auto special = [](const std::string& id, int type_id) {
    return ojson{{"SpecialToken", ojson{{"id", id}, {"type_id", type_id}}}};
  };
  auto seq = [](const std::string& id, int type_id) {
    return ojson{{"Sequence", ojson{{"id", id}, {"type_id", type_id}}}};
  };
  j["post_processor"] = ojson{
      {"type", "TemplateProcessing"},
      {"single", ojson::array({special("<s>", 0), seq("A", 0)})},
      {"pair", ojson::array({special("<s>", 0), seq("A", 0), special("<s>", 1), seq("B", 1)})},
      {"special_tokens",
       ojson{{"<s>", ojson{{"id", "<s>"}, {"ids", ojson::array({1})},
                           {"tokens", ojson::array({"<s>"})}}}}}};
  j["decoder"] = ojson{
      {"type", "Sequence"},
      {"decoders",
       ojson::array({ojson{{"type", "Replace"}, {"pattern", str_pattern(kMeta)}, {"content", " "}},
                     ojson{{"type", "ByteFallback"}}, ojson{{"type", "Fuse"}},
                     ojson{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}};
  j["model"] = ojson{{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", "<unk>"},
                     {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr},
                     {"fuse_unk", true},
                     {"byte_fallback", true},
                     {"vocab", vocab},
                     {"merges", merge_list}};

  auto added_token_obj = [](const std::string& content) {
    return ojson{{"__type", "AddedToken"}, {"content", content}, {"lstrip", false},
                 {"normalized", false},    {"rstrip", false},    {"single_word", false}};
  };
  ojson config{{"add_bos_token", true},
               {"add_eos_token", false},
               {"bos_token", added_token_obj("<s>")},
               {"clean_up_tokenization_spaces", false},
               {"eos_token", added_token_obj("</s>")},
               {"legacy", true},
               {"model_max_length", 1000000000000000000LL},
               {"pad_token", nullptr},
               {"padding_side", "right"},
               {"sp_model_kwargs", ojson::object()},
               {"tokenizer_class", "LlamaTokenizer"},
               {"unk_token", added_token_obj("<unk>")}};
  auto plain_token = [](const std::string& content) {
    return ojson{{"content", content}, {"lstrip", false}, {"normalized", false},
                 {"rstrip", false},    {"single_word", false}};
  };
  ojson special_map{{"bos_token", plain_token("<s>")},
                    {"eos_token", plain_token("</s>")},
                    {"unk_token", plain_token("<unk>")}};

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error("cannot create tokenizer folder '" + dir + "': " + ec.message());
  auto write = [&](const std::string& name, const ojson& doc) {
    const std::string p = (fs::path(dir) / name).string();
    std::ofstream out(p, std::ios::binary);
    if (!out) throw Error("cannot write '" + p + "'");
    std::string text;
    try {
      text = doc.dump(2, ' ', false);
    } catch (const nlohmann::json::exception& e) {
      throw Error("cannot write '" + p + "': a tokenizer piece is not valid UTF-8 (" + e.what() + ")");
    }
    out << text << "\n";
    if (!out) throw Error("failed writing '" + p + "'");
  };
  write("tokenizer.json", j);
  write("tokenizer_config.json", config);
  write("special_tokens_map.json", special_map);
}

}  // namespace mpqat::data
