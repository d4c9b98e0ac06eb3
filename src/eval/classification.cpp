#include "mpqat/eval/classification.h"

#include <torch/torch.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>

#include "mpqat/dist/communicator.h"
#include "mpqat/util/error.h"
#include "mpqat/util/progress.h"
#include "mpqat/util/strings.h"

namespace mpqat::eval {

using nlohmann::json;

ClassificationMetrics metrics_from_confusion(const std::vector<std::vector<int64_t>>& confusion) {
  ClassificationMetrics m;
  const auto k = static_cast<int64_t>(confusion.size());
  for (const auto& row : confusion)
    if (static_cast<int64_t>(row.size()) != k)
      throw InputError("confusion matrix must be square, got a row of " + std::to_string(row.size()) +
                       " in a " + std::to_string(k) + "-class matrix");
  m.num_labels = k;
  m.confusion = confusion;
  m.support.assign(static_cast<std::size_t>(k), 0);
  m.precision.assign(static_cast<std::size_t>(k), 0.0);
  m.recall.assign(static_cast<std::size_t>(k), 0.0);
  m.f1.assign(static_cast<std::size_t>(k), 0.0);
  std::vector<int64_t> predicted(static_cast<std::size_t>(k), 0);
  int64_t correct = 0;
  for (int64_t t = 0; t < k; ++t)
    for (int64_t p = 0; p < k; ++p) {
      const auto v = confusion[t][p];
      m.n += v;
      m.support[t] += v;
      predicted[p] += v;
      if (t == p) correct += v;
    }
  m.accuracy = m.n > 0 ? static_cast<double>(correct) / static_cast<double>(m.n) : 0.0;
  for (int64_t c = 0; c < k; ++c) {
    const double tp = static_cast<double>(confusion[c][c]);
    m.precision[c] = predicted[c] > 0 ? tp / static_cast<double>(predicted[c]) : 0.0;
    m.recall[c] = m.support[c] > 0 ? tp / static_cast<double>(m.support[c]) : 0.0;
    const double pr = m.precision[c] + m.recall[c];
    m.f1[c] = pr > 0 ? 2.0 * m.precision[c] * m.recall[c] / pr : 0.0;
    m.macro_precision += m.precision[c] / static_cast<double>(k);
    m.macro_recall += m.recall[c] / static_cast<double>(k);
    m.macro_f1 += m.f1[c] / static_cast<double>(k);
  }
  if (k == 2) {
    m.binary = true;
    m.binary_precision = m.precision[1];
    m.binary_recall = m.recall[1];
    m.binary_f1 = m.f1[1];
  }
  return m;
}

ClassificationMetrics compute_metrics(const std::vector<int64_t>& y_true, const std::vector<int64_t>& y_pred,
                                      int64_t num_labels) {
  if (y_true.size() != y_pred.size())
    throw InputError("compute_metrics: " + std::to_string(y_true.size()) + " labels but " +
                     std::to_string(y_pred.size()) + " predictions");
  if (num_labels < 1) throw InputError("compute_metrics: num_labels must be >= 1");
  std::vector<std::vector<int64_t>> cm(static_cast<std::size_t>(num_labels),
                                       std::vector<int64_t>(static_cast<std::size_t>(num_labels), 0));
  for (std::size_t i = 0; i < y_true.size(); ++i) {
    for (auto v : {y_true[i], y_pred[i]})
      if (v < 0 || v >= num_labels)
        throw InputError("compute_metrics: label id " + std::to_string(v) + " outside [0, " +
                         std::to_string(num_labels) + ")");
    ++cm[y_true[i]][y_pred[i]];
  }
  return metrics_from_confusion(cm);
}

model::BatchFn batch_fn(const ClassifyFn& classify) {
  return [classify](const std::vector<model::ModelInput>& inputs, const model::OutputFn& fn) {
    for (std::size_t k = 0; k < inputs.size(); ++k) fn(k, classify(inputs[k].ids, inputs[k].mask));
  };
}

std::vector<int64_t> predict_local(const ClassifyFn& classify, const EncodeFn& encode,
                                   const std::vector<std::string>& texts, const PredictOptions& opts) {
  return predict_local(batch_fn(classify), encode, texts, opts);
}

std::vector<int64_t> predict_local(const model::BatchFn& run, const EncodeFn& encode,
                                   const std::vector<std::string>& texts, const PredictOptions& opts) {
  if (opts.batch_size < 1) throw InputError("batch size must be >= 1, got " + std::to_string(opts.batch_size));
  if (opts.max_length < 1) throw InputError("max length must be >= 1, got " + std::to_string(opts.max_length));
  const int rank = opts.comm ? opts.comm->rank() : 0;
  const int world = opts.comm ? opts.comm->world_size() : 1;
  std::vector<std::size_t> mine;
  for (std::size_t i = static_cast<std::size_t>(rank); i < texts.size(); i += static_cast<std::size_t>(world))
    mine.push_back(i);
  std::unique_ptr<util::Progress> bar;
  if (opts.progress) bar = std::make_unique<util::Progress>("classify", static_cast<int64_t>(mine.size()), "ex");
  torch::NoGradGuard ng;
  std::vector<model::ModelInput> batches;
  for (std::size_t b0 = 0; b0 < mine.size(); b0 += static_cast<std::size_t>(opts.batch_size)) {
    const std::size_t b1 = std::min(mine.size(), b0 + static_cast<std::size_t>(opts.batch_size));
    std::vector<std::vector<int32_t>> enc;
    for (std::size_t k = b0; k < b1; ++k) {
      auto ids = encode(texts[mine[k]]);
      if (static_cast<int64_t>(ids.size()) > opts.max_length) {
        const int32_t last = ids.back();
        ids.resize(static_cast<std::size_t>(opts.max_length));
        if (opts.keep_last_token) ids.back() = last;
      }
      if (ids.empty()) ids.push_back(opts.pad_id);  // an empty text still needs one position
      enc.push_back(std::move(ids));
    }
    auto in = model::pad_right(enc, opts.pad_id);
    batches.push_back({in.ids.to(opts.device), in.mask.to(opts.device)});
  }
  std::vector<int64_t> preds;
  preds.reserve(mine.size());
  run(batches, [&](std::size_t k, const torch::Tensor& logits) {  // (B, num_labels)
    const int64_t B = batches[k].ids.size(0);
    if (logits.dim() != 2 || logits.size(0) != B)
      throw Error("classifier returned logits of shape " + std::to_string(logits.dim()) +
                  "-d; expected (batch, num_labels)");
    auto arg = logits.argmax(-1).to(torch::kCPU).to(torch::kLong);  // (B)
    for (int64_t r = 0; r < B; ++r) preds.push_back(arg[r].item<int64_t>());
    if (bar) bar->advance(B);
  });
  if (bar) bar->finish();
  return preds;
}

ClassificationMetrics evaluate_classifier(const ClassifyFn& classify, const EncodeFn& encode,
                                          const data::ClassificationData& data, const PredictOptions& opts) {
  return evaluate_classifier(batch_fn(classify), encode, data, opts);
}

ClassificationMetrics evaluate_classifier(const model::BatchFn& run, const EncodeFn& encode,
                                          const data::ClassificationData& data, const PredictOptions& opts) {
  const auto k = static_cast<int64_t>(data.label_names.size());
  if (k < 1) throw InputError("'" + data.path + "' has no labels");
  const auto preds = predict_local(run, encode, data.texts, opts);
  const int rank = opts.comm ? opts.comm->rank() : 0;
  const int world = opts.comm ? opts.comm->world_size() : 1;
  auto cm = torch::zeros({k, k}, torch::kDouble);  // (true, predicted); fp64 holds counts exactly
  auto ca = cm.accessor<double, 2>();
  std::size_t j = 0;
  for (std::size_t i = static_cast<std::size_t>(rank); i < data.texts.size(); i += static_cast<std::size_t>(world)) {
    const auto p = preds[j++];
    if (p < 0 || p >= k)
      throw InputError("classifier predicted class " + std::to_string(p) + " but '" + data.path + "' has " +
                       std::to_string(k) + " labels");
    ca[data.labels[i]][p] += 1.0;
  }
  if (opts.comm) opts.comm->all_reduce_sum(cm);
  std::vector<std::vector<int64_t>> counts(static_cast<std::size_t>(k), std::vector<int64_t>(static_cast<std::size_t>(k)));
  for (int64_t t = 0; t < k; ++t)
    for (int64_t p = 0; p < k; ++p) counts[t][p] = static_cast<int64_t>(std::llround(cm[t][p].item<double>()));
  auto m = metrics_from_confusion(counts);
  m.label_names = data.label_names;
  return m;
}

}  // namespace mpqat::eval
