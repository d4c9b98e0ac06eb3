#include "mpqat/data/hf_tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <queue>
#include <sstream>
#include <nlohmann/json.hpp>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::data {

namespace {

using json = nlohmann::json;

struct Cp {
  uint32_t cp;
  size_t pos, len;  // byte span in the source string
};

// Invalid bytes become U+FFFD spans of one byte so every input byte is covered.
std::vector<Cp> utf8_decode(const std::string& s) {
  std::vector<Cp> out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = len > 0 && i + len <= s.size();
    for (size_t k = 1; ok && k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if (!ok) {
      out.push_back(Cp{0xFFFD, i, 1});
      ++i;
    } else {
      out.push_back(Cp{cp, i, len});
      i += len;
    }
  }
  return out;
}


// \s as Unicode White_Space.
bool is_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool is_digit(uint32_t c) { return c >= '0' && c <= '9'; }

// Approximate \p{L}: see the header. Non-ASCII blocks of punctuation, symbols, combining
// marks, spaces and emoji are "other"; everything else non-ASCII counts as a letter.
bool is_letter(uint32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  if (is_space(c)) return false;
  if (c <= 0xBF) return c == 0xAA || c == 0xB5 || c == 0xBA;
  if (c == 0xD7 || c == 0xF7) return false;
  if (c >= 0x0300 && c <= 0x036F) return false;  // combining diacritics
  if (c >= 0x2000 && c <= 0x2BFF) return false;  // punctuation, currency, arrows, math, box
  if (c >= 0x2E00 && c <= 0x2E7F) return false;  // supplemental punctuation
  if (c >= 0x3000 && c <= 0x303F) return false;  // CJK punctuation
  if (c >= 0xFE00 && c <= 0xFE0F) return false;  // variation selectors
  if (c >= 0xFE30 && c <= 0xFE4F) return false;
  if (c >= 0xFF01 && c <= 0xFF20) return false;  // fullwidth punctuation / digits
  if (c >= 0xFF3B && c <= 0xFF40) return false;
  if (c >= 0xFF5B && c <= 0xFF65) return false;
  if (c == 0xFFFD || c == 0xFEFF) return false;
  if (c >= 0x1F000 && c <= 0x1FAFF) return false;  // emoji and pictographs
  if (c >= 0xE0000 && c <= 0xE007F) return false;  // tags
  return true;
}

bool is_other(uint32_t c) { return !is_space(c) && !is_letter(c) && !is_digit(c); }

uint32_t lower_ascii(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Length in codepoints of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
size_t contraction_at(const std::vector<Cp>& cps, size_t i, bool ignore_case) {
  if (cps[i].cp != '\'' || i + 1 >= cps.size()) return 0;
  auto ch = [&](size_t k) -> uint32_t {
    if (k >= cps.size()) return 0;
    return ignore_case ? lower_ascii(cps[k].cp) : cps[k].cp;
  };
  const uint32_t a = ch(i + 1), b = ch(i + 2);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

template <class Pred>
size_t run_end(const std::vector<Cp>& cps, size_t j, Pred pred) {
  while (j < cps.size() && pred(cps[j].cp)) ++j;
  return j;
}

// End of the whitespace alternatives `\s+(?!\S)|\s+` starting at i (cps[i] is a space).
size_t space_match(const std::vector<Cp>& cps, size_t i) {
  const size_t k = run_end(cps, i, is_space);
  if (k == cps.size() || k - i < 2) return k;
  return k - 1;  // leave the last space to prefix the next word
}

std::vector<std::string> pieces_from_ends(const std::string& text, const std::vector<Cp>& cps,
                                          const std::vector<size_t>& ends) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t e : ends) {
    const size_t b0 = cps[start].pos;
    const size_t b1 = e < cps.size() ? cps[e].pos : text.size();
    out.push_back(text.substr(b0, b1 - b0));
    start = e;
  }
  return out;
}

void for_each_ancestor(const json& node, const char* list_key,
                       const std::function<void(const json&)>& fn) {
  if (node.is_null()) return;
  if (node.value("type", std::string()) == "Sequence" && node.contains(list_key)) {
    for (const auto& child : node.at(list_key)) for_each_ancestor(child, list_key, fn);
    return;
  }
  fn(node);
}

std::string token_content(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v.at("content").get<std::string>();
  return "";
}

}  // namespace

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
std::vector<std::string> regex_split_gpt2(const std::string& text) {
  const std::vector<Cp> cps = utf8_decode(text);
  std::vector<size_t> ends;
  size_t i = 0;
  const size_t n = cps.size();
  while (i < n) {
    size_t e = 0;
    if (size_t c = contraction_at(cps, i, false)) {
      e = i + c;
    } else {
      const size_t j = cps[i].cp == ' ' ? i + 1 : i;
      if (j < n && is_letter(cps[j].cp)) e = run_end(cps, j, is_letter);
      else if (j < n && is_digit(cps[j].cp)) e = run_end(cps, j, is_digit);
      else if (j < n && is_other(cps[j].cp)) e = run_end(cps, j, is_other);
      else e = space_match(cps, i);
    }
    ends.push_back(e);
    i = e;
  }
  return pieces_from_ends(text, cps, ends);
}

// Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//          ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
std::vector<std::string> regex_split_llama3(const std::string& text) {
  const std::vector<Cp> cps = utf8_decode(text);
  auto is_nl = [](uint32_t c) { return c == '\r' || c == '\n'; };
  std::vector<size_t> ends;
  size_t i = 0;
  const size_t n = cps.size();
  while (i < n) {
    const uint32_t c = cps[i].cp;
    size_t e = 0;
    if (size_t k = contraction_at(cps, i, true)) {
      e = i + k;
    } else if (is_letter(c)) {
      e = run_end(cps, i, is_letter);
    } else if (!is_nl(c) && !is_digit(c) && i + 1 < n && is_letter(cps[i + 1].cp)) {
      e = run_end(cps, i + 1, is_letter);
    } else if (is_digit(c)) {
      e = i + 1;
      while (e < n && e - i < 3 && is_digit(cps[e].cp)) ++e;
    } else {
      const size_t j = c == ' ' ? i + 1 : i;
      if (j < n && is_other(cps[j].cp)) {
        e = run_end(cps, j, is_other);
        e = run_end(cps, e, is_nl);
      } else {
        const size_t k = run_end(cps, i, is_space);
        size_t last_nl = n;
        for (size_t m = i; m < k; ++m)
          if (is_nl(cps[m].cp)) last_nl = m;
        e = last_nl < n ? last_nl + 1 : space_match(cps, i);
      }
    }
    ends.push_back(e);
    i = e;
  }
  return pieces_from_ends(text, cps, ends);
}

HfBpeTokenizer::HfBpeTokenizer(const std::string& json_path) : path_(json_path) {
  std::ifstream in(json_path, std::ios::binary);
  if (!in) throw InputError("cannot open tokenizer file '" + json_path + "'");
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    throw InputError("tokenizer file '" + json_path + "' is not valid JSON (" + e.what() + ")");
  }
  const std::string supported =
      "supported: model type BPE, byte-level (GPT-2/OPT/Llama-3) or SentencePiece-style with "
      "byte_fallback (Llama-2)";
  for (int b = 0; b < 256; ++b) byte_ids_[b] = -1;
  try {
    if (!j.is_object() || !j.contains("model") || !j.at("model").is_object())
      throw InputError("tokenizer file '" + json_path + "' has no \"model\" object (" +
                       supported + ")");
    const json& model = j.at("model");
    std::string type = model.value("type", std::string());
    if (type.empty() && model.contains("merges")) type = "BPE";
    if (type == "WordPiece")
      throw InputError("tokenizer file '" + json_path + "' has model type WordPiece, which this BPE "
                       "reader does not handle (open it with data::load_tokenizer or WordPieceTokenizer)");
    if (type != "BPE")
      throw InputError("tokenizer file '" + json_path + "' has model type '" + type +
                       "', which is not supported (" + supported + "; WordPiece through load_tokenizer)");
    if (!model.contains("vocab") || !model.at("vocab").is_object())
      throw InputError("tokenizer file '" + json_path + "' has no model.vocab object");

    read_vocab(j);
    read_merges(model);
    read_model_flags(model, supported);
    build_byte_maps();
    read_pipeline(j, supported);
    read_special_tokens(j);
  } catch (const json::exception& e) {
    throw InputError("tokenizer file '" + json_path + "' has an unexpected layout (" + e.what() +
                     "; " + supported + ")");
  }
}

