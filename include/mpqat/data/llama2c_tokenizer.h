// llama2.c tokenizer.bin: int32 max_token_length, then per token: f32 score, i32 len, len bytes
// (the vocab size is not stored; records run to end of file). Encoding reproduces llama2.c
// run.c `encode` exactly (dummy-prefix " ", codepoint lookup with byte fallback, then greedy
// highest-score pair merges, leftmost on ties; see ScoreBpe).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpqat/data/score_bpe.h"
#include "mpqat/data/tokenizer.h"

namespace mpqat::data {

class Llama2cTokenizer : public Tokenizer {
 public:
  // Throws InputError naming the file (and the token index) when it is missing or corrupt.
  explicit Llama2cTokenizer(const std::string& path);

  std::vector<int32_t> encode(const std::string& text, bool add_bos,
                              bool add_eos = false) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  // As llama2.c: drops the leading space of a piece that follows BOS; "<0xNN>" -> raw byte.
  // Special ids (unk/bos/eos) print as "".
  std::string decode_piece(int32_t prev, int32_t id) const override;
  int32_t vocab_size() const override { return bpe_.size(); }
  int32_t bos_id() const override { return 1; }
  int32_t eos_id() const override { return 2; }
  std::string kind() const override { return "llama2c"; }

  const std::string& piece(int32_t id) const { return bpe_.piece(id); }
  float score(int32_t id) const { return bpe_.score(id); }
  int32_t max_token_length() const { return max_token_length_; }
  // Id of the exact piece, or -1 (lowest id when a piece is repeated).
  int32_t piece_id(const std::string& piece) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int32_t max_token_length_ = 0;
  ScoreBpe bpe_;
};

// Writes tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dir`
// (created when absent): a Hugging Face Llama-2-style fast tokenizer (BPE, byte_fallback,
// Prepend/Replace "▁" normalizer) whose merge ranks follow the llama2.c piece scores, so it
// encodes like `tok`. Throws Error when the files cannot be written.
void write_hf_tokenizer_files(const Llama2cTokenizer& tok, const std::string& dir);

}  // namespace mpqat::data
