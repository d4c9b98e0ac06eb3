// Quantization kernels: fake-quant forward+backward vs a plain linear's, dequantize+matmul vs
// fp32 matmul, packing speed. Llama-7B-shaped weights at g128, a batch of `tokens` rows.
//
//   mpqat_bench_quant [--tokens 512] [--reps 5] [--bits 4] [--small] [--device cpu|cuda]
// Prints a Markdown table (median of reps, ms), then one of the GGUF K-quant encoder (CPU).
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "mpqat/io/gguf.h"
#include "mpqat/quant/gguf_blocks.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/quant/quantizer.h"
#include "mpqat/quant/scheme.h"

namespace {

double median_ms(int reps, const std::function<void()>& f, bool cuda) {
  f();  // warm-up
  if (cuda) torch::cuda::synchronize();
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    const auto a = std::chrono::steady_clock::now();
    f();
    if (cuda) torch::cuda::synchronize();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// GGUF K-quant requantization (the exporter's cost for a 2/3/4/5/6-bit module): encode with and
// without an importance matrix and ggml's decode, Gaussian weights of one (out x in) matrix, on
// the intra-op threads; the last column projects the encode time onto Llama-2-7B's 6.48e9 block
// linear weights.
void k_quant_table(int64_t out, int64_t in, int reps) {
  using mpqat::io::GgmlType;
  auto w = torch::randn({out, in}) * 0.02;
  auto imp = torch::rand({in}) + 0.1;
  const float* x = w.data_ptr<float>();
  std::printf("\nGGUF K-quants, %lldx%lld Gaussian weights, %d threads, median of %d (ms)\n\n", static_cast<long long>(out),
              static_cast<long long>(in), at::get_num_threads(), reps);
  std::printf("| type | encode | encode + imatrix | Mweights/s | decode | Llama-2-7B linears, encode (s) |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    const uint64_t rb = mpqat::io::ggml_row_bytes(t, in, "bench");
    std::vector<uint8_t> buf(rb * static_cast<uint64_t>(out));
    std::vector<float> back(static_cast<size_t>(out * in));
    const double te = median_ms(reps, [&] {
      mpqat::quant::encode_float(x, out, in, t, {}, buf.data());
    }, false);
    const double ti = median_ms(reps, [&] {
      mpqat::quant::encode_float(x, out, in, t, {}, buf.data(), imp.data_ptr<float>());
    }, false);
    const double td = median_ms(reps, [&] {
      at::parallel_for(0, out, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          mpqat::quant::dequantize_gguf_row(t, buf.data() + r * rb, in, back.data() + r * in);
      });
    }, false);
    const double mws = static_cast<double>(out * in) / te / 1e3;
    std::printf("| %s | %.1f | %.1f | %.1f | %.1f | %.0f |\n", mpqat::io::ggml_type_traits(t).name, te, ti, mws, td,
                6.48e9 / (mws * 1e6));
    std::fflush(stdout);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t tokens = 512;
  int reps = 5, bits = 4;
  bool small = false;
  std::string device = "cpu";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokens" && i + 1 < argc) tokens = std::stoll(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (a == "--bits" && i + 1 < argc) bits = std::stoi(argv[++i]);
    else if (a == "--device" && i + 1 < argc) device = argv[++i];
    else if (a == "--small") small = true;
    else {
      std::fprintf(stderr, "usage: %s [--tokens N] [--reps N] [--bits B] [--small] [--device cpu|cuda]\n", argv[0]);
      return 2;
    }
  }
  const bool cuda = device == "cuda";
  if (cuda && !torch::cuda::is_available()) {
    std::fprintf(stderr, "CUDA is not available in this LibTorch\n");
    return 2;
  }
  const torch::Device dev = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  torch::manual_seed(0);
  std::printf("device %s, threads %d, tokens %lld, w%dg128, median of %d (ms)\n\n", device.c_str(),
              at::get_num_threads(), static_cast<long long>(tokens), bits, reps);
  std::printf("| out x in | linear fwd+bwd | fake-quant linear fwd+bwd | ratio | fake-quant op fwd | op bwd | "
              "fp32 matmul | dequant | dequant+matmul | ratio | pack (codes->qweight) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<std::pair<int64_t, int64_t>> shapes = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  if (small) shapes = {{1024, 1024}, {2752, 1024}};
  const mpqat::quant::QuantSpec spec{bits, 128, false};
  for (const auto& [out, in] : shapes) {
    torch::NoGradGuard outer_ng;
    auto w = (torch::randn({out, in}) * 0.02).to(dev);
    auto p = mpqat::quant::init_params(w, spec);
    auto x = torch::randn({tokens, in}).to(dev);
    auto gy = torch::randn({tokens, out}).to(dev);

    // Plain linear forward + backward (dX and dW).
    const double t_lin = median_ms(reps, [&] {
      torch::AutoGradMode on(true);
      auto wp = w.detach().requires_grad_(true);
      auto xp = x.detach().requires_grad_(true);
      torch::linear(xp, wp).backward(gy);
    }, cuda);
    // Same with the weight fake-quantized (grads for W, scale, zero).
    const double t_fq = median_ms(reps, [&] {
      torch::AutoGradMode on(true);
      auto wp = w.detach().requires_grad_(true);
      auto sp = p.scale.detach().requires_grad_(true);
      auto zp = p.zero.detach().requires_grad_(true);
      auto xp = x.detach().requires_grad_(true);
      torch::linear(xp, mpqat::quant::fake_quant(wp, sp, zp, spec)).backward(gy);
    }, cuda);
    // The fake-quant op alone.
    const double t_op_f = median_ms(reps, [&] { mpqat::quant::fake_quant(w, p.scale, p.zero, spec); }, cuda);
    auto gw = torch::randn({out, in}).to(dev);
    const double t_op_fb = median_ms(reps, [&] {
      torch::AutoGradMode on(true);
      auto wp = w.detach().requires_grad_(true);
      auto sp = p.scale.detach().requires_grad_(true);
      auto zp = p.zero.detach().requires_grad_(true);
      mpqat::quant::fake_quant(wp, sp, zp, spec).backward(gw);
    }, cuda);
    // Inference: fp32 matmul vs dequantize + matmul.
    mpqat::model::LinearImpl lin(in, out, false);
    lin.weight.copy_(w.cpu());
    mpqat::quant::FakeQuantLinearImpl fq(lin, spec);
    auto ql = fq.to_quant_linear();
    ql->to(dev);
    const double t_mm = median_ms(reps, [&] { torch::linear(x, w); }, cuda);
    const double t_dq = median_ms(reps, [&] { ql->dequantize(); }, cuda);
    const double t_dqmm = median_ms(reps, [&] { ql->forward(x); }, cuda);
    // Packing from int32 codes (CPU).
    auto codes = mpqat::quant::quantize_codes(w.cpu(), p.scale.cpu(), p.zero.cpu(), spec).contiguous();
    const double t_pack = median_ms(reps, [&] {
      auto q = mpqat::quant::pack_qweight(codes.data_ptr<int32_t>(), out, in, bits);
      (void)q;
    }, false);
    std::printf("| %lldx%lld | %.1f | %.1f | %.2fx | %.1f | %.1f | %.1f | %.1f | %.1f | %.2fx | %.1f (%.0f Mcodes/s) |\n",
                static_cast<long long>(out), static_cast<long long>(in), t_lin, t_fq, t_fq / t_lin, t_op_f,
                t_op_fb - t_op_f, t_mm, t_dq, t_dqmm, t_dqmm / t_mm, t_pack,
                static_cast<double>(out * in) / t_pack / 1e3);
    std::fflush(stdout);
  }
  if (!cuda) k_quant_table(small ? 1024 : 4096, 4096, reps);
  return 0;
}
