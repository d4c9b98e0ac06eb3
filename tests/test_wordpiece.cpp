// BERT WordPiece tokenizer. Expected words / pieces are the ones of Google BERT's own
// tokenization tests (the "unwanted running" vocabulary, the "HeLLo!how" normalizer strings,
// Chinese characters split one per word) and hand counts on a small vocabulary.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mpqat/data/tokenizer.h"
#include "mpqat/data/wordpiece_tokenizer.h"
#include "mpqat/util/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using mpqat::InputError;
using mpqat::data::WordPieceOptions;
using mpqat::data::WordPieceTokenizer;

namespace {

using Ids = std::vector<int32_t>;
using Words = std::vector<std::string>;

// ids: [UNK]=0 [CLS]=1 [SEP]=2 want=3 ##want=4 ##ed=5 wa=6 un=7 runn=8 ##ing=9 ,=10
const std::vector<std::string> kGoogleVocab = {"[UNK]", "[CLS]", "[SEP]", "want", "##want", "##ed",
                                               "wa",    "un",    "runn",  "##ing", ","};

std::vector<std::string> small_vocab() {
  return {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",         // 0..4
          "the",   "cafe",  "is",    "open",  ".",              // 5..9
          "!",     "?",     "'",     "s",     "john",           // 10..14
          "johan", "##son", "house", "博",    "推",             // 15..19
          "ah",    "zz",    "naive", "cliche", "resume",        // 20..24
          "lodz",  "##e",   "$",     "5",     "##0"};           // 25..29
}

fs::path temp_dir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("test_wp", tag); }

template <typename F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}

}  // namespace

TEST(WordPiece, GoogleBertGreedyLongestMatch) {
  WordPieceTokenizer tok(kGoogleVocab, WordPieceOptions{});
  EXPECT_EQ(tok.encode("", false), Ids{});
  EXPECT_EQ(tok.encode("unwanted running", false), (Ids{7, 4, 5, 8, 9}));
  // One unmatched suffix makes the whole word [UNK]; the other words are unaffected.
  EXPECT_EQ(tok.encode("unwantedX running", false), (Ids{0, 8, 9}));
  // Lowercasing happens before matching; punctuation is its own word.
  EXPECT_EQ(tok.encode("UNwanted,running", false), (Ids{7, 4, 5, 10, 8, 9}));
  // add_bos gives BERT's [CLS] ... [SEP]; add_eos alone only [SEP].
  EXPECT_EQ(tok.encode("want", true), (Ids{1, 3, 2}));
  EXPECT_EQ(tok.encode("want", false, true), (Ids{3, 2}));
  EXPECT_EQ(tok.encode("want", true, true), (Ids{1, 3, 2}));
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.kind(), "wordpiece");
}

TEST(WordPiece, BasicTokenizerNormalization) {
  WordPieceTokenizer lower(kGoogleVocab, WordPieceOptions{});
  EXPECT_EQ(lower.pre_tokenize(" \tHeLLo!how  \n Are yoU?  "), (Words{"hello", "!", "how", "are", "you", "?"}));
  EXPECT_EQ(lower.pre_tokenize("H\xC3\xA9llo"), (Words{"hello"}));  // Héllo: accent stripped
  // Chinese characters become words of their own.
  EXPECT_EQ(lower.pre_tokenize("ah\xE5\x8D\x9A\xE6\x8E\xA8zz"), (Words{"ah", "\xE5\x8D\x9A", "\xE6\x8E\xA8", "zz"}));
  WordPieceOptions keep;
  keep.lowercase = false;
  WordPieceTokenizer cased(kGoogleVocab, keep);
  EXPECT_EQ(cased.pre_tokenize(" \tHeLLo!how  \n Are yoU?  "), (Words{"HeLLo", "!", "how", "Are", "yoU", "?"}));
  // strip_accents null follows lowercase: cased keeps the accent.
  EXPECT_EQ(cased.pre_tokenize("H\xC3\xA9llo"), (Words{"H\xC3\xA9llo"}));
  keep.strip_accents = 1;
  EXPECT_EQ(WordPieceTokenizer(kGoogleVocab, keep).pre_tokenize("H\xC3\xA9llo"), (Words{"Hello"}));
  // Lowercase without stripping: É -> é, not e.
  WordPieceOptions lo_keep;
  lo_keep.strip_accents = 0;
  EXPECT_EQ(WordPieceTokenizer(kGoogleVocab, lo_keep).pre_tokenize("\xC3\x89T\xC3\x89"),
            (Words{"\xC3\xA9t\xC3\xA9"}));
  // clean_text: control characters vanish, NUL too; tabs / newlines split.
  EXPECT_EQ(lower.pre_tokenize(std::string("a\x01" "b\tc", 5) + std::string(1, '\0') + "d"), (Words{"ab", "cd"}));
  // Latin Extended-A: Łódź -> ł stays (no decomposition), ó, ź lose their accents.
  EXPECT_EQ(lower.pre_tokenize("\xC5\x81\xC3\xB3\x64\xC5\xBA"), (Words{"\xC5\x82odz"}));
  // Combining acute (e + U+0301) is dropped when stripping.
  EXPECT_EQ(lower.pre_tokenize("cafe\xCC\x81"), (Words{"cafe"}));
}

