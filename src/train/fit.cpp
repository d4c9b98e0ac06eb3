#include "mpqat/train/fit.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include <spdlog/spdlog.h>

#include "mpqat/data/hf_tokenizer.h"
#include "mpqat/data/tokenizer.h"
#include "mpqat/data/wordpiece_tokenizer.h"
#include "mpqat/model/config.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/model_input.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/train/steps.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/util/strings.h"

namespace mpqat::train {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

void check_options(const FitOptions& o) {
  if (o.steps < 0) throw InputError("fit: steps must be >= 0, got " + std::to_string(o.steps));
  if (o.steps == 0 && !(o.epochs > 0))
    throw InputError("fit: give steps > 0 or epochs > 0 (got steps 0, epochs " + std::to_string(o.epochs) + ")");
  if (o.batch_size < 1) throw InputError("fit: batch size must be >= 1, got " + std::to_string(o.batch_size));
  if (o.seqlen < 0) throw InputError("fit: seqlen must be >= 0, got " + std::to_string(o.seqlen));
  if (!(o.lr > 0)) throw InputError("fit: learning rate must be > 0, got " + std::to_string(o.lr));
  if (o.min_lr_ratio < 0 || o.min_lr_ratio > 1)
    throw InputError("fit: min_lr_ratio must be in [0, 1], got " + std::to_string(o.min_lr_ratio));
  if (o.weight_decay < 0) throw InputError("fit: weight decay must be >= 0, got " + std::to_string(o.weight_decay));
  if (o.warmup < 0) throw InputError("fit: warmup must be >= 0, got " + std::to_string(o.warmup));
  if (o.schedule != "cosine" && o.schedule != "linear" && o.schedule != "constant")
    throw InputError("fit: schedule '" + o.schedule + "' is not known (accepted: cosine, linear, constant)");
  if (o.grad_clip < 0) throw InputError("fit: grad_clip must be >= 0, got " + std::to_string(o.grad_clip));
  if (o.max_seconds < 0) throw InputError("fit: max_seconds must be >= 0");
}

// Train mode, every parameter trainable; AdamW with weight decay on matrices only.
std::unique_ptr<torch::optim::AdamW> make_optimizer(model::TransformerModel& m, const FitOptions& o) {
  m.to(o.device);
  m.train();
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : m.parameters(true)) {
    p.set_requires_grad(true);
    (p.dim() >= 2 ? decay : no_decay).push_back(p);
  }
  auto base = torch::optim::AdamWOptions(o.lr)
                  .betas(std::make_tuple(o.beta1, o.beta2))
                  .eps(o.adam_eps)
                  .weight_decay(0.0);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty())
    groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(base).weight_decay(o.weight_decay)));
  if (!no_decay.empty())
    groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(base));
  return std::make_unique<torch::optim::AdamW>(groups, base);
}

void set_lr(torch::optim::AdamW& opt, double lr) {
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
}

void finish_model(model::TransformerModel& m) {
  for (auto& p : m.parameters(true)) {
    p.set_requires_grad(false);
    p.mutable_grad() = torch::Tensor();
  }
  m.eval();
}

bool is_output_projection(const std::string& name) {
  for (const char* s : {".o_proj.weight", ".out_proj.weight", ".down_proj.weight", ".fc2.weight",
                        "attention.output.dense.weight"})
    if (util::ends_with(name, s)) return true;
  // BERT's block output ("bert.encoder.layer.3.output.dense.weight"), not the intermediate one.
  return name.find("encoder.layer.") != std::string::npos && util::ends_with(name, ".output.dense.weight");
}

// One optimizer step on `loss`; returns the loss value.
double step(torch::optim::AdamW& opt, model::TransformerModel& m, torch::Tensor loss, const FitOptions& o) {
  opt.zero_grad();
  loss.backward();
  if (o.grad_clip > 0) torch::nn::utils::clip_grad_norm_(m.parameters(true), o.grad_clip);
  opt.step();
  const double v = loss.item<double>();
  if (!std::isfinite(v))
    throw Error("fit: the training loss became " + std::to_string(v) + " (lower the learning rate)");
  return v;
}

