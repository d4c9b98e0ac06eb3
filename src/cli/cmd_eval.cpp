// `mpqat eval DIR [--generate PROMPT ...] [--ppl FILE ...] [--tasks piqa,... ] [--classify FILE ...]`
// Causal LMs of every family (Llama, Mistral, Qwen2, OPT) for --ppl / --tasks, Llama for
// --generate, *ForSequenceClassification folders for --classify. Launched on several ranks,
// windows / items / examples are split across them and only rank 0 prints.
#include <CLI/CLI.hpp>

#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include <torch/torch.h>

#include "mpqat/cli/commands.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/eval/classification.h"
#include "mpqat/eval/evaluate_model.h"
#include "mpqat/eval/generate.h"
#include "mpqat/eval/multiple_choice.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/eval/report.h"
#include "mpqat/eval/tasks.h"
#include "mpqat/data/hf_tokenizer.h"
#include "mpqat/data/wordpiece_tokenizer.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/classifier_input.h"
#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {

namespace {

struct EvalOpts {
  std::string dir;
  std::string prompt;
  int max_new_tokens = 256;
  bool greedy = false;
  double temperature = 1.0;
  double top_p = 0.9;
  uint64_t seed = 0;
  std::string ppl_file;
  int context = 0;
  int batch_size = 1;
  bool json = false;
  std::vector<std::string> tasks;
  std::string task_dir = "../shared/data/tasks";
  int64_t limit = 0;
  std::string report;
  std::string classify_file;
  std::string text_field = "sentence";
  std::string label_field = "label";
  std::vector<std::string> labels;
  int64_t max_length = 0;
  bool no_bos = false;
  std::string device = "auto";
  bool streaming = false;
  std::string memory_limit = "auto";
};

std::string family_name(model::Family f) {
  switch (f) {
    case model::Family::Llama: return "Llama";
    case model::Family::OPT: return "OPT";
    case model::Family::BERT: return "BERT";
  }
  return "unknown";
}

// What `mpqat eval` was asked to do.
struct EvalWhat {
  bool gen = false, ppl = false, tasks = false, cls = false;
};

void validate_eval_options(const EvalOpts& o, const EvalWhat& w) {
  if (!w.gen && !w.ppl && !w.tasks && !w.cls)
    throw InputError(
        "eval: nothing to do (give --generate PROMPT, --ppl FILE, --tasks LIST and/or --classify FILE)");
  if (o.limit < 0) throw InputError("--limit must be >= 0, got " + std::to_string(o.limit));
  if (o.max_length < 0) throw InputError("--max-length must be >= 0, got " + std::to_string(o.max_length));
  if (o.batch_size < 1) throw InputError("--batch-size must be >= 1, got " + std::to_string(o.batch_size));
  if (o.context < 0) throw InputError("--context must be >= 0, got " + std::to_string(o.context));
  if (o.streaming && w.gen)
    throw InputError("--streaming applies to --ppl, --tasks and --classify, not to --generate");
  if (w.cls && (w.gen || w.ppl || w.tasks))
    throw InputError("--classify needs a *ForSequenceClassification folder, --generate / --ppl / --tasks a "
                     "causal LM: run them separately");
}

// Everything the evaluations share: the folder, the ranks, the device, the (streamed) model.
struct EvalContext {
  const EvalOpts* o = nullptr;
  std::unique_ptr<model::ModelFolder> folder_;
  std::shared_ptr<dist::Communicator> comm;
  torch::Device device = torch::kCPU;
  bool main_rank = true;
  std::unique_ptr<model::BlockSource> src;
  uint64_t limit = 0;
  model::BatchFn run_model;
  const model::ModelFolder& folder() const { return *folder_; }
  const model::ModelConfig& config() const { return folder_->config(); }
  const data::Tokenizer& tokenizer() const { return folder_->tokenizer(); }
};

// Opens the folder, checks that it suits what was asked, and sets up ranks, device and model.
EvalContext open_eval_context(const EvalOpts& o, const EvalWhat& w) {
  EvalContext c;
  c.o = &o;
  c.folder_ = std::make_unique<model::ModelFolder>(o.dir);
  const auto& folder = *c.folder_;
  const auto& cfg = folder.config();
  const bool causal = !cfg.is_sequence_classifier();
  if (w.cls && causal)
    throw InputError("--classify needs a *ForSequenceClassification folder; '" + o.dir + "' holds " +
                     cfg.architecture + ", a causal LM (use --ppl / --tasks / --generate with it)");
  if (!w.cls && !causal)
    throw InputError("--generate / --ppl / --tasks need a causal LM; '" + o.dir + "' holds " + cfg.architecture +
                     ", a sequence classifier (use --classify FILE with it)");
  if (w.gen && cfg.family != model::Family::Llama)
    throw NotImplementedError("eval --generate for the " + family_name(cfg.family) + " family (" +
                              cfg.architecture + "); generation supports Llama-family models");
  // Ranks launched by `mpqat launch` / torchrun split the work; a plain run is one rank.
  c.comm = dist::Communicator::from_env();
  c.device = dist::resolve_device(o.device, *c.comm, "--device");
  c.main_rank = c.comm->is_main();
  // The whole model when it fits --memory-limit (and --streaming is not given), else one block at
  // a time from the mapped file, each block read once per group of batches.
  model::StreamingOptions st;
  st.device = c.device;
  st.mode = o.streaming ? "always" : "auto";
  st.memory_limit = model::parse_memory_limit(o.memory_limit, "--memory-limit");
  st.limit_key = "--memory-limit";
  if (w.gen && st.mode == "auto") st.mode = "never";  // decoding holds the model (KV cache)
  c.src = model::open_blocks(folder, st);
  c.limit = st.memory_limit ? st.memory_limit : model::auto_memory_limit(c.device);
  c.run_model = model::batch_fn(*c.src, std::max<uint64_t>(256ull << 20, c.limit / 4));
  return c;
}

void run_generate(EvalContext& c, nlohmann::json& out) {
  if (model::whole_model_bytes(c.folder()) > c.limit)
    throw InputError("eval --generate holds the whole model (" + util::format_bytes(model::whole_model_bytes(c.folder())) +
                     ") but --memory-limit is " + util::format_bytes(c.limit) + " (raise it, or use --ppl / --tasks, which stream)");
  auto llama = dynamic_cast<model::LlamaForCausalLM*>(&c.src->shell());
  if (!llama) throw Error("eval --generate: the loaded " + c.config().architecture + " is not a LlamaForCausalLM");
  eval::GenerateOptions g;
  g.max_new_tokens = c.o->max_new_tokens;
  g.greedy = c.o->greedy;
  g.temperature = c.o->temperature;
  g.top_p = c.o->top_p;
  g.seed = c.o->seed;
  if (c.o->json) {
    // Each generated token with its log-probability and the top-1 minus top-2 logit gap, so
    // another engine's output can be compared token by token (tests/test_gguf.cpp does).
    const auto r = eval::generate(*llama, c.tokenizer(), c.o->prompt, g);
    nlohmann::json tokens = nlohmann::json::array();
    for (int64_t i = 0; i < r.new_tokens; ++i) {
      const auto k = static_cast<size_t>(r.prompt_tokens + i);
      tokens.push_back({{"id", r.ids[k]},
                        {"piece", c.tokenizer().decode_piece(r.ids[k - 1], r.ids[k])},
                        {"logprob", r.logprobs[static_cast<size_t>(i)]},
                        {"margin", r.margins[static_cast<size_t>(i)]}});
    }
    out["generated"] = r.text;
    out["prompt_ids"] = std::vector<int32_t>(r.ids.begin(), r.ids.begin() + r.prompt_tokens);
    out["tokens"] = std::move(tokens);
    out["stop_reason"] = r.stop_reason;
  } else if (c.main_rank) {
    eval::generate(*llama, c.tokenizer(), c.o->prompt, g, [](const std::string& piece) { std::cout << piece << std::flush; });
    std::cout << "\n";
  }
}

// --ppl / --tasks / --classify through the evaluation `mpqat run` uses too (eval/evaluate_model.h),
// then this command's JSON, report sections and printed lines.
void run_evaluations(EvalContext& c, const EvalWhat& w, std::vector<eval::MultipleChoiceTask> tasks,
                     std::optional<data::ClassificationData> cls_data, nlohmann::json& out, eval::EvalReport& report) {
  const auto& o = *c.o;
  eval::EvaluationRequest req;
  if (w.ppl) {
    const int64_t max_pos = c.config().max_position_embeddings;
    if (o.context > 0 && max_pos > 0 && o.context > max_pos)
      throw InputError("--context " + std::to_string(o.context) + " exceeds the model's max_position_embeddings " +
                       std::to_string(max_pos) + " (config.json); use --context <= " + std::to_string(max_pos) +
                       ", or 0 for min(2048, " + std::to_string(max_pos) + ")");
    req.ppl_files = {o.ppl_file};
    req.context = o.context;
    req.ppl_batch_size = o.batch_size;
    req.ppl_verbosity = o.json ? 0 : 1;
  }
  req.tasks = std::move(tasks);
  req.task_options.batch_size = o.batch_size;
  req.task_options.max_length = o.max_length;
  req.task_options.limit = o.limit;
  req.task_options.add_bos = !o.no_bos;
  req.task_options.progress = !o.json;
  req.classification = std::move(cls_data);
  req.classification_batch_size = o.batch_size;
  req.classification_max_length = o.max_length;
  req.classification_progress = !o.json;
  req.classification_source = o.classify_file;
  req.classification_hint = " (give the label order with --labels)";
  const auto ev = eval::evaluate_model(c.folder(), c.run_model, req, c.device, c.comm.get());

  for (const auto& [file, r] : ev.perplexity) {
    out["ppl"] = r.ppl;
    out["nll"] = r.nll;
    out["tokens"] = r.tokens;
    out["windows"] = r.windows;
    out["context"] = r.context;
    report.set_section("perplexity", nlohmann::json{{"file", file}, {"ppl", r.ppl}, {"nll", r.nll},
                                                    {"tokens", r.tokens}, {"windows", r.windows},
                                                    {"context", r.context}, {"streaming", c.src->streaming()}});
    if (!o.json && c.main_rank)
      std::cout << "ppl " << r.ppl << "  nll " << r.nll << "  tokens " << r.tokens << "  windows "
                << r.windows << "  context " << r.context << "\n";
  }
  if (w.tasks) {
    report.set_meta("limit", o.limit);
    report.set_meta("batch_size", o.batch_size);
    report.set_meta("max_length", ev.task_max_length);
    report.set_meta("num_fewshot", 0);
    report.set_meta("bos", !o.no_bos);
    for (const auto& r : ev.tasks) {
      report.add_multiple_choice(r);
      out["tasks"][r.task] = report.json()["tasks"][r.task];
    }
    if (!o.json && c.main_rank) std::cout << report.to_text();
  }
  if (ev.classification) {
    const auto& metrics = *ev.classification;
    const auto mj = metrics.to_json();
    for (auto it = mj.begin(); it != mj.end(); ++it) out[it.key()] = it.value();
    report.set_meta("max_length", ev.classification_max_length);
    report.add_classification(std::filesystem::path(o.classify_file).stem().string(), metrics);
    if (!o.json && c.main_rank) {
      std::cout << "accuracy " << metrics.accuracy << "  precision " << mj["precision"].get<double>()
                << "  recall " << mj["recall"].get<double>() << "  f1 " << mj["f1"].get<double>() << "  ("
                << mj["average"].get<std::string>() << ")  n " << metrics.n << "\n"
                << "confusion [true][predicted], labels in order:";
      for (const auto& l : req.classification->label_names) std::cout << " " << l;
      std::cout << "\n";
      for (const auto& row : metrics.confusion) {
        for (size_t col = 0; col < row.size(); ++col) std::cout << (col ? " " : "  ") << row[col];
        std::cout << "\n";
      }
    }
  }
}

void register_eval_options(CLI::App* cmd, EvalOpts* o, CLI::Option*& gen, CLI::Option*& ppl, CLI::Option*& tasks,
                           CLI::Option*& classify) {
  cmd->add_option("DIR", o->dir, "model folder (config.json, model.safetensors, tokenizer)")->required();
  gen = cmd->add_option("--generate", o->prompt, "generate text from PROMPT (\"\" starts from BOS)");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate at most")->capture_default_str();
  cmd->add_flag("--greedy", o->greedy, "greedy decoding (argmax) instead of sampling")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "sampling temperature (0 = greedy)")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass (1 = full distribution)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "sampling seed")->capture_default_str();
  ppl = cmd->add_option("--ppl", o->ppl_file, "perplexity of a text file (one document, with BOS)");
  cmd->add_option("--context", o->context, "perplexity window length (0 = min(2048, model max))")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size,
                  "perplexity windows / task requests / classified examples per forward pass")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print the results as one JSON object (with --generate: each token's id, piece, log-probability "
                "and top-1 minus top-2 logit margin)")
      ->capture_default_str();
  tasks = cmd->add_option("--tasks", o->tasks,
                                "zero-shot multiple-choice tasks, lm-eval-harness style: piqa, arc_easy, "
                                "arc_challenge, hellaswag (comma-separated)")
                    ->delimiter(',');
  cmd->add_option("--task-dir", o->task_dir, "folder holding piqa/, arc/, hellaswag/")->capture_default_str();
  cmd->add_option("--limit", o->limit, "items per task / first examples of --classify FILE (0 = all)")->capture_default_str();
  cmd->add_option("--report", o->report, "write the results to PREFIX.json and PREFIX.txt");
  classify = cmd->add_option("--classify", o->classify_file,
                                   "accuracy / precision / recall / F1 of a sequence classifier on a labelled "
                                   ".tsv, .csv or .jsonl file");
  cmd->add_option("--text-field", o->text_field, "text column of --classify FILE")->capture_default_str();
  cmd->add_option("--label-field", o->label_field, "label column of --classify FILE")->capture_default_str();
  cmd->add_option("--labels", o->labels, "label order for --classify (default: sorted distinct labels)")
      ->delimiter(',');
  cmd->add_flag("--no-bos", o->no_bos,
                "score --tasks without BOS before the context (lm-eval's Hugging Face default for most models)")
      ->capture_default_str();
  cmd->add_option("--max-length", o->max_length,
                  "tokens per task request / classified example (0 = the model's maximum)")
      ->capture_default_str();

  cmd->add_option("--device", o->device, "auto (CUDA when available), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}))
      ->capture_default_str();
  cmd->add_flag("--streaming", o->streaming,
                "hold one block at a time, loaded from the mapped checkpoint (--ppl, --tasks, --classify), "
                "even when the whole model would fit --memory-limit")
      ->capture_default_str();
  cmd->add_option("--memory-limit", o->memory_limit,
                  "memory the whole model may take; a larger model is streamed block by block (auto = 80% of "
                  "the available host memory, or of the GPU's free memory)")
      ->capture_default_str();
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOpts>();
  auto* cmd = app.add_subcommand("eval", "Evaluate a model folder: generation, perplexity, zero-shot tasks, classification");
  CLI::Option *gen = nullptr, *ppl = nullptr, *tasks = nullptr, *classify = nullptr;
  register_eval_options(cmd, o.get(), gen, ppl, tasks, classify);
  cmd->callback([o, gen, ppl, tasks, classify] {
    const EvalWhat w{gen->count() > 0, ppl->count() > 0, tasks->count() > 0, classify->count() > 0};
    validate_eval_options(*o, w);
    // Load task and classification files before the model so a typo fails fast.
    std::vector<eval::MultipleChoiceTask> loaded;
    for (const auto& t : o->tasks) loaded.push_back(eval::load_task(util::trim(t), o->task_dir));
    std::optional<data::ClassificationData> cls_data;
    if (w.cls) {
      data::ClassificationReadOptions ro;
      ro.text_field = o->text_field;
      ro.label_field = o->label_field;
      ro.labels = o->labels;
      cls_data = data::read_classification_file(o->classify_file, ro);
      if (o->limit > 0 && static_cast<int64_t>(cls_data->texts.size()) > o->limit) {
        cls_data->texts.resize(static_cast<size_t>(o->limit));
        cls_data->labels.resize(static_cast<size_t>(o->limit));
      }
    }
    EvalContext c = open_eval_context(*o, w);
    nlohmann::json out;
    if (w.gen) run_generate(c, out);
    eval::EvalReport report(o->dir);
    report.set_meta("device", c.device.str());
    report.set_meta("streamed", c.src->streaming());
    report.set_meta("ranks", c.comm->world_size());
    if (w.ppl || w.tasks || w.cls) run_evaluations(c, w, std::move(loaded), std::move(cls_data), out, report);
    if (!c.main_rank) return;
    // A generated piece may be a lone byte of a multi-byte character: invalid UTF-8 becomes U+FFFD.
    if (o->json) std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    if (!o->report.empty()) report.write(o->report);
  });
}

}  // namespace mpqat::cli
