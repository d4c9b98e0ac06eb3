// Sequence classification evaluation: metrics from predictions (as scikit-learn computes them)
// and a data-parallel predict loop over any classifier given as a function. The labelled files
// themselves are read by data/labelled_file.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mpqat/data/labelled_file.h"
#include "mpqat/eval/scores.h"  // ClassificationMetrics
#include "mpqat/model/model_input.h"

namespace mpqat::dist {
class Communicator;
}

namespace mpqat::eval {

// ids (B, T) int64, mask (B, T) int64 1 = real token -> logits (B, num_labels).
using ClassifyFn = std::function<at::Tensor(const at::Tensor& ids, const at::Tensor& mask)>;
// text -> token ids (with the model's special tokens).
using EncodeFn = std::function<std::vector<int32_t>(const std::string& text)>;

struct PredictOptions {
  int batch_size = 8;
  int64_t max_length = 512;
  int32_t pad_id = 0;
  // Truncation keeps the last token (e.g. BERT's [SEP]) and drops from before it.
  bool keep_last_token = false;
  bool progress = true;
  c10::Device device = c10::Device(c10::DeviceType::CPU);
  dist::Communicator* comm = nullptr;
};

// Each input through `classify`, one after the other.
model::BatchFn batch_fn(const ClassifyFn& classify);

// Predicted label ids for the examples this rank holds (i = rank, rank + N, ...), in that order.
// `run` gets every batch at once (model::run_inputs streams a large model block-major).
std::vector<int64_t> predict_local(const model::BatchFn& run, const EncodeFn& encode,
                                   const std::vector<std::string>& texts, const PredictOptions& opts);
std::vector<int64_t> predict_local(const ClassifyFn& classify, const EncodeFn& encode,
                                   const std::vector<std::string>& texts, const PredictOptions& opts);

// Predicts every example (split across ranks), all-reduces the confusion matrix, returns metrics.
ClassificationMetrics evaluate_classifier(const model::BatchFn& run, const EncodeFn& encode,
                                          const data::ClassificationData& data, const PredictOptions& opts);
ClassificationMetrics evaluate_classifier(const ClassifyFn& classify, const EncodeFn& encode,
                                          const data::ClassificationData& data, const PredictOptions& opts);

}  // namespace mpqat::eval
