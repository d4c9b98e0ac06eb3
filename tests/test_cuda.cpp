// The CUDA paths against the CPU ones ([S1] GPU check; tools/gpu_check.sh runs them on a GPU
// machine). Every test skips with a message where LibTorch sees no CUDA device, as on the CPU
// machines that run CI. Tolerances are those of fp32 on different kernels (cuBLAS vs OpenBLAS).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "mpqat/eval/perplexity.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/block_source.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/sensitivity/fisher.h"
#include "mpqat/train/block_ap.h"
#include "mpqat/train/e2e_qp.h"
#include "float_folder.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device visible to LibTorch: CUDA checks skipped"

json llama_json() {
  return json{{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 64},
              {"intermediate_size", 96}, {"num_hidden_layers", 3}, {"num_attention_heads", 4},
              {"num_key_value_heads", 2}, {"vocab_size", 64}, {"max_position_embeddings", 128},
              {"rms_norm_eps", 1e-5}, {"tie_word_embeddings", false}};
}

fs::path model_folder(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("mpqat_cuda_" + std::to_string(::getpid()) + "_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  torch::manual_seed(3);
  auto m = model::build_model(model::parse_model_config(llama_json(), name));
  std::ofstream(dir / "config.json") << llama_json().dump(2);
  mpqat::testing::write_f32_safetensors(*m, dir);
  return dir;
}

std::vector<std::vector<int32_t>> sequences(int n, int len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> s(n, std::vector<int32_t>(len));
  for (auto& q : s)
    for (auto& t : q) t = static_cast<int32_t>(rng() % 64);
  return s;
}

quant::BitPlan plan_for(const model::ModelConfig& cfg) {
  quant::BitPlan p;
  for (int64_t i = 0; i < cfg.num_hidden_layers; ++i)
    for (const auto& rel : model::family_block_linear_names(cfg)) {
      quant::ModulePlan m;
      m.bits = i % 2 ? 3 : 4;
      m.group_size = 32;
      p.modules[model::family_block_prefix(cfg, i) + rel] = m;
    }
  return p;
}

}  // namespace

TEST(Cuda, LogitsAndStreamedPerplexityMatchCpu) {
  SKIP_WITHOUT_CUDA();
  const auto dir = model_folder("logits");
  model::ModelFolder folder(dir.string());
  std::vector<int32_t> ids;
  for (const auto& s : sequences(1, 16 * 6, 5)) ids = s;
  model::StreamingOptions cpu, gpu;
  cpu.mode = gpu.mode = "always";
  gpu.device = torch::Device(torch::kCUDA, 0);
  auto a = model::open_blocks(folder, cpu);
  auto b = model::open_blocks(folder, gpu);
  const auto pa = eval::evaluate_perplexity(model::batch_fn(*a), ids, 16, 2, 0, torch::kCPU);
  const auto pb = eval::evaluate_perplexity(model::batch_fn(*b), ids, 16, 2, 0, gpu.device);
  EXPECT_NEAR(pb.nll, pa.nll, 1e-5 * std::abs(pa.nll));
  fs::remove_all(dir);
}

TEST(Cuda, StreamedFisherMatchesCpu) {
  SKIP_WITHOUT_CUDA();
  const auto dir = model_folder("fisher");
  model::ModelFolder folder(dir.string());
  const auto seqs = sequences(3, 12, 7);
  std::vector<torch::Tensor> fa, fb;
  auto collect = [](std::vector<torch::Tensor>& out) {
    return [&out](int64_t, model::Block&, const std::vector<torch::Tensor>& f) {
      for (const auto& t : f) out.push_back(t.to(torch::kCPU));
    };
  };
  auto a = model::folder_blocks(folder, torch::kCPU);
  auto b = model::folder_blocks(folder, torch::Device(torch::kCUDA, 0));
  sensitivity::fisher_streamed(*a, seqs, {}, collect(fa));
  sensitivity::fisher_streamed(*b, seqs, {}, collect(fb));
  ASSERT_EQ(fa.size(), fb.size());
  for (size_t k = 0; k < fa.size(); ++k) {
    const double scale = fa[k].abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(fb[k], fa[k], 1e-3, 1e-5 * scale)) << k;
  }
  fs::remove_all(dir);
}

TEST(Cuda, QuantLinearDequantizesAsOnCpu) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(1);
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    model::LinearImpl lin(96, 40, true);
    lin.reset_parameters();
    quant::QuantSpec spec;
    spec.bits = bits;
    spec.group_size = 32;
    quant::FakeQuantLinearImpl fq(lin, spec);
    auto q = fq.to_quant_linear();
    const auto w_cpu = q->dequantize();
    q->to(torch::Device(torch::kCUDA, 0));
    EXPECT_TRUE(torch::equal(q->dequantize().to(torch::kCPU), w_cpu)) << bits << " bits";
  }
}

TEST(Cuda, BlockApAndE2eRunOnCudaLikeOnCpu) {
  SKIP_WITHOUT_CUDA();
  const auto dir = model_folder("bap");
  model::ModelFolder folder(dir.string());
  const auto plan = plan_for(folder.config());
  const auto data = train::stack_sequences(sequences(8, 24, 9));
  train::BlockApOptions o;
  o.epochs = 2;
  o.batch_size = 4;
  o.lr_weights = 1e-4;
  o.lr_quant = 1e-3;
  o.val_fraction = 0.25;
  const auto cpu = train::block_ap(folder, plan, data, o);
  o.device = torch::Device(torch::kCUDA, 0);
  auto gpu = train::block_ap(folder, plan, data, o);
  ASSERT_EQ(cpu.logs.size(), gpu.logs.size());
  for (size_t i = 0; i < cpu.logs.size(); ++i) {
    EXPECT_NEAR(gpu.logs[i].start_val_mse, cpu.logs[i].start_val_mse, 1e-4 * cpu.logs[i].start_val_mse) << i;
    EXPECT_NEAR(gpu.logs[i].end_val_mse, cpu.logs[i].end_val_mse, 2e-2 * cpu.logs[i].end_val_mse) << i;
  }
  train::E2eOptions eo;
  eo.lr = 1e-3;
  train::e2e_qp(gpu, data, eo);
  ASSERT_TRUE(gpu.e2e.has_value());
  EXPECT_LT(gpu.e2e->end_loss, gpu.e2e->start_loss);
  quant::SaveOptions so;
  so.source_dir = dir.string();
  so.plan = &plan;
  quant::save_quantized_checkpoint(*gpu.shell, gpu.config, gpu.blocks, (dir / "q").string(), so);
  EXPECT_TRUE(fs::exists(dir / "q" / "model.safetensors"));
  fs::remove_all(dir);
}