// Vocab and added tokens: the id maps and which ids are special.
void HfBpeTokenizer::read_vocab(const json& j) {
  const json& model = j.at("model");
  int32_t max_id = -1;
  for (auto it = model.at("vocab").begin(); it != model.at("vocab").end(); ++it) {
    const int32_t id = it.value().get<int32_t>();
    if (id < 0) throw InputError("tokenizer file '" + path_ + "' has a negative id for '" + it.key() + "'");
    vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  if (j.contains("added_tokens") && j.at("added_tokens").is_array()) {
    for (const auto& t : j.at("added_tokens")) {
      AddedToken a{t.at("content").get<std::string>(), t.at("id").get<int32_t>(),
                   t.value("special", false)};
      if (a.id < 0 || a.content.empty()) continue;
      vocab_.emplace(a.content, a.id);
      max_id = std::max(max_id, a.id);
      added_.push_back(a);
    }
  }
  id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
  is_special_.assign(static_cast<size_t>(max_id + 1), 0);
  for (const auto& [tok, id] : vocab_) id_to_token_[static_cast<size_t>(id)] = tok;
  for (const auto& a : added_) {
    id_to_token_[static_cast<size_t>(a.id)] = a.content;
    is_special_[static_cast<size_t>(a.id)] = a.special ? 1 : 2;
  }
  std::stable_sort(added_.begin(), added_.end(), [](const AddedToken& x, const AddedToken& y) {
    return x.content.size() > y.content.size();
  });
}

// Merges: "a b" strings or [a, b] arrays; rank = position.
void HfBpeTokenizer::read_merges(const json& model) {
  if (model.contains("merges") && model.at("merges").is_array()) {
    int32_t rank = 0;
    for (const auto& m : model.at("merges")) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ', 1);
        if (sp == std::string::npos)
          throw InputError("tokenizer file '" + path_ + "' has merge " +
                           std::to_string(rank) + " '" + s + "' without a space separator");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2) {
        a = m.at(0).get<std::string>();
        b = m.at(1).get<std::string>();
      } else {
        throw InputError("tokenizer file '" + path_ + "' has merge " + std::to_string(rank) +
                         " that is neither \"a b\" nor [a, b]");
      }
      const int32_t ia = token_id(a), ib = token_id(b), ic = token_id(a + b);
      if (ia < 0 || ib < 0 || ic < 0)
        throw InputError("tokenizer file '" + path_ + "' has merge " + std::to_string(rank) +
                         " ('" + a + "', '" + b + "') whose pieces are not in the vocab");
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(ia)) << 32) |
                           static_cast<uint32_t>(ib);
      merges_.emplace(key, std::make_pair(rank, ic));  // first (lowest rank) wins
      ++rank;
    }
  }
}

