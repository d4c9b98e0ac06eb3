#include "mpqat/data/wordpiece_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::data {

namespace {

using json = nlohmann::json;

// Codepoints of `s`; an invalid byte becomes U+FFFD (which clean_text then drops, as the
// tokenizers library would after its lossy UTF-8 decoding).
std::vector<uint32_t> utf8_codepoints(const std::string& s) {
  std::vector<uint32_t> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (d & 0x3Fu);
    }
    if (!ok) {
      out.push_back(0xFFFD);
      ++i;
    } else {
      out.push_back(cp);
      i += len;
    }
  }
  return out;
}


// Unicode White_Space (char::is_whitespace).
bool is_whitespace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// General category C* (Cc and the common Cf), tab / newline / carriage return excepted as BERT does.
bool is_control(uint32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  return c < 0x20 || (c >= 0x7F && c <= 0x9F) || c == 0xAD || (c >= 0x200B && c <= 0x200F) ||
         (c >= 0x202A && c <= 0x202E) || (c >= 0x2060 && c <= 0x2064) || c == 0xFEFF ||
         (c >= 0xE000 && c <= 0xF8FF);
}

bool is_chinese_char(uint32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// ASCII punctuation and symbols (BERT counts $ + < = > ^ ` | ~ too) and Unicode P* in the
// blocks listed in the header.
bool is_punctuation(uint32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126))
    return true;
  if (c == 0xA1 || c == 0xA7 || c == 0xAB || c == 0xB6 || c == 0xB7 || c == 0xBB || c == 0xBF) return true;
  if (c == 0x37E || c == 0x387) return true;  // Greek question mark, ano teleia
  if ((c >= 0x2010 && c <= 0x2027) || (c >= 0x2030 && c <= 0x2043) || (c >= 0x2045 && c <= 0x2051) ||
      (c >= 0x2053 && c <= 0x205E))
    return true;
  if ((c >= 0x3001 && c <= 0x3003) || (c >= 0x3008 && c <= 0x3011) || (c >= 0x3014 && c <= 0x301F) ||
      c == 0x3030 || c == 0x303D || c == 0x30FB)
    return true;
  // Fullwidth forms: the punctuation among FF01..FF65 (not the symbols + < = > ^ | ~ $).
  if (c >= 0xFF01 && c <= 0xFF65) {
    static const uint32_t sym[] = {0xFF04, 0xFF0B, 0xFF1C, 0xFF1D, 0xFF1E, 0xFF3E, 0xFF40, 0xFF5C, 0xFF5E};
    if ((c >= 0xFF10 && c <= 0xFF19) || (c >= 0xFF21 && c <= 0xFF3A) || (c >= 0xFF41 && c <= 0xFF5A)) return false;
    return std::find(std::begin(sym), std::end(sym), c) == std::end(sym);
  }
  return false;
}

// Canonical decomposition base letters, '.' where the character has none (Æ, Ð, Ø, Þ, ß, Đ,
// Ħ, ı, Ĳ, Ŀ, Ł, ŉ, Ŋ, Œ, Ŧ, ſ and the signs × ÷ have no canonical decomposition).
const char* const kLatin1Base =  // U+00C0..U+00FF
    "AAAAAA.CEEEEIIII"
    ".NOOOOO..UUUUY.."
    "aaaaaa.ceeeeiiii"
    ".nooooo..uuuuy.y";
const char* const kLatinExtABase =  // U+0100..U+017F
    "AaAaAaCcCcCcCcDd"
    "..EeEeEeEeEeGgGg"
    "GgGgHh..IiIiIiIi"
    "I...JjKk.LlLlLl."
    "...NnNnNn...OoOo"
    "Oo..RrRrRrSsSsSs"
    "SsTtTt..UuUuUuUu"
    "UuUuWwYyYZzZzZz.";

bool is_combining_mark(uint32_t c) {
  return (c >= 0x300 && c <= 0x36F) || (c >= 0x1AB0 && c <= 0x1AFF) || (c >= 0x1DC0 && c <= 0x1DFF) ||
         (c >= 0x20D0 && c <= 0x20FF) || (c >= 0xFE20 && c <= 0xFE2F);
}

