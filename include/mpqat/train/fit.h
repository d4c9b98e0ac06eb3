// Plain full-precision training of mpqat's own TransformerModel: from scratch or as fine-tuning.
// This is not QAT (that is Block-AP / E2E-QP); it makes the models the rest of mpqat works on
// where none can be downloaded: the bundled Llama in checkpoints/ (tools/make_bundled_model.sh)
// and small BERT / OPT sentiment classifiers.
//
//   causal LM:  random windows of seqlen + 1 tokens from one token stream, next-token
//               cross-entropy over every position (fit_causal_lm);
//   classifier: shuffled mini-batches of labelled texts, right-padded with an attention mask,
//               cross-entropy on the (B, num_labels) logits (fit_classifier).
// Both use AdamW (weight decay on matrices only, not on norms and biases), a linear warmup and a
// cosine (or linear / constant) learning-rate schedule, gradient-norm clipping, and a seed that
// fixes the data order. The model is switched to train mode with requires_grad on (the loaders
// leave it off) and handed back in eval mode with requires_grad off.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpqat/io/safetensors.h"
#include "mpqat/model/classifier_input.h"
#include "mpqat/model/model.h"

namespace mpqat::data {
class Tokenizer;
}
namespace mpqat::model {
class ModelFolder;
}

namespace mpqat::train {

struct FitOptions {
  // Optimizer steps. 0: derived from `epochs` (classifier: passes over the examples; causal LM:
  // tokens / (batch_size * seqlen) windows per epoch).
  int64_t steps = 0;
  double epochs = 1.0;
  int64_t batch_size = 16;
  // Causal LM: window length (must not exceed max_position_embeddings). Classifier: tokens per
  // example at most (longer ones are truncated; 0 = the model's max_position_embeddings).
  int64_t seqlen = 128;
  double lr = 1e-3;
  double min_lr_ratio = 0.1;  // the schedule ends at lr * min_lr_ratio
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  int64_t warmup = 0;                // steps of linear warmup from ~0 to lr
  std::string schedule = "cosine";   // "cosine", "linear" or "constant" after warmup
  double grad_clip = 1.0;            // max global gradient L2 norm; 0 = no clipping
  uint64_t seed = 0;                 // data order (and dropout-free, so the whole run)
  int64_t log_every = 10;            // log a line every N steps (0 = never)
  int64_t eval_every = 0;            // validation every N steps (0 = only at the end)
  int64_t eval_max_batches = 0;      // causal LM validation windows / batch_size cap (0 = all)
  double max_seconds = 0;            // stop after this wall time (0 = no limit)
  torch::Device device = torch::kCPU;
  // Called after every optimizer step (e.g. to append to a JSONL log).
  std::function<void(const nlohmann::json& step_record)> on_step;
  // Called after every validation with {"step", "loss", and "ppl" or "accuracy"}.
  std::function<void(const nlohmann::json& eval_record)> on_eval;
};

struct FitResult {
  std::vector<double> step_loss;   // training loss of every optimizer step
  std::vector<double> step_lr;     // learning rate used at every step
  std::vector<double> epoch_loss;  // mean training loss of each completed (or final partial) epoch
  struct Eval {
    int64_t step = 0;
    double loss = 0.0;      // mean cross-entropy (nats)
    double ppl = 0.0;       // causal LM: exp(loss)
    double accuracy = 0.0;  // classifier
  };
  std::vector<Eval> evals;  // validation results in order (empty without validation data)
  int64_t steps = 0;        // steps run
  int64_t planned_steps = 0;
  int64_t tokens = 0;       // causal LM: target tokens trained on; classifier: examples seen
  double seconds = 0.0;
  bool stopped_early = false;  // max_seconds reached
};

// The learning rate at `step` (0-based) of `total` under opts' warmup and schedule.
double learning_rate(const FitOptions& opts, int64_t step, int64_t total);

// Re-initializes every parameter for training from scratch, GPT-2 style: matrices and embedding
// tables N(0, std), the output projections of each block (o_proj / out_proj / attention output /
// down_proj / fc2 / output.dense) N(0, std / sqrt(2 * num_blocks)), biases 0, norm weights 1.
// Deterministic given torch::manual_seed.
void init_for_training(model::TransformerModel& m, double std = 0.02);

// Copies into `m` every parameter that `folder` holds under the same name (or a loader alias)
// and shape, e.g. the decoder of an OPTForCausalLM folder into an OPTForSequenceClassification
// (fine-tuning a pretrained LM into a classifier). Returns the names of m's parameters left as
// they were (not in the folder, or with another shape). Throws InputError for a packed
// (quantized) folder.
std::vector<std::string> load_matching_parameters(model::TransformerModel& m, const model::ModelFolder& folder);

// Trains a causal LM on `tokens` (one stream, e.g. BOS + the encoded text). `valid` (may be
// empty) is scored in non-overlapping windows of seqlen. Throws InputError when the model is
// not a causal LM, seqlen exceeds max_position_embeddings, the stream is shorter than one window
// or an option is out of range.
FitResult fit_causal_lm(model::TransformerModel& m, const std::vector<int32_t>& tokens, const FitOptions& opts,
                        const std::vector<int32_t>& valid = {});

// Classifier inputs (ClassifierEncoding, classifier_encoding, encode_for_classifier) live in
// model/classifier_input.h; the names are available here too.
using model::ClassifierEncoding;
using model::classifier_encoding;
using model::encode_for_classifier;

// Trains a sequence classifier on (texts, labels); label ids in [0, num_labels). The optional
// validation set is scored (loss, accuracy) every eval_every steps and at the end.
// opts.seqlen caps the tokens per example (0 = enc.max_length). Throws InputError for a causal LM,
// mismatched sizes, an empty set or a label out of range.
FitResult fit_classifier(model::TransformerModel& m, const data::Tokenizer& tok, const std::vector<std::string>& texts,
                         const std::vector<int64_t>& labels, const FitOptions& opts, const ClassifierEncoding& enc,
                         const std::vector<std::string>& valid_texts = {},
                         const std::vector<int64_t>& valid_labels = {});

// Accuracy and mean cross-entropy of a classifier on encoded examples (no grad, eval mode).
struct ClassifierScore {
  double accuracy = 0.0, loss = 0.0;
  std::vector<int64_t> predictions;
};
ClassifierScore score_classifier(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& encoded,
                                 const std::vector<int64_t>& labels, const ClassifierEncoding& enc,
                                 int64_t batch_size = 32, const torch::Device& device = torch::kCPU);

// Mean next-token cross-entropy (nats) of a causal LM over non-overlapping windows of `seqlen`
// tokens of `tokens` (the first token of each window is context only, as `mpqat eval --ppl`).
// max_windows = 0: all.
double causal_lm_loss(model::TransformerModel& m, const std::vector<int32_t>& tokens, int64_t seqlen,
                      int64_t batch_size = 8, int64_t max_windows = 0, const torch::Device& device = torch::kCPU);

struct SaveOptions {
  io::DType dtype = io::DType::F16;  // F16, BF16 or F32
  bool force = false;                // replace an existing non-empty folder
  // Extra text files written into the folder: name -> content (e.g. README.md).
  std::vector<std::pair<std::string, std::string>> extra_files;
};

// The tokenizer files to copy into a model folder, as (source path, name in the folder), for a
// tokenizer file or a folder holding one. A file gets the name the loader looks for
// (*.model -> tokenizer.model, *.json -> tokenizer.json, *.txt -> vocab.txt, *.bin ->
// tokenizer.bin), with tokenizer_config.json / special_tokens_map.json from beside it when
// present. Throws InputError naming the path when it holds no tokenizer.
std::vector<std::pair<std::string, std::string>> tokenizer_files(const std::string& path_or_dir);

// Writes a Hugging Face float model folder: config.json (`config`, or model_config_to_json of
// the model's config when `config` is null; torch_dtype set to the saved dtype),
// model.safetensors with every parameter under its HF name, and `files` copied in as
// (source path, name in the folder), e.g. from tokenizer_files(). Built in a sibling temp folder
// and renamed into place, so `out_dir` is either the old folder or the complete new one. Throws
// InputError for an existing non-empty `out_dir` without opts.force or a missing source file.
void save_float_model_folder(const model::TransformerModel& m, const nlohmann::json& config,
                             const std::vector<std::pair<std::string, std::string>>& files,
                             const std::string& out_dir, const SaveOptions& opts = {});

}  // namespace mpqat::train
