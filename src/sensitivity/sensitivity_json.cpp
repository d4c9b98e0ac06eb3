#include "mpqat/sensitivity/sensitivity_json.h"

#include <algorithm>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mpqat/util/strings.h"

namespace mpqat::sensitivity {
namespace {

struct BlockSum {
  double score = 0.0;
  std::map<std::string, double> omega;
};

std::map<int64_t, BlockSum> block_sums(const SensitivityReport& r) {
  std::map<int64_t, BlockSum> b;
  for (const auto& m : r.modules) {
    auto& s = b[m.block];
    s.score += m.score;
    for (const auto& [k, v] : m.omega) s.omega[k] += v;
  }
  return b;
}

}  // namespace

nlohmann::json sensitivity_to_json(const SensitivityReport& r) {
  nlohmann::json j;
  j["format"] = "mpqat.sensitivity";
  j["version"] = 1;
  j["model"] = {{"path", r.model_path}, {"architecture", r.architecture}, {"num_hidden_layers", r.num_hidden_layers}};
  nlohmann::json c = {{"path", r.calib_path}, {"samples", r.samples},     {"seqlen", r.seqlen},
                      {"seed", r.seed},       {"metrics", r.metrics},     {"mode", r.mode},
                      {"probe_bits", r.probe_bits}, {"group_size", r.group_size}, {"world_size", r.world_size},
                      {"score_metric", r.score_metric}};
  if (!r.sampling.empty()) c["sampling"] = r.sampling;
  j["calibration"] = c;
  nlohmann::json mods = nlohmann::json::object();
  for (const auto& m : r.modules) {
    nlohmann::json e;
    e["score"] = m.score;
    if (!m.omega.empty()) e["omega"] = m.omega;
    if (!m.metrics.empty()) e["metrics"] = m.metrics;
    mods[m.name] = e;
  }
  j["modules"] = mods;
  nlohmann::json blocks = nlohmann::json::object();
  for (const auto& [i, s] : block_sums(r)) {
    nlohmann::json e = {{"score", s.score}};
    if (!s.omega.empty()) e["omega"] = s.omega;
    if (i >= 0 && static_cast<size_t>(i) < r.block_stats.size()) {
      const auto& b = r.block_stats[static_cast<size_t>(i)];
      e["stats"] = {{"mean", b.mean}, {"std", b.std}, {"max_abs", b.max_abs}, {"sparsity", b.sparsity},
                    {"change", b.change}};
      if (b.attention.rows > 0) {
        const auto& a = b.attention;
        e["stats"]["attention"] = {{"entropy", a.entropy},
                                   {"entropy_std", a.entropy_std},
                                   {"specialisation", a.specialisation},
                                   {"max_entropy", a.max_entropy},
                                   {"rows", a.rows},
                                   {"head_entropy", a.head_entropy},
                                   {"head_specialisation", a.head_specialisation}};
      }
    }
    blocks[std::to_string(i)] = e;
  }
  j["blocks"] = blocks;
  return j;
}

std::string sensitivity_ranking_text(const SensitivityReport& r) {
  std::string out = fmt::format("# sensitivity of {} ({}), calibration {} ({} x {} tokens, seed {})\n",
                                r.model_path, r.architecture, r.calib_path, r.samples, r.seqlen, r.seed);
  if (r.score_metric == "fisher")
    out += fmt::format("# score = Omega at {}:{} = 1/2 sum F (W - Q(W))^2, higher = more sensitive\n",
                       r.probe_bits, r.group_size);
  else
    out += fmt::format("# score = {} (1 - similarity at probe {}:{}; '+' = mean normalised rank), "
                       "higher = more sensitive\n", r.score_metric, r.probe_bits, r.group_size);
  std::vector<std::size_t> idx(r.modules.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](std::size_t a, std::size_t b) { return r.modules[a].score > r.modules[b].score; });
  out += fmt::format("{:>5}  {:<48} {:>14}\n", "rank", "module", "score");
  for (std::size_t k = 0; k < idx.size(); ++k)
    out += fmt::format("{:>5}  {:<48} {:>14.6g}\n", k + 1, r.modules[idx[k]].name, r.modules[idx[k]].score);
  auto blocks = block_sums(r);
  std::vector<std::pair<int64_t, double>> bs;
  for (const auto& [i, s] : blocks) bs.emplace_back(i, s.score);
  std::stable_sort(bs.begin(), bs.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  out += fmt::format("\n{:>5}  {:<48} {:>14}\n", "rank", "block", "score");
  for (std::size_t k = 0; k < bs.size(); ++k)
    out += fmt::format("{:>5}  {:<48} {:>14.6g}\n", k + 1, bs[k].first, bs[k].second);
  return out;
}

std::string write_sensitivity(const SensitivityReport& r, const std::string& json_path) {
  util::write_file_atomic(json_path, sensitivity_to_json(r).dump(2) + "\n");
  std::string txt = json_path;
  if (util::ends_with(txt, ".json"))
    txt = txt.substr(0, txt.size() - 5) + ".txt";
  else
    txt += ".txt";
  util::write_file_atomic(txt, sensitivity_ranking_text(r));
  return txt;
}

}  // namespace mpqat::sensitivity
