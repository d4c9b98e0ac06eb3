#include "mpqat/model/model.h"

#include <limits>

#include "mpqat/model/attention_observer.h"
#include "mpqat/util/error.h"

namespace mpqat::model {

// ---------------------------------------------------------------------------------------------
// Block

LinearPtr Block::add_linear(torch::nn::Module& parent, const std::string& key, const std::string& name,
                            LinearPtr module) {
  parent.register_module(key, module);
  slots_.push_back({name, &parent, key, module});
  return module;
}

std::string Block::accepted_names() const {
  std::string s;
  for (const auto& [n, m] : linears()) s += (s.empty() ? "" : ", ") + n;
  return s;
}

std::vector<std::pair<std::string, LinearPtr>> Block::linears() const {
  std::vector<std::pair<std::string, LinearPtr>> out;
  out.reserve(slots_.size());
  for (const auto& s : slots_) out.emplace_back(s.name, s.module);
  return out;
}

LinearPtr Block::linear(const std::string& name) const {
  for (const auto& [n, m] : linears())
    if (n == name) return m;
  throw InputError("unknown block linear '" + name + "' (accepted: " + accepted_names() + ")");
}

void Block::set_linear(const std::string& name, LinearPtr module) {
  if (!module) throw Error("set_linear('" + name + "'): null module");
  for (auto& s : slots_) {
    if (s.name != name) continue;
    if (s.module->in_features() != module->in_features() ||
        s.module->out_features() != module->out_features())
      throw Error("set_linear('" + name + "'): shape (" + std::to_string(module->out_features()) + ", " +
                  std::to_string(module->in_features()) + ") does not match (" +
                  std::to_string(s.module->out_features()) + ", " +
                  std::to_string(s.module->in_features()) + ")");
    s.module = s.parent->replace_module(s.key, module);
    return;
  }
  throw InputError("unknown block linear '" + name + "' (accepted: " + accepted_names() + ")");
}

// ---------------------------------------------------------------------------------------------
// TransformerModel

torch::Tensor TransformerModel::run_block(int64_t i, const torch::Tensor& hidden, const BlockContext& ctx) {
  return block(i)->run(hidden, ctx);
}

torch::Tensor TransformerModel::forward(const torch::Tensor& ids, const torch::Tensor& attention_mask) {
  auto ctx = context(ids, attention_mask);
  auto h = embed(ids, ctx);  // (B, T, C)
  for (int64_t i = 0; i < num_blocks(); ++i) h = run_block(i, h, ctx);
  return head(h, ctx);
}

std::vector<std::pair<std::string, LinearPtr>> TransformerModel::named_linears() const {
  std::vector<std::pair<std::string, LinearPtr>> out;
  for (int64_t i = 0; i < num_blocks(); ++i)
    for (auto& [n, m] : block(i)->linears()) out.emplace_back(block_prefix(i) + n, m);
  return out;
}

std::pair<int64_t, std::string> TransformerModel::split_name(const std::string& full_name) const {
  for (int64_t i = 0; i < num_blocks(); ++i) {
    const auto p = block_prefix(i);
    if (full_name.size() > p.size() && full_name.compare(0, p.size(), p) == 0)
      return {i, full_name.substr(p.size())};
  }
  return {-1, ""};
}

LinearPtr TransformerModel::linear(const std::string& full_name) const {
  auto [i, rel] = split_name(full_name);
  if (i < 0)
    throw InputError("unknown linear '" + full_name + "' (names start with '" + block_prefix(0) +
                     "' .. '" + block_prefix(num_blocks() - 1) + "')");
  return block(i)->linear(rel);
}

void TransformerModel::set_linear(const std::string& full_name, LinearPtr module) {
  auto [i, rel] = split_name(full_name);
  if (i < 0)
    throw InputError("unknown linear '" + full_name + "' (names start with '" + block_prefix(0) +
                     "' .. '" + block_prefix(num_blocks() - 1) + "')");
  block(i)->set_linear(rel, std::move(module));
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

LayerNormImpl::LayerNormImpl(int64_t dim_, double eps_, bool affine) : dim(dim_), eps(eps_) {
  if (affine) {
    weight = register_parameter("weight", torch::ones({dim}));
    bias = register_parameter("bias", torch::zeros({dim}));
  }
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return torch::layer_norm(x.to(torch::kFloat), {dim}, weight, bias, eps);
}

torch::Tensor activation(const std::string& name, const torch::Tensor& x) {
  if (name == "relu") return torch::relu(x);
  if (name == "gelu") return torch::gelu(x, "none");
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return torch::gelu(x, "none");
  if (name == "silu" || name == "swish") return torch::silu(x);
  throw InputError("activation '" + name + "' is not supported (accepted: relu, gelu, gelu_new, silu)");
}

torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& bias) {
  auto scores = torch::matmul(q, k.transpose(-2, -1));  // (B, H, T, S)
  if (bias.defined()) scores = scores + bias;
  auto probs = torch::softmax(scores.to(torch::kFloat), -1);
  if (const auto* obs = attention_observer()) (*obs)(probs);
  return torch::matmul(probs, v);  // (B, H, T, D)
}

namespace {
thread_local const AttentionObserver* t_attention_observer = nullptr;
}  // namespace

const AttentionObserver* attention_observer() { return t_attention_observer; }

ScopedAttentionObserver::ScopedAttentionObserver(AttentionObserver fn)
    : fn_(std::move(fn)), previous_(t_attention_observer) {
  t_attention_observer = &fn_;
}

ScopedAttentionObserver::~ScopedAttentionObserver() { t_attention_observer = previous_; }

}  // namespace mpqat::model
