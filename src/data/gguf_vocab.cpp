#include "mpqat/data/gguf_vocab.h"

#include <cctype>
#include <string>

#include "mpqat/data/hf_tokenizer.h"
#include "mpqat/data/llama2c_tokenizer.h"
#include "mpqat/data/sentencepiece_tokenizer.h"
#include "mpqat/util/error.h"

namespace mpqat::data {

namespace {

constexpr int32_t kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kByte = 6;
const std::string kSpace = "\xE2\x96\x81";  // "▁"

bool is_byte_piece(const std::string& p) {
  return p.size() == 6 && p.compare(0, 3, "<0x") == 0 && p[5] == '>' && std::isxdigit(static_cast<unsigned char>(p[3])) &&
         std::isxdigit(static_cast<unsigned char>(p[4]));
}

std::string spaces_to_meta(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ' ') out += kSpace;
    else out += c;
  }
  return out;
}

struct Vocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> types;
  int32_t unk = -1;
  bool space_prefix = true;
};

Vocab from_llama2c(const Llama2cTokenizer& t) {
  Vocab v;
  const int32_t n = t.vocab_size();
  for (int32_t i = 0; i < n; ++i) {
    std::string p = t.piece(i);
    int32_t type = kNormal;
    if (i == 0) {
      p = "<unk>";
      type = kUnknown;
    } else if (i == t.bos_id()) {
      p = "<s>";
      type = kControl;
    } else if (i == t.eos_id()) {
      p = "</s>";
      type = kControl;
    } else if (is_byte_piece(p)) {
      type = kByte;
    } else {
      p = spaces_to_meta(p);
    }
    v.tokens.push_back(std::move(p));
    v.scores.push_back(t.score(i));
    v.types.push_back(type);
  }
  v.unk = 0;
  return v;
}

Vocab from_sentencepiece(const SentencePieceTokenizer& t) {
  Vocab v;
  for (int32_t i = 0; i < t.vocab_size(); ++i) {
    v.tokens.push_back(t.piece(i));
    v.scores.push_back(t.score(i));
    v.types.push_back(static_cast<int32_t>(t.type(i)));
  }
  v.unk = t.unk_id();
  return v;
}

Vocab from_hf(const HfBpeTokenizer& t) {
  Vocab v;
  const auto rank = t.merge_rank_of_tokens();
  for (int32_t i = 0; i < t.vocab_size(); ++i) {
    const std::string& p = t.token(i);
    int32_t type = kNormal;
    if (i == t.unk_id()) type = kUnknown;
    else if (t.added_kind(i) == 1) type = kControl;
    else if (t.added_kind(i) == 2) type = kUserDefined;
    else if (t.byte_fallback() && is_byte_piece(p)) type = kByte;
    v.tokens.push_back(p);
    v.scores.push_back(rank[static_cast<size_t>(i)] >= 0 ? -static_cast<float>(rank[static_cast<size_t>(i)]) : 0.0f);
    v.types.push_back(type);
  }
  v.unk = t.unk_id();
  v.space_prefix = t.prepends_space();
  return v;
}

// A byte-level BPE vocabulary (GPT-2, Llama-3) as llama.cpp's "gpt2" tokenizer: the byte-level
// token strings as tokenizer.json has them, the merges in rank order, and the pre-tokenizer by
// the name llama.cpp gives its split regex.
std::vector<io::GgufKV> byte_level_metadata(const HfBpeTokenizer& t) {
  const std::string pre = t.split_name();
  if (pre.empty())
    throw NotImplementedError("GGUF export of '" + t.path() +
                              "': a byte-level BPE tokenizer whose split is neither GPT-2's ByteLevel regex nor "
                              "Llama-3's Split regex (llama.cpp names its pre-tokenizers by regex)");
  if (t.byte_level_prefix_space())
    throw NotImplementedError("GGUF export of '" + t.path() +
                              "': a byte-level BPE tokenizer with add_prefix_space true (llama.cpp's gpt2 vocabulary "
                              "adds no space before the text; add_prefix_space false is supported)");
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int32_t i = 0; i < t.vocab_size(); ++i) {
    tokens.push_back(t.token(i));
    types.push_back(t.added_kind(i) == 1 ? kControl : t.added_kind(i) == 2 ? kUserDefined : kNormal);
  }
  std::vector<std::string> merges;
  for (const auto& [a, b] : t.merges()) merges.push_back(a + " " + b);
  std::vector<io::GgufKV> kv;
  kv.push_back({"tokenizer.ggml.model", std::string("gpt2")});
  kv.push_back({"tokenizer.ggml.pre", pre});
  kv.push_back({"tokenizer.ggml.tokens", std::move(tokens)});
  kv.push_back({"tokenizer.ggml.token_type", std::move(types)});
  kv.push_back({"tokenizer.ggml.merges", std::move(merges)});
  if (t.bos_id() >= 0) kv.push_back({"tokenizer.ggml.bos_token_id", static_cast<uint32_t>(t.bos_id())});
  if (t.eos_id() >= 0) kv.push_back({"tokenizer.ggml.eos_token_id", static_cast<uint32_t>(t.eos_id())});
  kv.push_back({"tokenizer.ggml.add_bos_token", t.bos_id() >= 0 && t.default_add_bos()});
  kv.push_back({"tokenizer.ggml.add_eos_token", false});
  return kv;
}

}  // namespace

std::vector<io::GgufKV> gguf_vocab_metadata(const Tokenizer& tok) {
  if (const auto* h = dynamic_cast<const HfBpeTokenizer*>(&tok); h && h->byte_level()) return byte_level_metadata(*h);
  Vocab v;
  if (const auto* l = dynamic_cast<const Llama2cTokenizer*>(&tok)) v = from_llama2c(*l);
  else if (const auto* s = dynamic_cast<const SentencePieceTokenizer*>(&tok)) v = from_sentencepiece(*s);
  else if (const auto* h = dynamic_cast<const HfBpeTokenizer*>(&tok)) v = from_hf(*h);
  else
    throw NotImplementedError("GGUF export of a " + tok.kind() +
                              " tokenizer (llama2c, sentencepiece and hf-bpe are supported)");
  std::vector<io::GgufKV> kv;
  kv.push_back({"tokenizer.ggml.model", std::string("llama")});
  kv.push_back({"tokenizer.ggml.tokens", std::move(v.tokens)});
  kv.push_back({"tokenizer.ggml.scores", std::move(v.scores)});
  kv.push_back({"tokenizer.ggml.token_type", std::move(v.types)});
  if (tok.bos_id() >= 0) kv.push_back({"tokenizer.ggml.bos_token_id", static_cast<uint32_t>(tok.bos_id())});
  if (tok.eos_id() >= 0) kv.push_back({"tokenizer.ggml.eos_token_id", static_cast<uint32_t>(tok.eos_id())});
  if (v.unk >= 0) kv.push_back({"tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(v.unk)});
  kv.push_back({"tokenizer.ggml.add_bos_token", tok.bos_id() >= 0});
  kv.push_back({"tokenizer.ggml.add_eos_token", false});
  kv.push_back({"tokenizer.ggml.add_space_prefix", v.space_prefix});
  return kv;
}

}  // namespace mpqat::data
