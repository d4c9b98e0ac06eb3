// llama2.c legacy checkpoints (karpathy/llama2.c run.c "version 0" format) -> Hugging Face
// Llama folders.
//
// File: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
// negative vocab_size means an unshared classifier), then fp32 tensors: token_embedding
// (V, C), rms_att (L, C), wq (L, C, C), wk (L, KV, C), wv (L, KV, C), wo (L, C, C),
// rms_ffn (L, C), w1 (L, F, C), w2 (L, C, F), w3 (L, F, C), rms_final (C),
// freq_cis_real (S, hd/2), freq_cis_imag (S, hd/2), [wcls (V, C)].
//
// llama2.c rotates interleaved pairs (2i, 2i+1) of each head; Hugging Face rotates halves
// (i, i + hd/2) with the same frequency i. Rows of wq / wk are permuted per head
// (HF row i <- llama2.c row 2i, HF row i + hd/2 <- row 2i + 1) so the converted model computes
// exactly the same function.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mpqat/model/config.h"

namespace mpqat::model {

struct Llama2cHeader {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, vocab_size = 0,
          seq_len = 0;
  bool shared_classifier = true;
  int64_t head_size() const { return dim / n_heads; }
  int64_t kv_dim() const { return static_cast<int64_t>(n_kv_heads) * head_size(); }
  // Exact file size this header implies, in bytes.
  uint64_t expected_file_size() const;
  model::ModelConfig to_config() const;
};

// Reads and validates the header (positive sizes, heads dividing dim, file size exact).
// Throws InputError naming the file and, for a size mismatch, expected vs actual bytes.
Llama2cHeader read_llama2c_header(const std::string& path);

// Reorders the rows of a (n_heads * head_dim, in) row-major matrix from llama2.c's interleaved
// RoPE layout to Hugging Face's rotate-half layout, per head.
std::vector<float> permute_rope_rows(const float* w, int64_t n_heads, int64_t head_dim, int64_t in);

struct ConvertOptions {
  bool force = false;  // replace a non-empty existing output folder
};

// Writes config.json, model.safetensors (F32), tokenizer.bin (a copy) and the Hugging Face
// tokenizer files into `out_dir`, built in `<out_dir>.tmp` and renamed into place.
// Throws InputError for a bad input file or an existing non-empty `out_dir` without force.
void convert_llama2c(const std::string& model_bin, const std::string& tokenizer_bin,
                     const std::string& out_dir, const ConvertOptions& opts = {});

}  // namespace mpqat::model
