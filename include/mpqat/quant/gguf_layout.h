// The GGUF file mpqat writes for a Llama-family model, as a plan: llama.cpp's tensor names, the
// q/k row order its RoPE expects, which ggml type each tensor gets, and the llama.* metadata.
// One home for these facts: `mpqat export gguf` (gguf_export.h) writes from it and the allocator's
// size model for allocation.target llama.cpp (alloc/allocate.h) predicts the file from it, so the
// two agree to the byte. No torch here. docs/gguf.md.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mpqat/io/gguf.h"
#include "mpqat/model/config.h"
#include "mpqat/model/hf_names.h"
#include "mpqat/quant/gguf_blocks.h"
#include "mpqat/quant/scheme.h"

namespace mpqat::quant {

// Throws InputError for a type outside those lists.
void check_gguf_types(const GgufTypes& t);

// llama.cpp's name for a Hugging Face Llama tensor ("" when it has none).
std::string gguf_tensor_name(const std::string& hf);
// Rows of q (or k) in the order llama.cpp's RoPE expects (Hugging Face keeps each head's two
// rotary halves apart, GGUF interleaves them as Meta's original weights did).
std::vector<int64_t> gguf_rope_row_order(int64_t heads, int64_t head_dim);
// The row order of tensor `t` in the file: gguf_rope_row_order for q_proj / k_proj, else empty
// (identity). Row k of the GGUF tensor is Hugging Face row order[k].
std::vector<int64_t> gguf_row_order(const model::ModelConfig& cfg, const model::HfTensor& t);
// Throws NotImplementedError for what the llama architecture of llama.cpp would need and the
// exporter does not write (OPT/BERT, Qwen2, biases); `dir` names the input.
void check_gguf_supported(const model::ModelConfig& cfg, const std::string& dir);

// The ggml type of a non-linear tensor (embeddings, norms) and of an unquantized block linear:
// the requested type where the row length allows it (32 for Q8_0, 256 for K-quants), else Q8_0
// (for a K-quant) or F16.
io::GgmlType gguf_float_tensor_type(const model::HfTensor& t, const GgufTypes& types);

// llama.* and general.* metadata, then the tokenizer's (padded to the embedding's rows with
// [PADn] tokens, as convert_hf_to_gguf.py does). `vocab` from data::gguf_vocab_metadata.
std::vector<io::GgufKV> gguf_metadata(const model::ModelConfig& cfg, const std::string& name, bool quantized,
                                      const std::vector<io::GgufKV>& vocab, const std::string& dir);

// general.name when none is given: the base model folder's name (for a quantized checkpoint, the
// source_model its provenance records), so a prediction made on the base model and the export of
// its checkpoint write the same header.
std::string gguf_default_name(const std::string& folder_name, const std::string& source_model);

// One tensor of the file in llama_tensors order: GGUF name and dims (ne, fastest first).
io::GgufTensorSpec gguf_tensor_spec(const model::HfTensor& t, io::GgmlType type);

// llama3 RoPE scaling (Llama-3.1 and later): llama.cpp reads the per-frequency divisors from a
// rope_freqs.weight tensor (head_dim / 2, F32) written before the model's tensors; nullopt for
// other configs. The values are base inverse frequency / scaled one (model::rope_inv_freq).
std::optional<io::GgufTensorSpec> gguf_rope_freqs_spec(const model::ModelConfig& cfg);

// Every tensor of the file in file order: rope_freqs.weight when the config needs it, then the
// model's tensors in llama_tensors order, each with the type `type_of` gives it (called once per
// model tensor, in that order).
std::vector<io::GgufTensorSpec> gguf_tensor_specs(const model::ModelConfig& cfg,
                                                  const std::function<io::GgmlType(const model::HfTensor&)>& type_of);

}  // namespace mpqat::quant
