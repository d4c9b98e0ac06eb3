// One evaluation of a loaded model (float or quantized), shared by `mpqat eval` and the evaluation
// stages of `mpqat run`: perplexity of text files and zero-shot multiple-choice tasks for causal
// LMs, accuracy / precision / recall / F1 for sequence classifiers. The callers differ only in
// how they ask (flags or recipe keys) and how they print; the rules (window length, encoding,
// label checks, the messages' wording) live here.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mpqat/eval/classification.h"
#include "mpqat/eval/multiple_choice.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/eval/tasks.h"

namespace mpqat::model {
class ModelFolder;
}
namespace mpqat::io {
class Recipe;
}

namespace mpqat::eval {

struct EvaluationRequest {
  // Perplexity: each file as one document with BOS, in windows of `context` tokens (0 =
  // default_context; the caller has checked it against the model's maximum).
  std::vector<std::string> ppl_files;
  int context = 0;
  int ppl_batch_size = 1;
  int ppl_verbosity = 0;  // evaluate_perplexity's progress output
  // Multiple-choice tasks; task_options.max_length 0 = the model's max_position_embeddings
  // (device and comm are set by evaluate_model).
  std::vector<MultipleChoiceTask> tasks;
  MultipleChoiceOptions task_options;
  // Classification of a labelled set (its label count must be the model's num_labels);
  // max_length 0 = the model's encoding limit (model::classifier_encoding).
  std::optional<data::ClassificationData> classification;
  int classification_batch_size = 8;
  int64_t classification_max_length = 0;
  bool classification_progress = false;
  // How the inputs were named, for the messages: "--ppl" / "evaluation.perplexity", the
  // classification file's key and a hint appended to a refusal.
  std::string ppl_key = "--ppl", ppl_hint;
  std::string classification_key = "--classify", classification_source, classification_hint;
};

struct PerplexityOfFile {
  std::string file;
  PplResult result;
};

struct Evaluation {
  std::vector<PerplexityOfFile> perplexity;
  std::vector<MultipleChoiceResult> tasks;
  int64_t task_max_length = 0;
  std::optional<ClassificationMetrics> classification;
  int64_t classification_max_length = 0;
};

// Runs what `req` asks on the model behind `run` (model::batch_fn of an open BlockSource of
// `folder`). Throws InputError naming the input (a text shorter than one window, a label count
// the model does not have).
Evaluation evaluate_model(const model::ModelFolder& folder, const model::BatchFn& run, const EvaluationRequest& req,
                          torch::Device device, dist::Communicator* comm);

// The evaluation.* keys of a recipe (`mpqat run`'s evaluation stages): perplexity files and
// tasks for a causal LM, the labelled file for a classifier; evaluation.context capped at the
// model's maximum (0 = default_context). Task and classification files are read here, so a
// missing one fails before the model is evaluated.
EvaluationRequest evaluation_request_from_recipe(const io::Recipe& recipe, const model::ModelConfig& cfg,
                                                 bool causal_lm);

}  // namespace mpqat::eval
