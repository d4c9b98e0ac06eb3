#include "mpqat/eval/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "mpqat/eval/classification.h"
#include "mpqat/eval/multiple_choice.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::eval {

namespace {


std::string num(const nlohmann::json& v, int digits = 4) {
  if (v.is_number_float()) return fmt::format("{:.{}f}", v.get<double>(), digits);
  if (v.is_number()) return v.dump();
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

}  // namespace

EvalReport::EvalReport(const std::string& model) { j_["model"] = model; }

void EvalReport::set_meta(const std::string& key, const nlohmann::json& value) { j_["meta"][key] = value; }

void EvalReport::add_multiple_choice(const MultipleChoiceResult& r) {
  j_["tasks"][r.task] = to_json(r);
}

void EvalReport::add_classification(const std::string& name, const ClassificationMetrics& m) {
  j_["classification"][name] = m.to_json();
}

void EvalReport::set_section(const std::string& name, const nlohmann::json& value) { j_[name] = value; }

std::string EvalReport::to_text() const {
  std::string out;
  if (j_.contains("model")) out += "model: " + num(j_["model"]) + "\n";
  if (j_.contains("meta"))
    for (auto it = j_["meta"].begin(); it != j_["meta"].end(); ++it) out += it.key() + ": " + num(it.value()) + "\n";
  if (j_.contains("tasks") && !j_["tasks"].empty()) {
    out += "\n";
    std::vector<std::vector<std::string>> rows{{"task", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}};
    for (auto it = j_["tasks"].begin(); it != j_["tasks"].end(); ++it) {
      const auto& t = it.value();
      rows.push_back({it.key(), num(t.value("n", nlohmann::json(0))), num(t.value("acc", nlohmann::json(0.0))),
                      num(t.value("acc_stderr", nlohmann::json(0.0))), num(t.value("acc_norm", nlohmann::json(0.0))),
                      num(t.value("acc_norm_stderr", nlohmann::json(0.0)))});
    }
    out += util::text_table(rows);
  }
  if (j_.contains("classification")) {
    for (auto it = j_["classification"].begin(); it != j_["classification"].end(); ++it) {
      const auto& c = it.value();
      out += "\n" + it.key() + ": n " + num(c["n"]) + "  accuracy " + num(c["accuracy"]);
      if (c.contains("f1"))
        out += "  precision " + num(c["precision"]) + "  recall " + num(c["recall"]) + "  f1 " + num(c["f1"]);
      out += "  macro_f1 " + num(c["macro_f1"]) + "\n";
      std::vector<std::vector<std::string>> rows{{"label", "precision", "recall", "f1", "support"}};
      for (const auto& e : c["per_class"])
        rows.push_back({num(e["label"]), num(e["precision"]), num(e["recall"]), num(e["f1"]), num(e["support"])});
      out += util::text_table(rows);
      std::vector<std::vector<std::string>> cm{{"true \\ pred"}};
      for (const auto& e : c["per_class"]) cm[0].push_back(num(e["label"]));
      for (std::size_t t = 0; t < c["confusion"].size(); ++t) {
        std::vector<std::string> row{num(c["per_class"][t]["label"])};
        for (const auto& v : c["confusion"][t]) row.push_back(num(v));
        cm.push_back(row);
      }
      out += util::text_table(cm);
    }
  }
  for (auto it = j_.begin(); it != j_.end(); ++it) {
    if (it.key() == "model" || it.key() == "meta" || it.key() == "tasks" || it.key() == "classification") continue;
    out += "\n" + it.key() + ": " + it.value().dump() + "\n";
  }
  return out;
}

void EvalReport::write(const std::string& prefix) const {
  const std::filesystem::path p(prefix + ".json");
  if (p.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) throw Error("cannot create report folder '" + p.parent_path().string() + "': " + ec.message());
  }
  util::write_file_atomic(prefix + ".json", j_.dump(2) + "\n");
  util::write_file_atomic(prefix + ".txt", to_text());
}

}  // namespace mpqat::eval
