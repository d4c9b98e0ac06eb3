// Blocks from memory or from the mapped checkpoint (include/mpqat/model/block_source.h).
#include "mpqat/model/block_source.h"

#if defined(MPQAT_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

#include <algorithm>

#include "mpqat/model/loader.h"
#include "mpqat/util/error.h"
#include "mpqat/util/memory.h"
#include "mpqat/util/strings.h"

namespace mpqat::model {

namespace {

class ModelBlocks : public BlockSource {
 public:
  explicit ModelBlocks(std::shared_ptr<TransformerModel> m) : m_(std::move(m)) {
    for (const auto& p : m_->parameters()) {
      device_ = p.device();
      break;
    }
  }
  TransformerModel& shell() override { return *m_; }
  const ModelConfig& config() const override { return m_->config(); }
  int64_t num_blocks() const override { return m_->num_blocks(); }
  BlockPtr block(int64_t i) override { return m_->block(i); }
  bool streaming() const override { return false; }
  torch::Device device() const override { return device_; }

 private:
  std::shared_ptr<TransformerModel> m_;
  torch::Device device_ = torch::kCPU;
};

class FolderBlocks : public BlockSource {
 public:
  FolderBlocks(const ModelFolder& folder, const torch::Device& device) : folder_(folder), device_(device) {
    LoadOptions lo;
    lo.device = device;
    shell_ = load_any_model_shell(folder, lo);
  }
  TransformerModel& shell() override { return *shell_; }
  const ModelConfig& config() const override { return folder_.config(); }
  BlockPtr block(int64_t i) override {
    util::release_free_memory();  // the previous block, freed by the caller, goes back first
    LoadOptions lo;
    lo.device = device_;
    return load_any_block(folder_, i, lo);
  }
  bool streaming() const override { return true; }
  torch::Device device() const override { return device_; }

