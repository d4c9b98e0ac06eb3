#include "mpqat/model/loader.h"

#include <cstring>
#include <filesystem>
#include <set>

#include "mpqat/data/llama2c_tokenizer.h"
#include "mpqat/model/bert.h"
#include "mpqat/model/opt.h"
#include "mpqat/util/error.h"

namespace mpqat::model {

namespace fs = std::filesystem;

torch::ScalarType scalar_type(io::DType dt, const std::string& context) {
  switch (dt) {
    case io::DType::F32: return torch::kFloat;
    case io::DType::F16: return torch::kHalf;
    case io::DType::BF16: return torch::kBFloat16;
    default:
      throw InputError(context + ": dtype " + io::dtype_name(dt) + " is not a float dtype (accepted: F32, F16, BF16)");
  }
}

namespace {

// The block tensors of the file against config.json's num_hidden_layers.
void check_layers(const ModelConfig& cfg, const io::SafetensorsCheckpoint& ckpt, const std::string& dir) {
  // Block tensors are "<stem><i>.<rest>": every i must be a declared layer, every layer present.
  std::string canonical = family_block_prefix(cfg, 0);
  canonical.resize(canonical.size() - 2);  // drop "0."
  // The legacy names the loader also accepts (checkpoint_name): without "bert." / "model.".
  std::vector<std::string> stems{canonical};
  if (canonical.rfind("bert.", 0) == 0) stems.push_back(canonical.substr(5));
  if (canonical.rfind("model.decoder.", 0) == 0) stems.push_back(canonical.substr(6));
  const int64_t n = cfg.num_hidden_layers;
  std::vector<bool> seen(static_cast<size_t>(std::max<int64_t>(n, 0)), false);
  for (const auto& name : ckpt.names()) {
    std::string stem;
    for (const auto& st : stems)
      if (name.compare(0, st.size(), st) == 0) stem = st;
    if (stem.empty()) continue;
    const size_t dot = name.find('.', stem.size());
    const std::string idx = name.substr(stem.size(), dot == std::string::npos ? std::string::npos : dot - stem.size());
    if (idx.empty() || idx.find_first_not_of("0123456789") != std::string::npos) continue;
    const int64_t i = std::stoll(idx);
    if (i >= n)
      throw InputError("'" + ckpt.file_of(name) + "': tensor '" + name + "' belongs to layer " + idx +
                       ", but '" + dir + "/config.json' declares num_hidden_layers " + std::to_string(n) +
                       " (layers 0.." + std::to_string(n - 1) + "): the config and the weights disagree");
    seen[static_cast<size_t>(i)] = true;
  }
  for (int64_t i = 0; i < n; ++i)
    if (!seen[static_cast<size_t>(i)])
      throw InputError("model folder '" + dir + "': config.json declares num_hidden_layers " + std::to_string(n) +
                       " but the weights hold no tensor of layer " + std::to_string(i) + " ('" + canonical +
                       std::to_string(i) + ".*'): the config and the weights disagree");
}

}  // namespace

ModelFolder::ModelFolder(const std::string& dir) : dir_(dir) {
  if (!fs::is_directory(dir))
    throw InputError("model folder '" + dir + "' does not exist (expected a folder with config.json and model.safetensors)");
  if (!fs::exists(fs::path(dir) / "config.json"))
    throw InputError("model folder '" + dir + "' has no config.json");
  cfg_ = load_model_config(dir);
  ckpt_ = std::make_unique<io::SafetensorsCheckpoint>(dir);
  check_layers(cfg_, *ckpt_, dir_);
}


void copy_model_side_files(const std::string& from, const std::string& to) {
  for (const char* f : {"tokenizer.bin", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                        "special_tokens_map.json", "generation_config.json", "vocab.txt", "vocab.json", "merges.txt"}) {
    const fs::path p = fs::path(from) / f;
    if (fs::exists(p)) fs::copy_file(p, fs::path(to) / f, fs::copy_options::overwrite_existing);
  }
}

bool ModelFolder::has_tokenizer() const {
  for (const char* f : {"tokenizer.bin", "tokenizer.json", "tokenizer.model", "vocab.txt"})
    if (fs::exists(fs::path(dir_) / f)) return true;
  return false;
}

const data::Tokenizer& ModelFolder::tokenizer() const {
  if (!tok_) {
    const auto bin = fs::path(dir_) / "tokenizer.bin";
    if (fs::exists(bin)) tok_ = std::make_unique<data::Llama2cTokenizer>(bin.string());
    else tok_ = data::load_tokenizer(dir_);
  }
  return *tok_;
}

torch::Tensor ModelFolder::tensor(const std::string& name, const std::vector<int64_t>& shape) const {
  if (!ckpt_->contains(name))
    throw InputError("model folder '" + dir_ + "': tensor '" + name + "' is missing (expected shape " +
                     io::shape_str(shape) + ")");
  const auto& info = ckpt_->info(name);
  const std::string& file = ckpt_->file_of(name);
  if (info.shape != shape)
    throw InputError("'" + file + "': tensor '" + name + "' has shape " + io::shape_str(info.shape) +
                     ", expected " + io::shape_str(shape));
  const torch::ScalarType st = scalar_type(info.dtype, "'" + file + "': tensor '" + name + "'");
  // Copy through an aligned buffer: safetensors offsets need not be aligned to the element size.
  auto raw = torch::empty(shape, torch::TensorOptions().dtype(st));
  std::memcpy(raw.data_ptr(), ckpt_->data(name), info.nbytes());
  ckpt_->release(name);  // the copy is what we keep: the mapped pages need not stay resident
  if (!torch::isfinite(raw).all().item<bool>())
    throw InputError("'" + file + "': tensor '" + name + "' holds NaN or Inf values (a corrupt or diverged model)");
  return st == torch::kFloat ? raw : raw.to(torch::kFloat);
}

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

}  // namespace

