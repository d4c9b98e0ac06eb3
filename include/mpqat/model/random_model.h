// Random Llama-family model folders for benchmarks and memory tests: any shape up to Llama-2-70B,
// written as Hugging Face writes them (config.json, model.safetensors or shards of at most
// `max_shard_bytes` with model.safetensors.index.json), one shard's tensors in memory at a time,
// so a 13.5 GB fp16 Llama-2-7B folder is written on a machine of 24 GiB. Random weights measure
// memory, speed and I/O, never quality.
#pragma once

#include <cstdint>
#include <string>

#include "mpqat/io/safetensors.h"
#include "mpqat/model/config.h"

namespace mpqat::model {

struct RandomModelOptions {
  uint64_t seed = 0;
  io::DType dtype = io::DType::F16;  // storage of every tensor
  uint64_t max_shard_bytes = 2000000000ull;  // 2 GB, as the Hugging Face hub's default
  double std = 0.02;                          // N(0, std) for linears and embeddings; norms are 1
  std::string tokenizer_from;                 // folder whose tokenizer files are copied ("" = none)
};

// The named shapes of the benchmarks: "tiny" (8 layers, 512 / 1376, 8 heads / 4 KV, vocab
// 4096), "1b" (TinyLlama-1.1B: 22 layers, 2048 / 5632, 32 / 4, vocab 32000), "7b" (Llama-2-7B:
// 32 layers, 4096 / 11008, 32 / 32, vocab 32000). Throws InputError for another name.
ModelConfig random_model_shape(const std::string& name);

// Writes `dir` (created; existing model files are replaced). The tensors of block i are a
// function of (seed, tensor name) only, so a model of 8 layers holds the first 8 blocks of the
// same shape's model of 32. Returns the bytes of tensor data written.
uint64_t write_random_model(const std::string& dir, const ModelConfig& cfg, const RandomModelOptions& opts = {});

}  // namespace mpqat::model
