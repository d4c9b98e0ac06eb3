// How texts become sequence-classifier inputs; one set of rules for evaluation
// (`mpqat eval --classify`, `mpqat run`), sensitivity, Block-AP calibration and `mpqat fit`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpqat/data/tokenizer.h"
#include "mpqat/model/config.h"

namespace mpqat::model {

// How texts become classifier inputs; the same rules `mpqat eval --classify` applies.
struct ClassifierEncoding {
  bool add_bos = true;           // prepend BOS / [CLS] (WordPiece also appends [SEP])
  int32_t pad_id = 0;            // id written into padded positions
  bool keep_last_token = false;  // truncation keeps the final token (BERT's [SEP])
  int64_t max_length = 512;
};
// The encoding `mpqat eval --classify` uses for a model with `cfg` and tokenizer `tok`: BOS when
// the tokenizer adds one by default, pad = config pad_token_id, else the WordPiece [PAD], else 0;
// keep_last_token for WordPiece; max_length = max_position_embeddings.
ClassifierEncoding classifier_encoding(const model::ModelConfig& cfg, const data::Tokenizer& tok);

// Token ids of each text under `enc` (truncated to enc.max_length).
std::vector<std::vector<int32_t>> encode_for_classifier(const data::Tokenizer& tok,
                                                        const std::vector<std::string>& texts,
                                                        const ClassifierEncoding& enc);

}  // namespace mpqat::model
