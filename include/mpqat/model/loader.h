// Hugging Face model folders -> LibTorch modules.
//
// A folder holds config.json, model.safetensors (or shards + model.safetensors.index.json) and
// a tokenizer. Tensors stay memory-mapped; each is converted to an fp32 torch tensor only when a
// module needs it (F32 / F16 / BF16 storage accepted), so a block-at-a-time pass holds about one
// block's weights in memory.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "mpqat/data/tokenizer.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/config.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/model.h"

namespace mpqat::model {

class ModelFolder {
 public:
  // Parses config.json and indexes the safetensors files. Throws InputError naming the folder
  // when it is not a model folder.
  explicit ModelFolder(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return cfg_; }
  const io::SafetensorsCheckpoint& checkpoint() const { return *ckpt_; }

  // The folder's tokenizer, loaded on first use. A llama2.c tokenizer.bin (present in folders
  // written by `mpqat convert llama2c`) is the original and is preferred; otherwise
  // data::load_tokenizer(dir) picks tokenizer.json / tokenizer.model / vocab.txt. Throws
  // InputError when none.
  const data::Tokenizer& tokenizer() const;
  bool has_tokenizer() const;

  bool contains(const std::string& name) const { return ckpt_->contains(name); }
  // The named tensor as a new fp32 CPU tensor. Throws InputError naming the file, the tensor and
  // the expected shape when it is absent, has another shape or an unsupported dtype.
  torch::Tensor tensor(const std::string& name, const std::vector<int64_t>& shape) const;

 private:
  std::string dir_;
  ModelConfig cfg_;
  std::unique_ptr<io::SafetensorsCheckpoint> ckpt_;
  mutable std::unique_ptr<data::Tokenizer> tok_;
};

// Copies the files of model folder `from` that travel with its weights into folder `to`
// (overwriting): its tokenizer (tokenizer.bin / .json / .model, tokenizer_config.json,
// special_tokens_map.json, vocab.txt, vocab.json, merges.txt) and generation_config.json; files
// `from` lacks are skipped. The checkpoint writer and the GGUF decoder copy this one set.
void copy_model_side_files(const std::string& from, const std::string& to);

struct LoadOptions;

// Packed (quantized) checkpoints are built by the quant layer, which sits above this one: it
// installs its loader here (quant::install_packed_loader, also run at its static
// initialisation), and the load_* functions below then build either kind of folder.
struct PackedCheckpointLoader {
  bool (*is_packed)(const std::string& dir) = nullptr;
  std::shared_ptr<TransformerModel> (*load_model)(const ModelFolder&, const LoadOptions&) = nullptr;
  BlockPtr (*load_block)(const ModelFolder&, int64_t, const LoadOptions&) = nullptr;
};
void install_packed_loader(const PackedCheckpointLoader& loader);

struct LoadOptions {
  torch::Device device = torch::kCPU;
  // Throw InputError when the checkpoint holds tensors the model does not use
  // (lm_head.weight of a tied model and rotary inv_freq buffers are always tolerated).
  bool strict = false;
};

// The torch dtype of a float storage dtype (F32 / F16 / BF16); throws InputError naming
// `context` and the accepted dtypes for any other.
torch::ScalarType scalar_type(io::DType dt, const std::string& context);

// Builds the whole model (fp32, eval mode, requires_grad off).
LlamaPtr load_model(const ModelFolder& folder, const LoadOptions& opts = {});
// Builds the model without blocks: embeddings, final norm and head only (for streaming).
LlamaPtr load_model_shell(const ModelFolder& folder, const LoadOptions& opts = {});
// Builds block i alone from the mapped file.
LlamaBlockPtr load_block(const ModelFolder& folder, int64_t i, const LoadOptions& opts = {});
// Copies every parameter of `module` from the checkpoint, named `prefix` + parameter name.
// Where that name is absent, checkpoint spellings of other writers are accepted (see
// checkpoint_name). Inserts the checkpoint names read into `used` when given.
void load_parameters(torch::nn::Module& module, const ModelFolder& folder, const std::string& prefix,
                     std::set<std::string>* used = nullptr);
// The checkpoint's name for parameter `name`: `name` itself when present, else the first
// present alias: legacy BERT "LayerNorm.gamma" / "LayerNorm.beta" for "LayerNorm.weight" /
// ".bias"; a BertModel checkpoint without the "bert." prefix; an OPTModel checkpoint with
// "decoder." for "model.decoder.". Returns `name` when none is present.
std::string checkpoint_name(const ModelFolder& folder, const std::string& name);

// Any supported architecture, uninitialised (parameters allocated, not filled). Throws
// NotImplementedError for parsed-but-unbuilt architectures (BertForMaskedLM, BertModel).
std::shared_ptr<TransformerModel> create_model(const ModelConfig& cfg);
// create_model + reset_parameters: a random model for tests (deterministic given
// torch::manual_seed), in eval mode.
std::shared_ptr<TransformerModel> build_model(const ModelConfig& cfg);
// Builds and loads any supported architecture (fp32, eval mode, requires_grad off). With
// opts.strict, checkpoint tensors the model does not use are an InputError (tied lm_head,
// rotary inv_freq and position_ids buffers are tolerated).
std::shared_ptr<TransformerModel> load_any_model(const ModelFolder& folder, const LoadOptions& opts = {});
// Block i of any family alone from the mapped file (same type and names as in create_model's
// model): with TransformerModel::context / embed / head of a model, a block-at-a-time pass.
BlockPtr load_any_block(const ModelFolder& folder, int64_t i, const LoadOptions& opts = {});

// Any family without blocks: embeddings, final norms and head only (for streaming). Llama gives
// load_model_shell's model; OPT / BERT a model built with num_hidden_layers = 0, so its
// config().num_hidden_layers is 0 (the folder's config has the real count). context / embed /
// head work as in the full model.
std::shared_ptr<TransformerModel> load_any_model_shell(const ModelFolder& folder, const LoadOptions& opts = {});

// ids (B, T) -> the model's output ((B, T, V) logits, or (B, num_labels) for classifiers),
// holding one block at a time (loads block i, runs it, frees it), for every family. `shell`
// (from load_any_model_shell / load_model_shell) may be passed to avoid reloading embeddings
// and head; blocks are loaded onto ids' device. attention_mask as TransformerModel::forward.
torch::Tensor forward_streaming(const ModelFolder& folder, const torch::Tensor& ids,
                                std::shared_ptr<TransformerModel> shell = nullptr,
                                const torch::Tensor& attention_mask = {});

}  // namespace mpqat::model