void HfBpeTokenizer::read_model_flags(const json& model, const std::string& supported) {
  byte_fallback_ = model.value("byte_fallback", false);
  fuse_unk_ = model.value("fuse_unk", false);
  ignore_merges_ = model.value("ignore_merges", false);
  if (model.contains("unk_token") && model.at("unk_token").is_string())
    unk_id_ = token_id(model.at("unk_token").get<std::string>());
  if (!model.value("continuing_subword_prefix", json()).is_null() &&
      !model.at("continuing_subword_prefix").get<std::string>().empty())
    throw InputError("tokenizer file '" + path_ +
                     "' uses continuing_subword_prefix, which is not supported (" + supported + ")");
  if (!model.value("end_of_word_suffix", json()).is_null() &&
      !model.at("end_of_word_suffix").get<std::string>().empty())
    throw InputError("tokenizer file '" + path_ +
                     "' uses end_of_word_suffix, which is not supported (" + supported + ")");
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    byte_ids_[b] = token_id(name);
  }
}

// bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest map to 256+n.
void HfBpeTokenizer::build_byte_maps() {
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = keep ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + next++);
    byte_to_char_[b].clear();
    util::append_utf8(byte_to_char_[b], cp);
    char_to_byte_[cp] = b;
  }
}

// Normalizer, pre-tokenizer and decoder: the supported pieces, anything else refused by name.
void HfBpeTokenizer::read_pipeline(const json& j, const std::string& supported) {
  auto unsupported = [&](const std::string& what, const std::string& t) {
    return InputError("tokenizer file '" + path_ + "' uses " + what + " '" + t +
                      "', which is not supported (" + supported + ")");
  };
  if (j.contains("normalizer"))
    for_each_ancestor(j.at("normalizer"), "normalizers", [&](const json& n) {
      const std::string t = n.value("type", std::string());
      if (t == "Prepend") {
        norm_ops_.push_back(NormOp{true, "", n.at("prepend").get<std::string>()});
      } else if (t == "Replace") {
        const json& pat = n.at("pattern");
        if (!pat.contains("String")) throw unsupported("a regex Replace normalizer", pat.dump());
        norm_ops_.push_back(NormOp{false, pat.at("String").get<std::string>(),
                                   n.at("content").get<std::string>()});
      } else {
        throw unsupported("normalizer", t);
      }
    });
  if (j.contains("pre_tokenizer"))
    for_each_ancestor(j.at("pre_tokenizer"), "pretokenizers", [&](const json& p) {
      const std::string t = p.value("type", std::string());
      if (t == "ByteLevel") {
        byte_level_ = true;
        add_prefix_space_ = p.value("add_prefix_space", false);
        if (p.value("use_regex", true) && split_ == Split::kNone) split_ = Split::kGpt2;
      } else if (t == "Split") {
        const json& pat = p.at("pattern");
        const std::string re = pat.contains("Regex") ? pat.at("Regex").get<std::string>() : "";
        if (re.find("\\p{N}{1,3}") != std::string::npos) split_ = Split::kLlama3;
        else if (re.find("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+") != std::string::npos)
          split_ = Split::kGpt2;
        else throw unsupported("Split pattern", pat.dump());
      } else if (t == "Metaspace") {
        metaspace_ = true;
        meta_replacement_ = p.value("replacement", meta_replacement_);
        if (p.contains("prepend_scheme")) meta_prepend_scheme_ = p.at("prepend_scheme").get<std::string>();
        else meta_prepend_scheme_ = p.value("add_prefix_space", true) ? "always" : "never";
        meta_split_ = p.value("split", true);
      } else {
        throw unsupported("pre_tokenizer", t);
      }
    });
  if (j.contains("decoder"))
    for_each_ancestor(j.at("decoder"), "decoders", [&](const json& d) {
      const std::string t = d.value("type", std::string());
      if (t == "ByteLevel") byte_level_ = true;
      if (t == "Strip" && d.value("content", std::string()) == " " && d.value("start", 0) >= 1)
        strip_leading_space_ = true;
      if (t == "Metaspace") {
        std::string scheme = d.contains("prepend_scheme")
                                 ? d.at("prepend_scheme").get<std::string>()
                                 : (d.value("add_prefix_space", true) ? "always" : "never");
        if (scheme != "never") strip_leading_space_ = true;
      }
    });
}

