#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <nlohmann/json.hpp>

#include "mpqat/data/hf_tokenizer.h"
#include "mpqat/data/llama2c_tokenizer.h"
#include "mpqat/data/sentencepiece_tokenizer.h"
#include "mpqat/data/tokenizer.h"
#include "mpqat/util/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using mpqat::InputError;
using mpqat::data::HfBpeTokenizer;
using mpqat::data::Llama2cTokenizer;
using mpqat::data::SentencePieceTokenizer;

namespace {

#define REQUIRE_SHARED(path_var, rel)                                                   \
  const std::string shared_root_ = mpqat::testing::shared_dir();                        \
  if (shared_root_.empty() || !fs::exists(shared_root_ + "/data/" rel))                 \
    GTEST_SKIP() << "shared data not found (set MPQAT_SHARED_DIR); need data/" rel;     \
  const std::string path_var = shared_root_ + "/data/" rel

std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() /
               ("mpqat_tok_" + name + "_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
                "_" + std::to_string(reinterpret_cast<uintptr_t>(&name) & 0xFFFFF));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
}

template <class F>
std::string input_error_message(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO EXCEPTION";
}

// llama2.c's merge rule restated as plainly as possible: every round scans all adjacent
// pairs, concatenates their pieces, and merges the best-scoring one (first on ties).
std::vector<int32_t> naive_llama2c_encode(const Llama2cTokenizer& t, const std::string& text) {
  auto find = [&](const std::string& s) {
    for (int32_t i = 0; i < t.vocab_size(); ++i)
      if (t.piece(i) == s) return i;
    return -1;
  };
  std::vector<int32_t> ids{1};
  if (!text.empty()) ids.push_back(find(" "));
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;  // test strings are valid UTF-8
    const std::string ch = text.substr(i, len);
    const int32_t id = find(ch);
    if (id >= 0) ids.push_back(id);
    else
      for (unsigned char b : ch) ids.push_back(b + 3);
    i += len;
  }
  while (true) {
    std::vector<std::pair<size_t, int32_t>> candidates;
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const int32_t id = find(t.piece(ids[i]) + t.piece(ids[i + 1]));
      if (id >= 0) candidates.emplace_back(i, id);
    }
    if (candidates.empty()) break;
    auto best = candidates.front();
    for (const auto& c : candidates)
      if (t.score(c.second) > t.score(best.second)) best = c;
    ids[best.first] = best.second;
    ids.erase(ids.begin() + static_cast<long>(best.first) + 1);
  }
  return ids;
}

const std::vector<std::string> kEdgeStrings = {
    "",  " ", "  ", "a", "Once upon a time", " leading space", "trailing space  ",
    "\n", "\n\nTwo newlines\n\n", "tab\there", "caf\xC3\xA9 na\xC3\xAF" "ve", "\xF0\x9F\x98\x80 emoji \xF0\x9F\x8E\x89!",
    "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E", "Lily's dog said: \"Hi!\" 123 4567.", "x\xE2\x84\xA2y",
    "ALL CAPS and MiXeD", "xooo ulll ppp", "...,,,;;;??" "?!!!", "a  b   c    d"};

}  // namespace

// ---------------------------------------------------------------- llama2.c tokenizer.bin

TEST(Llama2cTokenizer, RoundTripAndSpecials) {
  REQUIRE_SHARED(path, "models/stories260K/tok512.bin");
  Llama2cTokenizer t(path);
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.kind(), "llama2c");
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.piece(3 + 0x41), "<0x41>");
  for (const std::string& s : kEdgeStrings) {
    const auto ids = t.encode(s, true, true);
    ASSERT_GE(ids.size(), 2u);
    EXPECT_EQ(ids.front(), 1);
    EXPECT_EQ(ids.back(), 2);
    EXPECT_EQ(t.decode(ids), s) << "text: " << s;
    EXPECT_EQ(t.decode(t.encode(s, false)), s) << "text: " << s;
  }
  EXPECT_EQ(t.encode("", true), std::vector<int32_t>{1});
  EXPECT_TRUE(t.encode("", false).empty());
  // Cyrillic Zhe (D0 96) is not a piece of this 512-token vocab: two byte-fallback ids.
  ASSERT_EQ(t.piece_id("\xD0\x96"), -1);
  EXPECT_EQ(t.encode("\xD0\x96", false), (std::vector<int32_t>{t.piece_id(" "), 0xD0 + 3, 0x96 + 3}));
  EXPECT_EQ(t.decode(t.encode("\xD0\x96\xF0\x9F\x98\x80", true)), "\xD0\x96\xF0\x9F\x98\x80");
  EXPECT_EQ(t.decode_piece(5, 0xD0 + 3), "\xD0");
}

