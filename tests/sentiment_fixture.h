// Tiny sentiment fixtures shared by tests: OPT / BERT classifier configs, a WordPiece vocabulary
// and separable "one polar word among neutral ones" data (label 1 = a positive word).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace mpqat::testing {

using nlohmann::json;

inline json opt_json(bool classifier, int64_t vocab) {
  json j{{"architectures", {classifier ? "OPTForSequenceClassification" : "OPTForCausalLM"}},
         {"model_type", "opt"},
         {"hidden_size", 32},
         {"ffn_dim", 64},
         {"num_hidden_layers", 2},
         {"num_attention_heads", 4},
         {"vocab_size", vocab},
         {"max_position_embeddings", 32},
         {"word_embed_proj_dim", 32},
         {"do_layer_norm_before", true},
         {"activation_function", "relu"},
         {"pad_token_id", 0}};
  if (classifier) j["num_labels"] = 2;
  return j;
}

inline json bert_json(int64_t vocab) {
  return json{{"architectures", {"BertForSequenceClassification"}},
              {"model_type", "bert"},
              {"hidden_size", 32},
              {"intermediate_size", 64},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"vocab_size", vocab},
              {"max_position_embeddings", 32},
              {"type_vocab_size", 2},
              {"layer_norm_eps", 1e-12},
              {"hidden_act", "gelu"},
              {"pad_token_id", 0},
              {"num_labels", 2}};
}

// Sentiment-like data: neutral filler words with one polar word; label 1 for a positive one.
inline const std::vector<std::string> kNeutral = {"the", "a",     "movie", "film", "was",  "is",   "very",  "quite",
                                           "plot", "story", "it",    "this", "and",  "cast", "really", "so"};
inline const std::vector<std::string> kPositive = {"good", "great", "fine", "lovely"};
inline const std::vector<std::string> kNegative = {"bad", "awful", "poor", "dull"};

inline std::vector<std::string> sentiment_vocab() {
  std::vector<std::string> v = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (const auto* list : {&kNeutral, &kPositive, &kNegative}) v.insert(v.end(), list->begin(), list->end());
  return v;
}

inline void sentiment_data(int n, uint64_t seed, std::vector<std::string>& texts, std::vector<int64_t>& labels) {
  std::mt19937 rng(seed);
  for (int i = 0; i < n; ++i) {
    const int64_t y = static_cast<int64_t>(rng() % 2);
    const int len = 3 + static_cast<int>(rng() % 6);
    std::vector<std::string> words;
    for (int k = 0; k < len; ++k) words.push_back(kNeutral[rng() % kNeutral.size()]);
    const auto& polar = y ? kPositive : kNegative;
    words.insert(words.begin() + static_cast<long>(rng() % (words.size() + 1)), polar[rng() % polar.size()]);
    std::string t;
    for (const auto& w : words) t += (t.empty() ? "" : " ") + w;
    texts.push_back(t);
    labels.push_back(y);
  }
}

}  // namespace mpqat::testing