// BOS / EOS: tokenizer_config.json, else the post-processor template, else known names.
void HfBpeTokenizer::read_special_tokens(const json& j) {
  namespace fs = std::filesystem;
  bool have_add_bos = false;
  const fs::path cfg = fs::path(path_).parent_path() / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    std::ifstream cin(cfg);
    json c;
    try {
      c = json::parse(cin);
    } catch (const json::parse_error& e) {
      throw InputError("tokenizer config '" + cfg.string() + "' is not valid JSON (" + e.what() + ")");
    }
    if (c.contains("bos_token")) bos_id_ = token_id(token_content(c.at("bos_token")));
    if (c.contains("eos_token")) eos_id_ = token_id(token_content(c.at("eos_token")));
    if (c.contains("add_bos_token") && c.at("add_bos_token").is_boolean()) {
      default_add_bos_ = c.at("add_bos_token").get<bool>();
      have_add_bos = true;
    }
  }
  int32_t template_bos = -1;
  if (j.contains("post_processor"))
    for_each_ancestor(j.at("post_processor"), "processors", [&](const json& p) {
      if (p.value("type", std::string()) != "TemplateProcessing" || !p.contains("single")) return;
      const json& single = p.at("single");
      if (!single.empty() && single.at(0).contains("SpecialToken"))
        template_bos = token_id(single.at(0).at("SpecialToken").at("id").get<std::string>());
    });
  if (bos_id_ < 0) bos_id_ = template_bos;
  auto first_of = [&](std::initializer_list<const char*> names) {
    for (const char* nm : names)
      if (int32_t id = token_id(nm); id >= 0) return id;
    return -1;
  };
  const bool fairseq_layout = byte_level_ && token_id("<s>") == 0 && token_id("<pad>") == 1 &&
                              token_id("</s>") == 2;  // OPT: BOS is "</s>"
  if (bos_id_ < 0)
    bos_id_ = fairseq_layout ? 2 : first_of({"<s>", "<|begin_of_text|>", "<|endoftext|>"});
  if (eos_id_ < 0) eos_id_ = first_of({"</s>", "<|end_of_text|>", "<|endoftext|>"});
  if (!have_add_bos) default_add_bos_ = template_bos >= 0 || (!byte_level_ && bos_id_ >= 0);
}

int32_t HfBpeTokenizer::token_id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

void HfBpeTokenizer::bpe_word(const std::string& word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (int32_t id = token_id(word); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  std::vector<int32_t> sym;
  sym.reserve(word.size());
  auto push_unk = [&](const std::string& ch) {
    if (unk_id_ < 0)
      throw InputError("text piece '" + ch + "' is not in the vocabulary of '" + path_ +
                       "', which has no unk token or byte fallback");
    if (fuse_unk_ && !sym.empty() && sym.back() == unk_id_) return;
    sym.push_back(unk_id_);
  };
  for (const Cp& c : utf8_decode(word)) {
    const std::string ch = word.substr(c.pos, c.len);
    if (int32_t id = token_id(ch); id >= 0) {
      sym.push_back(id);
    } else if (byte_fallback_) {
      bool all = true;
      for (unsigned char b : ch) all = all && byte_ids_[b] >= 0;
      if (all)
        for (unsigned char b : ch) sym.push_back(byte_ids_[b]);
      else
        push_unk(ch);
    } else {
      push_unk(ch);
    }
  }
  const int n = static_cast<int>(sym.size());
  if (n >= 2 && !merges_.empty()) {
    // Lowest rank first, leftmost on ties; a popped entry is stale when the pair now at
    // its position would merge into something else.
    std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
    std::vector<char> alive(static_cast<size_t>(n), 1);
    for (int i = 0; i < n; ++i) {
      prev[static_cast<size_t>(i)] = i - 1;
      next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
    }
    struct Cand {
      int32_t rank;
      int pos;
      int32_t new_id;
    };
    auto worse = [](const Cand& a, const Cand& b) {
      return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    };
    std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
    auto lookup = [&](int l) -> const std::pair<int32_t, int32_t>* {
      const int r = next[static_cast<size_t>(l)];
      if (r < 0) return nullptr;
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(sym[static_cast<size_t>(l)])) << 32) |
                           static_cast<uint32_t>(sym[static_cast<size_t>(r)]);
      auto it = merges_.find(key);
      return it == merges_.end() ? nullptr : &it->second;
    };
    auto push = [&](int l) {
      if (l < 0) return;
      if (const auto* m = lookup(l)) heap.push(Cand{m->first, l, m->second});
    };
    for (int i = 0; i + 1 < n; ++i) push(i);
    while (!heap.empty()) {
      const Cand c = heap.top();
      heap.pop();
      const auto l = static_cast<size_t>(c.pos);
      if (!alive[l]) continue;
      const auto* m = lookup(c.pos);
      if (m == nullptr || m->second != c.new_id || m->first != c.rank) continue;
      const auto r = static_cast<size_t>(next[l]);
      sym[l] = c.new_id;
      alive[r] = 0;
      next[l] = next[r];
      if (next[r] >= 0) prev[static_cast<size_t>(next[r])] = c.pos;
      push(prev[l]);
      push(c.pos);
    }
    for (int i = 0; i >= 0; i = next[static_cast<size_t>(i)]) out.push_back(sym[static_cast<size_t>(i)]);
  } else {
    out.insert(out.end(), sym.begin(), sym.end());
  }
}

