// The evaluation both `mpqat eval` and `mpqat run` use (include/mpqat/eval/evaluate_model.h).
#include "mpqat/eval/evaluate_model.h"

#include <algorithm>
#include <string>

#include "mpqat/io/recipe.h"

#include "mpqat/model/classifier_input.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::eval {

Evaluation evaluate_model(const model::ModelFolder& folder, const model::BatchFn& run, const EvaluationRequest& req,
                          torch::Device device, dist::Communicator* comm) {
  const auto& cfg = folder.config();
  const auto& tok = folder.tokenizer();
  Evaluation out;
  torch::NoGradGuard ng;
  for (const auto& f : req.ppl_files) {
    const auto ids = tok.encode(util::read_file(f), /*add_bos=*/true);
    const int context = req.context > 0 ? req.context : default_context(cfg);
    try {
      out.perplexity.push_back({f, evaluate_perplexity(run, ids, context, req.ppl_batch_size, req.ppl_verbosity,
                                                       device, comm)});
    } catch (const InputError& e) {
      throw InputError(req.ppl_key + " '" + f + "': " + e.what() + req.ppl_hint);
    }
  }
  if (!req.tasks.empty()) {
    MultipleChoiceOptions mo = req.task_options;
    if (mo.max_length <= 0) mo.max_length = cfg.max_position_embeddings;
    mo.device = device;
    mo.comm = comm;
    out.task_max_length = mo.max_length;
    for (const auto& t : req.tasks) out.tasks.push_back(evaluate_task(run, tok, t, mo));
  }
  if (req.classification) {
    const auto& data = *req.classification;
    if (cfg.num_labels != static_cast<int64_t>(data.label_names.size()))
      throw InputError(req.classification_key + " '" + req.classification_source + "' has " +
                       std::to_string(data.label_names.size()) + " labels but " + folder.dir() +
                       " classifies into " + std::to_string(cfg.num_labels) + req.classification_hint);
    const auto enc = model::classifier_encoding(cfg, tok);  // the rules every stage shares
    PredictOptions po;
    po.batch_size = req.classification_batch_size;
    po.max_length = req.classification_max_length > 0 ? req.classification_max_length : enc.max_length;
    po.pad_id = enc.pad_id;                    // the config's pad id first: OPT's head finds each row's last token by it
    po.keep_last_token = enc.keep_last_token;  // BERT inputs end in [SEP]
    po.progress = req.classification_progress;
    po.device = device;
    po.comm = comm;
    out.classification_max_length = po.max_length;
    const EncodeFn encode = [&](const std::string& t) { return tok.encode(t, enc.add_bos); };
    out.classification = evaluate_classifier(run, encode, data, po);
  }
  return out;
}

EvaluationRequest evaluation_request_from_recipe(const io::Recipe& r, const model::ModelConfig& cfg, bool causal_lm) {
  const int batch = static_cast<int>(r.integer("evaluation.batch_size"));
  eval::EvaluationRequest req;
  req.ppl_batch_size = batch;
  req.ppl_key = r.source() + ": evaluation.perplexity";
  req.ppl_hint = " (or lower evaluation.context)";
  req.classification_key = r.source() + ": evaluation.classification.path";
  req.task_options.batch_size = batch;
  req.task_options.limit = r.integer("evaluation.task_limit");
  req.task_options.progress = false;
  if (causal_lm) {
    req.ppl_files = r.strings("evaluation.perplexity");
    // evaluation.context is capped at the model's maximum (docs/recipes.md); 0 = the default.
    const int ctx = static_cast<int>(r.integer("evaluation.context"));
    req.context = ctx <= 0 ? default_context(cfg) : std::min(ctx, static_cast<int>(cfg.max_position_embeddings));
    std::string tdir = r.str("evaluation.task_dir");
    if (tdir.empty()) tdir = "../shared/data/tasks";
    for (const auto& t : r.strings("evaluation.tasks")) req.tasks.push_back(load_task(t, tdir));
  } else if (!r.str("evaluation.classification.path").empty()) {
    const std::string path = r.str("evaluation.classification.path");
    data::ClassificationReadOptions ro;
    ro.text_field = r.str("evaluation.classification.text_field");
    ro.label_field = r.str("evaluation.classification.label_field");
    auto data = data::read_classification_file(path, ro);
    const int64_t limit = r.integer("evaluation.classification.limit");
    if (limit > 0 && static_cast<int64_t>(data.texts.size()) > limit) {
      data.texts.resize(static_cast<size_t>(limit));
      data.labels.resize(static_cast<size_t>(limit));
    }
    req.classification = std::move(data);
    req.classification_source = path;
    req.classification_batch_size = std::max(batch, 8);
  }
  return req;
}

}  // namespace mpqat::eval