TEST(WordPiece, SmallVocabularySentences) {
  WordPieceTokenizer tok(small_vocab(), WordPieceOptions{});
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.unk_id(), 1);
  // "John Johanson's house": johan ##son, ' and s split as punctuation + word.
  EXPECT_EQ(tok.encode("John Johanson's house", true), (Ids{2, 14, 15, 16, 12, 13, 17, 3}));
  // Accents stripped (Latin-1): Café → cafe, naïve, cliché, résumé; "!" and "?" separate.
  EXPECT_EQ(tok.encode("The Caf\xC3\xA9 is OPEN! Na\xC3\xAFve clich\xC3\xA9? R\xC3\xA9sum\xC3\xA9.", false),
            (Ids{5, 6, 7, 8, 10, 22, 23, 11, 24, 9}));
  // Chinese characters one per word, known and unknown.
  EXPECT_EQ(tok.encode("ah\xE5\x8D\x9A\xE6\x8E\xA8zz\xE4\xB8\xAD", false), (Ids{20, 18, 19, 21, 1}));
  // "$50" -> $ is punctuation for BERT, then 5 ##0; "łodze" has no cover (ł is not decomposed).
  EXPECT_EQ(tok.encode("$50 \xC5\x81\xC3\xB3\x64\xC5\xBA\x65", false), (Ids{27, 28, 29, 1}));
  EXPECT_EQ(tok.encode("\xC5\x9A\x65", false), (Ids{13, 26}));  // Śe (Latin Extended-A) -> s ##e
  EXPECT_EQ(tok.encode("lodze", false), (Ids{25, 26}));
  // Special tokens written in the text stay whole and are not lowercased.
  EXPECT_EQ(tok.encode("[CLS] the [MASK] is open [SEP]", false), (Ids{2, 5, 4, 7, 8, 3}));
  // Words longer than max_input_chars_per_word are [UNK] even when they could be covered.
  WordPieceOptions shortw;
  shortw.max_input_chars_per_word = 4;
  EXPECT_EQ(WordPieceTokenizer(small_vocab(), shortw).encode("the lodze", false), (Ids{5, 1}));
  // decode: ## pieces glued, specials dropped, spaces before punctuation removed.
  EXPECT_EQ(tok.decode(tok.encode("John Johanson's house.", true)), "john johanson's house.");
  EXPECT_EQ(tok.decode({2, 5, 6, 7, 8, 10, 3, 0}), "the cafe is open!");
  EXPECT_EQ(tok.decode_piece(2, 5), "the");
  EXPECT_EQ(tok.decode_piece(5, 6), " cafe");
  EXPECT_EQ(tok.decode_piece(15, 16), "son");
  EXPECT_THROW(tok.decode({99}), InputError);
}