void HfBpeTokenizer::encode_segment(const std::string& seg, bool first_segment,
                                    std::vector<int32_t>& out) const {
  std::string s = seg;
  for (const NormOp& op : norm_ops_) {
    if (op.prepend) {
      if (!s.empty()) s = op.to + s;
    } else if (!op.from.empty()) {
      std::string r;
      size_t pos = 0;
      for (size_t f; (f = s.find(op.from, pos)) != std::string::npos; pos = f + op.from.size())
        r.append(s, pos, f - pos).append(op.to);
      r.append(s, pos, std::string::npos);
      s.swap(r);
    }
  }
  if (s.empty()) return;
  std::vector<std::string> words;
  if (byte_level_) {
    if (add_prefix_space_ && s[0] != ' ') s.insert(s.begin(), ' ');
    if (split_ == Split::kGpt2) words = regex_split_gpt2(s);
    else if (split_ == Split::kLlama3) words = regex_split_llama3(s);
    else words.push_back(s);
    for (const std::string& w : words) {
      std::string mapped;
      mapped.reserve(w.size() * 2);
      for (unsigned char b : w) mapped += byte_to_char_[b];
      bpe_word(mapped, out);
    }
    return;
  }
  if (metaspace_) {
    std::string r;
    for (char c : s) {
      if (c == ' ') r += meta_replacement_;
      else r.push_back(c);
    }
    const bool prepend = meta_prepend_scheme_ == "always" ||
                         (meta_prepend_scheme_ == "first" && first_segment);
    if (prepend && r.compare(0, meta_replacement_.size(), meta_replacement_) != 0)
      r = meta_replacement_ + r;
    if (meta_split_) {
      size_t start = 0;
      for (size_t f = r.find(meta_replacement_, 1); f != std::string::npos;
           f = r.find(meta_replacement_, f + meta_replacement_.size())) {
        words.push_back(r.substr(start, f - start));
        start = f;
      }
      words.push_back(r.substr(start));
    } else {
      words.push_back(r);
    }
  } else {
    words.push_back(s);
  }
  for (const std::string& w : words) bpe_word(w, out);
}