TEST(Llama2cTokenizer, DummyPrefixAfterBos) {
  REQUIRE_SHARED(path, "models/stories260K/tok512.bin");
  Llama2cTokenizer t(path);
  const auto ids = t.encode("Once upon a time", true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(t.piece(ids[1])[0], ' ') << "first piece after BOS: '" << t.piece(ids[1]) << "'";
  // decode_piece drops that space after BOS, keeps it elsewhere.
  EXPECT_EQ(t.decode_piece(1, ids[1]), t.piece(ids[1]).substr(1));
  EXPECT_EQ(t.decode_piece(ids[1], ids[1]), t.piece(ids[1]));
  EXPECT_EQ(t.decode_piece(7, 1), "");
}

TEST(Llama2cTokenizer, MergeLoopMatchesNaiveReimplementation) {
  REQUIRE_SHARED(path, "models/stories260K/tok512.bin");
  Llama2cTokenizer t(path);
  const std::vector<std::string> alphabet = {"a", "b", "e", "h", "t", "n", "d", "o", " ", " ",
                                             "s", "l", ".", "\n", "\xC3\xA9", "\xF0\x9F\x98\x80",
                                             "\xE2\x84\xA2", "T", "y", "r", "i", "w"};
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const int len = static_cast<int>(rng() % 24);
    for (int k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
    EXPECT_EQ(t.encode(s, true), naive_llama2c_encode(t, s)) << "text: '" << s << "'";
  }
  // Runs of a doubled piece ("ll", "oo", "pp") make equal-score pairs: the leftmost must win.
  const std::vector<std::string> small = {"o", "l", "p", " ", "a"};
  for (int trial = 0; trial < 300; ++trial) {
    std::string s;
    const int len = static_cast<int>(rng() % 12);
    for (int k = 0; k < len; ++k) s += small[rng() % small.size()];
    EXPECT_EQ(t.encode(s, true), naive_llama2c_encode(t, s)) << "text: '" << s << "'";
  }
  // Words from real text exercise long merge chains.
  for (const std::string s : {"Once upon a time, there was a little girl named Lily.", "xooo ulll",
                              "She liked to play with her toys in the park every day."})
    EXPECT_EQ(t.encode(s, true), naive_llama2c_encode(t, s));
}

// SOURCES.md: the whole TinyStories file as one document (BOS + dummy prefix) has 269,816
// tokens, cut into 526 windows of 512 (526*512 = 269,312 <= 269,816 < 527*512).
TEST(Llama2cTokenizer, TinyStoriesTokenCountMatchesReference) {
  REQUIRE_SHARED(tok, "models/stories260K/tok512.bin");
  const std::string text_path = shared_root_ + "/data/text/tinystories/validation_part1.txt";
  if (!fs::exists(text_path)) GTEST_SKIP() << "missing " << text_path;
  Llama2cTokenizer t(tok);
  const std::string text = read_file(text_path);
  const auto ids = t.encode(text, true);
  EXPECT_EQ(ids.size(), 269816u);
  EXPECT_EQ(ids.size() / 512, 526u);
  EXPECT_EQ(t.decode(ids), text);
}

TEST(Llama2cTokenizer, CorruptFilesNameTheFileAndToken) {
  REQUIRE_SHARED(path, "models/stories260K/tok512.bin");
  const std::string bytes = read_file(path);
  const fs::path dir = temp_dir("corrupt_bin");
  const std::string trunc = (dir / "trunc.bin").string();
  write_text(trunc, bytes.substr(0, bytes.size() - 3));  // cuts the last piece
  std::string msg = input_error_message([&] { Llama2cTokenizer t(trunc); });
  EXPECT_NE(msg.find(trunc), std::string::npos) << msg;
  EXPECT_NE(msg.find("token 511"), std::string::npos) << msg;

  // Token 0's length field set to -5.
  std::string neg = bytes;
  const int32_t bad = -5;
  std::memcpy(&neg[8], &bad, 4);
  const std::string negp = (dir / "neg.bin").string();
  write_text(negp, neg);
  msg = input_error_message([&] { Llama2cTokenizer t(negp); });
  EXPECT_NE(msg.find(negp), std::string::npos) << msg;
  EXPECT_NE(msg.find("token 0"), std::string::npos) << msg;

  const std::string tiny = (dir / "tiny.bin").string();
  write_text(tiny, "ab");
  msg = input_error_message([&] { Llama2cTokenizer t(tiny); });
  EXPECT_NE(msg.find(tiny), std::string::npos) << msg;
  msg = input_error_message([&] { Llama2cTokenizer t((dir / "absent.bin").string()); });
  EXPECT_NE(msg.find("absent.bin"), std::string::npos) << msg;
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- exporter + SP-style BPE

TEST(HfExport, ExportedTokenizerJsonEncodesLikeLlama2c) {
  REQUIRE_SHARED(path, "models/stories260K/tok512.bin");
  Llama2cTokenizer t(path);
  const fs::path dir = temp_dir("export");
  mpqat::data::write_hf_tokenizer_files(t, dir.string());
  ASSERT_TRUE(fs::exists(dir / "tokenizer_config.json"));
  ASSERT_TRUE(fs::exists(dir / "special_tokens_map.json"));

  // Layout of Hugging Face's Llama-2 fast tokenizer.
  const auto j = nlohmann::json::parse(read_file((dir / "tokenizer.json").string()));
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["byte_fallback"], true);
  EXPECT_EQ(j["model"]["fuse_unk"], true);
  EXPECT_EQ(j["model"]["unk_token"], "<unk>");
  EXPECT_TRUE(j["pre_tokenizer"].is_null());
  EXPECT_EQ(j["normalizer"]["normalizers"][0]["type"], "Prepend");
  EXPECT_EQ(j["normalizer"]["normalizers"][1]["pattern"]["String"], " ");
  EXPECT_EQ(j["decoder"]["decoders"][3]["type"], "Strip");
  EXPECT_EQ(j["model"]["vocab"]["<s>"], 1);
  EXPECT_EQ(j["model"]["vocab"]["<0x0A>"], 3 + 10);
  EXPECT_EQ(j["model"]["vocab"].size(), 512u);
  EXPECT_EQ(j["model"]["merges"][0], "\xE2\x96\x81 t");  // " t" is the best-scored piece
  // Merge ranks follow llama2.c scores (non-increasing score of the merged piece).
  float prev = 1e30f;
  for (const auto& m : j["model"]["merges"]) {
    std::string s = m.get<std::string>();
    s.erase(s.find(' '), 1);
    std::string p;
    for (size_t i = 0; i < s.size();) {
      if (s.compare(i, 3, "\xE2\x96\x81") == 0) { p += ' '; i += 3; } else { p += s[i++]; }
    }
    const int32_t id = t.piece_id(p);
    ASSERT_GE(id, 0) << s;
    EXPECT_LE(t.score(id), prev);
    prev = t.score(id);
  }

  auto loaded = mpqat::data::load_tokenizer(dir.string());  // folder: tokenizer.json wins
  ASSERT_EQ(loaded->kind(), "hf-bpe");
  EXPECT_EQ(loaded->bos_id(), 1);
  EXPECT_EQ(loaded->eos_id(), 2);
  EXPECT_EQ(loaded->vocab_size(), 512);
  for (const std::string& s : kEdgeStrings) {
    EXPECT_EQ(loaded->encode(s, true, true), t.encode(s, true, true)) << "text: '" << s << "'";
    EXPECT_EQ(loaded->decode(loaded->encode(s, true)), s);
  }
  const std::string text_path = shared_root_ + "/data/text/tinystories/validation_part1.txt";
  if (fs::exists(text_path)) {
    const std::string text = read_file(text_path).substr(0, 20000);
    const auto a = t.encode(text, true), b = loaded->encode(text, true);
    EXPECT_EQ(a, b);
    EXPECT_EQ(loaded->decode(b), text);
    for (size_t i = 1; i < 50 && i < b.size(); ++i)
      EXPECT_EQ(loaded->decode_piece(b[i - 1], b[i]), t.decode_piece(a[i - 1], a[i]));
  }

  // The newer Llama layout (Metaspace pre-tokenizer and decoder instead of the normalizer)
  // must tokenize the same, except that Metaspace prepends no "▁" when the text already
  // starts with a space (so " x" encodes like llama2.c's "x").
  auto meta = j;
  meta["normalizer"] = nullptr;
  meta["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"},
                           {"prepend_scheme", "first"}, {"split", false}};
  meta["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"},
                     {"prepend_scheme", "first"}, {"split", false}};
  write_text(dir / "meta.json", meta.dump());
  HfBpeTokenizer m((dir / "meta.json").string());
  for (const std::string& s : kEdgeStrings) {
    if (s == " ") continue;  // "▁" alone; llama2.c has no equivalent input
    const std::string base = !s.empty() && s[0] == ' ' ? s.substr(1) : s;
    EXPECT_EQ(m.encode(s, true), t.encode(base, true)) << "text: '" << s << "'";
    EXPECT_EQ(m.decode(m.encode(s, true)), base);
  }
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- SentencePiece

