// Evaluation results as plain data and their one JSON form (include/mpqat/eval/scores.h).
#include "mpqat/eval/scores.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "mpqat/eval/json_access.h"

namespace mpqat::eval {

using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double number_or_nan(const json& obj, const char* key) { return json_access::number(obj, key).value_or(kNaN); }

int64_t count_of(const json& v) {
  const auto d = json_access::number(v);
  return d && std::isfinite(*d) ? static_cast<int64_t>(*d) : 0;
}

}  // namespace

json to_json(const MultipleChoiceResult& r) {
  return json{{"acc", r.acc}, {"acc_stderr", r.acc_stderr}, {"acc_norm", r.acc_norm},
              {"acc_norm_stderr", r.acc_norm_stderr}, {"n", r.n}};
}

MultipleChoiceResult multiple_choice_from_json(const std::string& task, const json& j) {
  MultipleChoiceResult r;
  r.task = task;
  r.acc = number_or_nan(j, "acc");
  r.acc_stderr = number_or_nan(j, "acc_stderr");
  r.acc_norm = number_or_nan(j, "acc_norm");
  r.acc_norm_stderr = number_or_nan(j, "acc_norm_stderr");
  r.n = count_of(json_access::field(j, "n"));
  return r;
}

json ClassificationMetrics::to_json() const {
  json j;
  j["n"] = n;
  j["num_labels"] = num_labels;
  j["accuracy"] = accuracy;
  // Headline precision / recall / F1: of class 1 for two classes (sklearn's average='binary'),
  // else the macro average; the macro figures are always listed too.
  j["average"] = binary ? "binary" : "macro";
  j["precision"] = headline_precision();
  j["recall"] = headline_recall();
  j["f1"] = headline_f1();
  j["macro_precision"] = macro_precision;
  j["macro_recall"] = macro_recall;
  j["macro_f1"] = macro_f1;
  json per = json::array();
  const std::size_t classes = std::min({precision.size(), recall.size(), f1.size(), support.size()});
  for (std::size_t c = 0; c < classes; ++c) {
    json e{{"precision", precision[c]}, {"recall", recall[c]}, {"f1", f1[c]}, {"support", support[c]}};
    e["label"] = c < label_names.size() ? label_names[c] : std::to_string(c);
    per.push_back(e);
  }
  j["per_class"] = per;
  j["confusion"] = confusion;
  return j;
}

ClassificationMetrics classification_from_json(const json& j) {
  using json_access::field;
  ClassificationMetrics m;
  m.n = count_of(field(j, "n"));
  m.accuracy = number_or_nan(j, "accuracy");
  const double p = number_or_nan(j, "precision"), r = number_or_nan(j, "recall");
  const double f = json_access::number(j, "f1") ? number_or_nan(j, "f1") : number_or_nan(j, "f1_score");
  m.binary = json_access::string_of(field(j, "average")) == "binary";
  if (m.binary) {
    m.binary_precision = p, m.binary_recall = r, m.binary_f1 = f;
    m.macro_precision = number_or_nan(j, "macro_precision");
    m.macro_recall = number_or_nan(j, "macro_recall");
    m.macro_f1 = number_or_nan(j, "macro_f1");
  } else {
    m.macro_precision = p, m.macro_recall = r, m.macro_f1 = f;
  }
  const json& per = field(j, "per_class");
  if (per.is_array())
    for (const auto& e : per) {
      m.precision.push_back(number_or_nan(e, "precision"));
      m.recall.push_back(number_or_nan(e, "recall"));
      m.f1.push_back(number_or_nan(e, "f1"));
      m.support.push_back(count_of(field(e, "support")));
      m.label_names.push_back(json_access::string_of(field(e, "label")));
    }
  const auto labels = json_access::number(j, "num_labels");
  m.num_labels = labels ? count_of(field(j, "num_labels")) : static_cast<int64_t>(m.precision.size());
  const json& cm = field(j, "confusion");
  if (cm.is_array())
    for (const auto& row : cm) {
      std::vector<int64_t> out;
      if (row.is_array())
        for (const auto& v : row) out.push_back(count_of(v));
      m.confusion.push_back(std::move(out));
    }
  return m;
}

}  // namespace mpqat::eval
