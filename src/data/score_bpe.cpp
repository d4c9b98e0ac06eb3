#include "mpqat/data/score_bpe.h"

#include <functional>
#include <queue>
#include <utility>

namespace mpqat::data {

ScoreBpe::ScoreBpe(std::vector<std::string> pieces, std::vector<float> scores,
                   const std::vector<char>& mergeable, std::vector<char> resegment,
                   float min_score)
    : pieces_(std::move(pieces)),
      scores_(std::move(scores)),
      resegment_(std::move(resegment)),
      min_score_(min_score) {
  scores_.resize(pieces_.size(), 0.0f);
  resegment_.resize(pieces_.size(), 0);
  index_.reserve(pieces_.size());
  for (size_t i = 0; i < pieces_.size(); ++i)
    if (i < mergeable.size() && mergeable[i])
      index_.emplace(pieces_[i], static_cast<int32_t>(i));  // emplace keeps the lowest id
}

int32_t ScoreBpe::find(const std::string& piece) const {
  auto it = index_.find(piece);
  return it == index_.end() ? -1 : it->second;
}

std::vector<ScoreBpe::Symbol> ScoreBpe::merge(std::vector<Symbol> syms) const {
  // A doubly linked list over the symbols and a max-heap of candidate pairs keyed (score desc,
  // left position asc). Merging keeps the left node, so list order equals index order and the
  // heap top is exactly the "best score, leftmost" pair. Stale entries are detected by
  // per-node version counters.
  const int n = static_cast<int>(syms.size());
  if (n < 2) return syms;
  std::vector<int> prev(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  std::vector<uint32_t> ver(static_cast<size_t>(n), 0);
  std::vector<char> alive(static_cast<size_t>(n), 1);
  for (int i = 0; i < n; ++i) {
    prev[static_cast<size_t>(i)] = i - 1;
    next[static_cast<size_t>(i)] = i + 1 < n ? i + 1 : -1;
  }
  struct Cand {
    float score;
    int left, right;
    uint32_t vl, vr;
    int32_t id;
  };
  auto worse = [](const Cand& a, const Cand& b) {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  };
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse);
  // SentencePiece remembers, per resegmented piece, the last pair that could form it.
  std::unordered_map<int32_t, std::pair<std::string, std::string>> rev_merge;
  std::string buf;
  auto push = [&](int l, int r) {
    if (l < 0 || r < 0) return;
    const Symbol& a = syms[static_cast<size_t>(l)];
    const Symbol& b = syms[static_cast<size_t>(r)];
    if (a.frozen || b.frozen) return;
    buf = text(a);
    buf += text(b);
    const int32_t id = find(buf);
    if (id < 0) return;
    const float s = scores_[static_cast<size_t>(id)];
    if (!(s > min_score_)) return;
    heap.push(Cand{s, l, r, ver[static_cast<size_t>(l)], ver[static_cast<size_t>(r)], id});
    if (resegment_[static_cast<size_t>(id)]) rev_merge[id] = {text(a), text(b)};
  };
  for (int i = 0; i + 1 < n; ++i) push(i, i + 1);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    const auto l = static_cast<size_t>(c.left), r = static_cast<size_t>(c.right);
    if (!alive[l] || !alive[r] || next[l] != c.right || ver[l] != c.vl || ver[r] != c.vr)
      continue;
    syms[l].id = c.id;
    syms[l].text.clear();
    ++ver[l];
    alive[r] = 0;
    next[l] = next[r];
    if (next[r] >= 0) prev[static_cast<size_t>(next[r])] = c.left;
    push(prev[l], c.left);
    push(c.left, next[l]);
  }
  std::vector<Symbol> out;
  out.reserve(static_cast<size_t>(n));
  if (rev_merge.empty()) {
    for (int i = 0; i >= 0; i = next[static_cast<size_t>(i)])
      out.push_back(std::move(syms[static_cast<size_t>(i)]));
    return out;
  }
  std::function<void(Symbol)> emit = [&](Symbol s) {
    if (s.id >= 0 && resegment_[static_cast<size_t>(s.id)]) {
      auto it = rev_merge.find(s.id);
      if (it != rev_merge.end()) {
        const auto parts = it->second;  // copied: `emit` recurses
        for (const std::string* p : {&parts.first, &parts.second}) {
          Symbol part;
          part.id = find(*p);
          if (part.id < 0) part.text = *p;
          emit(std::move(part));
        }
        return;
      }
    }
    out.push_back(std::move(s));
  };
  for (int i = 0; i >= 0; i = next[static_cast<size_t>(i)]) emit(std::move(syms[static_cast<size_t>(i)]));
  return out;
}

}  // namespace mpqat::data
