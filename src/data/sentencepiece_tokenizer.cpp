#include "mpqat/data/sentencepiece_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <utility>

#include "mpqat/util/error.h"

namespace mpqat::data {

namespace {

const std::string kMeta = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space
const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Protobuf wire types.
constexpr uint32_t kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5;

const char* wire_name(uint32_t w) {
  switch (w) {
    case kVarint: return "varint";
    case kFixed64: return "64-bit";
    case kLengthDelimited: return "length-delimited";
    case kFixed32: return "32-bit";
    default: return "group";
  }
}

// Reads one message [begin, end) of a protobuf buffer; every read is bounds-checked and a
// failure names the file and the absolute byte offset.
class WireReader {
 public:
  WireReader(const std::string& path, const std::string& buf, size_t begin, size_t end,
             const char* message)
      : path_(path), buf_(buf), pos_(begin), end_(end), message_(message) {}

  bool more() const { return pos_ < end_; }

  // Reads a tag; `at` gets its offset.
  void tag(uint32_t& field, uint32_t& wire, size_t& at) {
    at = pos_;
    const uint64_t t = varint();
    wire = static_cast<uint32_t>(t & 7);
    if ((t >> 3) == 0 || (t >> 3) > 0x1FFFFFFF)
      fail(at, "invalid field number " + std::to_string(t >> 3) + " in " + message_);
    field = static_cast<uint32_t>(t >> 3);
    if (wire != kVarint && wire != kFixed64 && wire != kLengthDelimited && wire != kFixed32)
      fail(at, "unsupported wire type " + std::to_string(wire) + " (field " +
                   std::to_string(field) + " of " + message_ + ")");
  }

  uint64_t varint() {
    const size_t at = pos_;
    uint64_t v = 0;
    for (int i = 0; i < 10; ++i) {
      if (pos_ >= end_) fail(at, std::string("truncated varint in ") + message_);
      const auto b = static_cast<uint8_t>(buf_[pos_++]);
      if (i == 9 && b > 1) fail(at, std::string("varint longer than 64 bits in ") + message_);
      v |= static_cast<uint64_t>(b & 0x7F) << (7 * i);
      if (!(b & 0x80)) return v;
    }
    fail(at, std::string("varint longer than 10 bytes in ") + message_);
  }

  uint32_t fixed32() {
    need(4, "32-bit field");
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(buf_[pos_ + static_cast<size_t>(i)]);
    pos_ += 4;
    return v;
  }

  void fixed64() {
    need(8, "64-bit field");
    pos_ += 8;
  }

  // A length-delimited payload as [begin, end) offsets into the buffer.
  std::pair<size_t, size_t> bytes() {
    const size_t at = pos_;
    const uint64_t len = varint();
    if (len > end_ - pos_)
      fail(at, "length-delimited field of " + std::to_string(len) + " bytes runs past the end of " +
                   message_ + " (" + std::to_string(end_ - pos_) + " bytes left)");
    const size_t b = pos_;
    pos_ += static_cast<size_t>(len);
    return {b, pos_};
  }

  std::string string() {
    const auto [b, e] = bytes();
    return buf_.substr(b, e - b);
  }

  void skip(uint32_t wire) {
    switch (wire) {
      case kVarint: varint(); break;
      case kFixed64: fixed64(); break;
      case kLengthDelimited: bytes(); break;
      default: fixed32(); break;
    }
  }

  // Throws unless a known field came with the wire type its declaration implies.
  void expect(uint32_t field, const char* name, uint32_t wire, uint32_t want, size_t at) const {
    if (wire != want)
      fail(at, std::string(message_) + "." + name + " (field " + std::to_string(field) +
                   ") has wire type " + wire_name(wire) + ", expected " + wire_name(want));
  }

  [[noreturn]] void fail(size_t at, const std::string& what) const {
    throw InputError("SentencePiece model '" + path_ + "' is corrupt at byte " +
                     std::to_string(at) + ": " + what +
                     " (expected a serialized sentencepiece.ModelProto tokenizer.model)");
  }

 private:
  void need(size_t n, const char* what) const {
    if (end_ - pos_ < n)
      fail(pos_, std::string("truncated ") + what + " in " + message_);
  }

