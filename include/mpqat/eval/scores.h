// The results of the evaluations as plain data: a multiple-choice task's accuracies and a
// classifier's metrics. Light (nlohmann::json, no torch), so reports and their readers
// (eval/run_report.h) can hold them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mpqat::eval {

// One zero-shot task (eval/multiple_choice.h). Read back from a report, a field the report
// lacks is NaN (n: 0).
struct MultipleChoiceResult {
  std::string task;
  int64_t n = 0;
  double acc = 0.0, acc_stderr = 0.0;
  double acc_norm = 0.0, acc_norm_stderr = 0.0;
};

// {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}: the one form reports write.
nlohmann::json to_json(const MultipleChoiceResult& r);
// The same leniently: a missing or non-numeric field reads as NaN (n as 0).
MultipleChoiceResult multiple_choice_from_json(const std::string& task, const nlohmann::json& j);

struct ClassificationMetrics {
  int64_t n = 0;
  int64_t num_labels = 0;
  double accuracy = 0.0;
  std::vector<int64_t> support;  // true count per class
  std::vector<double> precision, recall, f1;  // per class; 0 where the denominator is 0 (sklearn)
  double macro_precision = 0.0, macro_recall = 0.0, macro_f1 = 0.0;
  // Two classes only: precision / recall / F1 of class 1 (sklearn's average='binary').
  bool binary = false;
  double binary_precision = 0.0, binary_recall = 0.0, binary_f1 = 0.0;
  std::vector<std::vector<int64_t>> confusion;  // [true][predicted]
  std::vector<std::string> label_names;         // optional, for reports

  // n, num_labels, accuracy, average ("binary" | "macro"), precision / recall / f1 under that
  // average, macro_precision / macro_recall / macro_f1, per_class, confusion.
  nlohmann::json to_json() const;
  // The headline figures: of class 1 for a binary average, else the macro average.
  double headline_precision() const { return binary ? binary_precision : macro_precision; }
  double headline_recall() const { return binary ? binary_recall : macro_recall; }
  double headline_f1() const { return binary ? binary_f1 : macro_f1; }
};

// From a confusion matrix [true][predicted] (square).
ClassificationMetrics metrics_from_confusion(const std::vector<std::vector<int64_t>>& confusion);
// From label ids; throws InputError for an id outside [0, num_labels).
ClassificationMetrics compute_metrics(const std::vector<int64_t>& y_true, const std::vector<int64_t>& y_pred,
                                      int64_t num_labels);

// ClassificationMetrics::to_json()'s form read back leniently (a missing number is NaN, a
// missing count 0, a missing list empty):
// "average" "binary" puts precision / recall / f1 into binary_*, otherwise into macro_* (a
// hand-written {"accuracy", "precision", "recall", "f1"} is a macro average); "f1_score" is read
// as "f1"; per_class gives the per-class vectors and label names. Exact inverse of to_json().
ClassificationMetrics classification_from_json(const nlohmann::json& j);

}  // namespace mpqat::eval
