// The Hugging Face names and shapes of a model's tensors, from its config alone: one home for
// the facts the size model (alloc), the writers and the loaders (quant) and the architectures
// (model) must agree on byte for byte. No torch here.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "mpqat/model/config.h"

namespace mpqat::model {

// The quantizable linears of one block of `cfg`'s family, relative names in the block's order
// (Llama: q, k, v, o, gate, up, down; OPT: q, k, v, out_proj, fc1, fc2; BERT: query, key, value,
// attention.output.dense, intermediate.dense, output.dense).
std::vector<std::string> family_block_linear_names(const ModelConfig& cfg);
// The full-name prefix of block i ("model.layers.3.", "model.decoder.layers.3.",
// "bert.encoder.layer.3.").
std::string family_block_prefix(const ModelConfig& cfg, int64_t i);
// (out, in) of a block linear by its relative name; throws InputError for an unknown name.
std::pair<int64_t, int64_t> block_linear_shape(const ModelConfig& cfg, const std::string& rel);
// Whether a Llama-family block linear has a bias (qkv_bias, o_proj_bias, mlp_bias).
bool llama_linear_has_bias(const ModelConfig& cfg, const std::string& rel);

// One tensor of a Llama-family checkpoint, in the order the writers emit them (the parameters
// outside the blocks in model order, then each block's).
struct HfTensor {
  std::string name;            // "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;
  std::string linear;          // the block linear it belongs to ("model.layers.3.self_attn.q_proj"), or ""
  int64_t block = -1;          // its block, or -1
  bool is_bias = false;
};
// Every parameter of a Llama-family model (Llama, Mistral, Qwen2); throws InputError naming the
// config for OPT and BERT, whose full lists come from their files.
std::vector<HfTensor> llama_tensors(const ModelConfig& cfg);

}  // namespace mpqat::model
