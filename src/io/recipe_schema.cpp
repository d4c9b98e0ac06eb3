// The recipe schema: every key, its type, default and meaning. This table is the one place
// where defaults live; docs/recipes.md is generated from it (mpqat run --print-schema).
#include <fmt/format.h>

#include "mpqat/io/recipe.h"

namespace mpqat::io {
namespace {

using K = KeyType;

KeySpec key(std::string path, K type, std::string def, std::string doc,
            std::vector<std::string> choices = {}, std::optional<double> min = std::nullopt,
            std::optional<double> max = std::nullopt, bool required = false) {
  KeySpec s;
  s.path = std::move(path);
  s.type = type;
  s.default_yaml = std::move(def);
  s.doc = std::move(doc);
  s.choices = std::move(choices);
  s.min = min;
  s.max = max;
  s.required = required;
  return s;
}

// model.* keys
std::vector<KeySpec> model_keys() {
  return {
    key("model.path", K::String, "''",
        "Hugging Face model folder: config.json, *.safetensors (or index), tokenizer", {},
        std::nullopt, std::nullopt, true),
    key("model.dtype", K::String, "float32", "compute dtype for forward/backward passes",
        {"float32", "bfloat16", "float16"}),
    key("model.device", K::String, "auto", "auto = CUDA when LibTorch has it, else CPU",
        {"auto", "cpu", "cuda"}),
    key("model.streaming", K::String, "auto",
        "evaluation: auto = hold the whole model when it fits model.memory_limit, else load one "
        "block at a time from the mapped file; always; never (sensitivity, RTN and Block-AP always "
        "stream)",
        {"auto", "always", "never"}),
    key("model.memory_limit", K::String, "auto",
        "memory a whole model may take (auto = 80% of the host's available memory, or of the "
        "GPU's free memory on CUDA), e.g. 16GiB")
  };
}

// data.* keys
std::vector<KeySpec> data_keys() {
  return {
    key("data.calibration.path", K::String, "''",
        "calibration data: plain text, JSONL (text field) or TSV/CSV (text + label columns)"),
    key("data.calibration.format", K::String, "auto", "file format; auto = by extension",
        {"auto", "text", "jsonl", "tsv", "csv"}),
    key("data.calibration.text_field", K::String, "text", "JSONL field / TSV column with text"),
    key("data.calibration.label_field", K::String, "label",
        "TSV/JSONL column with the class label (classification only)"),
    key("data.calibration.samples", K::Int, "128", "number of calibration sequences / examples",
        {}, 1.0),
    key("data.calibration.seqlen", K::Int, "512", "tokens per calibration sequence", {}, 2.0),
    key("data.calibration.sampling", K::String, "random",
        "random, or stratified (balanced by label; classification data)",
        {"random", "stratified"}),
    key("data.calibration.seed", K::Int, "0", "sampling seed"),
    key("data.validation_samples", K::Int, "16",
        "calibration samples held out for Block-AP validation MSE", {}, 0.0),
    key("data.allow_eval_overlap", K::Bool, "false",
        "allow calibrating on the same file that is evaluated (refused by default: leakage)")
  };
}

// sensitivity.* keys
std::vector<KeySpec> sensitivity_keys() {
  return {
    key("sensitivity.file", K::String, "''",
        "reuse an existing sensitivity.json instead of measuring"),
    key("sensitivity.metrics", K::StringList, "[fisher]",
        "metrics to measure (the first is the score); a+b combines by mean normalised rank",
        {"fisher", "svcca", "pwcca", "cka", "cka-rbf", "cka-debiased"}),
    key("sensitivity.mode", K::String, "output",
        "CCA-family mode: output = 1 - similarity(FP output, output with the layer quantized); "
        "layer-to-layer = the seeds' profile of how much each layer changes its input",
        {"output", "layer-to-layer", "profile"}),
    key("sensitivity.unit", K::String, "module", "report per linear module or per block",
        {"module", "block"}),
    key("sensitivity.probe_bits", K::Int, "3", "bit-width used to probe CCA/CKA sensitivity",
        {"2", "3", "4", "5", "6", "8"}),
    key("sensitivity.group_size", K::Int, "128", "group size of the probe quantizer",
        {"32", "64", "128", "256", "-1"}),
    key("sensitivity.svcca_k", K::Int, "20",
        "SVCCA: top-k singular directions kept (0 = by variance fraction)", {}, 0.0),
    key("sensitivity.svcca_variance", K::Float, "0.99",
        "SVCCA: variance fraction kept when svcca_k is 0", {}, 0.0, 1.0),
    key("sensitivity.max_rows", K::Int, "4096",
        "rows (tokens) subsampled for CCA, RBF and debiased CKA", {}, 2.0),
    key("sensitivity.cache_dtype", K::String, "float32",
        "dtype of the cached block inputs and gradients (float32: Fisher equals the whole-model "
        "computation; bfloat16 halves the caches)",
        {"float32", "bfloat16", "float16"}),
    key("sensitivity.cache_memory_limit", K::String, "4GiB",
        "activation caches past this size go to files in sensitivity.cache_dir"),
    key("sensitivity.cache_dir", K::String, "''",
        "folder for the sensitivity caches past the limit (default: the run folder)")
  };
}

// allocation.* keys
std::vector<KeySpec> allocation_keys() {
  const std::vector<std::string> bits_menu = {"2", "3", "4", "5", "6", "8", "16"};
  return {
    key("allocation.method", K::String, "qbo",
        "qbo = exact optimum under the byte budget; mpq = target average bits; kmeans, "
        "percentile, hierarchical = the seeds' clustering presets; uniform; plan = use "
        "allocation.plan",
        {"qbo", "mpq", "kmeans", "percentile", "hierarchical", "uniform", "plan"}),
    key("allocation.plan", K::String, "''", "existing bitplan.json (method: plan)"),
    key("allocation.budget.bytes", K::String, "''",
        "size budget of the whole saved checkpoint, e.g. 2.5GB or 700MiB"),
    key("allocation.budget.avg_bits", K::Float, "0",
        "budget in bpw: all bytes of the quantized linears (codes, scales, zeros, g_idx) x 8 / their weights, "
        "as llama.cpp counts; 4-bit g128 is about 4.16 bpw, not 4 (0 = unset)", {}, 0.0, 16.0),
    key("allocation.budget.code_bits", K::Float, "0",
        "budget in code bits per weight of the quantized linears, scales / zeros / g_idx not counted (the "
        "seeds' 'average 4.0 bits'; a float module counts its dtype's bits; 0 = unset)", {}, 0.0, 16.0),
    key("allocation.budget.compression", K::Float, "0",
        "budget as compression ratio vs the FP16 model (0 = unset)", {}, 0.0),
    key("allocation.bits", K::IntList, "[2, 3, 4, 5, 6, 8]",
        "candidate bit-widths (16 = keep in 16-bit float)", bits_menu),
    key("allocation.group_sizes", K::IntList, "[128]",
        "candidate group sizes (-1 = per output channel)", {"32", "64", "128", "256", "-1"}),
    key("allocation.unit", K::String, "module", "one choice per linear module or per block",
        {"module", "block"}),
    key("allocation.min_bits", K::Int, "2", "lowest bits any unit may get", bits_menu),
    key("allocation.max_bits", K::Int, "16", "highest bits any unit may get", bits_menu),
    key("allocation.pins", K::IntMap, "{}",
        "regex -> bits pins, e.g. {\"model.layers.0.*\": 8, \"lm_head\": 16}"),
    key("allocation.tie_qkv", K::Bool, "false",
        "keep q/k/v of one layer at equal bits (vLLM and GPTQModel need it)"),
    key("allocation.tie_gate_up", K::Bool, "false", "keep gate/up of one layer at equal bits"),
    key("allocation.target", K::String, "mpqat",
        "engine the checkpoint is for; restricts the menu: mpqat (all), gptqmodel (2/3/4/8 bits), vllm "
        "(symmetric 4/8 bits, groups -1/32/64/128, q/k/v and gate/up tied), llama.cpp (only through `mpqat allocate --target llama.cpp`: docs/gguf.md)",
        {"mpqat", "gptqmodel", "vllm", "llama.cpp"}),
    key("allocation.allow_modelled_omega", K::Bool, "false",
        "qbo/mpq: accept a sensitivity file whose omega tables lack candidates of the menu, modelling them "
        "from the score (otherwise an error names the missing bits:group)"),
    key("allocation.solver", K::String, "dp",
        "dp = exact multiple-choice knapsack; lagrangian = for very large menus",
        {"dp", "lagrangian"}),
    key("allocation.groups", K::Int, "3", "clustering: number of sensitivity groups", {}, 2.0,
        8.0),
    key("allocation.preset", K::IntList, "[16, 8, 4]",
        "clustering: bits per group, most sensitive first (16/32 = keep that float width)",
        {"2", "3", "4", "5", "6", "8", "16", "32"}),
    key("allocation.uniform_bits", K::Int, "4", "method uniform: bits of every unit",
        bits_menu),
    key("allocation.sym", K::Bool, "false", "symmetric quantization (default asymmetric)"),
    key("allocation.sgra.enabled", K::Bool, "true",
        "per-unit epochs, learning-rate multiplier and patience from sensitivity rank"),
    key("allocation.sgra.epochs", K::IntList, "[2, 4]", "SGRA epochs range [least, most]", {},
        1.0),
    key("allocation.sgra.lr_scale", K::FloatList, "[0.5, 1.5]",
        "SGRA learning-rate multiplier range", {}, 0.0),
    key("allocation.sgra.patience", K::IntList, "[2, 5]",
        "SGRA early-stopping patience range (epochs)", {}, 1.0),
    key("allocation.sgra.equal_steps", K::Bool, "false",
        "rescale SGRA's per-block epochs so that they sum to training.epochs x blocks: the optimisation "
        "steps of the uniform schedule, so a gain is not bought with more training")
  };
}

// training.* keys
std::vector<KeySpec> training_keys() {
  return {
    key("training.method", K::String, "block-ap",
        "block-ap = block-wise QAT (EfficientQAT); gptq = GPTQ post-training (no training); "
        "rtn = round to nearest",
        {"block-ap", "gptq", "rtn"}),
    key("training.epochs", K::Int, "2", "epochs per block when SGRA is off", {}, 0.0),
    key("training.batch_size", K::Int, "2", "sequences per optimisation step", {}, 1.0),
    key("training.lr_weights", K::Float, "1e-5", "AdamW learning rate of the weights", {}, 0.0),
    key("training.lr_quant", K::Float, "1e-4",
        "AdamW learning rate of scales and zero points", {}, 0.0),
    key("training.min_lr_ratio", K::Float, "0.05", "cosine schedule floor (lr/20)", {}, 0.0,
        1.0),
    key("training.train_norm", K::Bool, "false", "also train the blocks' norm weights"),
    key("training.init", K::String, "minmax",
        "quantizer start: minmax (rtn is the same), mse (clipping search minimising weight MSE), "
        "or gptq (Block-AP starts from GPTQ's codes)",
        {"minmax", "rtn", "mse", "gptq"}),
    key("training.gptq.damp", K::Float, "0.01",
        "GPTQ damping lambda, relative to mean(diag H); raised x10 while H is indefinite", {}, 0.0),
    key("training.gptq.act_order", K::Bool, "false",
        "GPTQ columns by decreasing diag(H) (desc_act; g_idx maps the permuted groups)"),
    key("training.gptq.static_groups", K::Bool, "false",
        "with act_order: groups fixed on the original column order (contiguous groups)"),
    key("training.gptq.block_columns", K::Int, "128", "GPTQ lazy-batch width in columns", {}, 1.0),
    key("training.gptq.train_scales", K::Bool, "false",
        "Block-AP from GPTQ (training.init: gptq): also train GPTQ's scales and zeros (off: only the "
        "weights train; training the scales undoes GPTQ's start)"),
    key("training.cache_dtype", K::String, "float16", "dtype of cached block inputs/targets",
        {"float16", "bfloat16", "float32"}),
    key("training.cache_memory_limit", K::String, "8GiB",
        "activation caches spill to training.cache_dir past this size"),
    key("training.cache_dir", K::String, "''", "folder for spilled caches (default: output)"),
    key("training.nan_lr_backoff", K::Float, "0.5",
        "learning-rate factor applied after a NaN/Inf step is discarded", {}, 0.0, 1.0),
    key("training.resume", K::Bool, "true", "continue from the last finished block"),
    key("training.e2e.enabled", K::Bool, "false",
        "E2E-QP: train only step sizes end to end after Block-AP"),
    key("training.e2e.epochs", K::Int, "1", "E2E-QP epochs", {}, 0.0),
    key("training.e2e.lr", K::Float, "1e-5", "E2E-QP learning rate", {}, 0.0),
    key("training.e2e.warmup_ratio", K::Float, "0.03", "E2E-QP warm-up fraction", {}, 0.0, 1.0),
    key("training.e2e.grad_clip", K::Float, "0.3", "E2E-QP gradient-norm clip (0 = off)", {},
        0.0),
    key("training.e2e.samples", K::Int, "64", "E2E-QP training sequences", {}, 1.0),
    key("training.e2e.seqlen", K::Int, "512", "E2E-QP tokens per sequence", {}, 2.0),
    key("training.e2e.batch_size", K::Int, "1", "E2E-QP sequences per step", {}, 1.0)
  };
}

// evaluation.* keys
std::vector<KeySpec> evaluation_keys() {
  return {
    key("evaluation.fp_baseline", K::Bool, "true", "also evaluate the unquantized model"),
    key("evaluation.perplexity", K::StringList, "[]",
        "text files scored for perplexity, each as one document"),
    key("evaluation.context", K::Int, "2048",
        "perplexity window (tokens); capped at the model's maximum; 0 = model maximum", {},
        0.0),
    key("evaluation.tasks", K::StringList, "[]", "zero-shot multiple-choice tasks",
        {"piqa", "arc_easy", "arc_challenge", "hellaswag"}),
    key("evaluation.task_dir", K::String, "''",
        "folder with the task files (layout of ../shared/data/tasks)"),
    key("evaluation.task_limit", K::Int, "0", "items per task (0 = all)", {}, 0.0),
    key("evaluation.classification.path", K::String, "''",
        "labelled TSV/CSV/JSONL test file for classification metrics"),
    key("evaluation.classification.text_field", K::String, "sentence", "text column"),
    key("evaluation.classification.label_field", K::String, "label", "label column"),
    key("evaluation.classification.limit", K::Int, "0", "examples evaluated (0 = all)", {},
        0.0),
    key("evaluation.batch_size", K::Int, "1", "sequences per forward pass", {}, 1.0)
  };
}

// output.* keys
std::vector<KeySpec> output_keys() {
  return {
    key("output.dir", K::String, "runs/{name}-{timestamp}",
        "run folder; {name} and {timestamp} are substituted"),
    key("output.name", K::String, "mpqat", "run name used in output.dir and reports"),
    key("output.overwrite", K::Bool, "false",
        "reuse a non-empty output folder (finished stages are still reused by hash)"),
    key("output.shard_size", K::String, "4GB", "checkpoint shard size limit"),
    key("output.float_dtype", K::String, "float16", "dtype of tensors left unquantized",
        {"float16", "bfloat16", "float32"}),
    key("output.report_formats", K::StringList, "[txt, json, html]", "report files written",
        {"txt", "json", "html"}),
    key("output.formats", K::StringList, "[safetensors]",
        "checkpoint formats: safetensors (the packed GPTQ-layout folder, always written: evaluation reloads it), "
        "gguf (also model.gguf for llama.cpp, Llama family: docs/gguf.md)",
        {"safetensors", "gguf"}),
    key("output.gguf_imatrix", K::Bool, "true",
        "with output.formats gguf: weigh the K-quant search of requantized modules by E[x^2] per input column, "
        "measured on the written checkpoint over the calibration data (imatrix.json in the run folder)"),
    key("output.stop_after", K::String, "report",
        "last stage to run: sensitivity (the seeds' phase 1), allocation, quantize, or report (all)",
        {"sensitivity", "allocation", "quantize", "report"})
  };
}

// distributed.* keys
std::vector<KeySpec> distributed_keys() {
  return {
    key("distributed.backend", K::String, "auto",
        "c10d backend: auto = NCCL when tensors are on CUDA, else Gloo",
        {"auto", "gloo", "nccl"}),
    key("distributed.timeout_s", K::Int, "600",
        "seconds a collective may wait for a peer before every rank fails", {}, 1.0)
  };
}

// study.* keys (read by `mpqat study` only; `mpqat run` ignores them)
std::vector<KeySpec> study_keys() {
  return {
    key("study.allocation", K::StringList, "[uniform, qbo]",
        "mpqat study: allocation methods compared; the mixed ones (qbo, mpq) get the bytes of uniform at each "
        "budget, the clustering presets run once per calibration set",
        {"uniform", "qbo", "mpq", "kmeans", "percentile", "hierarchical"}),
    key("study.training", K::StringList, "[block-ap]",
        "mpqat study: training methods (block-ap-gptq = Block-AP from GPTQ's start)",
        {"rtn", "gptq", "gptq-act-order", "block-ap", "block-ap-gptq"}),
    key("study.sgra", K::StringList, "[off, on]",
        "mpqat study, Block-AP cells: SGRA off, on, and/or equal-steps (SGRA's epochs rescaled to the uniform "
        "schedule's total)",
        {"off", "on", "equal-steps"}),
    key("study.budgets", K::FloatList, "[3]",
        "mpqat study: sizes in uniform bits; B = the bytes of the uniform B-bit checkpoint (a fraction: "
        "interpolated between the uniform floor(B) and ceil(B) bytes)", {}, 2.0, 8.0),
    key("study.samples", K::IntList, "[]",
        "mpqat study: calibration sizes (data.calibration.samples; [] = the recipe's)", {}, 1.0),
    key("study.seeds", K::IntList, "[0]",
        "mpqat study: seeds (seed and data.calibration.seed of each repetition)")
  };
}

// run.* keys
std::vector<KeySpec> run_keys() {
  return {
    key("seed", K::Int, "0", "global seed (sampling, initialisation, shuffling)"),
    key("log_level", K::String, "info", "log verbosity",
        {"trace", "debug", "info", "warn", "error", "off"})
  };
}

// Every section's keys, in the order docs/recipes.md lists them.
std::vector<KeySpec> build_schema() {
  std::vector<KeySpec> all;
  for (auto section : {&model_keys, &data_keys, &sensitivity_keys, &allocation_keys, &training_keys, &evaluation_keys, &output_keys, &distributed_keys, &study_keys, &run_keys}) {
    auto keys = section();
    all.insert(all.end(), keys.begin(), keys.end());
  }
  return all;
}

}  // namespace

const std::vector<KeySpec>& recipe_schema() {
  static const std::vector<KeySpec> schema = build_schema();
  return schema;
}

const KeySpec* find_key(const std::string& path) {
  for (const auto& k : recipe_schema()) {
    if (k.path == path) return &k;
  }
  return nullptr;
}

std::string recipe_schema_markdown() {
  std::string out = "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
  for (const auto& k : recipe_schema()) {
    std::string allowed;
    for (std::size_t i = 0; i < k.choices.size(); ++i) allowed += (i ? ", " : "") + k.choices[i];
    if (k.min || k.max) {
      if (!allowed.empty()) allowed += "; ";
      if (k.min && k.max) allowed += fmt::format("{} .. {}", *k.min, *k.max);
      else if (k.min) allowed += fmt::format(">= {}", *k.min);
      else allowed += fmt::format("<= {}", *k.max);
    }
    std::string doc = k.doc;
    for (auto& c : doc) {
      if (c == '|') c = '/';
    }
    out += fmt::format("| `{}` | {} | `{}` | {} | {}{} |\n", k.path, key_type_name(k.type),
                       k.default_yaml, allowed, doc, k.required ? " (required)" : "");
  }
  return out;
}

}  // namespace mpqat::io
