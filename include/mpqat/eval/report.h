// An evaluation report: one JSON document (model, settings, per-task results) that is also
// rendered as an aligned text table. Both files are written atomically. No torch here.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace mpqat::eval {

struct MultipleChoiceResult;
struct ClassificationMetrics;

class EvalReport {
 public:
  EvalReport() = default;
  explicit EvalReport(const std::string& model);

  // Free-form metadata shown in the header ("model", "limit", "batch_size", ...).
  void set_meta(const std::string& key, const nlohmann::json& value);
  // Results under "tasks"/name: acc, acc_stderr, acc_norm, acc_norm_stderr, n.
  void add_multiple_choice(const MultipleChoiceResult& r);
  // Results under "classification"/name: ClassificationMetrics::to_json().
  void add_classification(const std::string& name, const ClassificationMetrics& m);
  // Any other section, e.g. "perplexity".
  void set_section(const std::string& name, const nlohmann::json& value);

  const nlohmann::json& json() const { return j_; }
  std::string to_text() const;

  // Writes PREFIX.json and PREFIX.txt (creating the parent folder). Throws Error naming the path.
  void write(const std::string& prefix) const;

 private:
  nlohmann::json j_ = nlohmann::json::object();
};

}  // namespace mpqat::eval