// NFD followed by dropping the nonspacing marks, for the covered blocks; 0 = drop.
uint32_t strip_accent(uint32_t c) {
  if (is_combining_mark(c)) return 0;
  char b = '.';
  if (c >= 0xC0 && c <= 0xFF) b = kLatin1Base[c - 0xC0];
  else if (c >= 0x100 && c <= 0x17F) b = kLatinExtABase[c - 0x100];
  return b == '.' ? c : static_cast<uint32_t>(static_cast<unsigned char>(b));
}

// Simple lowercase mapping for the covered blocks. (İ lowercases to "i̇" in full Unicode; after
// accent stripping, which BERT uncased applies first, it is plain I -> i anyway.)
void append_lower(std::vector<uint32_t>& out, uint32_t c) {
  if (c >= 'A' && c <= 'Z') c += 32;
  else if (c >= 0xC0 && c <= 0xDE && c != 0xD7) c += 32;
  else if (c >= 0x100 && c <= 0x17F) {
    if (c == 0x130) {
      out.push_back('i');
      out.push_back(0x307);
      return;
    }
    const bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if (c == 0x178) c = 0xFF;
    else if (odd_upper) c += (c % 2 == 1) ? 1 : 0;
    else if (c != 0x131 && c != 0x138 && c != 0x149 && c != 0x17F && c % 2 == 0) c += 1;
  } else if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) c += 32;
  else if (c >= 0x410 && c <= 0x42F) c += 32;
  else if (c >= 0x400 && c <= 0x40F) c += 80;
  out.push_back(c);
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot open tokenizer file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v.at("content").is_string()) return v.at("content").get<std::string>();
  return "";
}

}  // namespace

WordPieceTokenizer::WordPieceTokenizer(const std::vector<std::string>& vocab, const WordPieceOptions& opts)
    : opts_(opts) {
  id_to_token_ = vocab;
  for (size_t i = 0; i < vocab.size(); ++i) vocab_[vocab[i]] = static_cast<int32_t>(i);
  init_specials("[CLS]", "[SEP]", "[PAD]", "[MASK]");
}

WordPieceTokenizer::WordPieceTokenizer(const std::string& path) : path_(path) {
  const std::string text = read_all(path);
  size_t k = 0;
  while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k]))) ++k;
  if (k < text.size() && text[k] == '{') load_tokenizer_json(path);
  else load_vocab_txt(path);
}

void WordPieceTokenizer::load_vocab_txt(const std::string& path) {
  namespace fs = std::filesystem;
  const std::string text = read_all(path);
  if (text.empty()) throw InputError("vocabulary file '" + path + "' is empty (expected one token per line)");
  if (text.find('\0') != std::string::npos)
    throw InputError("vocabulary file '" + path + "' is binary (expected a text vocab.txt, one token per line)");
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string tok = text.substr(start, end - start);
    if (!tok.empty() && tok.back() == '\r') tok.pop_back();
    vocab_[tok] = static_cast<int32_t>(id_to_token_.size());
    id_to_token_.push_back(tok);
    start = end + 1;
  }
  std::string cls = "[CLS]", sep = "[SEP]", pad = "[PAD]", mask = "[MASK]";
  const fs::path cfg = fs::path(path).parent_path() / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    json c;
    try {
      c = json::parse(read_all(cfg.string()));
    } catch (const json::exception& e) {
      throw InputError("tokenizer config '" + cfg.string() + "' is not valid JSON (" + e.what() + ")");
    }
    if (c.is_object()) {
      if (c.contains("do_lower_case") && c["do_lower_case"].is_boolean()) opts_.lowercase = c["do_lower_case"].get<bool>();
      if (c.contains("strip_accents") && c["strip_accents"].is_boolean())
        opts_.strip_accents = c["strip_accents"].get<bool>() ? 1 : 0;
      if (c.contains("tokenize_chinese_chars") && c["tokenize_chinese_chars"].is_boolean())
        opts_.handle_chinese_chars = c["tokenize_chinese_chars"].get<bool>();
      auto name = [&](const char* key, std::string& dst) {
        if (c.contains(key) && !token_content(c[key]).empty()) dst = token_content(c[key]);
      };
      name("unk_token", opts_.unk_token);
      name("cls_token", cls);
      name("sep_token", sep);
      name("pad_token", pad);
      name("mask_token", mask);
    }
  }
  init_specials(cls, sep, pad, mask);
}