TEST(WordPiece, FilesAndLoadTokenizer) {
  const auto dir = temp_dir("files");
  // vocab.txt + tokenizer_config.json (cased), as BERT folders ship.
  {
    std::ofstream v(dir / "vocab.txt", std::ios::binary);
    for (const auto& t : small_vocab()) v << t << "\r\n";  // CRLF tolerated
  }
  auto tok = mpqat::data::load_tokenizer(dir.string());
  ASSERT_EQ(tok->kind(), "wordpiece");
  EXPECT_EQ(tok->vocab_size(), 30);
  EXPECT_EQ(tok->encode("THE house", true), (Ids{2, 5, 17, 3}));
  std::ofstream(dir / "tokenizer_config.json") << R"({"do_lower_case": false})";
  tok = mpqat::data::load_tokenizer((dir / "vocab.txt").string());
  EXPECT_EQ(tok->encode("THE house", true), (Ids{2, 1, 17, 3}));

  // tokenizer.json with a WordPiece model: preferred over vocab.txt in a folder.
  nlohmann::json vocab = nlohmann::json::object();
  const auto sv = small_vocab();
  for (size_t i = 0; i < sv.size(); ++i) vocab[sv[i]] = i;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array({{{"id", 0}, {"content", "[PAD]"}, {"special", true}},
                                              {{"id", 4}, {"content", "[MASK]"}, {"special", true}}})},
      {"normalizer",
       {{"type", "BertNormalizer"}, {"clean_text", true}, {"handle_chinese_chars", true},
        {"strip_accents", nullptr}, {"lowercase", true}}},
      {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
      {"post_processor", {{"type", "BertProcessing"}, {"sep", {"[SEP]", 3}}, {"cls", {"[CLS]", 2}}}},
      {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
      {"model",
       {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"continuing_subword_prefix", "##"},
        {"max_input_chars_per_word", 100}, {"vocab", vocab}}}};
  fs::remove(dir / "tokenizer_config.json");
  std::ofstream(dir / "tokenizer.json") << j.dump();
  tok = mpqat::data::load_tokenizer(dir.string());
  ASSERT_EQ(tok->kind(), "wordpiece");
  EXPECT_EQ(tok->encode("THE Caf\xC3\xA9 is open.", true), (Ids{2, 5, 6, 7, 8, 9, 3}));

  // Errors name the file.
  auto bad = j;
  bad["pre_tokenizer"] = {{"type", "Whitespace"}};
  std::ofstream(dir / "bad1.json") << bad.dump();
  auto msg = input_error([&] { WordPieceTokenizer t((dir / "bad1.json").string()); });
  EXPECT_NE(msg.find("bad1.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Whitespace"), std::string::npos) << msg;
  bad = j;
  bad["model"]["unk_token"] = "<unk>";
  std::ofstream(dir / "bad2.json") << bad.dump();
  msg = input_error([&] { mpqat::data::load_tokenizer((dir / "bad2.json").string()); });
  EXPECT_NE(msg.find("<unk>"), std::string::npos) << msg;
  std::ofstream(dir / "bad3.json") << R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": "x"}}})";
  msg = input_error([&] { mpqat::data::load_tokenizer((dir / "bad3.json").string()); });
  EXPECT_NE(msg.find("bad3.json"), std::string::npos) << msg;
  std::ofstream(dir / "bad4.json") << R"({"model": {"type": "WordPiece", "vocab": {"[UNK]": 0}, )";
  msg = input_error([&] { WordPieceTokenizer t((dir / "bad4.json").string()); });
  EXPECT_NE(msg.find("not valid JSON"), std::string::npos) << msg;
  {
    std::ofstream b(dir / "binary.txt", std::ios::binary);
    b.write("\0\1\2\3", 4);
  }
  msg = input_error([&] { mpqat::data::load_tokenizer((dir / "binary.txt").string()); });
  EXPECT_NE(msg.find("binary.txt"), std::string::npos) << msg;
  std::ofstream(dir / "nounk.txt") << "a\nb\n";
  msg = input_error([&] { mpqat::data::load_tokenizer((dir / "nounk.txt").string()); });
  EXPECT_NE(msg.find("[UNK]"), std::string::npos) << msg;
  msg = input_error([&] { WordPieceTokenizer t((dir / "missing.txt").string()); });
  EXPECT_NE(msg.find("missing.txt"), std::string::npos) << msg;
  fs::remove_all(dir);
}
