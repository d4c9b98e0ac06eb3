// BERT's WordPiece tokenizer, read from a Hugging Face tokenizer.json (model type "WordPiece")
// or from the plain vocab.txt (+ tokenizer_config.json) that BERT folders ship. The pipeline is
// the tokenizers library's:
//   1. special tokens ([CLS], [SEP], [PAD], [MASK], [UNK] and added special tokens) written in
//      the text are matched first and kept whole;
//   2. BertNormalizer: clean_text (drop NUL, U+FFFD and control characters, map whitespace to
//      ' '), handle_chinese_chars (spaces around each CJK ideograph), strip_accents (default:
//      follows lowercase), lowercase;
//   3. BertPreTokenizer: split on whitespace, and every punctuation character is its own word;
//   4. WordPiece: greedy longest-match-first over each word, pieces after the first carry the
//      continuing_subword_prefix ("##"); a word with no full cover, or longer than
//      max_input_chars_per_word (100) characters, becomes [UNK].
// Special tokens: bos_id() is [CLS] and eos_id() is [SEP]. encode(text, add_bos) gives
// [CLS] ... [SEP] (BERT's single-sentence template); encode(text, false, add_eos) gives ... [SEP].
//
// Unicode coverage (there is no Unicode database here): accent stripping decomposes Latin-1
// Supplement and Latin Extended-A letters (é -> e, Ł stays, ß stays) and drops combining marks
// U+0300..U+036F; other scripts are not decomposed. Lowercasing covers ASCII, Latin-1, Latin
// Extended-A, Greek and Cyrillic capitals. Punctuation is ASCII punctuation (including symbols
// such as $ + < = > ^ ` | ~, as BERT treats them) plus the Latin-1, General Punctuation, CJK and
// fullwidth punctuation blocks. Text in other scripts is still tokenized, only without these
// normalizations. No torch here.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mpqat/data/tokenizer.h"

namespace mpqat::data {

struct WordPieceOptions {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  int strip_accents = -1;  // -1: follows lowercase, 0: keep, 1: strip
  bool lowercase = true;
  std::string unk_token = "[UNK]";
  std::string continuing_subword_prefix = "##";
  int max_input_chars_per_word = 100;
};

class WordPieceTokenizer : public Tokenizer {
 public:
  // `path`: a tokenizer.json with a WordPiece model, or a vocab.txt (one token per line, id =
  // line number; do_lower_case / strip_accents / tokenize_chinese_chars and the special token
  // names come from tokenizer_config.json beside it when present). Throws InputError naming the
  // file when it cannot be read, is not a WordPiece tokenizer, uses a normalizer or
  // pre-tokenizer other than BERT's, or lacks the unknown token.
  explicit WordPieceTokenizer(const std::string& path);
  // From an in-memory vocabulary (tests; id = position).
  WordPieceTokenizer(const std::vector<std::string>& vocab, const WordPieceOptions& opts);

  std::vector<int32_t> encode(const std::string& text, bool add_bos,
                              bool add_eos = false) const override;
  // Word pieces joined with spaces, "##" pieces glued to the previous one, special tokens
  // dropped, spaces before . , ! ? and English contractions removed (clean_up_tokenization_spaces).
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string decode_piece(int32_t prev, int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }
  int32_t bos_id() const override { return cls_id_; }
  int32_t eos_id() const override { return sep_id_; }
  std::string kind() const override { return "wordpiece"; }

  int32_t cls_id() const { return cls_id_; }
  int32_t sep_id() const { return sep_id_; }
  int32_t pad_id() const { return pad_id_; }  // -1 when none
  int32_t unk_id() const { return unk_id_; }
  const WordPieceOptions& options() const { return opts_; }
  // Id of a token, or -1.
  int32_t token_id(const std::string& token) const;
  const std::string& token(int32_t id) const;

  // Steps 2 and 3 alone (normalized words), exposed for tests.
  std::vector<std::string> pre_tokenize(const std::string& text) const;

 private:
  void init_specials(const std::string& cls, const std::string& sep, const std::string& pad,
                     const std::string& mask);
  void load_vocab_txt(const std::string& path);
  void load_tokenizer_json(const std::string& path);
  void encode_plain(const std::string& text, std::vector<int32_t>& out) const;
  void word_pieces(const std::string& word, std::vector<int32_t>& out) const;

  std::string path_ = "<memory>";
  WordPieceOptions opts_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<std::string> specials_;  // matched whole in the text, longest first
  std::vector<char> is_special_;       // by id
  int32_t unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, pad_id_ = -1;
};

}  // namespace mpqat::data