void WordPieceTokenizer::load_tokenizer_json(const std::string& path) {
  json j;
  try {
    j = json::parse(read_all(path));
  } catch (const json::parse_error& e) {
    throw InputError("tokenizer file '" + path + "' is not valid JSON (" + e.what() + ")");
  }
  const std::string supported =
      "supported: model type WordPiece with a BertNormalizer and a BertPreTokenizer";
  std::string cls = "[CLS]", sep = "[SEP]", pad = "[PAD]", mask = "[MASK]";
  try {
    if (!j.is_object() || !j.contains("model") || !j.at("model").is_object())
      throw InputError("tokenizer file '" + path + "' has no \"model\" object (" + supported + ")");
    const json& model = j.at("model");
    const std::string type = model.value("type", std::string());
    if (type != "WordPiece")
      throw InputError("tokenizer file '" + path + "' has model type '" + type + "', not WordPiece (" +
                       supported + ")");
    if (!model.contains("vocab") || !model.at("vocab").is_object() || model.at("vocab").empty())
      throw InputError("tokenizer file '" + path + "' has no model.vocab object");
    if (model.contains("unk_token") && model.at("unk_token").is_string())
      opts_.unk_token = model.at("unk_token").get<std::string>();
    if (model.contains("continuing_subword_prefix") && model.at("continuing_subword_prefix").is_string())
      opts_.continuing_subword_prefix = model.at("continuing_subword_prefix").get<std::string>();
    if (model.contains("max_input_chars_per_word") && model.at("max_input_chars_per_word").is_number_integer())
      opts_.max_input_chars_per_word = model.at("max_input_chars_per_word").get<int>();
    int32_t max_id = -1;
    for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
      if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
          it.value().get<int64_t>() > 100000000)
        throw InputError("tokenizer file '" + path + "': token '" + it.key() + "' has an invalid id " +
                         it.value().dump());
      const auto id = it.value().get<int32_t>();
      vocab_[it.key()] = id;
      max_id = std::max(max_id, id);
    }
    std::vector<std::string> added;
    if (j.contains("added_tokens") && j.at("added_tokens").is_array())
      for (const auto& a : j.at("added_tokens")) {
        const std::string content = token_content(a);
        if (content.empty() || !a.contains("id") || !a.at("id").is_number_integer()) continue;
        const auto id = a.at("id").get<int32_t>();
        if (id < 0) continue;
        vocab_[content] = id;
        max_id = std::max(max_id, id);
        added.push_back(content);
      }
    id_to_token_.assign(static_cast<size_t>(max_id) + 1, std::string());
    for (const auto& [t, id] : vocab_) id_to_token_[static_cast<size_t>(id)] = t;

    const json norm = j.value("normalizer", json());
    auto apply_normalizer = [&](const json& n, auto& self) -> void {
      if (n.is_null()) return;
      const std::string t = n.value("type", std::string());
      if (t == "BertNormalizer") {
        opts_.clean_text = n.value("clean_text", true);
        opts_.handle_chinese_chars = n.value("handle_chinese_chars", true);
        opts_.lowercase = n.value("lowercase", true);
        const json sa = n.value("strip_accents", json());
        opts_.strip_accents = sa.is_boolean() ? (sa.get<bool>() ? 1 : 0) : -1;
      } else if (t == "Sequence" && n.contains("normalizers")) {
        opts_.clean_text = opts_.handle_chinese_chars = opts_.lowercase = false;
        opts_.strip_accents = 0;
        for (const auto& m : n.at("normalizers")) {
          const std::string mt = m.value("type", std::string());
          if (mt == "Lowercase") opts_.lowercase = true;
          else if (mt == "StripAccents") opts_.strip_accents = 1;
          else if (mt == "NFD") continue;  // only matters with StripAccents, which decomposes itself
          else self(m, self);
        }
      } else {
        throw InputError("tokenizer file '" + path + "' uses normalizer '" + t + "' (" + supported + ")");
      }
    };
    if (norm.is_null()) {
      opts_.clean_text = opts_.handle_chinese_chars = opts_.lowercase = false;
      opts_.strip_accents = 0;
    } else {
      apply_normalizer(norm, apply_normalizer);
    }
    const json pre = j.value("pre_tokenizer", json());
    if (!pre.is_null()) {
      std::string t = pre.value("type", std::string());
      if (t == "Sequence" && pre.contains("pretokenizers") && pre.at("pretokenizers").size() == 1)
        t = pre.at("pretokenizers").at(0).value("type", std::string());
      if (t != "BertPreTokenizer")
        throw InputError("tokenizer file '" + path + "' uses pre_tokenizer '" + t + "' (" + supported + ")");
    }
    const json post = j.value("post_processor", json());
    if (post.is_object() && post.value("type", std::string()) == "BertProcessing") {
      if (post.contains("cls") && post.at("cls").is_array() && !post.at("cls").empty())
        cls = post.at("cls").at(0).get<std::string>();
      if (post.contains("sep") && post.at("sep").is_array() && !post.at("sep").empty())
        sep = post.at("sep").at(0).get<std::string>();
    } else if (post.is_object() && post.value("type", std::string()) == "TemplateProcessing" &&
               post.contains("single") && post.at("single").is_array()) {
      const json& single = post.at("single");
      if (!single.empty() && single.front().contains("SpecialToken"))
        cls = single.front().at("SpecialToken").at("id").get<std::string>();
      if (single.size() > 1 && single.back().contains("SpecialToken"))
        sep = single.back().at("SpecialToken").at("id").get<std::string>();
    }
    if (j.contains("padding") && j.at("padding").is_object() && j.at("padding").contains("pad_token"))
      pad = j.at("padding").value("pad_token", pad);
    specials_ = added;
  } catch (const json::exception& e) {
    throw InputError("tokenizer file '" + path + "' has an unexpected layout (" + e.what() + "; " + supported + ")");
  }
  init_specials(cls, sep, pad, mask);
}