  const std::string& path_;
  const std::string& buf_;
  size_t pos_, end_;
  const char* message_;
};

struct RawPiece {
  std::string piece;
  float score = 0.0f;
  uint64_t type = 1;  // NORMAL
  size_t offset = 0;
};

struct RawTrainer {
  uint64_t model_type = 1;  // UNIGRAM
  bool byte_fallback = false;
  bool treat_whitespace_as_suffix = false;
  std::string unk_piece = "<unk>", bos_piece = "<s>", eos_piece = "</s>", pad_piece = "<pad>";
  std::string unk_surface = " \xE2\x81\x87 ";
};

struct RawNormalizer {
  std::string name;
  std::string charsmap;
  bool add_dummy_prefix = true, remove_extra_whitespaces = true, escape_whitespaces = true;
};

RawPiece parse_piece(const std::string& path, const std::string& buf, size_t b, size_t e) {
  RawPiece p;
  p.offset = b;
  WireReader r(path, buf, b, e, "ModelProto.SentencePiece");
  while (r.more()) {
    uint32_t f, w;
    size_t at;
    r.tag(f, w, at);
    if (f == 1) {
      r.expect(f, "piece", w, kLengthDelimited, at);
      p.piece = r.string();
    } else if (f == 2) {
      r.expect(f, "score", w, kFixed32, at);
      const uint32_t bits = r.fixed32();
      std::memcpy(&p.score, &bits, 4);
    } else if (f == 3) {
      r.expect(f, "type", w, kVarint, at);
      p.type = r.varint();
    } else {
      r.skip(w);
    }
  }
  return p;
}

void parse_trainer(const std::string& path, const std::string& buf, size_t b, size_t e,
                   RawTrainer& t) {
  WireReader r(path, buf, b, e, "TrainerSpec");
  while (r.more()) {
    uint32_t f, w;
    size_t at;
    r.tag(f, w, at);
    auto str = [&](const char* name, std::string& out) {
      r.expect(f, name, w, kLengthDelimited, at);
      out = r.string();
    };
    auto boolean = [&](const char* name, bool& out) {
      r.expect(f, name, w, kVarint, at);
      out = r.varint() != 0;
    };
    switch (f) {
      case 3:
        r.expect(f, "model_type", w, kVarint, at);
        t.model_type = r.varint();
        break;
      case 24: boolean("treat_whitespace_as_suffix", t.treat_whitespace_as_suffix); break;
      case 35: boolean("byte_fallback", t.byte_fallback); break;
      case 44: str("unk_surface", t.unk_surface); break;
      case 45: str("unk_piece", t.unk_piece); break;
      case 46: str("bos_piece", t.bos_piece); break;
      case 47: str("eos_piece", t.eos_piece); break;
      case 48: str("pad_piece", t.pad_piece); break;
      default: r.skip(w);  // unk_id..pad_id (40-43) are training-time; ids come from the pieces
    }
  }
}

void parse_normalizer(const std::string& path, const std::string& buf, size_t b, size_t e,
                      RawNormalizer& n) {
  WireReader r(path, buf, b, e, "NormalizerSpec");
  while (r.more()) {
    uint32_t f, w;
    size_t at;
    r.tag(f, w, at);
    auto boolean = [&](const char* name, bool& out) {
      r.expect(f, name, w, kVarint, at);
      out = r.varint() != 0;
    };
    switch (f) {
      case 1:
        r.expect(f, "name", w, kLengthDelimited, at);
        n.name = r.string();
        break;
      case 2:
        r.expect(f, "precompiled_charsmap", w, kLengthDelimited, at);
        n.charsmap = r.string();
        break;
      case 3: boolean("add_dummy_prefix", n.add_dummy_prefix); break;
      case 4: boolean("remove_extra_whitespaces", n.remove_extra_whitespaces); break;
      case 5: boolean("escape_whitespaces", n.escape_whitespaces); break;
      default: r.skip(w);
    }
  }
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// "<0xNN>" (upper-case hex, as SentencePiece writes byte pieces) -> NN, else -1.
int byte_piece_value(const std::string& p) {
  if (p.size() != 6 || p.compare(0, 3, "<0x") != 0 || p[5] != '>') return -1;
  const int hi = hex_value(p[3]), lo = hex_value(p[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

bool trail(unsigned char c) { return (c & 0xC0) == 0x80; }
bool valid_codepoint(uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); }

// Length of the well-formed UTF-8 character at s[i] (SentencePiece's strict decoder: no
// overlong forms, no surrogates), or 0 when it is malformed.
size_t utf8_len(const std::string& s, size_t i) {
  const size_t left = s.size() - i;
  const auto c0 = static_cast<unsigned char>(s[i]);
  if (c0 < 0x80) return 1;
  auto at = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  if (left >= 2 && (c0 & 0xE0) == 0xC0) {
    const uint32_t cp = ((c0 & 0x1Fu) << 6) | (at(1) & 0x3Fu);
    if (trail(at(1)) && cp >= 0x80 && valid_codepoint(cp)) return 2;
  } else if (left >= 3 && (c0 & 0xF0) == 0xE0) {
    const uint32_t cp = ((c0 & 0x0Fu) << 12) | ((at(1) & 0x3Fu) << 6) | (at(2) & 0x3Fu);
    if (trail(at(1)) && trail(at(2)) && cp >= 0x800 && valid_codepoint(cp)) return 3;
  } else if (left >= 4 && (c0 & 0xF8) == 0xF0) {
    const uint32_t cp = ((c0 & 0x07u) << 18) | ((at(1) & 0x3Fu) << 12) |
                        ((at(2) & 0x3Fu) << 6) | (at(3) & 0x3Fu);
    if (trail(at(1)) && trail(at(2)) && trail(at(3)) && cp >= 0x10000 && valid_codepoint(cp))
      return 4;
  }
  return 0;
}

// SentencePiece's character length from the lead byte alone (input is already valid UTF-8).
size_t lead_len(unsigned char c) { return "\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[c >> 4]; }

const char* model_type_name(uint64_t t) {
  switch (t) {
    case 1: return "UNIGRAM";
    case 2: return "BPE";
    case 3: return "WORD";
    case 4: return "CHAR";
    default: return "unknown-type";
  }
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path) : path_(model_path) {
  std::ifstream in(model_path, std::ios::binary);
  if (!in)
    throw InputError("cannot open SentencePiece model '" + model_path +
                     "' (expected a tokenizer.model file)");
  const std::string buf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InputError("cannot read SentencePiece model '" + model_path + "'");

  std::vector<RawPiece> raw;
  RawTrainer trainer;
  RawNormalizer normalizer, denormalizer;
  WireReader r(path_, buf, 0, buf.size(), "ModelProto");
  while (r.more()) {
    uint32_t f, w;
    size_t at;
    r.tag(f, w, at);
    if (f == 1) {
      r.expect(f, "pieces", w, kLengthDelimited, at);
      const auto [b, e] = r.bytes();
      raw.push_back(parse_piece(path_, buf, b, e));
    } else if (f == 2) {
      r.expect(f, "trainer_spec", w, kLengthDelimited, at);
      const auto [b, e] = r.bytes();
      parse_trainer(path_, buf, b, e, trainer);  // repeated messages merge, as protobuf does
    } else if (f == 3) {
      r.expect(f, "normalizer_spec", w, kLengthDelimited, at);
      const auto [b, e] = r.bytes();
      parse_normalizer(path_, buf, b, e, normalizer);
    } else if (f == 5) {
      r.expect(f, "denormalizer_spec", w, kLengthDelimited, at);
      const auto [b, e] = r.bytes();
      parse_normalizer(path_, buf, b, e, denormalizer);
    } else {
      r.skip(w);
    }
  }

  const std::string who = "SentencePiece model '" + path_ + "'";
  if (raw.empty()) throw InputError(who + " has no pieces (expected a serialized ModelProto)");
  if (trainer.model_type != 2)
    throw InputError(who + " is a " + model_type_name(trainer.model_type) +
                     " model; only BPE SentencePiece models (e.g. Llama-2's) are supported");
  if (!normalizer.charsmap.empty() || !denormalizer.charsmap.empty())
    throw InputError(who + " uses the '" + normalizer.name +
                     "' normalizer (a precompiled character map); only identity normalization "
                     "(as in Llama-2's tokenizer.model) is supported");
  if (trainer.treat_whitespace_as_suffix)
    throw InputError(who + " sets treat_whitespace_as_suffix; only prefix whitespace (the "
                     "default) is supported");
  if (raw.size() > 0x7FFFFFFF) throw InputError(who + " has too many pieces");

  byte_fallback_ = trainer.byte_fallback;
  add_dummy_prefix_ = normalizer.add_dummy_prefix;
  remove_extra_whitespaces_ = normalizer.remove_extra_whitespaces;
  escape_whitespaces_ = normalizer.escape_whitespaces;
  unk_surface_ = trainer.unk_surface;
  byte_ids_.fill(-1);

  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<char> mergeable, resegment;
  std::unordered_map<std::string, int32_t> normal;
  pieces.reserve(raw.size());
  types_.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    RawPiece& p = raw[i];
    const auto id = static_cast<int32_t>(i);
    const std::string where = who + ": piece " + std::to_string(i) + " (at byte " +
                              std::to_string(p.offset) + ")";
    if (p.piece.empty()) throw InputError(where + " is empty");
    if (p.type < kNormal || p.type > kByte)
      throw InputError(where + " has unknown type " + std::to_string(p.type) +
                       " (expected 1..6: NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE)");
    const auto type = static_cast<PieceType>(p.type);
    const bool is_normal = type == kNormal || type == kUserDefined || type == kUnused;
    if (!(is_normal ? normal : reserved_).emplace(p.piece, id).second)
      throw InputError(where + " '" + p.piece + "' is defined twice");
    if (type == kUserDefined) user_defined_.push_back(p.piece);
    if (type == kUnknown) {
      if (unk_id_ >= 0)
        throw InputError(where + " is a second UNKNOWN piece (only one is allowed)");
      unk_id_ = id;
    }
    if (type == kByte) {
      if (!byte_fallback_)
        throw InputError(where + " is a BYTE piece but trainer_spec.byte_fallback is false");
      const int b = byte_piece_value(p.piece);
      if (b < 0) throw InputError(where + " is a BYTE piece but not named <0xNN>: '" + p.piece + "'");
      byte_ids_[static_cast<size_t>(b)] = id;
    }
    types_.push_back(type);
    pieces.push_back(std::move(p.piece));
    scores.push_back(p.score);
    mergeable.push_back(is_normal ? 1 : 0);
    resegment.push_back(type == kUnused ? 1 : 0);
  }
  if (unk_id_ < 0) throw InputError(who + " has no UNKNOWN piece (SentencePiece requires one)");
  if (byte_fallback_)
    for (size_t b = 0; b < 256; ++b)
      if (byte_ids_[b] < 0)
        throw InputError(who + " sets byte_fallback but has no byte piece for 0x" +
                         "0123456789ABCDEF"[b >> 4] + "0123456789ABCDEF"[b & 15]);
  std::stable_sort(user_defined_.begin(), user_defined_.end(),
                   [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  bpe_ = ScoreBpe(std::move(pieces), std::move(scores), mergeable, std::move(resegment));

  auto control = [&](const std::string& piece) {
    const int32_t id = lookup(piece);
    return types_[static_cast<size_t>(id)] == kControl ? id : -1;
  };
  bos_id_ = control(trainer.bos_piece);
  eos_id_ = control(trainer.eos_piece);
  pad_id_ = control(trainer.pad_piece);
}

int32_t SentencePieceTokenizer::piece_id(const std::string& piece) const {
  auto it = reserved_.find(piece);
  if (it != reserved_.end()) return it->second;
  return bpe_.find(piece);
}

int32_t SentencePieceTokenizer::lookup(const std::string& piece) const {
  const int32_t id = piece_id(piece);
  return id >= 0 ? id : unk_id_;
}

std::string SentencePieceTokenizer::normalize(const std::string& text) const {
  // SentencePiece's Normalizer::Normalize without a character map: one character at a time
  // (a malformed byte becomes U+FFFD), optional whitespace squeezing, then ' ' -> "▁".
  std::string out;
  size_t i = 0;
  auto next_char = [&](std::string& ch) {
    const size_t len = utf8_len(text, i);
    if (len == 0) {
      ch = kReplacement;
      i += 1;
    } else {
      ch.assign(text, i, len);
      i += len;
    }
  };
  if (remove_extra_whitespaces_)
    while (i < text.size() && text[i] == ' ') ++i;
  if (i >= text.size()) return out;
  out.reserve((text.size() - i) * 3 + 3);
  const std::string& space = escape_whitespaces_ ? kMeta : std::string(" ");
  if (add_dummy_prefix_) out += space;
  bool prev_space = remove_extra_whitespaces_;
  std::string ch;
  while (i < text.size()) {
    next_char(ch);
    if (prev_space && ch == " ") continue;
    for (char c : ch) {
      if (c == ' ') out += space;
      else out.push_back(c);
    }
    prev_space = remove_extra_whitespaces_ && ch == " ";
  }
  if (remove_extra_whitespaces_)
    while (out.size() >= space.size() && out.compare(out.size() - space.size(), space.size(), space) == 0)
      out.resize(out.size() - space.size());
  return out;
}

std::vector<int32_t> SentencePieceTokenizer::encode(const std::string& text, bool add_bos,
                                                    bool add_eos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  const std::string norm = normalize(text);
  std::vector<ScoreBpe::Symbol> syms;
  syms.reserve(norm.size());
  for (size_t i = 0; i < norm.size();) {
    ScoreBpe::Symbol s;
    size_t len = 0;
    for (const std::string& u : user_defined_)  // longest first
      if (norm.compare(i, u.size(), u) == 0) {
        len = u.size();
        s.frozen = true;
        break;
      }
    if (len == 0) len = std::min(norm.size() - i, lead_len(static_cast<unsigned char>(norm[i])));
    std::string ch = norm.substr(i, len);
    s.id = bpe_.find(ch);
    if (s.id < 0) s.text = std::move(ch);
    syms.push_back(std::move(s));
    i += len;
  }
  bool prev_unk = false;
  for (const ScoreBpe::Symbol& s : bpe_.merge(std::move(syms))) {
    const std::string& t = bpe_.text(s);
    const int32_t id = lookup(t);
    const bool unk = types_[static_cast<size_t>(id)] == kUnknown;
    if (unk && byte_fallback_) {
      for (unsigned char b : t) out.push_back(byte_ids_[b]);
    } else if (!(unk && prev_unk)) {  // SentencePiece folds a run of unknowns into one
      out.push_back(id);
    }
    prev_unk = unk;
  }
  if (add_eos && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  for (int32_t id : ids)
    if (id < 0 || id >= vocab_size())
      throw InputError("token id " + std::to_string(id) + " is out of range for tokenizer '" +
                       path_ + "' (vocab size " + std::to_string(vocab_size()) + ")");
  std::string text, bytes;
  auto flush_bytes = [&] {
    for (size_t i = 0; i < bytes.size();) {
      const size_t len = utf8_len(bytes, i);
      if (len == 0) {
        text += kReplacement;
        ++i;
      } else {
        text.append(bytes, i, len);
        i += len;
      }
    }
    bytes.clear();
  };
  // As SentencePiece's Decode: only the first piece that leads the text loses its "▁".
  bool is_bos_ws = true, bos_ws_seen = false;
  for (int32_t id : ids) {
    const PieceType type = types_[static_cast<size_t>(id)];
    if (type == kByte) {
      bytes.push_back(static_cast<char>(byte_piece_value(piece(id))));
      continue;
    }
    flush_bytes();
    if (bos_ws_seen || !text.empty()) is_bos_ws = false;
    bos_ws_seen = false;
    if (type == kControl) continue;
    if (type == kUnknown) {
      text += unk_surface_;
      continue;
    }
    const std::string& p = piece(id);
    size_t start = 0;
    if (is_bos_ws && (add_dummy_prefix_ || remove_extra_whitespaces_) &&
        p.compare(0, kMeta.size(), kMeta) == 0) {
      start = kMeta.size();
      bos_ws_seen = !remove_extra_whitespaces_;
    }
    for (size_t k = start; k < p.size();) {
      if (p.compare(k, kMeta.size(), kMeta) == 0) {
        text.push_back(' ');
        k += kMeta.size();
      } else {
        text.push_back(p[k++]);
      }
    }
  }
  flush_bytes();
  return text;
}

std::string SentencePieceTokenizer::decode_piece(int32_t prev, int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw InputError("token id " + std::to_string(id) + " is out of range for tokenizer '" +
                     path_ + "' (vocab size " + std::to_string(vocab_size()) + ")");
  const PieceType type = types_[static_cast<size_t>(id)];
  if (type == kControl || type == kUnknown || type == kUnused) return "";
  const std::string& p = piece(id);
  if (type == kByte) return std::string(1, static_cast<char>(byte_piece_value(p)));
  std::string out;
  size_t pos = 0;
  for (size_t f; (f = p.find(kMeta, pos)) != std::string::npos; pos = f + kMeta.size())
    out.append(p, pos, f - pos).push_back(' ');
  out.append(p, pos, std::string::npos);
  if (prev == bos_id_ && bos_id_ >= 0 && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

}  // namespace mpqat::data