TEST(SentencePieceTokenizer, MatchesSpmEncodeCli) {
  REQUIRE_SHARED(model, "tokenizers/llama2/tokenizer.model");
  if (std::system("command -v spm_encode > /dev/null 2>&1") != 0)
    GTEST_SKIP() << "spm_encode is not on PATH; cannot compare against the reference CLI";
  const std::string text =
      "Once upon a time, there was a little robot.\n"
      "Caf\xC3\xA9 cr\xC3\xA8" "me br\xC3\xBB" "l\xC3\xA9" "e \xE2\x80\x94 na\xC3\xAF" "ve fa\xC3\xA7" "ade\n"
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88 and emoji \xF0\x9F\xA6\x99\xF0\x9F\x9A\x80\n"
      "  two leading spaces, numbers 3.14159 and 1,000,000\n"
      "def f(x):\treturn x**2  # code\n";
  const fs::path dir = temp_dir("spm");
  write_text(dir / "in.txt", text);
  const std::string cmd = "spm_encode --model='" + model + "' --output_format=id < '" +
                          (dir / "in.txt").string() + "'";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) out.append(buf, n);
  ASSERT_EQ(pclose(pipe), 0) << cmd;

  auto tok = mpqat::data::load_tokenizer(model);
  ASSERT_EQ(tok->kind(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  std::istringstream text_lines(text), ref_lines(out);
  std::string line, ref;
  int n = 0;
  while (std::getline(text_lines, line)) {  // spm_encode encodes each line on its own
    ASSERT_TRUE(std::getline(ref_lines, ref));
    std::vector<int32_t> expect;
    std::istringstream r(ref);
    for (int32_t id; r >> id;) expect.push_back(id);
    EXPECT_EQ(tok->encode(line, false), expect) << "line: " << line;
    auto with_bos = tok->encode(line, true, true);
    EXPECT_EQ(with_bos.front(), 1);
    EXPECT_EQ(with_bos.back(), 2);
    EXPECT_EQ(tok->decode(with_bos), line);
    std::string streamed;
    for (size_t i = 1; i < with_bos.size(); ++i) streamed += tok->decode_piece(with_bos[i - 1], with_bos[i]);
    EXPECT_EQ(streamed, line);
    ++n;
  }
  EXPECT_EQ(n, 5);
  fs::remove_all(dir);
}

namespace {

// Runs a command and returns its stdout; "" plus ok=false when it fails.
std::string run_capture(const std::string& cmd, bool& ok) {
  std::string out;
  FILE* pipe = popen(cmd.c_str(), "r");
  ok = pipe != nullptr;
  if (!pipe) return out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), pipe)) out.append(buf, n);
  ok = pclose(pipe) == 0;
  return out;
}