void log_step(const FitOptions& o, const FitResult& r, int64_t s, int64_t total, double loss, double lr,
              double elapsed, const std::string& unit, int64_t done_units) {
  nlohmann::json rec{{"step", s + 1}, {"loss", loss}, {"lr", lr}, {"seconds", elapsed}, {unit, done_units}};
  if (o.on_step) o.on_step(rec);
  if (o.log_every > 0 && ((s + 1) % o.log_every == 0 || s + 1 == total)) {
    // Mean over the last log_every steps: a smoother curve than one batch.
    const int64_t n = std::min<int64_t>(o.log_every, static_cast<int64_t>(r.step_loss.size()));
    double mean = 0;
    for (int64_t i = 0; i < n; ++i) mean += r.step_loss[r.step_loss.size() - 1 - static_cast<size_t>(i)];
    mean /= static_cast<double>(std::max<int64_t>(n, 1));
    spdlog::info("fit step {}/{}  loss {:.4f}  lr {:.3g}  {:.1f}s  {:.0f} {}/s", s + 1, total, mean, lr, elapsed,
                 elapsed > 0 ? static_cast<double>(done_units) / elapsed : 0.0, unit);
  }
}

}  // namespace

double learning_rate(const FitOptions& o, int64_t step, int64_t total) {
  if (o.warmup > 0 && step < o.warmup) return o.lr * static_cast<double>(step + 1) / static_cast<double>(o.warmup);
  if (o.schedule == "constant") return o.lr;
  if (o.schedule == "linear") {
    const int64_t span = std::max<int64_t>(1, total - o.warmup - 1);
    const double t = std::clamp(static_cast<double>(step - o.warmup) / static_cast<double>(span), 0.0, 1.0);
    return o.lr + (o.lr * o.min_lr_ratio - o.lr) * t;
  }
  return o.lr * cosine_factor(step, total, o.warmup, o.min_lr_ratio, /*at_last=*/true);
}

void init_for_training(model::TransformerModel& m, double std) {
  torch::NoGradGuard ng;
  const double out_std = std / std::sqrt(2.0 * static_cast<double>(std::max<int64_t>(1, m.num_blocks())));
  for (auto& item : m.named_parameters(true)) {
    const std::string& name = item.key();
    auto& p = item.value();
    const std::string low = util::to_lower(name);
    if (p.dim() >= 2) p.normal_(0.0, is_output_projection(name) ? out_std : std);
    else if (low.find("norm") != std::string::npos && util::ends_with(name, "weight")) p.fill_(1.0);
    else p.zero_();
  }
}

std::vector<std::string> load_matching_parameters(model::TransformerModel& m, const model::ModelFolder& folder) {
  if (quant::is_quantized_folder(folder.dir()))
    throw InputError("model folder '" + folder.dir() + "' holds a packed quantized checkpoint; fit needs a float model folder");
  torch::NoGradGuard ng;
  std::vector<std::string> missing;
  for (auto& item : m.named_parameters(true)) {
    auto& p = item.value();
    const std::string name = model::checkpoint_name(folder, item.key());
    if (!folder.contains(name) || folder.checkpoint().info(name).shape != p.sizes().vec()) {
      missing.push_back(item.key());
      continue;
    }
    p.copy_(folder.tensor(name, p.sizes().vec()));
  }
  return missing;
}

// ---------------------------------------------------------------------------------------------
// Causal LM