std::vector<int32_t> HfBpeTokenizer::encode(const std::string& text, bool add_bos,
                                            bool add_eos) const {
  std::vector<int32_t> out;
  if (add_bos && bos_id_ >= 0) out.push_back(bos_id_);
  // Added tokens are cut out first (longest match at the leftmost position), the text
  // between them is normalized and tokenized separately, as the tokenizers library does.
  size_t seg_start = 0, i = 0;
  while (i < text.size()) {
    const AddedToken* hit = nullptr;
    for (const AddedToken& a : added_) {
      if (a.content[0] == text[i] && text.compare(i, a.content.size(), a.content) == 0) {
        hit = &a;
        break;
      }
    }
    if (hit == nullptr) {
      ++i;
      continue;
    }
    if (i > seg_start) encode_segment(text.substr(seg_start, i - seg_start), seg_start == 0, out);
    out.push_back(hit->id);
    i += hit->content.size();
    seg_start = i;
  }
  if (seg_start < text.size()) encode_segment(text.substr(seg_start), seg_start == 0, out);
  if (add_eos && eos_id_ >= 0) out.push_back(eos_id_);
  return out;
}

std::string HfBpeTokenizer::token_text(int32_t id) const {
  const std::string& t = id_to_token_[static_cast<size_t>(id)];
  if (is_special_[static_cast<size_t>(id)] == 2) return t;  // added token: literal text
  if (byte_level_) {
    std::string out;
    for (const Cp& c : utf8_decode(t)) {
      auto it = char_to_byte_.find(c.cp);
      if (it != char_to_byte_.end()) out.push_back(static_cast<char>(it->second));
      else out.append(t, c.pos, c.len);
    }
    return out;
  }
  if (byte_fallback_ && t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' &&
      std::isxdigit(static_cast<unsigned char>(t[3])) &&
      std::isxdigit(static_cast<unsigned char>(t[4]))) {
    const int b = std::stoi(t.substr(3, 2), nullptr, 16);
    if (byte_ids_[b] == id) return std::string(1, static_cast<char>(b));
  }
  std::string out;
  size_t pos = 0;
  for (size_t f; (f = t.find(meta_replacement_, pos)) != std::string::npos;
       pos = f + meta_replacement_.size())
    out.append(t, pos, f - pos).push_back(' ');
  out.append(t, pos, std::string::npos);
  return out;
}

std::string HfBpeTokenizer::decode_piece(int32_t prev, int32_t id) const {
  if (id < 0 || id >= vocab_size())
    throw InputError("token id " + std::to_string(id) + " is out of range for tokenizer '" +
                     path_ + "' (vocab size " + std::to_string(vocab_size()) + ")");
  if (is_special_[static_cast<size_t>(id)] == 1) return "";
  std::string t = token_text(id);
  if (strip_leading_space_ && prev == bos_id_ && !t.empty() && t[0] == ' ') t.erase(0, 1);
  return t;
}

std::string HfBpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (int32_t id : ids) out += decode_piece(-1, id);
  if (strip_leading_space_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return out;
}

bool HfBpeTokenizer::prepends_space() const {
  for (const auto& op : norm_ops_)
    if (op.prepend) return true;
  return metaspace_ && meta_prepend_scheme_ != "never";
}

std::vector<std::pair<std::string, std::string>> HfBpeTokenizer::merges() const {
  std::vector<std::pair<int32_t, uint64_t>> by_rank;
  for (const auto& [pair, rk] : merges_) by_rank.emplace_back(rk.first, pair);
  std::sort(by_rank.begin(), by_rank.end());
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [rank, pair] : by_rank)
    out.emplace_back(token(static_cast<int32_t>(pair >> 32)), token(static_cast<int32_t>(pair & 0xFFFFFFFFu)));
  return out;
}

std::string HfBpeTokenizer::split_name() const {
  switch (split_) {
    case Split::kGpt2: return "gpt-2";
    case Split::kLlama3: return "llama-bpe";
    default: return "";
  }
}

std::vector<int32_t> HfBpeTokenizer::merge_rank_of_tokens() const {
  std::vector<int32_t> rank(id_to_token_.size(), -1);
  for (const auto& [pair, rk] : merges_) {
    (void)pair;
    auto& r = rank.at(static_cast<size_t>(rk.second));
    if (r < 0 || rk.first < r) r = rk.first;
  }
  return rank;
}

}  // namespace mpqat::data
