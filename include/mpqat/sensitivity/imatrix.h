// The importance matrix of llama.cpp's K-quant search (its `imatrix`): for every block linear,
// the mean over calibration tokens of the square of each input column, E[x_j^2] (GPTQ's diag(H)
// / 2). A requantization's added output error is sum_j E[x_j^2] (dW_ij)^2 per row and token, so
// the GGUF exporter's K-quant search weighs each column's error by it (quant/gguf_kquants.h).
//
// Collected on the model a folder holds (float, or packed: the quantized chain the exported
// weights will see), blocks streamed one at a time through model::run_inputs, so any model
// whose single block fits in memory can be measured. No gradients. The file (imatrix.json):
//   {"version": 1, "model": "...", "calibration": "...", "tokens": N,
//    "modules": {"model.layers.0.self_attn.q_proj": [E[x_0^2], ...], ...}}
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mpqat/data/calibration.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/loader.h"

namespace mpqat::sensitivity {

struct ImportanceMatrix {
  std::string model, calibration;  // where it was measured
  int64_t tokens = 0;              // tokens each module's statistics average over
  std::map<std::string, std::vector<float>> modules;  // Hugging Face linear name -> E[x_j^2] per input column
};

// E[x^2] of every block linear's input over the tokens of `sequences` (each one forward, batched
// `batch` at a time), on `src`'s device.
ImportanceMatrix collect_importance(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                                    int64_t batch = 4);

// The importance matrix of the model in `dir` over calibration windows of `calib` (causal LMs;
// data::load_token_calibration's sampling), blocks streamed as `st` asks. Throws InputError for
// a classifier, a missing tokenizer or too short a file.
ImportanceMatrix importance_of_folder(const std::string& dir, const std::string& calib,
                                      const data::CalibrationOptions& co, const model::StreamingOptions& st);

// imatrix.json as above; written atomically. The reader throws InputError naming the file on a
// malformed document (a missing "modules", a non-numeric entry, a negative or non-finite value).
void write_importance(const std::string& path, const ImportanceMatrix& m);
ImportanceMatrix read_importance(const std::string& path);

}  // namespace mpqat::sensitivity