double causal_lm_loss(model::TransformerModel& m, const std::vector<int32_t>& tokens, int64_t seqlen,
                      int64_t batch_size, int64_t max_windows, const torch::Device& device) {
  if (seqlen < 2) throw InputError("causal LM loss: window length must be >= 2, got " + std::to_string(seqlen));
  int64_t windows = static_cast<int64_t>(tokens.size()) / seqlen;
  if (windows == 0)
    throw InputError("validation text has " + std::to_string(tokens.size()) + " tokens, fewer than one window of " +
                     std::to_string(seqlen));
  if (max_windows > 0) windows = std::min(windows, max_windows);
  const bool was_training = m.is_training();
  m.eval();
  torch::NoGradGuard ng;
  auto all = torch::from_blob(const_cast<int32_t*>(tokens.data()), {windows, seqlen}, torch::kInt).to(torch::kLong);
  double sum = 0.0;
  int64_t count = 0;
  for (int64_t w0 = 0; w0 < windows; w0 += batch_size) {
    const int64_t b = std::min(batch_size, windows - w0);
    auto x = all.narrow(0, w0, b).to(device);                                         // (b, T)
    auto logits = m.forward(x, torch::Tensor()).narrow(1, 0, seqlen - 1).to(torch::kFloat);  // (b, T-1, V)
    auto nll = torch::nn::functional::cross_entropy(
        logits.reshape({-1, logits.size(-1)}), x.narrow(1, 1, seqlen - 1).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    sum += nll.to(torch::kDouble).item<double>();
    count += b * (seqlen - 1);
  }
  if (was_training) m.train();
  return sum / static_cast<double>(count);
}

FitResult fit_causal_lm(model::TransformerModel& m, const std::vector<int32_t>& tokens, const FitOptions& o,
                        const std::vector<int32_t>& valid) {
  check_options(o);
  if (!m.is_causal_lm())
    throw InputError("fit lm: the model is a " + m.config().architecture + ", not a causal LM");
  const int64_t T = o.seqlen;
  if (T < 2) throw InputError("fit lm: seqlen must be >= 2, got " + std::to_string(T));
  if (m.config().max_position_embeddings > 0 && T > m.config().max_position_embeddings)
    throw InputError("fit lm: seqlen " + std::to_string(T) + " exceeds the model's max_position_embeddings " +
                     std::to_string(m.config().max_position_embeddings));
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n < T + 1)
    throw InputError("fit lm: the training text has " + std::to_string(n) + " tokens, fewer than one window of " +
                     std::to_string(T + 1));
  const int64_t V = m.config().vocab_size;
  for (int32_t t : tokens)
    if (t < 0 || t >= V)
      throw InputError("fit lm: token id " + std::to_string(t) + " is outside the model's vocabulary of " +
                       std::to_string(V) + " (tokenizer and config do not match)");
  const int64_t per_epoch = std::max<int64_t>(1, (n - 1) / (o.batch_size * T));
  const int64_t total = o.steps > 0 ? o.steps : std::max<int64_t>(1, std::llround(o.epochs * per_epoch));

  FitResult r;
  r.planned_steps = total;
  auto opt = make_optimizer(m, o);
  std::mt19937_64 rng(o.seed);
  std::uniform_int_distribution<int64_t> start_dist(0, n - T - 1);
  auto stream = torch::from_blob(const_cast<int32_t*>(tokens.data()), {n}, torch::kInt).to(torch::kLong);
  const auto t0 = Clock::now();
  auto validate = [&](int64_t s) {
    if (valid.empty()) return;
    const int64_t max_windows = o.eval_max_batches > 0 ? o.eval_max_batches * o.batch_size : 0;
    FitResult::Eval e;
    e.step = s;
    e.loss = causal_lm_loss(m, valid, T, o.batch_size, max_windows, o.device);
    e.ppl = std::exp(e.loss);
    r.evals.push_back(e);
    spdlog::info("fit step {}: validation loss {:.4f}  ppl {:.3f}", s, e.loss, e.ppl);
    if (o.on_eval) o.on_eval(nlohmann::json{{"step", s}, {"loss", e.loss}, {"ppl", e.ppl}});
  };
  double epoch_sum = 0;
  int64_t epoch_steps = 0;
  std::vector<int64_t> starts(static_cast<size_t>(o.batch_size));
  for (int64_t s = 0; s < total; ++s) {
    for (auto& st : starts) st = start_dist(rng);
    auto idx = torch::from_blob(starts.data(), {o.batch_size, 1}, torch::kLong) +
               torch::arange(T + 1, torch::kLong).unsqueeze(0);  // (B, T+1)
    auto batch = stream.index({idx}).to(o.device);                // (B, T+1)
    auto x = batch.narrow(1, 0, T), y = batch.narrow(1, 1, T);   // (B, T) each
    const double lr = learning_rate(o, s, total);
    set_lr(*opt, lr);
    auto logits = m.forward(x, torch::Tensor());  // (B, T, V)
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, V}), y.reshape({-1}));
    const double v = step(*opt, m, loss, o);
    r.step_loss.push_back(v);
    r.step_lr.push_back(lr);
    r.tokens += o.batch_size * T;
    r.steps = s + 1;
    epoch_sum += v;
    ++epoch_steps;
    if (epoch_steps == per_epoch) {
      r.epoch_loss.push_back(epoch_sum / static_cast<double>(epoch_steps));
      epoch_sum = 0;
      epoch_steps = 0;
    }
    const double elapsed = seconds_since(t0);
    log_step(o, r, s, total, v, lr, elapsed, "tokens", r.tokens);
    if (o.eval_every > 0 && (s + 1) % o.eval_every == 0 && s + 1 < total) validate(s + 1);
    if (o.max_seconds > 0 && elapsed >= o.max_seconds && s + 1 < total) {
      spdlog::warn("fit: stopping after {} of {} steps: the time limit of {:.0f}s is reached", s + 1, total,
                   o.max_seconds);
      r.stopped_early = true;
      break;
    }
  }
  if (epoch_steps > 0) r.epoch_loss.push_back(epoch_sum / static_cast<double>(epoch_steps));
  validate(r.steps);
  r.seconds = seconds_since(t0);
  finish_model(m);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Classifier