bool have_tool(const char* name) {
  return std::system((std::string("command -v ") + name + " > /dev/null 2>&1").c_str()) == 0;
}

// Encodes each line (no '\n' inside) with the reference `spm_encode` CLI.
std::vector<std::vector<int32_t>> spm_encode_lines(const std::string& model,
                                                   const std::vector<std::string>& lines,
                                                   const fs::path& dir) {
  std::string in;
  for (const std::string& l : lines) in += l + "\n";
  write_text(dir / "spm_in.txt", in);
  bool ok = false;
  const std::string out = run_capture("spm_encode --model='" + model + "' --output_format=id < '" +
                                          (dir / "spm_in.txt").string() + "'",
                                      ok);
  EXPECT_TRUE(ok) << "spm_encode failed on " << model;
  std::vector<std::vector<int32_t>> ids;
  std::istringstream ref(out);
  for (std::string line; std::getline(ref, line);) {
    std::vector<int32_t> v;
    std::istringstream r(line);
    for (int32_t id; r >> id;) v.push_back(id);
    ids.push_back(v);
  }
  EXPECT_EQ(ids.size(), lines.size()) << out;
  ids.resize(lines.size());
  return ids;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == '\n') {
      out.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(c);
    }
  }
  out.push_back(cur);
  return out;
}

// A minimal protobuf writer for hand-made tokenizer.model files.
struct Pb {
  std::string b;
  Pb& varint(uint64_t v) {
    while (v >= 0x80) {
      b.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    b.push_back(static_cast<char>(v));
    return *this;
  }
  Pb& tag(uint32_t field, uint32_t wire) { return varint((static_cast<uint64_t>(field) << 3) | wire); }
  Pb& u(uint32_t field, uint64_t v) { return tag(field, 0).varint(v); }
  Pb& i32(uint32_t field, int32_t v) { return u(field, static_cast<uint64_t>(static_cast<int64_t>(v))); }
  Pb& str(uint32_t field, const std::string& s) {
    tag(field, 2).varint(s.size());
    b += s;
    return *this;
  }
  Pb& f32(uint32_t field, float f) {
    tag(field, 5);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
    return *this;
  }
};

std::string sp_piece(const std::string& piece, float score, int type) {
  Pb p;
  p.str(1, piece).f32(2, score);
  if (type != 1) p.u(3, static_cast<uint64_t>(type));
  return p.b;
}

}  // namespace

