// Merge-by-score BPE shared by llama2.c tokenizer.bin and SentencePiece BPE models: repeatedly
// merge the adjacent pair whose concatenated text is a known piece with the highest score,
// leftmost on ties (llama2.c run.c `encode`, SentencePiece bpe_model.cc). O(n log n) with a
// heap instead of llama2.c's O(n^2) rescans.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

namespace mpqat::data {

class ScoreBpe {
 public:
  struct Symbol {
    int32_t id = -1;      // piece id, or -1 for text that is no mergeable piece
    std::string text;     // the symbol's text when id < 0 (pieces()[id] otherwise)
    bool frozen = false;  // never merged with a neighbour (SentencePiece user-defined pieces)
  };

  ScoreBpe() = default;
  // `mergeable[i] != 0`: piece i may be the result of a merge and is found by find() (the
  // lowest id wins for a repeated piece). `resegment[i] != 0` (may be empty): after merging, a
  // symbol with that id is split back into the pair that formed it (SentencePiece UNUSED
  // pieces). Pairs whose merged piece scores <= `min_score` are never merged.
  ScoreBpe(std::vector<std::string> pieces, std::vector<float> scores,
           const std::vector<char>& mergeable, std::vector<char> resegment = {},
           float min_score = -std::numeric_limits<float>::infinity());

  // Id of the exact mergeable piece, or -1.
  int32_t find(const std::string& piece) const;
  const std::string& piece(int32_t id) const { return pieces_.at(static_cast<size_t>(id)); }
  float score(int32_t id) const { return scores_.at(static_cast<size_t>(id)); }
  int32_t size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& text(const Symbol& s) const {
    return s.id >= 0 ? pieces_[static_cast<size_t>(s.id)] : s.text;
  }

  // The merged symbol sequence of `symbols`.
  std::vector<Symbol> merge(std::vector<Symbol> symbols) const;

 private:
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<char> resegment_;
  float min_score_ = -std::numeric_limits<float>::infinity();
  std::unordered_map<std::string, int32_t> index_;
};

}  // namespace mpqat::data