 private:
  const ModelFolder& folder_;
  torch::Device device_;
  std::shared_ptr<TransformerModel> shell_;
};

// Bytes of one tensor once loaded: float storage becomes fp32, anything else (packed codes,
// g_idx) stays as stored.
uint64_t loaded_bytes(const io::TensorInfo& t) {
  switch (t.dtype) {
    case io::DType::F32:
    case io::DType::F16:
    case io::DType::BF16: return static_cast<uint64_t>(t.numel()) * 4;
    default: return t.nbytes();
  }
}

}  // namespace

std::unique_ptr<BlockSource> model_blocks(std::shared_ptr<TransformerModel> m) {
  return std::make_unique<ModelBlocks>(std::move(m));
}

std::unique_ptr<BlockSource> model_blocks(TransformerModel& m) {
  return std::make_unique<ModelBlocks>(std::shared_ptr<TransformerModel>(std::shared_ptr<TransformerModel>(), &m));
}

std::unique_ptr<BlockSource> folder_blocks(const ModelFolder& folder, const torch::Device& device) {
  return std::make_unique<FolderBlocks>(folder, device);
}

uint64_t whole_model_bytes(const ModelFolder& folder) {
  uint64_t n = 0;
  const auto& ck = folder.checkpoint();
  for (const auto& name : ck.names()) n += loaded_bytes(ck.info(name));
  return n;
}

uint64_t largest_block_bytes(const ModelFolder& folder) {
  const auto& cfg = folder.config();
  const auto& ck = folder.checkpoint();
  std::vector<uint64_t> per(static_cast<size_t>(std::max<int64_t>(cfg.num_hidden_layers, 0)), 0);
  for (const auto& name : ck.names())
    for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
      if (util::starts_with(name, family_block_prefix(cfg, i))) {
        per[static_cast<size_t>(i)] += loaded_bytes(ck.info(name));
        break;
      }
  return per.empty() ? 0 : *std::max_element(per.begin(), per.end());
}

uint64_t shell_bytes(const ModelFolder& folder) {
  const auto& cfg = folder.config();
  const auto& ck = folder.checkpoint();
  uint64_t n = 0;
  for (const auto& name : ck.names()) {
    bool in_block = false;
    for (int64_t i = 0; i < cfg.num_hidden_layers && !in_block; ++i)
      in_block = util::starts_with(name, family_block_prefix(cfg, i));
    if (!in_block) n += loaded_bytes(ck.info(name));
  }
  return n;
}

uint64_t auto_memory_limit(const torch::Device& device) {
#if defined(MPQAT_HAVE_CUDA)
  if (device.is_cuda()) {
    size_t free = 0, total = 0;
    if (cudaSetDevice(device.has_index() ? device.index() : 0) == cudaSuccess && cudaMemGetInfo(&free, &total) == cudaSuccess)
      return static_cast<uint64_t>(0.8 * static_cast<double>(free));
  }
#endif
  (void)device;
  return static_cast<uint64_t>(0.8 * static_cast<double>(util::available_memory()));
}

uint64_t parse_memory_limit(const std::string& text, const std::string& context) {
  if (util::to_lower(util::trim(text)) == "auto" || util::trim(text).empty()) return 0;
  return util::parse_bytes(text, context + " (or auto)");
}

void check_block_fits(const ModelFolder& folder, uint64_t limit, const torch::Device& device, const std::string& what) {
  if (limit == 0) limit = auto_memory_limit(device);
  const uint64_t need = largest_block_bytes(folder) + shell_bytes(folder);
  if (need > limit)
    throw InputError("'" + folder.dir() + "' needs " + util::format_bytes(need) +
                     " for one block and its embeddings / head in fp32, more than " + what + " = " +
                     util::format_bytes(limit) + " (raise it, or use a machine with more memory)");
}

std::unique_ptr<BlockSource> open_blocks(const ModelFolder& folder, const StreamingOptions& o) {
  bool stream = false;
  if (o.mode == "always") {
    stream = true;
  } else if (o.mode == "auto") {
    const uint64_t limit = o.memory_limit ? o.memory_limit : auto_memory_limit(o.device);
    stream = whole_model_bytes(folder) > limit;
  } else if (o.mode != "never") {
    throw InputError("streaming mode '" + o.mode + "' is not one of auto, always, never");
  }
  if (stream) {
    check_block_fits(folder, o.memory_limit, o.device, o.limit_key);
    return folder_blocks(folder, o.device);
  }
  LoadOptions lo;
  lo.device = o.device;
  return model_blocks(load_any_model(folder, lo));
}

void run_inputs(BlockSource& src, const std::vector<ModelInput>& inputs, const OutputFn& fn, uint64_t group_bytes) {
  torch::NoGradGuard ng;
  auto& shell = src.shell();
  const int64_t nb = src.num_blocks();
  const auto dev = src.device();
  if (!src.streaming()) {
    for (size_t k = 0; k < inputs.size(); ++k) {
      auto ids = inputs[k].ids.to(dev);
      auto mask = inputs[k].mask.defined() ? inputs[k].mask.to(dev) : torch::Tensor();
      const auto ctx = shell.context(ids, mask);
      auto h = shell.embed(ids, ctx);  // (B, T, C)
      for (int64_t i = 0; i < nb; ++i) h = src.block(i)->run(h, ctx);
      fn(k, shell.head(h, ctx));
    }
    return;
  }
  const int64_t C = src.config().hidden_size;
  size_t k0 = 0;
  while (k0 < inputs.size()) {
    // The group: inputs while their fp32 hidden states fit the allowance (at least one).
    size_t k1 = k0;
    uint64_t bytes = 0;
    while (k1 < inputs.size()) {
      const uint64_t b = static_cast<uint64_t>(inputs[k1].ids.numel()) * static_cast<uint64_t>(C) * 4;
      if (k1 > k0 && bytes + b > group_bytes) break;
      bytes += b;
      ++k1;
    }
    std::vector<BlockContext> ctx;
    std::vector<torch::Tensor> h;
    for (size_t k = k0; k < k1; ++k) {
      auto ids = inputs[k].ids.to(dev);
      auto mask = inputs[k].mask.defined() ? inputs[k].mask.to(dev) : torch::Tensor();
      ctx.push_back(shell.context(ids, mask));
      h.push_back(shell.embed(ids, ctx.back()));
    }
    for (int64_t i = 0; i < nb; ++i) {
      auto blk = src.block(i);
      for (size_t k = 0; k < h.size(); ++k) h[k] = blk->run(h[k], ctx[k]);
    }  // each block is freed before the next is loaded
    for (size_t k = k0; k < k1; ++k) {
      fn(k, shell.head(h[k - k0], ctx[k - k0]));
      h[k - k0] = torch::Tensor();
    }
    k0 = k1;
  }
}

BatchFn batch_fn(BlockSource& src, uint64_t group_bytes) {
  return [&src, group_bytes](const std::vector<ModelInput>& inputs, const OutputFn& fn) {
    run_inputs(src, inputs, fn, group_bytes);
  };
}

torch::Tensor block_backward(Block& block, const torch::Tensor& x, const BlockContext& ctx,
                             const torch::Tensor& grad_out, bool input_grad) {
  torch::AutoGradMode on(true);
  auto xin = x.detach();
  if (input_grad) xin.requires_grad_(true);
  auto y = block.run(xin, ctx);
  if (!y.requires_grad()) return input_grad ? torch::zeros_like(x) : torch::Tensor();
  y.backward(grad_out);
  return input_grad ? xin.grad() : torch::Tensor();
}

}  // namespace mpqat::model