namespace {

// Right-padded (B, T) ids and mask for the examples `rows` of `encoded`.
std::pair<torch::Tensor, torch::Tensor> pad_batch(const std::vector<std::vector<int32_t>>& encoded,
                                                  const std::vector<int64_t>& rows, int32_t pad_id) {
  std::vector<std::vector<int32_t>> picked;
  picked.reserve(rows.size());
  for (auto i : rows) picked.push_back(encoded[static_cast<size_t>(i)]);
  auto in = model::pad_right(picked, pad_id);
  return {in.ids, in.mask};
}

void check_labels(const std::vector<int64_t>& labels, int64_t num_labels, const std::string& what) {
  for (size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= num_labels)
      throw InputError("fit classifier: " + what + " label " + std::to_string(labels[i]) + " of example " +
                       std::to_string(i) + " is outside [0, " + std::to_string(num_labels) + ")");
}

}  // namespace

ClassifierScore score_classifier(model::TransformerModel& m, const std::vector<std::vector<int32_t>>& encoded,
                                 const std::vector<int64_t>& labels, const ClassifierEncoding& enc, int64_t batch_size,
                                 const torch::Device& device) {
  if (encoded.size() != labels.size())
    throw InputError("score classifier: " + std::to_string(encoded.size()) + " examples but " +
                     std::to_string(labels.size()) + " labels");
  const bool was_training = m.is_training();
  m.eval();
  torch::NoGradGuard ng;
  ClassifierScore s;
  double loss = 0;
  int64_t correct = 0;
  const int64_t n = static_cast<int64_t>(encoded.size());
  for (int64_t i0 = 0; i0 < n; i0 += batch_size) {
    std::vector<int64_t> rows(static_cast<size_t>(std::min(batch_size, n - i0)));
    std::iota(rows.begin(), rows.end(), i0);
    auto [ids, mask] = pad_batch(encoded, rows, enc.pad_id);
    auto logits = m.forward(ids.to(device), mask.to(device)).to(torch::kFloat).to(torch::kCPU);  // (b, L)
    auto y = torch::from_blob(const_cast<int64_t*>(labels.data()) + i0, {static_cast<int64_t>(rows.size())},
                              torch::kLong);
    loss += torch::nn::functional::cross_entropy(
                logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    auto pred = logits.argmax(1);
    correct += pred.eq(y).sum().item<int64_t>();
    auto pa = pred.accessor<int64_t, 1>();
    for (int64_t b = 0; b < pred.size(0); ++b) s.predictions.push_back(pa[b]);
  }
  if (was_training) m.train();
  s.accuracy = n > 0 ? static_cast<double>(correct) / static_cast<double>(n) : 0.0;
  s.loss = n > 0 ? loss / static_cast<double>(n) : 0.0;
  return s;
}

FitResult fit_classifier(model::TransformerModel& m, const data::Tokenizer& tok, const std::vector<std::string>& texts,
                         const std::vector<int64_t>& labels, const FitOptions& o, const ClassifierEncoding& enc_in,
                         const std::vector<std::string>& valid_texts, const std::vector<int64_t>& valid_labels) {
  check_options(o);
  if (m.is_causal_lm() || m.num_labels() < 1)
    throw InputError("fit classifier: the model is a " + m.config().architecture +
                     ", not a *ForSequenceClassification");
  if (texts.empty()) throw InputError("fit classifier: no training examples");
  if (texts.size() != labels.size())
    throw InputError("fit classifier: " + std::to_string(texts.size()) + " texts but " +
                     std::to_string(labels.size()) + " labels");
  if (valid_texts.size() != valid_labels.size())
    throw InputError("fit classifier: " + std::to_string(valid_texts.size()) + " validation texts but " +
                     std::to_string(valid_labels.size()) + " labels");
  const int64_t L = m.num_labels();
  check_labels(labels, L, "training");
  check_labels(valid_labels, L, "validation");
  ClassifierEncoding enc = enc_in;
  if (o.seqlen > 0) enc.max_length = enc.max_length > 0 ? std::min(enc.max_length, o.seqlen) : o.seqlen;
  const auto train = encode_for_classifier(tok, texts, enc);
  const auto valid = encode_for_classifier(tok, valid_texts, enc);
  const int64_t V = m.config().vocab_size;
  for (const auto* set : {&train, &valid})
    for (const auto& e : *set)
      for (int32_t t : e)
        if (t < 0 || t >= V)
          throw InputError("fit classifier: token id " + std::to_string(t) + " is outside the model's vocabulary of " +
                           std::to_string(V) + " (tokenizer and config do not match)");

  const int64_t n = static_cast<int64_t>(train.size());
  const int64_t per_epoch = (n + o.batch_size - 1) / o.batch_size;
  const int64_t total = o.steps > 0 ? o.steps : std::max<int64_t>(1, std::llround(o.epochs * per_epoch));
  FitResult r;
  r.planned_steps = total;
  auto opt = make_optimizer(m, o);
  std::mt19937_64 rng(o.seed);
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  int64_t pos = n;  // forces a shuffle before the first batch
  const auto t0 = Clock::now();
  auto validate = [&](int64_t s) {
    if (valid.empty()) return;
    const auto sc = score_classifier(m, valid, valid_labels, enc, std::max<int64_t>(o.batch_size, 32), o.device);
    FitResult::Eval e;
    e.step = s;
    e.loss = sc.loss;
    e.accuracy = sc.accuracy;
    r.evals.push_back(e);
    spdlog::info("fit step {}: validation loss {:.4f}  accuracy {:.4f}", s, e.loss, e.accuracy);
    if (o.on_eval) o.on_eval(nlohmann::json{{"step", s}, {"loss", e.loss}, {"accuracy", e.accuracy}});
  };
  double epoch_sum = 0;
  int64_t epoch_steps = 0;
  for (int64_t s = 0; s < total; ++s) {
    if (pos >= n) {
      if (epoch_steps > 0) {
        r.epoch_loss.push_back(epoch_sum / static_cast<double>(epoch_steps));
        epoch_sum = 0;
        epoch_steps = 0;
      }
      std::shuffle(order.begin(), order.end(), rng);
      pos = 0;
    }
    const int64_t b = std::min(o.batch_size, n - pos);
    std::vector<int64_t> rows(order.begin() + pos, order.begin() + pos + b);
    pos += b;
    auto [ids, mask] = pad_batch(train, rows, enc.pad_id);
    std::vector<int64_t> ys;
    for (auto i : rows) ys.push_back(labels[static_cast<size_t>(i)]);
    auto y = torch::tensor(ys, torch::kLong).to(o.device);
    const double lr = learning_rate(o, s, total);
    set_lr(*opt, lr);
    auto logits = m.forward(ids.to(o.device), mask.to(o.device));  // (B, L)
    auto loss = torch::nn::functional::cross_entropy(logits.to(torch::kFloat), y);
    const double v = step(*opt, m, loss, o);
    r.step_loss.push_back(v);
    r.step_lr.push_back(lr);
    r.tokens += b;
    r.steps = s + 1;
    epoch_sum += v;
    ++epoch_steps;
    const double elapsed = seconds_since(t0);
    log_step(o, r, s, total, v, lr, elapsed, "examples", r.tokens);
    if (o.eval_every > 0 && (s + 1) % o.eval_every == 0 && s + 1 < total) validate(s + 1);
    if (o.max_seconds > 0 && elapsed >= o.max_seconds && s + 1 < total) {
      spdlog::warn("fit: stopping after {} of {} steps: the time limit of {:.0f}s is reached", s + 1, total,
                   o.max_seconds);
      r.stopped_early = true;
      break;
    }
  }
  if (epoch_steps > 0) r.epoch_loss.push_back(epoch_sum / static_cast<double>(epoch_steps));
  validate(r.steps);
  r.seconds = seconds_since(t0);
  finish_model(m);
  return r;
}

// ---------------------------------------------------------------------------------------------
// Saving

std::vector<std::pair<std::string, std::string>> tokenizer_files(const std::string& path) {
  static const char* kFolderFiles[] = {"tokenizer.bin",         "tokenizer.json",          "tokenizer.model",
                                       "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"};
  std::vector<std::pair<std::string, std::string>> out;
  if (fs::is_directory(path)) {
    bool any = false;
    for (const char* f : kFolderFiles) {
      const fs::path p = fs::path(path) / f;
      if (!fs::is_regular_file(p)) continue;
      out.emplace_back(p.string(), f);
      const std::string name = f;
      if (name != "tokenizer_config.json" && name != "special_tokens_map.json") any = true;
    }
    if (!any)
      throw InputError("folder '" + path + "' holds no tokenizer (expected tokenizer.json, tokenizer.model, tokenizer.bin or vocab.txt)");
    return out;
  }
  if (!fs::is_regular_file(path))
    throw InputError("tokenizer '" + path + "' does not exist (expected a tokenizer.model, tokenizer.json, tokenizer.bin or vocab.txt)");
  const std::string ext = util::to_lower(fs::path(path).extension().string());
  std::string name;
  if (ext == ".model") name = "tokenizer.model";
  else if (ext == ".json") name = "tokenizer.json";
  else if (ext == ".txt") name = "vocab.txt";
  else if (ext == ".bin") name = "tokenizer.bin";
  else
    throw InputError("tokenizer '" + path + "': cannot tell its kind from the extension (expected .model, .json, .txt or .bin)");
  out.emplace_back(path, name);
  if (name == "tokenizer.json" || name == "vocab.txt") {
    const fs::path dir = fs::path(path).parent_path();
    for (const char* f : {"tokenizer_config.json", "special_tokens_map.json"}) {
      const fs::path p = dir.empty() ? fs::path(f) : dir / f;
      if (fs::is_regular_file(p) && fs::path(path).filename() != f) out.emplace_back(p.string(), f);
    }
  }
  return out;
}

void save_float_model_folder(const model::TransformerModel& m, const nlohmann::json& config_in,
                             const std::vector<std::pair<std::string, std::string>>& files,
                             const std::string& out_dir, const SaveOptions& opts) {
  const torch::ScalarType st = model::scalar_type(opts.dtype, "save model");
  const std::string dtype_name = io::config_dtype_name(opts.dtype, "save model");
  for (const auto& f : files)
    if (!fs::is_regular_file(f.first)) throw InputError("save model: file '" + f.first + "' does not exist");
  fs::path out = fs::path(out_dir).lexically_normal();
  if (!out.has_filename()) out = out.parent_path();
  if (out.empty()) throw InputError("save model: the output must name a folder");
  if (fs::exists(out)) {
    if (!fs::is_directory(out)) throw InputError("output '" + out.string() + "' exists and is not a folder");
    if (!fs::is_empty(out) && !opts.force)
      throw InputError("output folder '" + out.string() + "' is not empty (use --force to replace it)");
  }

  nlohmann::json cfg = config_in.is_null() ? model::model_config_to_json(m.config()) : config_in;
  cfg["torch_dtype"] = dtype_name;

  std::vector<std::pair<std::string, torch::Tensor>> owned;
  for (const auto& item : m.named_parameters(true))
    owned.emplace_back(item.key(), item.value().detach().to(torch::kCPU).to(st).contiguous());
  std::vector<io::TensorToWrite> tw;
  for (const auto& [name, t] : owned)
    tw.push_back({name, opts.dtype, t.sizes().vec(), t.data_ptr(), static_cast<size_t>(t.nbytes())});

  util::write_folder_atomic(
      out.string(),
      [&](const std::string& tmp_dir) {
        const fs::path tmp(tmp_dir);
        io::write_safetensors_sharded(tmp_dir, tw, {{"format", "pt"}});
        util::write_file_atomic((tmp / "config.json").string(), cfg.dump(2) + "\n");
        for (const auto& [src, name] : files) fs::copy_file(src, tmp / name, fs::copy_options::overwrite_existing);
        for (const auto& [name, content] : opts.extra_files) util::write_file_atomic((tmp / name).string(), content);
      },
      "model folder");
}

}  // namespace mpqat::train
