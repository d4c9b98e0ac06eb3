// Hugging Face tokenizer.json with a BPE model, in the two layouts LLMs use:
//  - byte-level BPE (GPT-2, OPT, Llama-3): ByteLevel pre-tokenizer (GPT-2 split regex, or a
//    Split pre-tokenizer carrying the Llama-3 regex), bytes_to_unicode alphabet;
//  - SentencePiece-style BPE (Llama-2): Prepend/Replace "▁" normalizer or Metaspace
//    pre-tokenizer, byte_fallback "<0xNN>" pieces.
// Merges are applied by rank (lowest first, leftmost on ties) as the tokenizers library does.
// The split regexes are hand-written with an approximate Unicode classification: letters are
// ASCII letters plus every non-ASCII codepoint outside a table of punctuation / symbol /
// space / combining-mark / emoji blocks; digits are ASCII digits only. Text made of common
// scripts splits exactly as \p{L}/\p{N}; rare symbols or non-ASCII digits may split differently.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "mpqat/data/tokenizer.h"

namespace mpqat::data {

class HfBpeTokenizer : public Tokenizer {
 public:
  // Reads tokenizer.json (and tokenizer_config.json beside it when present for bos/eos).
  // Throws InputError naming the file when it is not JSON, not a BPE model, or uses a
  // normalizer / pre-tokenizer this reader does not implement.
  explicit HfBpeTokenizer(const std::string& json_path);

  std::vector<int32_t> encode(const std::string& text, bool add_bos,
                              bool add_eos = false) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  std::string decode_piece(int32_t prev, int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(id_to_token_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  std::string kind() const override { return "hf-bpe"; }

  bool byte_level() const { return byte_level_; }
  const std::string& path() const { return path_; }  // the tokenizer.json it was read from
  // tokenizer_config.json's add_bos_token (true when absent and a BOS exists, except for
  // byte-level GPT-2-style vocabularies where it defaults to false).
  bool default_add_bos() const { return default_add_bos_; }
  // Id of a vocab or added token, or -1.
  int32_t token_id(const std::string& token) const;
  const std::string& token(int32_t id) const { return id_to_token_.at(static_cast<size_t>(id)); }
  int32_t unk_id() const { return unk_id_; }
  // 1: a special added token, 2: another added token, 0: a vocabulary token.
  int added_kind(int32_t id) const { return is_special_.at(static_cast<size_t>(id)); }
  // SentencePiece-style (not byte-level) with byte-fallback "<0xNN>" pieces.
  bool byte_fallback() const { return byte_fallback_; }
  // Whether encoding puts a "▁" before the text (normalizer Prepend, Metaspace "always"/"first").
  bool prepends_space() const;
  // Per id: the rank of the first merge that produces it, or -1 (characters, added tokens).
  std::vector<int32_t> merge_rank_of_tokens() const;
  // The merges in rank order as (left, right) token strings (tokenizer.json's "left right").
  std::vector<std::pair<std::string, std::string>> merges() const;
  // A byte-level tokenizer's split regex by llama.cpp's pre-tokenizer name: "gpt-2" (GPT-2's),
  // "llama-bpe" (Llama-3's), "" when it splits by no regex.
  std::string split_name() const;
  // ByteLevel's add_prefix_space (a space before the text).
  bool byte_level_prefix_space() const { return add_prefix_space_; }

 private:
  enum class Split { kNone, kGpt2, kLlama3 };
  struct AddedToken {
    std::string content;
    int32_t id;
    bool special;
  };
  void encode_segment(const std::string& seg, bool first_segment,
                      std::vector<int32_t>& out) const;
  void bpe_word(const std::string& word, std::vector<int32_t>& out) const;
  std::string token_text(int32_t id) const;  // decoded bytes of one non-special token
  // The constructor, step by step (tokenizer.json's sections).
  void read_vocab(const nlohmann::json& j);
  void read_merges(const nlohmann::json& model);
  void read_model_flags(const nlohmann::json& model, const std::string& supported);
  void build_byte_maps();
  void read_pipeline(const nlohmann::json& j, const std::string& supported);
  void read_special_tokens(const nlohmann::json& j);

  std::string path_;
  std::unordered_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<char> is_special_;  // 1: special added token, 2: other added token
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a,b) -> (rank, new id)
  std::vector<AddedToken> added_;  // sorted longest content first
  struct NormOp {
    bool prepend;  // prepend `to` to non-empty text, else replace every `from` by `to`
    std::string from, to;
  };
  std::vector<NormOp> norm_ops_;
  bool byte_level_ = false;
  bool add_prefix_space_ = false;  // ByteLevel
  Split split_ = Split::kNone;
  // Metaspace pre-tokenizer
  bool metaspace_ = false;
  std::string meta_replacement_ = "\xE2\x96\x81";
  std::string meta_prepend_scheme_ = "always";
  bool meta_split_ = true;
  bool strip_leading_space_ = false;  // SentencePiece-style decoders drop the first space
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool default_add_bos_ = false;
  int32_t byte_ids_[256];              // "<0xNN>" ids for byte fallback, -1 when absent
  std::string byte_to_char_[256];      // bytes_to_unicode
  std::unordered_map<uint32_t, int> char_to_byte_;
};

// Split text the way GPT-2's / Llama-3's pre-tokenizer regex does, with the approximate
// Unicode classes described above. Exposed for tests.
std::vector<std::string> regex_split_gpt2(const std::string& text);
std::vector<std::string> regex_split_llama3(const std::string& text);

}  // namespace mpqat::data