// The Llama-2 SentencePiece model rewritten as a llama2.c tokenizer.bin (as llama2.c's
// tokenizer.py exports it) must encode like SentencePiece itself (the spm_encode CLI), and
// so must its Hugging Face export: checks the merge rule and the exporter on a real
// 32000-piece vocabulary.
TEST(SentencePieceTokenizer, Llama2cAndHfExportOfLlama2MatchSentencePiece) {
  REQUIRE_SHARED(model, "tokenizers/llama2/tokenizer.model");
  if (!have_tool("spm_encode"))
    GTEST_SKIP() << "spm_encode is not on PATH; cannot compare against the reference CLI";
  SentencePieceTokenizer sp(model);
  const fs::path dir = temp_dir("l2export");
  {
    std::ofstream out(dir / "tokenizer.bin", std::ios::binary);
    std::vector<std::string> pieces;
    int32_t max_len = 0;
    for (int i = 0; i < sp.vocab_size(); ++i) {
      std::string p = sp.piece(i);
      if (i == sp.bos_id()) p = "\n<s>\n";
      else if (i == sp.eos_id()) p = "\n</s>\n";
      for (size_t k; (k = p.find("\xE2\x96\x81")) != std::string::npos;) p.replace(k, 3, " ");
      pieces.push_back(p);
      max_len = std::max<int32_t>(max_len, static_cast<int32_t>(p.size()));
    }
    out.write(reinterpret_cast<const char*>(&max_len), 4);
    for (int i = 0; i < sp.vocab_size(); ++i) {
      const float score = sp.score(i);
      const auto len = static_cast<int32_t>(pieces[static_cast<size_t>(i)].size());
      out.write(reinterpret_cast<const char*>(&score), 4);
      out.write(reinterpret_cast<const char*>(&len), 4);
      out.write(pieces[static_cast<size_t>(i)].data(), len);
    }
  }
  Llama2cTokenizer l2c((dir / "tokenizer.bin").string());
  ASSERT_EQ(l2c.vocab_size(), 32000);
  mpqat::data::write_hf_tokenizer_files(l2c, (dir / "hf").string());
  HfBpeTokenizer hf((dir / "hf" / "tokenizer.json").string());
  std::vector<std::string> texts = kEdgeStrings;
  texts.push_back("The quick brown fox jumps over the lazy dog. Photosynthesis; antidisestablishmentarianism!");
  texts.push_back("\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\xA6\x99 x\xC2\xB2");
  const std::string text_path = shared_root_ + "/data/text/tinyshakespeare/input.txt";
  if (fs::exists(text_path)) texts.push_back(read_file(text_path).substr(0, 5000));
  // spm_encode reads one line at a time, so the reference is per line.
  std::vector<std::string> lines;
  for (const std::string& s : texts)
    for (const std::string& l : split_lines(s)) lines.push_back(l);
  const auto ref = spm_encode_lines(model, lines, dir);
  for (size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(sp.encode(lines[i], false), ref[i]) << "line: '" << lines[i] << "'";
    EXPECT_EQ(l2c.encode(lines[i], false), ref[i]) << "line: '" << lines[i] << "'";
    EXPECT_EQ(hf.encode(lines[i], false), ref[i]) << "line: '" << lines[i] << "'";
  }
  // Whole multi-line texts: the three implementations agree with each other.
  for (const std::string& s : texts) {
    const auto expect = sp.encode(s, true);
    EXPECT_EQ(l2c.encode(s, true), expect) << "text: '" << s << "'";
    EXPECT_EQ(hf.encode(s, true), expect) << "text: '" << s << "'";
    EXPECT_EQ(sp.decode(expect), s);
  }
  fs::remove_all(dir);
}

TEST(SentencePieceTokenizer, PieceTableMatchesSpmExportVocab) {
  REQUIRE_SHARED(model, "tokenizers/llama2/tokenizer.model");
  if (!have_tool("spm_export_vocab"))
    GTEST_SKIP() << "spm_export_vocab is not on PATH; cannot compare the piece table";
  bool ok = false;
  const std::string out = run_capture("spm_export_vocab --model='" + model + "'", ok);
  ASSERT_TRUE(ok);
  SentencePieceTokenizer sp(model);
  std::istringstream in(out);
  int32_t id = 0, the_id = -1;
  for (std::string line; std::getline(in, line); ++id) {
    const size_t tab = line.find('\t');
    ASSERT_NE(tab, std::string::npos) << line;
    ASSERT_LT(id, sp.vocab_size());
    const std::string piece = line.substr(0, tab);
    EXPECT_EQ(sp.piece(id), piece) << "id " << id;
    EXPECT_FLOAT_EQ(sp.score(id), std::stof(line.substr(tab + 1))) << "id " << id;
    if (piece == "\xE2\x96\x81the") the_id = id;
  }
  EXPECT_EQ(id, 32000);
  EXPECT_EQ(sp.vocab_size(), 32000);
  ASSERT_GE(the_id, 0);
  EXPECT_EQ(sp.piece_id("\xE2\x96\x81the"), the_id);
  EXPECT_EQ(sp.encode("the", false), std::vector<int32_t>{the_id});
  EXPECT_EQ(sp.piece_id("<0x0A>"), 13);
  EXPECT_EQ(sp.type(13), SentencePieceTokenizer::kByte);
  EXPECT_EQ(sp.encode("\n", false), (std::vector<int32_t>{sp.piece_id("\xE2\x96\x81"), 13}));
  EXPECT_EQ(sp.unk_id(), 0);
  EXPECT_EQ(sp.type(0), SentencePieceTokenizer::kUnknown);
  EXPECT_EQ(sp.bos_id(), 1);
  EXPECT_EQ(sp.eos_id(), 2);
  EXPECT_EQ(sp.type(1), SentencePieceTokenizer::kControl);
  EXPECT_EQ(sp.pad_id(), -1);
  EXPECT_TRUE(sp.byte_fallback());
}