std::string checkpoint_name(const ModelFolder& folder, const std::string& name) {
  if (folder.contains(name)) return name;
  std::vector<std::string> cands{name};
  if (ends_with(name, "LayerNorm.weight"))
    cands.push_back(name.substr(0, name.size() - 6) + "gamma");
  else if (ends_with(name, "LayerNorm.bias"))
    cands.push_back(name.substr(0, name.size() - 4) + "beta");
  const size_t n = cands.size();
  for (size_t i = 0; i < n; ++i) {
    if (starts_with(cands[i], "bert.")) cands.push_back(cands[i].substr(5));
    if (starts_with(cands[i], "model.decoder.")) cands.push_back(cands[i].substr(6));
  }
  for (const auto& c : cands)
    if (folder.contains(c)) return c;
  return name;
}

void load_parameters(torch::nn::Module& module, const ModelFolder& folder, const std::string& prefix,
                     std::set<std::string>* used) {
  torch::NoGradGuard ng;
  for (auto& item : module.named_parameters(/*recurse=*/true)) {
    auto& p = item.value();
    const auto name = checkpoint_name(folder, prefix + item.key());
    auto t = folder.tensor(name, p.sizes().vec());
    p.copy_(t);
    if (used) used->insert(name);
  }
}

namespace {

PackedCheckpointLoader& packed_loader() {
  static PackedCheckpointLoader l;
  return l;
}

bool is_packed(const ModelFolder& folder) {
  const auto& l = packed_loader();
  return l.is_packed && l.load_model && l.load_block && l.is_packed(folder.dir());
}

void finish(torch::nn::Module& m, const LoadOptions& opts) {
  for (auto& p : m.parameters()) p.set_requires_grad(false);
  m.eval();
  if (opts.device != torch::Device(torch::kCPU)) m.to(opts.device);
}

void check_unused(const LlamaForCausalLM& m, const ModelFolder& folder) {
  std::set<std::string> used;
  for (const auto& item : m.named_parameters(true)) used.insert(item.key());
  for (const auto& n : folder.checkpoint().names()) {
    if (used.count(n)) continue;
    if (n == "lm_head.weight" && m.config().tie_word_embeddings) continue;
    if (n.size() >= 17 && n.compare(n.size() - 17, 17, "rotary_emb.inv_freq") == 0) continue;
    throw InputError("'" + folder.checkpoint().file_of(n) + "': tensor '" + n +
                     "' is not used by " + m.config().architecture);
  }
}

}  // namespace

void install_packed_loader(const PackedCheckpointLoader& loader) { packed_loader() = loader; }

LlamaPtr load_model(const ModelFolder& folder, const LoadOptions& opts) {
  if (is_packed(folder)) {
    return std::dynamic_pointer_cast<LlamaForCausalLM>(packed_loader().load_model(folder, opts));
  }
  auto m = std::make_shared<LlamaForCausalLM>(folder.config(), true);
  load_parameters(*m, folder, "");
  if (opts.strict) check_unused(*m, folder);
  finish(*m, opts);
  return m;
}

LlamaPtr load_model_shell(const ModelFolder& folder, const LoadOptions& opts) {
  auto m = std::make_shared<LlamaForCausalLM>(folder.config(), false);
  load_parameters(*m, folder, "");
  finish(*m, opts);
  return m;
}

