// `mpqat eval DIR [--generate PROMPT ...] [--ppl FILE ...] [--tasks piqa,... ] [--classify FILE ...]`
#include <CLI/CLI.hpp>

#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mpqat/cli/commands.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/eval/classification.h"
#include "mpqat/eval/generate.h"
#include "mpqat/eval/multiple_choice.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/eval/report.h"
#include "mpqat/eval/tasks.h"
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
};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("cannot open text file '" + path + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOpts>();
  auto* cmd = app.add_subcommand("eval", "Evaluate a model folder: text generation and/or perplexity");
  cmd->add_option("DIR", o->dir, "model folder (config.json, model.safetensors, tokenizer)")->required();
  auto* gen = cmd->add_option("--generate", o->prompt, "generate text from PROMPT (\"\" starts from BOS)");
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate at most")->capture_default_str();
  cmd->add_flag("--greedy", o->greedy, "greedy decoding (argmax) instead of sampling")->capture_default_str();
  cmd->add_option("--temperature", o->temperature, "sampling temperature (0 = greedy)")->capture_default_str();
  cmd->add_option("--top-p", o->top_p, "nucleus sampling mass (1 = full distribution)")->capture_default_str();
  cmd->add_option("--seed", o->seed, "sampling seed")->capture_default_str();
  auto* ppl = cmd->add_option("--ppl", o->ppl_file, "perplexity of a text file (one document, with BOS)");
  cmd->add_option("--context", o->context, "perplexity window length (0 = min(2048, model max))")->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size,
                  "perplexity windows / task requests / classified examples per forward pass")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print the perplexity / task / classification results as one JSON object")
      ->capture_default_str();
  auto* tasks = cmd->add_option("--tasks", o->tasks,
                                "zero-shot multiple-choice tasks, lm-eval-harness style: piqa, arc_easy, "
                                "arc_challenge, hellaswag (comma-separated)")
                    ->delimiter(',');
  cmd->add_option("--task-dir", o->task_dir, "folder holding piqa/, arc/, hellaswag/")->capture_default_str();
  cmd->add_option("--limit", o->limit, "items per task (0 = all)")->capture_default_str();
  cmd->add_option("--report", o->report, "write the results to PREFIX.json and PREFIX.txt");
  auto* classify = cmd->add_option("--classify", o->classify_file,
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

  cmd->callback([o, gen, ppl, tasks, classify] {
    const bool do_gen = gen->count() > 0, do_ppl = ppl->count() > 0;
    const bool do_tasks = tasks->count() > 0, do_cls = classify->count() > 0;
    if (!do_gen && !do_ppl && !do_tasks && !do_cls)
      throw InputError(
          "eval: nothing to do (give --generate PROMPT, --ppl FILE, --tasks LIST and/or --classify FILE)");
    if (o->json && !do_ppl && !do_tasks && !do_cls)
      throw InputError("eval: --json applies to --ppl, --tasks and --classify; give one of them");
    if (o->limit < 0) throw InputError("--limit must be >= 0, got " + std::to_string(o->limit));
    if (o->max_length < 0) throw InputError("--max-length must be >= 0, got " + std::to_string(o->max_length));
    if (o->batch_size < 1) throw InputError("--batch-size must be >= 1, got " + std::to_string(o->batch_size));
    // Load task files before the model so a typo fails fast.
    std::vector<eval::MultipleChoiceTask> loaded;
    for (const auto& t : o->tasks) loaded.push_back(eval::load_task(util::trim(t), o->task_dir));
    eval::ClassificationData cls_data;
    if (do_cls) {
      eval::ClassificationReadOptions ro;
      ro.text_field = o->text_field;
      ro.label_field = o->label_field;
      ro.labels = o->labels;
      cls_data = eval::read_classification_file(o->classify_file, ro);
      // Sequence classifiers (BERT / OPT heads) load through the model-family factory, which
      // the CLI does not reach yet.
      throw NotImplementedError("eval --classify (sequence-classification model loading)");
    }
    const model::ModelFolder folder(o->dir);
    const auto& tok = folder.tokenizer();
    auto m = model::load_model(folder);
    nlohmann::json out;
    if (do_gen) {
      eval::GenerateOptions g;
      g.max_new_tokens = o->max_new_tokens;
      g.greedy = o->greedy;
      g.temperature = o->temperature;
      g.top_p = o->top_p;
      g.seed = o->seed;
      if (o->json) {
        out["generated"] = eval::generate(*m, tok, o->prompt, g).text;
      } else {
        eval::generate(*m, tok, o->prompt, g, [](const std::string& piece) { std::cout << piece << std::flush; });
        std::cout << "\n";
      }
    }
    eval::EvalReport report(o->dir);
    if (do_ppl) {
      const auto ids = tok.encode(read_text(o->ppl_file), /*add_bos=*/true);
      if (o->context < 0) throw InputError("--context must be >= 0");
      const auto r = eval::evaluate_perplexity(*m, ids, o->context, o->batch_size, o->json ? 0 : 100);
      out["ppl"] = r.ppl;
      out["nll"] = r.nll;
      out["tokens"] = r.tokens;
      out["windows"] = r.windows;
      out["context"] = r.context;
      report.set_section("perplexity", nlohmann::json{{"file", o->ppl_file}, {"ppl", r.ppl}, {"nll", r.nll},
                                                      {"tokens", r.tokens}, {"windows", r.windows},
                                                      {"context", r.context}});
      if (!o->json)
        std::cout << "ppl " << r.ppl << "  nll " << r.nll << "  tokens " << r.tokens << "  windows "
                  << r.windows << "  context " << r.context << "\n";
    }
    if (do_tasks) {
      // Ranks launched by `mpqat launch` / torchrun split the items; a plain run is one rank.
      auto comm = dist::Communicator::from_env();
      eval::MultipleChoiceOptions mo;
      mo.batch_size = o->batch_size;
      mo.max_length = o->max_length > 0 ? o->max_length : m->config().max_position_embeddings;
      mo.limit = o->limit;
      mo.add_bos = !o->no_bos;
      mo.progress = !o->json;
      mo.comm = comm.get();
      for (const auto& p : m->parameters()) {
        mo.device = p.device();
        break;
      }
      const eval::LogitsFn fn = [&](const torch::Tensor& x) { return m->forward(x); };
      report.set_meta("limit", o->limit);
      report.set_meta("batch_size", o->batch_size);
      report.set_meta("max_length", mo.max_length);
      report.set_meta("num_fewshot", 0);
      report.set_meta("bos", mo.add_bos);
      for (const auto& t : loaded) {
        const auto r = eval::evaluate_task(fn, tok, t, mo);
        report.add_multiple_choice(r);
        out["tasks"][r.task] = report.json()["tasks"][r.task];
      }
      if (!o->json && comm->is_main()) std::cout << report.to_text();
      if (!comm->is_main()) return;
    }
    if (o->json && (do_ppl || do_tasks)) std::cout << out.dump() << "\n";
    if (!o->report.empty()) report.write(o->report);
  });
}

}  // namespace mpqat::cli
