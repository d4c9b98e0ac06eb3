// Test helper: a module's parameters written as `dir`/model.safetensors (F32, the module's own
// names, or rename(name)), the way Hugging Face float folders hold them.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "mpqat/io/safetensors.h"

namespace mpqat::testing {

inline void write_f32_safetensors(const torch::nn::Module& m, const std::filesystem::path& dir,
                                  const std::function<std::string(const std::string&)>& rename = nullptr) {
  std::vector<torch::Tensor> keep;  // the bytes must live until the write
  std::vector<io::TensorToWrite> ts;
  for (const auto& item : m.named_parameters(true)) {
    auto t = item.value().detach().contiguous();
    keep.push_back(t);
    ts.push_back({rename ? rename(item.key()) : item.key(), io::DType::F32, t.sizes().vec(), t.data_ptr(),
                  t.numel() * sizeof(float)});
  }
  io::write_safetensors((dir / "model.safetensors").string(), ts);
}

}  // namespace mpqat::testing