// A hand-made BPE model exercising what Llama-2's does not: user-defined pieces (matched whole,
// never merged), UNUSED pieces (split back), no byte fallback (a run of unknown characters is
// one <unk>), and remove_extra_whitespaces. spm_encode is the reference.
TEST(SentencePieceTokenizer, HandMadeModelMatchesSpmEncode) {
  if (!have_tool("spm_encode"))
    GTEST_SKIP() << "spm_encode is not on PATH; cannot compare against the reference CLI";
  const std::string M = "\xE2\x96\x81";
  struct P { std::string piece; float score; int type; };
  const std::vector<P> table = {
      {"<unk>", 0, 2}, {"<s>", 0, 3}, {"</s>", 0, 3}, {"<sep>", 0, 4}, {M + "ab", -1, 1},
      {"ab", -2, 1}, {"bc", -2, 1}, {"ca", -3, 5}, {"cab", -4, 1}, {M + "a", -5, 1},
      {"aa", -6, 1}, {M, -7, 1}, {"a", -8, 1}, {"b", -9, 1}, {"c", -10, 1}, {"<", -11, 1},
      {"s", -12, 1}, {"e", -13, 1}, {"\xC3\xA9", -14, 1}};
  for (bool squeeze : {false, true}) {
    Pb m;
    for (const P& p : table) m.str(1, sp_piece(p.piece, p.score, p.type));
    m.str(2, Pb().u(3, 2).str(46, "<s>").b);  // trainer_spec: BPE
    m.str(3, Pb().str(1, "identity").u(3, 1).u(4, squeeze ? 1 : 0).u(5, 1).b);
    const fs::path dir = temp_dir(squeeze ? "handsq" : "hand");
    const std::string path = (dir / "tokenizer.model").string();
    write_text(path, m.b);
    SentencePieceTokenizer sp(path);
    EXPECT_EQ(sp.vocab_size(), static_cast<int32_t>(table.size()));
    EXPECT_EQ(sp.bos_id(), 1);
    EXPECT_FALSE(sp.byte_fallback());
    const std::vector<std::string> lines = {
        "ab", "abc", "cab", "aaa", "aaaa", "ab<sep>ab", "<sep>", "a<sep>", "xyz ab", "ab zz zz",
        "  ab   abc  ", " ", "", "caab", "bcab", "\xC3\xA9" "a\xE2\x80\x94" "b", "a\x80" "b", "<s>ab",
        "cabcab ccab bca", "c a b", "ab  \t ab"};
    const auto ref = spm_encode_lines(path, lines, dir);
    for (size_t i = 0; i < lines.size(); ++i)
      EXPECT_EQ(sp.encode(lines[i], false), ref[i]) << "line: '" << lines[i] << "' squeeze " << squeeze;
    fs::remove_all(dir);
  }
}

