// SentencePiece tokenizer.model (a serialized sentencepiece.ModelProto), read by a small
// protobuf wire-format reader of our own: libsentencepiece bundles its own protobuf, which
// clashes with the one LibTorch loads, so it must not be linked. Only BPE models with identity
// normalization (Llama-2) are supported; encoding follows SentencePiece's BPE model (identity
// normalizer, "▁" for spaces, dummy prefix, score-ordered merges, byte fallback).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mpqat/data/score_bpe.h"
#include "mpqat/data/tokenizer.h"

namespace mpqat::data {

class SentencePieceTokenizer : public Tokenizer {
 public:
  // ModelProto.SentencePiece.Type values.
  enum PieceType : uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4,
                             kUnused = 5, kByte = 6 };

  // Throws InputError naming the file (and the byte offset for a malformed protobuf) when it
  // cannot be read or is not a BPE model with identity normalization.
  explicit SentencePieceTokenizer(const std::string& model_path);

  std::vector<int32_t> encode(const std::string& text, bool add_bos,
                              bool add_eos = false) const override;
  // As SentencePiece's decoder: control pieces dropped, unknown as the model's unk surface
  // (" ⁇ " by default), "▁" as ' ', byte pieces joined (invalid UTF-8 -> U+FFFD per byte),
  // the first piece's leading "▁" dropped.
  std::string decode(const std::vector<int32_t>& ids) const override;
  // The piece with "▁" as ' ', byte pieces as raw bytes; the leading space is dropped after
  // BOS; control/unknown ids print as "".
  std::string decode_piece(int32_t prev, int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(types_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  std::string kind() const override { return "sentencepiece"; }

  int32_t unk_id() const { return unk_id_; }
  int32_t pad_id() const { return pad_id_; }
  const std::string& piece(int32_t id) const { return bpe_.piece(id); }
  float score(int32_t id) const { return bpe_.score(id); }
  PieceType type(int32_t id) const { return types_.at(static_cast<size_t>(id)); }
  // SentencePiece's PieceToId without the unk default: the id of the exact piece, or -1.
  int32_t piece_id(const std::string& piece) const;
  bool byte_fallback() const { return byte_fallback_; }
  const std::string& path() const { return path_; }

 private:
  int32_t lookup(const std::string& piece) const;  // PieceToId: reserved, normal, else unk
  std::string normalize(const std::string& text) const;

  std::string path_;
  ScoreBpe bpe_;
  std::vector<PieceType> types_;
  std::unordered_map<std::string, int32_t> reserved_;  // control, unknown and byte pieces
  std::vector<std::string> user_defined_;              // matched whole, longest first
  std::array<int32_t, 256> byte_ids_{};
  int32_t unk_id_ = -1, bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true, remove_extra_whitespaces_ = true, escape_whitespaces_ = true;
  std::string unk_surface_;
};

}  // namespace mpqat::data