void WordPieceTokenizer::init_specials(const std::string& cls, const std::string& sep, const std::string& pad,
                                       const std::string& mask) {
  unk_id_ = token_id(opts_.unk_token);
  if (unk_id_ < 0)
    throw InputError("tokenizer '" + path_ + "' has no unknown token '" + opts_.unk_token +
                     "' in its vocabulary (WordPiece needs one)");
  cls_id_ = token_id(cls);
  sep_id_ = token_id(sep);
  pad_id_ = token_id(pad);
  for (const auto& s : {opts_.unk_token, cls, sep, pad, mask})
    if (token_id(s) >= 0 && std::find(specials_.begin(), specials_.end(), s) == specials_.end())
      specials_.push_back(s);
  std::sort(specials_.begin(), specials_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  is_special_.assign(id_to_token_.size(), 0);
  for (const auto& s : specials_)
    if (int32_t id = token_id(s); id >= 0) is_special_[static_cast<size_t>(id)] = 1;
}

int32_t WordPieceTokenizer::token_id(const std::string& t) const {
  auto it = vocab_.find(t);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string& WordPieceTokenizer::token(int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw InputError("token id " + std::to_string(id) + " is out of range for tokenizer '" + path_ + "' (" +
                     std::to_string(vocab_size()) + " tokens)");
  return id_to_token_[static_cast<size_t>(id)];
}

std::vector<std::string> WordPieceTokenizer::pre_tokenize(const std::string& text) const {
  std::vector<uint32_t> cps = utf8_codepoints(text);
  std::vector<uint32_t> a;
  a.reserve(cps.size());
  for (uint32_t c : cps) {
    if (opts_.clean_text) {
      if (c == 0 || c == 0xFFFD || is_control(c)) continue;
      if (is_whitespace(c)) c = ' ';
    }
    if (opts_.handle_chinese_chars && is_chinese_char(c)) {
      a.push_back(' ');
      a.push_back(c);
      a.push_back(' ');
    } else {
      a.push_back(c);
    }
  }
  const bool strip = opts_.strip_accents < 0 ? opts_.lowercase : opts_.strip_accents == 1;
  if (strip) {
    std::vector<uint32_t> b;
    b.reserve(a.size());
    for (uint32_t c : a)
      if (uint32_t s = strip_accent(c); s != 0) b.push_back(s);
    a.swap(b);
  }
  if (opts_.lowercase) {
    std::vector<uint32_t> b;
    b.reserve(a.size());
    for (uint32_t c : a) append_lower(b, c);
    a.swap(b);
  }
  std::vector<std::string> words;
  std::string cur;
  auto flush = [&] {
    if (!cur.empty()) words.push_back(cur);
    cur.clear();
  };
  for (uint32_t c : a) {
    if (is_whitespace(c)) {
      flush();
    } else if (is_punctuation(c)) {
      flush();
      util::append_utf8(cur, c);
      flush();
    } else {
      util::append_utf8(cur, c);
    }
  }
  flush();
  return words;
}

void WordPieceTokenizer::word_pieces(const std::string& word, std::vector<int32_t>& out) const {
  const std::vector<uint32_t> cps = utf8_codepoints(word);
  if (static_cast<int64_t>(cps.size()) > opts_.max_input_chars_per_word) {
    out.push_back(unk_id_);
    return;
  }
  // Byte offset of each codepoint boundary, so substrings stay whole characters.
  std::vector<size_t> off{0};
  for (uint32_t c : cps) {
    std::string tmp;
    util::append_utf8(tmp, c);
    off.push_back(off.back() + tmp.size());
  }
  std::vector<int32_t> pieces;
  size_t start = 0;
  while (start < cps.size()) {
    int32_t found = -1;
    size_t end = cps.size();
    for (; end > start; --end) {
      std::string sub = word.substr(off[start], off[end] - off[start]);
      if (start > 0) sub = opts_.continuing_subword_prefix + sub;
      if (int32_t id = token_id(sub); id >= 0) {
        found = id;
        break;
      }
    }
    if (found < 0) {
      out.push_back(unk_id_);
      return;
    }
    pieces.push_back(found);
    start = end;
  }
  out.insert(out.end(), pieces.begin(), pieces.end());
}

void WordPieceTokenizer::encode_plain(const std::string& text, std::vector<int32_t>& out) const {
  for (const auto& w : pre_tokenize(text)) word_pieces(w, out);
}

std::vector<int32_t> WordPieceTokenizer::encode(const std::string& text, bool add_bos, bool add_eos) const {
  std::vector<int32_t> out;
  if (add_bos && cls_id_ >= 0) out.push_back(cls_id_);
  size_t seg = 0, i = 0;
  while (i < text.size()) {
    const std::string* hit = nullptr;
    for (const auto& s : specials_)
      if (!s.empty() && text.compare(i, s.size(), s) == 0) {
        hit = &s;
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    encode_plain(text.substr(seg, i - seg), out);
    out.push_back(token_id(*hit));
    i += hit->size();
    seg = i;
  }
  encode_plain(text.substr(seg), out);
  if ((add_bos || add_eos) && sep_id_ >= 0) out.push_back(sep_id_);
  return out;
}

std::string WordPieceTokenizer::decode_piece(int32_t prev, int32_t id) const {
  const std::string& t = token(id);
  if (is_special_[static_cast<size_t>(id)]) return "";
  const std::string& pre = opts_.continuing_subword_prefix;
  if (!pre.empty() && t.compare(0, pre.size(), pre) == 0) return t.substr(pre.size());
  const bool first = prev < 0 || prev >= vocab_size() || is_special_[static_cast<size_t>(prev)];
  return first ? t : " " + t;
}

std::string WordPieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  int32_t prev = -1;
  for (int32_t id : ids) {
    token(id);  // range check
    if (is_special_[static_cast<size_t>(id)]) continue;
    s += decode_piece(s.empty() ? -1 : prev, id);
    prev = id;
  }
  // clean_up_tokenization_spaces
  static const std::pair<const char*, const char*> kCleanup[] = {
      {" .", "."},    {" ?", "?"},    {" !", "!"},     {" ,", ","},    {" ' ", "'"},
      {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kCleanup) {
    const std::string f(from), t(to);
    size_t pos = 0;
    while ((pos = s.find(f, pos)) != std::string::npos) {
      s.replace(pos, f.size(), t);
      pos += t.size();
    }
  }
  return s;
}

}  // namespace mpqat::data