TEST(SentencePieceTokenizer, CorruptModelsAreInputErrorsNamingTheFile) {
  const fs::path dir = temp_dir("spcorrupt");
  auto check = [&](const std::string& name, const std::string& bytes,
                   std::vector<std::string> must_contain) {
    const std::string p = (dir / name).string();
    write_text(p, bytes);
    const std::string msg = input_error_message([&] { SentencePieceTokenizer t(p); });
    EXPECT_NE(msg.find(p), std::string::npos) << name << ": " << msg;
    for (const std::string& s : must_contain)
      EXPECT_NE(msg.find(s), std::string::npos) << name << " lacks '" << s << "': " << msg;
    // load_tokenizer also reports it as InputError (the .model extension picks SentencePiece).
    const std::string msg2 = input_error_message([&] { mpqat::data::load_tokenizer(p); });
    EXPECT_NE(msg2.find(p), std::string::npos) << name << ": " << msg2;
  };
  // A valid little BPE model to damage.
  Pb good;
  good.str(1, sp_piece("<unk>", 0, 2)).str(1, sp_piece("<s>", 0, 3)).str(1, sp_piece("a", -1, 1));
  good.str(2, Pb().u(3, 2).b);
  good.str(3, Pb().str(1, "identity").b);
  {
    const std::string p = (dir / "good.model").string();
    write_text(p, good.b);
    SentencePieceTokenizer t(p);
    EXPECT_EQ(t.vocab_size(), 3);
    EXPECT_EQ(t.encode("a", false), (std::vector<int32_t>{0, 2}));  // "▁" unknown, then "a"
  }
  check("truncated.model", good.b.substr(0, good.b.size() - 3), {"byte", "runs past the end"});
  check("badvarint.model", std::string(11, '\xFF'), {"byte 0", "varint"});
  // Field 15 (unknown, varint) whose value is cut short.
  check("badvarint2.model", good.b + "\x78\x80", {"byte " + std::to_string(good.b.size() + 1), "varint"});
  check("wirepieces.model", std::string("\x0D\x00\x00\x00\x00", 5) + good.b, {"byte 0", "pieces", "wire type"});
  check("wirescore.model", Pb().str(1, Pb().str(1, "a").u(2, 5).b).b, {"byte 5", "score"});
  check("group.model", std::string("\x0B", 1), {"byte 0", "wire type"});
  check("text.model", "this is not a protobuf", {"corrupt"});
  check("empty.model", "", {"no pieces"});
  if (const std::string root = mpqat::testing::shared_dir();
      !root.empty() && fs::exists(root + "/data/tokenizers/llama2/tokenizer.model")) {
    const std::string bytes = read_file(root + "/data/tokenizers/llama2/tokenizer.model");
    check("half.model", bytes.substr(0, bytes.size() / 2), {"byte"});
  }

  Pb unigram;
  unigram.str(1, sp_piece("<unk>", 0, 2)).str(1, sp_piece("a", -1, 1));
  check("unigram.model", unigram.b, {"UNIGRAM", "only BPE"});  // model_type defaults to UNIGRAM
  Pb word = unigram;
  word.str(2, Pb().u(3, 3).b);
  check("word.model", word.b, {"WORD", "only BPE"});
  Pb nfkc;
  nfkc.str(1, sp_piece("<unk>", 0, 2)).str(1, sp_piece("a", -1, 1)).str(2, Pb().u(3, 2).b);
  nfkc.str(3, Pb().str(1, "nmt_nfkc").str(2, std::string("\x01\x02\x03\x04", 4)).b);
  check("nfkc.model", nfkc.b, {"nmt_nfkc", "identity"});
  Pb nounk;
  nounk.str(1, sp_piece("a", -1, 1)).str(2, Pb().u(3, 2).b);
  check("nounk.model", nounk.b, {"UNKNOWN"});
  Pb dup = good;
  dup.str(1, sp_piece("a", -2, 1));
  check("dup.model", dup.b, {"piece 3", "twice"});
  Pb nobytes = good;
  nobytes.str(2, Pb().u(35, 1).b);
  check("nobytes.model", nobytes.b, {"byte_fallback", "0x00"});
  fs::remove_all(dir);
}

// ---------------------------------------------------------------- byte-level BPE

namespace {

// A GPT-2-style tokenizer.json built by hand. "Ġ" (U+0120) is the byte-level image of ' '.
std::string tiny_byte_level_json(bool array_merges) {
  using nlohmann::json;
  json vocab = json::object();
  const std::vector<std::string> toks = {
      "h", "e", "l", "o", "w", "r", "d", "!", "\xC4\xA0" /*Ġ*/, "\xC3\x83" /*Ã = byte 0xC3*/,
      "\xC2\xA9" /*© = byte 0xA9*/, "1", "2", "3", "'", "s", "he", "ll", "hell", "hello",
      "\xC4\xA0w", "or", "\xC4\xA0wor", "ld", "\xC4\xA0world", "el", "\xC3\x83\xC2\xA9", "\xC4\xA0\xC4\xA0", "\xC4\x8A" /*\n*/};
  for (size_t i = 0; i < toks.size(); ++i) vocab[toks[i]] = static_cast<int>(i);
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"\xC4\xA0", "w"}, {"o", "r"},
      {"\xC4\xA0w", "or"}, {"l", "d"}, {"\xC4\xA0wor", "ld"}, {"e", "l"},
      {"\xC3\x83", "\xC2\xA9"}, {"\xC4\xA0", "\xC4\xA0"}};
  json m = json::array();
  for (const auto& [a, b] : merges) {
    if (array_merges) m.push_back(json::array({a, b}));
    else m.push_back(a + " " + b);
  }
  json j;
  j["version"] = "1.0";
  j["added_tokens"] = json::array({json{{"id", 100}, {"content", "<|endoftext|>"}, {"special", true}}});
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  j["post_processor"] = json{{"type", "ByteLevel"}};
  j["decoder"] = json{{"type", "ByteLevel"}};
  j["model"] = json{{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", m}};
  return j.dump();
}

}  // namespace

