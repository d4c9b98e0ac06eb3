// A tokenizer as GGUF metadata (`tokenizer.ggml.*`): llama.cpp's "llama" vocabulary for the
// SentencePiece-style merge-by-score tokenizer that llama2.c's tokenizer.bin, SentencePiece BPE
// models and Hugging Face Llama-2-style tokenizer.json files (byte fallback, "▁" for spaces)
// all are, and its "gpt2" vocabulary for byte-level BPE tokenizer.json files (GPT-2, Llama-3).
// Pieces keep their ids; token types follow SentencePiece (1 normal, 2 unknown, 3 control,
// 4 user-defined, 5 unused, 6 byte). No torch here.
#pragma once

#include <vector>

#include "mpqat/data/tokenizer.h"
#include "mpqat/io/gguf.h"

namespace mpqat::data {

// tokenizer.ggml.model, tokens, scores, token_type, bos/eos/unknown/padding ids, add_bos_token,
// add_eos_token and add_space_prefix for `tok`.
//  - llama2c: pieces with ' ' written back as "▁", BOS / EOS as "<s>" / "</s>", the file's scores;
//  - sentencepiece: pieces, scores and types as in tokenizer.model;
//  - hf-bpe with byte fallback: score = -(rank of the first merge producing the token), so that
//    llama.cpp's highest-score-first merging applies the merges in the file's order.
//  - hf-bpe byte-level: model "gpt2", tokenizer.ggml.pre "gpt-2" or "llama-bpe" (by the split
//    regex), the tokens as tokenizer.json spells them, tokenizer.ggml.merges in rank order.
// Throws NotImplementedError for WordPiece, a byte-level tokenizer with another split or with
// add_prefix_space.
std::vector<io::GgufKV> gguf_vocab_metadata(const Tokenizer& tok);

}  // namespace mpqat::data
