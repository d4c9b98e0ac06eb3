// Classifier inputs (include/mpqat/model/classifier_input.h).
#include "mpqat/model/classifier_input.h"

#include <algorithm>

#include "mpqat/data/hf_tokenizer.h"
#include "mpqat/data/wordpiece_tokenizer.h"

namespace mpqat::model {

ClassifierEncoding classifier_encoding(const ModelConfig& cfg, const data::Tokenizer& tok) {
  ClassifierEncoding e;
  if (const auto* bpe = dynamic_cast<const data::HfBpeTokenizer*>(&tok)) e.add_bos = bpe->default_add_bos();
  else e.add_bos = tok.bos_id() >= 0;
  int64_t pad = cfg.pad_token_id;
  const auto* wp = dynamic_cast<const data::WordPieceTokenizer*>(&tok);
  if (pad < 0 && wp) pad = wp->pad_id();
  e.pad_id = static_cast<int32_t>(std::max<int64_t>(pad, 0));
  e.keep_last_token = tok.kind() == "wordpiece";
  e.max_length = cfg.max_position_embeddings > 0 ? cfg.max_position_embeddings : 512;
  return e;
}

std::vector<std::vector<int32_t>> encode_for_classifier(const data::Tokenizer& tok, const std::vector<std::string>& texts,
                                                        const ClassifierEncoding& enc) {
  std::vector<std::vector<int32_t>> out;
  out.reserve(texts.size());
  for (const auto& t : texts) {
    auto ids = tok.encode(t, enc.add_bos);
    if (enc.max_length > 0 && static_cast<int64_t>(ids.size()) > enc.max_length) {
      const int32_t last = ids.back();
      ids.resize(static_cast<size_t>(enc.max_length));
      if (enc.keep_last_token) ids.back() = last;
    }
    if (ids.empty()) ids.push_back(enc.pad_id);  // an empty text still gets one position
    out.push_back(std::move(ids));
  }
  return out;
}

}  // namespace mpqat::model
