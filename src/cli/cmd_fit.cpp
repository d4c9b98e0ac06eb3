// `mpqat fit lm ...` / `mpqat fit classifier ...` (hidden): plain full-precision training of a
// model from scratch (--config) or from a model folder (--model), written as a float Hugging Face
// folder. Used by tools/make_bundled_model.sh and to make small BERT / OPT classifiers.
#include <CLI/CLI.hpp>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include "mpqat/cli/commands.h"
#include "mpqat/data/tokenizer.h"
#include "mpqat/eval/classification.h"
#include "mpqat/model/config.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/train/fit.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {

namespace {

namespace fs = std::filesystem;

struct FitCliOpts {
  std::string config, model, tokenizer, out;
  std::string text, valid;  // lm
  std::string train_file, valid_file, text_field = "sentence", label_field = "label";  // classifier
  std::vector<std::string> labels;
  bool force = false;
  std::string dtype = "f16";
  std::string device = "cpu";
  int threads = 0;
  double init_std = 0.02;
  std::string log, summary;
  train::FitOptions fit;
};

void add_common(CLI::App* c, FitCliOpts& o) {
  c->add_option("--config", o.config, "config.json (or a folder holding one) of a new, randomly initialised model");
  c->add_option("--model", o.model, "float model folder to start from (fine-tuning)");
  c->add_option("--tokenizer", o.tokenizer,
                "tokenizer.model / tokenizer.json / vocab.txt / tokenizer.bin, or a folder holding one "
                "(default: the --model folder's)");
  c->add_option("--out", o.out, "output model folder (written atomically)")->required();
  c->add_flag("--force", o.force, "replace a non-empty output folder")->capture_default_str();
  c->add_option("--steps", o.fit.steps, "optimizer steps (0 = from --epochs)")->capture_default_str();
  c->add_option("--epochs", o.fit.epochs, "passes over the data when --steps is 0")->capture_default_str();
  c->add_option("--batch-size", o.fit.batch_size, "sequences per step")->capture_default_str();
  c->add_option("--seqlen", o.fit.seqlen,
                "lm: window length (0 = max_position_embeddings); classifier: max tokens per example (0 = model max)")
      ->capture_default_str();
  c->add_option("--lr", o.fit.lr, "peak learning rate (AdamW)")->capture_default_str();
  c->add_option("--min-lr-ratio", o.fit.min_lr_ratio, "final learning rate / peak")->capture_default_str();
  c->add_option("--weight-decay", o.fit.weight_decay, "AdamW weight decay on matrices")->capture_default_str();
  c->add_option("--beta2", o.fit.beta2, "AdamW beta2")->capture_default_str();
  c->add_option("--warmup", o.fit.warmup, "linear warmup steps")->capture_default_str();
  c->add_option("--schedule", o.fit.schedule, "learning rate after warmup: cosine, linear, constant")
      ->check(CLI::IsMember({"cosine", "linear", "constant"}))
      ->capture_default_str();
  c->add_option("--grad-clip", o.fit.grad_clip, "max gradient L2 norm (0 = off)")->capture_default_str();
  c->add_option("--seed", o.fit.seed, "seed of the initialisation and the data order")->capture_default_str();
  c->add_option("--init-std", o.init_std, "std of the random initialisation (--config)")->capture_default_str();
  c->add_option("--log-every", o.fit.log_every, "log every N steps (0 = never)")->capture_default_str();
  c->add_option("--eval-every", o.fit.eval_every, "validate every N steps (0 = at the end only)")->capture_default_str();
  c->add_option("--max-seconds", o.fit.max_seconds, "stop after this wall time (0 = no limit)")->capture_default_str();
  c->add_option("--dtype", o.dtype, "dtype of the saved weights: f16, bf16, f32")
      ->check(CLI::IsMember({"f16", "bf16", "f32"}))
      ->capture_default_str();
  c->add_option("--threads", o.threads, "intra-op threads (0 = LibTorch's default)")->capture_default_str();
  c->add_option("--device", o.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  c->add_option("--log", o.log, "write every step and validation as JSON lines to this file");
  c->add_option("--summary", o.summary, "write a JSON summary (losses, validation, time, parameters) to this file");
}

void setup_runtime(FitCliOpts& o) {
  if (o.config.empty() == o.model.empty())
    throw InputError("fit: give exactly one of --config CONFIG.json (new model) or --model DIR (start from a folder)");
  if (o.threads < 0) throw InputError("--threads must be >= 0, got " + std::to_string(o.threads));
  if (o.threads > 0) torch::set_num_threads(o.threads);
  if (o.device == "cuda") {
    if (!torch::cuda::is_available()) throw InputError("--device cuda: LibTorch sees no CUDA device (use --device cpu)");
    o.fit.device = torch::Device(torch::kCUDA, 0);
  }
}

// The JSON lines of --log, collected while training and written atomically at the end.
struct JsonLog {
  std::string lines;
  void attach(train::FitOptions& f) {
    f.on_step = [this](const nlohmann::json& j) { lines += nlohmann::json{{"train", j}}.dump() + "\n"; };
    f.on_eval = [this](const nlohmann::json& j) { lines += nlohmann::json{{"eval", j}}.dump() + "\n"; };
  }
};

nlohmann::json summary_json(const train::FitResult& r, const model::TransformerModel& m, const FitCliOpts& o) {
  int64_t params = 0;
  for (const auto& p : m.parameters(true)) params += p.numel();
  nlohmann::json j{{"architecture", m.config().architecture},
                   {"parameters", params},
                   {"steps", r.steps},
                   {"planned_steps", r.planned_steps},
                   {"stopped_early", r.stopped_early},
                   {"seconds", r.seconds},
                   {"batch_size", o.fit.batch_size},
                   {"seqlen", o.fit.seqlen},
                   {"lr", o.fit.lr},
                   {"seed", o.fit.seed},
                   {"threads", torch::get_num_threads()},
                   {"epoch_loss", r.epoch_loss}};
  if (!r.step_loss.empty()) {
    const size_t n = std::min<size_t>(r.step_loss.size(), 50);
    double s = 0;
    for (size_t i = r.step_loss.size() - n; i < r.step_loss.size(); ++i) s += r.step_loss[i];
    j["final_train_loss"] = s / static_cast<double>(n);
  }
  nlohmann::json ev = nlohmann::json::array();
  for (const auto& e : r.evals) {
    nlohmann::json x{{"step", e.step}, {"loss", e.loss}};
    if (m.is_causal_lm()) x["ppl"] = e.ppl;
    else x["accuracy"] = e.accuracy;
    ev.push_back(x);
  }
  j["evals"] = ev;
  return j;
}

void write_outputs(const FitCliOpts& o, const JsonLog& log, const nlohmann::json& summary) {
  if (!o.log.empty()) util::write_file_atomic(o.log, log.lines);
  if (!o.summary.empty()) util::write_file_atomic(o.summary, summary.dump(2) + "\n");
}

// Model, its config JSON (to save) and tokenizer (path, loaded) for --config / --model.
struct Start {
  std::shared_ptr<model::TransformerModel> model;
  nlohmann::json config;
  std::string tokenizer_path;
  std::unique_ptr<data::Tokenizer> tok;
};

void check_vocab(const model::ModelConfig& cfg, const data::Tokenizer& tok, const std::string& tok_path,
                 const std::string& cfg_source) {
  if (tok.vocab_size() > cfg.vocab_size)
    throw InputError("tokenizer '" + tok_path + "' has " + std::to_string(tok.vocab_size()) + " tokens but " +
                     cfg_source + " has vocab_size " + std::to_string(cfg.vocab_size) +
                     " (set vocab_size >= the tokenizer's size)");
}

void add_lm_command(CLI::App* fit) {
  auto o = std::make_shared<FitCliOpts>();
  o->fit.seqlen = 0;
  o->fit.lr = 3e-3;
  auto* c = fit->add_subcommand("lm", "Train a causal LM on a text file: next-token cross-entropy on random windows");
  add_common(c, *o);
  c->add_option("--text", o->text, "training text (one document: BOS + the whole file)")->required();
  c->add_option("--valid", o->valid, "held-out text, scored as `mpqat eval --ppl` does (windows of --seqlen)");
  c->add_option("--eval-max-batches", o->fit.eval_max_batches, "validation batches at most (0 = all)")
      ->capture_default_str();
  c->callback([o] {
    setup_runtime(*o);
    Start s;
    if (!o->model.empty()) {
      if (quant::is_quantized_folder(o->model))
        throw InputError("fit lm: '" + o->model + "' holds a packed quantized checkpoint; fit needs a float model folder");
      const model::ModelFolder folder(o->model);
      s.model = model::load_any_model(folder);
      s.config = nlohmann::json::parse(util::read_file((fs::path(o->model) / "config.json").string()));
      s.tokenizer_path = o->tokenizer.empty() ? o->model : o->tokenizer;
    } else {
      if (o->tokenizer.empty()) throw InputError("fit lm --config needs --tokenizer FILE");
      const auto cfg = model::load_model_config(o->config);
      if (cfg.is_sequence_classifier())
        throw InputError("fit lm: '" + o->config + "' describes " + cfg.architecture +
                         ", a classifier (use `mpqat fit classifier`)");
      torch::manual_seed(o->fit.seed);
      s.model = model::create_model(cfg);
      train::init_for_training(*s.model, o->init_std);
      s.config = model::model_config_to_json(cfg);
      s.tokenizer_path = o->tokenizer;
    }
    s.tok = data::load_tokenizer(s.tokenizer_path);
    const auto& cfg = s.model->config();
    if (!s.model->is_causal_lm())
      throw InputError("fit lm: '" + o->model + "' holds " + cfg.architecture + ", not a causal LM");
    check_vocab(cfg, *s.tok, s.tokenizer_path, o->config.empty() ? o->model : o->config);
    if (o->fit.seqlen == 0) o->fit.seqlen = cfg.max_position_embeddings;
    const auto files = train::tokenizer_files(s.tokenizer_path);

    const auto tokens = s.tok->encode(util::read_file(o->text), /*add_bos=*/true);
    std::vector<int32_t> valid;
    if (!o->valid.empty()) valid = s.tok->encode(util::read_file(o->valid), /*add_bos=*/true);
    int64_t params = 0;
    for (const auto& p : s.model->parameters(true)) params += p.numel();
    std::cout << "fit lm: " << cfg.architecture << " with " << params << " parameters; " << tokens.size()
              << " training tokens" << (valid.empty() ? "" : ", " + std::to_string(valid.size()) + " held out")
              << "; " << torch::get_num_threads() << " threads" << std::endl;
    JsonLog log;
    log.attach(o->fit);
    const auto r = train::fit_causal_lm(*s.model, tokens, o->fit, valid);
    train::SaveOptions so;
    so.dtype = io::parse_float_dtype(o->dtype, "--dtype");
    so.force = o->force;
    train::save_float_model_folder(*s.model, s.config, files, o->out, so);
    auto summary = summary_json(r, *s.model, *o);
    summary["train_tokens"] = tokens.size();
    summary["valid_tokens"] = valid.size();
    write_outputs(*o, log, summary);
    std::cout << "fit lm: " << r.steps << " steps in " << r.seconds << " s";
    if (!r.evals.empty()) std::cout << "; held-out loss " << r.evals.back().loss << ", ppl " << r.evals.back().ppl;
    std::cout << "\nwrote " << o->out << "\n";
  });
}

void add_classifier_command(CLI::App* fit) {
  auto o = std::make_shared<FitCliOpts>();
  o->fit.seqlen = 0;
  o->fit.lr = 1e-3;
  o->fit.weight_decay = 0.01;
  o->fit.beta2 = 0.999;
  o->fit.epochs = 3;
  auto* c = fit->add_subcommand(
      "classifier",
      "Train a sequence classifier (BERT, OPT) on a labelled .tsv/.csv/.jsonl file: cross-entropy on the labels");
  add_common(c, *o);
  c->add_option("--train", o->train_file, "labelled training file (.tsv, .csv or .jsonl with a header)")->required();
  c->add_option("--valid", o->valid_file, "labelled validation file, scored for loss and accuracy");
  c->add_option("--text-field", o->text_field, "text column")->capture_default_str();
  c->add_option("--label-field", o->label_field, "label column")->capture_default_str();
  c->add_option("--labels", o->labels, "label order (default: the sorted distinct labels of --train)")
      ->delimiter(',');
  c->callback([o] {
    setup_runtime(*o);
    data::ClassificationReadOptions ro;
    ro.text_field = o->text_field;
    ro.label_field = o->label_field;
    ro.labels = o->labels;
    const auto train_data = data::read_classification_file(o->train_file, ro);
    if (train_data.texts.empty()) throw InputError("'" + o->train_file + "' holds no examples");
    data::ClassificationData valid_data;
    if (!o->valid_file.empty()) {
      ro.labels = train_data.label_names;
      valid_data = data::read_classification_file(o->valid_file, ro);
    }
    const auto num_labels = static_cast<int64_t>(train_data.label_names.size());

    Start s;
    model::ModelConfig cfg;
    if (!o->model.empty()) {
      const model::ModelFolder folder(o->model);
      cfg = folder.config();
      s.config = nlohmann::json::parse(util::read_file((fs::path(o->model) / "config.json").string()));
      if (cfg.architecture == "OPTForCausalLM") {
        // A pretrained OPT LM becomes a classifier: same decoder, a new score head.
        cfg.architecture = "OPTForSequenceClassification";
        cfg.num_labels = num_labels;
        s.config["architectures"] = nlohmann::json::array({cfg.architecture});
      } else if (!cfg.is_sequence_classifier()) {
        throw InputError("fit classifier: '" + o->model + "' holds " + cfg.architecture +
                         " (accepted: BertForSequenceClassification, OPTForSequenceClassification, OPTForCausalLM)");
      }
      torch::manual_seed(o->fit.seed);
      s.model = model::create_model(cfg);
      train::init_for_training(*s.model, o->init_std);
      const auto missing = train::load_matching_parameters(*s.model, folder);
      for (const auto& n : missing) std::cout << "fit classifier: " << n << " starts from random values\n";
      s.tokenizer_path = o->tokenizer.empty() ? o->model : o->tokenizer;
    } else {
      if (o->tokenizer.empty()) throw InputError("fit classifier --config needs --tokenizer FILE");
      cfg = model::load_model_config(o->config);
      if (!cfg.is_sequence_classifier())
        throw InputError("fit classifier: '" + o->config + "' describes " + cfg.architecture +
                         " (accepted: BertForSequenceClassification, OPTForSequenceClassification)");
      torch::manual_seed(o->fit.seed);
      s.model = model::create_model(cfg);
      train::init_for_training(*s.model, o->init_std);
      s.config = model::model_config_to_json(cfg);
      s.tokenizer_path = o->tokenizer;
    }
    if (cfg.num_labels != num_labels)
      throw InputError("'" + o->train_file + "' has " + std::to_string(num_labels) + " labels but the model classifies into " +
                       std::to_string(cfg.num_labels) + " (set num_labels / id2label in the config, or --labels)");
    s.tok = data::load_tokenizer(s.tokenizer_path);
    check_vocab(cfg, *s.tok, s.tokenizer_path, o->config.empty() ? o->model : o->config);
    const auto files = train::tokenizer_files(s.tokenizer_path);
    // The saved config names the labels as the data does.
    nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
    for (int64_t i = 0; i < num_labels; ++i) {
      id2label[std::to_string(i)] = train_data.label_names[static_cast<size_t>(i)];
      label2id[train_data.label_names[static_cast<size_t>(i)]] = i;
    }
    s.config["id2label"] = id2label;
    s.config["label2id"] = label2id;
    s.config.erase("num_labels");

    const auto enc = train::classifier_encoding(cfg, *s.tok);
    int64_t params = 0;
    for (const auto& p : s.model->parameters(true)) params += p.numel();
    std::cout << "fit classifier: " << cfg.architecture << " with " << params << " parameters; "
              << train_data.texts.size() << " training examples, " << num_labels << " labels; "
              << torch::get_num_threads() << " threads" << std::endl;
    JsonLog log;
    log.attach(o->fit);
    const auto r = train::fit_classifier(*s.model, *s.tok, train_data.texts, train_data.labels, o->fit, enc,
                                         valid_data.texts, valid_data.labels);
    train::SaveOptions so;
    so.dtype = io::parse_float_dtype(o->dtype, "--dtype");
    so.force = o->force;
    train::save_float_model_folder(*s.model, s.config, files, o->out, so);
    auto summary = summary_json(r, *s.model, *o);
    summary["train_examples"] = train_data.texts.size();
    summary["valid_examples"] = valid_data.texts.size();
    summary["labels"] = train_data.label_names;
    write_outputs(*o, log, summary);
    std::cout << "fit classifier: " << r.steps << " steps in " << r.seconds << " s";
    if (!r.evals.empty())
      std::cout << "; validation accuracy " << r.evals.back().accuracy << ", loss " << r.evals.back().loss;
    std::cout << "\nwrote " << o->out << "\n";
  });
}

}  // namespace

void add_fit_command(CLI::App& app) {
  auto* fit = app.add_subcommand("fit", "Train a float model (from scratch or fine-tuning): causal LM or classifier");
  fit->group("");  // hidden: a tool for making models, not part of the quantization workflow
  fit->require_subcommand(1);
  add_lm_command(fit);
  add_classifier_command(fit);
}

}  // namespace mpqat::cli
