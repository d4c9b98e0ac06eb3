// Tokenizers: llama2.c tokenizer.bin, SentencePiece tokenizer.model, Hugging Face
// tokenizer.json (byte-level BPE as GPT-2/OPT/Llama-3, SentencePiece-style BPE with
// byte fallback as Llama-2, and BERT's WordPiece), BERT vocab.txt. No torch here.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mpqat::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes text; BOS/EOS are prepended/appended when asked and the tokenizer has them.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_bos,
                                      bool add_eos = false) const = 0;
  // Decodes ids to text (special tokens dropped, byte-fallback pieces joined as UTF-8).
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  // The text piece to print for `id` when it follows `prev` (streaming generation; llama2.c
  // drops the leading space of the first piece after BOS).
  virtual std::string decode_piece(int32_t prev, int32_t id) const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
  // "llama2c", "sentencepiece", "hf-bpe", "wordpiece"
  virtual std::string kind() const = 0;
};

// Opens a tokenizer file (tokenizer.bin, tokenizer.model, tokenizer.json with a BPE or WordPiece
// model, vocab.txt) or a model folder holding one of them (tokenizer.json preferred, then
// tokenizer.model, then tokenizer.bin, then vocab.txt).
// Throws InputError naming the path and the accepted files when none is found or it is corrupt.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path_or_dir);

}  // namespace mpqat::data