TEST(HfByteLevelBpe, HandMadeVocabulary) {
  for (bool arrays : {false, true}) {
    const fs::path dir = temp_dir(arrays ? "bl_arr" : "bl_str");
    write_text(dir / "tokenizer.json", tiny_byte_level_json(arrays));
    HfBpeTokenizer t((dir / "tokenizer.json").string());
    EXPECT_TRUE(t.byte_level());
    EXPECT_EQ(t.bos_id(), 100);  // <|endoftext|> is GPT-2's BOS and EOS
    EXPECT_EQ(t.eos_id(), 100);
    EXPECT_FALSE(t.default_add_bos());
    // "hello world!" -> "hello" | " world" | "!" -> ids 19, 24, 7 (by hand from the table).
    EXPECT_EQ(t.encode("hello world!", false), (std::vector<int32_t>{19, 24, 7}));
    // "hell" merges h+e (rank 0) and l+l (rank 1) before e+l (rank 9) could apply.
    EXPECT_EQ(t.encode("hell", false), (std::vector<int32_t>{18}));
    // "ell": only e+l (rank 9) and l+l (rank 1) compete; l+l wins -> e, ll.
    EXPECT_EQ(t.encode("ell", false), (std::vector<int32_t>{1, 17}));
    // é is bytes C3 A9 -> "Ã©" merged to id 26.
    EXPECT_EQ(t.encode("\xC3\xA9", false), (std::vector<int32_t>{26}));
    // Special token cut out of the text; "  w" -> "Ġ" | "Ġw" (the last space joins the word).
    EXPECT_EQ(t.encode("hello<|endoftext|>  w", true, true),
              (std::vector<int32_t>{100, 19, 100, 8, 20, 100}));
    EXPECT_EQ(t.encode("he's 12", false), (std::vector<int32_t>{16, 14, 15, 8, 11, 12}));
    for (const std::string s : {"hello world!", "\xC3\xA9", "he's 12", "  w", "hello\nworld"})
      EXPECT_EQ(t.decode(t.encode(s, false)), s);
    EXPECT_EQ(t.decode({100, 19, 100}), "hello");
    EXPECT_EQ(t.decode_piece(19, 24), " world");
    fs::remove_all(dir);
  }
}

TEST(HfByteLevelBpe, RegexSplitsByHand) {
  using V = std::vector<std::string>;
  EXPECT_EQ(mpqat::data::regex_split_gpt2("Hello world's  test 123!!\n\n x"),
            (V{"Hello", " world", "'s", " ", " test", " 123", "!!", "\n\n", " x"}));
  EXPECT_EQ(mpqat::data::regex_split_gpt2("caf\xC3\xA9 \xF0\x9F\x98\x80!  "),
            (V{"caf\xC3\xA9", " \xF0\x9F\x98\x80!", "  "}));
  EXPECT_EQ(mpqat::data::regex_split_llama3("Hello world'S  test 12345!!\n\n x"),
            (V{"Hello", " world", "'S", " ", " test", " ", "123", "45", "!!\n\n", " x"}));
  EXPECT_EQ(mpqat::data::regex_split_llama3("a\n\n  b(c)"), (V{"a", "\n\n", " ", " b", "(c", ")"}));
}

// ---------------------------------------------------------------- loader errors

TEST(LoadTokenizer, BadInputsNameTheFile) {
  const fs::path dir = temp_dir("bad");
  const std::string notjson = (dir / "tokenizer.json").string();
  write_text(notjson, "{ this is not json");
  std::string msg = input_error_message([&] { mpqat::data::load_tokenizer(notjson); });
  EXPECT_NE(msg.find(notjson), std::string::npos) << msg;
  EXPECT_NE(msg.find("JSON"), std::string::npos) << msg;

  // WordPiece files go to the WordPiece reader (tests/test_wordpiece.cpp); other model types
  // are refused naming the accepted ones.
  const std::string wp = (dir / "wp.json").string();
  write_text(wp, R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}}})");
  EXPECT_EQ(mpqat::data::load_tokenizer(wp)->kind(), "wordpiece");
  const std::string uni = (dir / "uni.json").string();
  write_text(uni, R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})");
  msg = input_error_message([&] { mpqat::data::load_tokenizer(uni); });
  EXPECT_NE(msg.find(uni), std::string::npos) << msg;
  EXPECT_NE(msg.find("WordPiece"), std::string::npos) << msg;
  EXPECT_NE(msg.find("BPE"), std::string::npos) << msg;

  const std::string nfkc = (dir / "nfkc.json").string();
  write_text(nfkc, R"({"normalizer": {"type": "NFKC"}, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  msg = input_error_message([&] { mpqat::data::load_tokenizer(nfkc); });
  EXPECT_NE(msg.find("NFKC"), std::string::npos) << msg;

  const fs::path empty = dir / "empty_model";
  fs::create_directories(empty);
  msg = input_error_message([&] { mpqat::data::load_tokenizer(empty.string()); });
  EXPECT_NE(msg.find(empty.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
  msg = input_error_message([&] { mpqat::data::load_tokenizer((dir / "nope.bin").string()); });
  EXPECT_NE(msg.find("nope.bin"), std::string::npos) << msg;
  fs::remove_all(dir);
}