LlamaBlockPtr load_block(const ModelFolder& folder, int64_t i, const LoadOptions& opts) {
  if (is_packed(folder)) {
    return std::dynamic_pointer_cast<LlamaBlock>(packed_loader().load_block(folder, i, opts));
  }
  const auto& cfg = folder.config();
  if (i < 0 || i >= cfg.num_hidden_layers)
    throw InputError("block index " + std::to_string(i) + " out of range for '" + folder.dir() +
                     "' (" + std::to_string(cfg.num_hidden_layers) + " layers)");
  auto b = std::make_shared<LlamaBlock>(cfg);
  load_parameters(*b, folder, block_prefix(i));
  finish(*b, opts);
  return b;
}

std::shared_ptr<TransformerModel> create_model(const ModelConfig& cfg) {
  switch (cfg.family) {
    case Family::Llama: return std::make_shared<LlamaForCausalLM>(cfg, true);
    case Family::OPT:
      if (cfg.architecture == "OPTForSequenceClassification")
        return std::make_shared<OPTForSequenceClassification>(cfg);
      return std::make_shared<OPTForCausalLM>(cfg);
    case Family::BERT: return std::make_shared<BertForSequenceClassification>(cfg);
  }
  throw NotImplementedError("architecture '" + cfg.architecture + "'");
}

std::shared_ptr<TransformerModel> build_model(const ModelConfig& cfg) {
  auto m = create_model(cfg);
  m->reset_parameters();
  m->eval();
  return m;
}

std::shared_ptr<TransformerModel> load_any_model(const ModelFolder& folder, const LoadOptions& opts) {
  // Packed checkpoints build the same architecture with QuantLinear modules in place.
  if (is_packed(folder)) return packed_loader().load_model(folder, opts);
  if (folder.config().family == Family::Llama) return load_model(folder, opts);
  auto m = create_model(folder.config());
  std::set<std::string> used;
  load_parameters(*m, folder, "", &used);
  if (opts.strict) {
    for (const auto& n : folder.checkpoint().names()) {
      if (used.count(n)) continue;
      if (n == "lm_head.weight" && m->config().tie_word_embeddings) continue;
      if (ends_with(n, "position_ids")) continue;  // BERT's registered buffer
      throw InputError("'" + folder.checkpoint().file_of(n) + "': tensor '" + n + "' is not used by " +
                       m->config().architecture);
    }
  }
  finish(*m, opts);
  return m;
}

BlockPtr load_any_block(const ModelFolder& folder, int64_t i, const LoadOptions& opts) {
  if (is_packed(folder)) return packed_loader().load_block(folder, i, opts);
  const auto& cfg = folder.config();
  if (cfg.family == Family::Llama) return load_block(folder, i, opts);
  if (i < 0 || i >= cfg.num_hidden_layers)
    throw InputError("block index " + std::to_string(i) + " out of range for '" + folder.dir() +
                     "' (" + std::to_string(cfg.num_hidden_layers) + " layers)");
  BlockPtr b;
  if (cfg.family == Family::OPT) b = std::make_shared<OPTBlock>(cfg);
  else b = std::make_shared<BertBlock>(cfg);
  load_parameters(*b, folder, family_block_prefix(cfg, i));
  finish(*b, opts);
  return b;
}

std::shared_ptr<TransformerModel> load_any_model_shell(const ModelFolder& folder, const LoadOptions& opts) {
  if (folder.config().family == Family::Llama) return load_model_shell(folder, opts);
  ModelConfig cfg = folder.config();
  cfg.num_hidden_layers = 0;  // the block-free parts are exactly those of the full model
  auto m = create_model(cfg);
  load_parameters(*m, folder, "");
  finish(*m, opts);
  return m;
}

torch::Tensor forward_streaming(const ModelFolder& folder, const torch::Tensor& ids,
                                std::shared_ptr<TransformerModel> shell, const torch::Tensor& attention_mask) {
  torch::NoGradGuard ng;
  LoadOptions opts;
  opts.device = ids.device();
  if (!shell) shell = load_any_model_shell(folder, opts);
  const BlockContext ctx = shell->context(ids, attention_mask);
  auto h = shell->embed(ids, ctx);  // (B, T, C)
  for (int64_t i = 0; i < folder.config().num_hidden_layers; ++i) {
    auto blk = load_any_block(folder, i, opts);
    h = blk->run(h, ctx);
  }  // each block is freed when `blk` goes out of scope
  return shell->head(h, ctx);  // (B, T, V) or (B, num_labels)
}

}  // namespace mpqat::model
