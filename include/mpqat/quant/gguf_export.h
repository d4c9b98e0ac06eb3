// `mpqat export gguf`: a Llama-family checkpoint (float, or packed mixed-precision) as a GGUF
// file llama.cpp runs (docs/gguf.md). Every block linear gets its own ggml type from what the
// checkpoint holds (gguf_blocks.h: the codes themselves wherever a block type holds them);
// llama.cpp's tensor names and the q/k row order its RoPE expects; the model's hyper-parameters
// as llama.* metadata; the tokenizer's metadata is given by the caller (data::gguf_vocab_metadata).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mpqat/io/gguf.h"
#include "mpqat/quant/gguf_layout.h"

namespace mpqat::quant {

struct GgufExportOptions : GgufTypes {
  std::string name;  // general.name ("" = gguf_default_name: the base model folder's name)
  bool force = false;                               // replace an existing output file
  // The K-quant search's column weights: Hugging Face linear name ("model.layers.0.mlp.up_proj")
  // -> per input column E[x^2] (an importance matrix, sensitivity/imatrix.h). A linear without
  // an entry is requantized with equal column weights.
  std::map<std::string, std::vector<float>> importance;
};

// One tensor of the exported file.
struct GgufTensorReport {
  std::string gguf_name;  // "blk.0.attn_q.weight"
  std::string source;     // "model.layers.0.self_attn.q_proj"
  std::string source_spec;  // "w4g32", "w3g128 sym", "f32" (the checkpoint's storage)
  std::string type;       // "Q4_1"
  std::string how;        // "exact", "exact codes, m rounded", "requantized", "float"
  std::string why;        // reason for requantized / float, else ""
  int64_t weights = 0;
  uint64_t bytes = 0;
  double max_abs_error = 0.0;  // max |GGUF weight - checkpoint weight| (after ggml's dequantization)
  // sqrt(mean (GGUF weight - checkpoint weight)^2), and the same weighted by the importance of
  // each column (E[x^2]) when one was given: the output error per token a requantization adds.
  double rms_error = 0.0;
  double weighted_rms_error = 0.0;
  bool imatrix = false;  // a K-quant searched with the importance matrix's column weights
  bool block_linear = false;
};

struct GgufExportReport {
  std::string path;
  std::vector<GgufTensorReport> tensors;
  uint64_t file_bytes = 0;       // measured from the written file
  uint64_t predicted_bytes = 0;  // io::gguf_file_size of the layout, before writing
  int64_t linear_weights = 0;
  uint64_t linear_bytes = 0;
  double linear_bpw() const { return linear_weights ? 8.0 * double(linear_bytes) / double(linear_weights) : 0.0; }
  int64_t total_weights = 0;
  double file_bpw() const { return total_weights ? 8.0 * double(file_bytes) / double(total_weights) : 0.0; }
};

// Writes `out` (atomically) from the model folder `dir` (config.json + safetensors, quantized or
// not) with `vocab` as the tokenizer metadata. Throws InputError for an unsupported or corrupt
// folder, an existing `out` without force, or a vocabulary larger than the embedding;
// NotImplementedError for what llama.cpp's llama architecture would need and this exporter does
// not write yet (OPT/BERT, Qwen2, biases).
GgufExportReport export_gguf(const std::string& dir, const std::vector<io::GgufKV>& vocab, const std::string& out,
                             const GgufExportOptions& opts = {});

// The float model a GGUF file written by export_gguf from `source_dir` computes with: every
// tensor of the file dequantized as ggml does (q/k rows back in Hugging Face order), written as
// a Hugging Face float folder `out` (F32 safetensors, source_dir's config.json without its
// quantization_config, its tokenizer files), atomically. For measuring in mpqat what llama.cpp
// will run (perplexity, tasks). Throws InputError when the file lacks a tensor the model needs.
void decode_gguf_to_folder(const std::string& gguf, const std::string& source_dir, const std::string& out);

// The per-tensor table and the summary lines, as `mpqat export gguf` prints them.
std::string format_gguf_report(const GgufExportReport& r);

// "f32" / "f16" / "q8_0" (case-insensitive) -> type; InputError naming `what` otherwise.
io::GgmlType parse_gguf_float_type(const std::string& s, const std::string& what);

}  // namespace mpqat::quant
