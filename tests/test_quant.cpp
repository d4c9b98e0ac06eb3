// Quantizer, packing, fake-quant autograd and QuantLinear.
// Layout checks use hand-computed words (GPTQ's 3-bit rule worked out by hand from its packing
// loop) and a bit-by-bit reference; fake-quant gradients are checked against an autograd
// composition of EfficientQAT's round_ste / clamp_ste formula and against finite differences
// where the function is smooth.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "mpqat/model/linear.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/quant/quantizer.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/util/error.h"

using namespace mpqat;
using namespace mpqat::quant;

namespace {

template <typename F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}

// Bit-by-bit reference of the stream layout: code k bit j -> stream bit k*b + j.
std::vector<uint32_t> reference_stream(const std::vector<int32_t>& codes, int bits) {
  std::vector<uint32_t> w((codes.size() * bits + 31) / 32, 0u);
  for (size_t k = 0; k < codes.size(); ++k)
    for (int j = 0; j < bits; ++j)
      if ((codes[k] >> j) & 1) {
        const size_t p = k * bits + j;
        w[p / 32] |= 1u << (p % 32);
      }
  return w;
}

// One column (out = 1) of `codes` packed as qweight.
std::vector<uint32_t> pack_column(const std::vector<int32_t>& codes, int bits) {
  auto q = pack_qweight(codes.data(), 1, static_cast<int64_t>(codes.size()), bits);
  return std::vector<uint32_t>(q.begin(), q.end());
}

// EfficientQAT's fake_quant written with torch autograd (round_ste / clamp_ste), fp64.
torch::Tensor efficientqat_reference(const torch::Tensor& w, const torch::Tensor& s, const torch::Tensor& z,
                                     int bits, int64_t gs) {
  auto round_ste = [](const torch::Tensor& x) { return (x.round() - x).detach() + x; };
  auto clamp_ste = [](const torch::Tensor& x, double lo, double hi) { return (x.clamp(lo, hi) - x).detach() + x; };
  const double qmax = (1 << bits) - 1;
  auto sc = clamp_ste(s, 1e-4, 1e4);
  auto Z = clamp_ste(round_ste(z), 0, qmax);
  auto gidx = default_g_idx(w.size(1), gs).to(torch::kLong);
  auto sf = sc.index_select(1, gidx), Zf = Z.index_select(1, gidx);
  auto q = (round_ste(w / sf) + Zf).clamp(0, qmax);
  return (q - Zf) * sf;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Scheme table, geometry

TEST(QuantScheme, TraitsTable) {
  ASSERT_EQ(quant_type_table().size(), 6u);
  for (const auto& t : quant_type_table()) {
    EXPECT_EQ(t.qmax, (1 << t.bits) - 1);
    EXPECT_EQ(t.unit_values * t.bits, t.unit_words * 32) << t.name;
  }
  EXPECT_EQ(traits_for_bits(3, "x").unit_values, 32);
  EXPECT_EQ(traits_for_bits(3, "x").unit_words, 3);
  EXPECT_EQ(traits_for_bits(6, "x").unit_values, 16);
  EXPECT_EQ(traits_for_bits(5, "x").unit_words, 5);
  auto msg = input_error([] { traits_for_bits(7, "layer x"); });
  EXPECT_NE(msg.find("layer x"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2, 3, 4, 5, 6, 8"), std::string::npos) << msg;
  msg = input_error([] { validate_spec(QuantSpec{4, 100, false}, "m"); });
  EXPECT_NE(msg.find("32, 64, 128, 256, -1"), std::string::npos) << msg;
}

TEST(QuantScheme, GroupsWithSmallerLastGroup) {
  EXPECT_EQ(num_groups(172, 32), 6);   // 5 x 32 + 12
  EXPECT_EQ(num_groups(172, 64), 3);   // 2 x 64 + 44
  EXPECT_EQ(num_groups(172, 128), 2);  // 128 + 44
  EXPECT_EQ(num_groups(172, 256), 1);
  EXPECT_EQ(num_groups(172, -1), 1);
  auto g = default_g_idx(172, 32);
  EXPECT_EQ(g[0].item<int>(), 0);
  EXPECT_EQ(g[159].item<int>(), 4);
  EXPECT_EQ(g[160].item<int>(), 5);
  EXPECT_EQ(g[171].item<int>(), 5);
  EXPECT_EQ(default_g_idx(172, -1).max().item<int>(), 0);
}

TEST(QuantScheme, BitsDetectableFromRows) {
  for (int64_t in : {32, 64, 172, 4096, 11008})
    for (int b : supported_bits()) {
      auto c = bits_for_packed_words(packed_words(in, b), in);
      ASSERT_EQ(c.size(), 1u) << in << " " << b;
      EXPECT_EQ(c[0], b);
    }
}

// ---------------------------------------------------------------------------------------------
// Packing layout, word by word

TEST(QuantPack, HandComputedWords) {
  // 2 bits: 1, 2, 3, 0 repeated -> byte 0b00'11'10'01 = 0x39
  {
    std::vector<int32_t> c;
    for (int i = 0; i < 16; ++i) c.push_back((i % 4 + 1) % 4);
    EXPECT_EQ(pack_column(c, 2), (std::vector<uint32_t>{0x39393939u}));
  }
  // 4 bits: 0..7 -> 0x76543210 (GPTQ: lowest nibble = first input row)
  EXPECT_EQ(pack_column({0, 1, 2, 3, 4, 5, 6, 7}, 4), (std::vector<uint32_t>{0x76543210u}));
  // 8 bits: 1, 2, 3, 4 -> 0x04030201
  EXPECT_EQ(pack_column({1, 2, 3, 4}, 8), (std::vector<uint32_t>{0x04030201u}));
  // 3 bits, GPTQ's 3-in-32: codes 0..9 in word0 bits 0..29; code 10 splits (2 low bits at
  // word0 30..31, high bit at word1 bit 0); codes 11..20 at word1 bits 1..30; code 21 splits
  // (low bit at word1 bit 31, 2 high bits at word2 bits 0..1); codes 22..31 at word2 2..31.
  {
    std::vector<int32_t> c(32, 0);
    c[10] = 5;  // 101b -> word0 bit30 = 1, bit31 = 0, word1 bit0 = 1
    c[21] = 6;  // 110b -> word1 bit31 = 0, word2 bits 0..1 = 11
    EXPECT_EQ(pack_column(c, 3), (std::vector<uint32_t>{0x40000000u, 0x00000001u, 0x00000003u}));
    std::vector<int32_t> d(32, 0);
    d[0] = 7;
    d[11] = 1;  // word1 bit 1
    d[31] = 4;  // word2 bits 29..31 -> bit 31
    EXPECT_EQ(pack_column(d, 3), (std::vector<uint32_t>{0x00000007u, 0x00000002u, 0x80000000u}));
  }
  // 5 bits: code 6 = 31 at stream bits 30..34 -> word0 0xC0000000, word1 0x7
  {
    std::vector<int32_t> c(32, 0);
    c[6] = 31;
    auto w = pack_column(c, 5);
    ASSERT_EQ(w.size(), 5u);
    EXPECT_EQ(w[0], 0xC0000000u);
    EXPECT_EQ(w[1], 0x7u);
    EXPECT_EQ(w[2] | w[3] | w[4], 0u);
  }
  // 6 bits: code 5 = 101011b at stream bits 30..35 -> word0 0xC0000000, word1 0xA
  {
    std::vector<int32_t> c(16, 0);
    c[5] = 43;
    EXPECT_EQ(pack_column(c, 6), (std::vector<uint32_t>{0xC0000000u, 0xAu, 0x0u}));
  }
}

TEST(QuantPack, MatchesBitByBitReferenceAndPadsWithZeros) {
  std::mt19937 rng(7);
  for (int b : supported_bits())
    for (int64_t n : {1, 5, 31, 32, 33, 172, 200}) {
      std::vector<int32_t> c(n);
      for (auto& v : c) v = static_cast<int32_t>(rng() % (1u << b));
      EXPECT_EQ(pack_column(c, b), reference_stream(c, b)) << "bits " << b << " n " << n;
    }
}

TEST(QuantPack, RoundTripEveryBitsAndGroupSize) {
  std::mt19937 rng(11);
  const int64_t out = 13;
  for (int b : supported_bits())
    for (int64_t gs : supported_group_sizes())
      for (int64_t in : {172, 256}) {
        std::vector<int32_t> codes(out * in);
        for (auto& v : codes) v = static_cast<int32_t>(rng() % (1u << b));
        auto qw = pack_qweight(codes.data(), out, in, b);
        ASSERT_EQ(static_cast<int64_t>(qw.size()), packed_words(in, b) * out);
        EXPECT_EQ(unpack_qweight(qw.data(), out, in, b), codes) << b << " g" << gs << " in " << in;
        const int64_t ng = num_groups(in, gs);
        std::vector<int32_t> zeros(ng * out);
        for (auto& v : zeros) v = static_cast<int32_t>(rng() % (1u << b));
        auto qz = pack_qzeros(zeros.data(), ng, out, b);
        ASSERT_EQ(static_cast<int64_t>(qz.size()), ng * packed_words(out, b));
        EXPECT_EQ(unpack_qzeros(qz.data(), ng, out, b), zeros);
      }
}

TEST(QuantPack, RejectsCodesOutOfRange) {
  std::vector<int32_t> c{0, 1, 8, 2};
  auto msg = input_error([&] { pack_qweight(c.data(), 1, 4, 3); });
  EXPECT_NE(msg.find("does not fit in 3 bits"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Init

TEST(QuantInit, MinMaxAsEfficientQAT) {
  // One group [-1, 0, 0.5, 2], 2 bits: s = 3 / 3 = 1, z = round(1 / 1) = 1.
  auto w = torch::tensor({-1.0f, 0.0f, 0.5f, 2.0f}).view({1, 4});
  auto p = init_params(w, QuantSpec{2, -1, false});
  EXPECT_FLOAT_EQ(p.scale.item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(p.zero.item<float>(), 1.0f);
  // 4 bits, [0.1, 0.4]: s = 0.3 / 15 = 0.02 (fp16-rounded), z = round(-0.1 / s) = -5.
  auto w2 = torch::tensor({0.1f, 0.4f, 0.2f, 0.3f}).view({1, 4});
  auto p2 = init_params(w2, QuantSpec{4, -1, false});
  const float s16 = static_cast<float>(c10::Half(0.3f / 15.0f));
  EXPECT_FLOAT_EQ(p2.scale.item<float>(), s16);
  EXPECT_FLOAT_EQ(p2.zero.item<float>(), std::nearbyint(-0.1f / s16));
  // Tiny range: the scale is clamped to >= 1e-4.
  auto p3 = init_params(torch::zeros({2, 32}), QuantSpec{4, 32, false});
  EXPECT_GE(p3.scale.min().item<float>(), 1e-4f);
  // Smaller last group (172 = 128 + 44) takes min/max over its own 44 columns only.
  auto w4 = torch::zeros({1, 172});
  w4[0][130] = 3.0f;
  w4[0][5] = -1.0f;
  auto p4 = init_params(w4, QuantSpec{8, 128, false, }, InitOptions{false, 20, 0.5, false});
  EXPECT_FLOAT_EQ(p4.scale[0][0].item<float>(), 1.0f / 255.0f);
  EXPECT_FLOAT_EQ(p4.scale[0][1].item<float>(), 3.0f / 255.0f);
}

TEST(QuantInit, ClipSearchNeverWorseAndSometimesBetter) {
  torch::manual_seed(3);
  auto w = torch::randn({64, 256});
  w[0][0] = 12.0f;  // an outlier makes clipping pay off
  for (int b : {2, 3, 4}) {
    QuantSpec spec{b, 64, false};
    auto p0 = init_params(w, spec);
    InitOptions o;
    o.clip_search = true;
    auto p1 = init_params(w, spec, o);
    auto e0 = (fake_quant(w, p0.scale, p0.zero, spec) - w).pow(2).sum().item<double>();
    auto e1 = (fake_quant(w, p1.scale, p1.zero, spec) - w).pow(2).sum().item<double>();
    EXPECT_LE(e1, e0 * (1 + 1e-6)) << b;
    EXPECT_LT(e1, e0 * 0.99) << b;
  }
}

// ---------------------------------------------------------------------------------------------
// Fake quant

TEST(FakeQuant, ForwardMatchesEfficientQATFormulaBitwise) {
  torch::manual_seed(5);
  for (int b : supported_bits())
    for (int64_t gs : {32L, 128L, -1L}) {
      QuantSpec spec{b, gs, false};
      auto w = torch::randn({24, 172}) * 0.05;
      auto p = init_params(w, spec);
      p.scale = p.scale * 0.9;  // push some values outside the range: the clamp is exercised
      auto ref = efficientqat_reference(w, p.scale, p.zero, b, gs);
      auto cpu = fake_quant(w, p.scale, p.zero, spec);
      auto ops = fake_quant_torch_ops(w, p.scale, p.zero, spec);
      EXPECT_TRUE(torch::equal(cpu, ref)) << "bits " << b << " g" << gs;
      EXPECT_TRUE(torch::equal(cpu, ops)) << "bits " << b << " g" << gs;
    }
}

TEST(FakeQuant, RoundsHalvesToEvenLikeTorch) {
  // Exact halves (k + 0.5) and large magnitudes: the CPU loop's rounding must equal torch.round.
  auto w = torch::cat({torch::arange(-64, 64).to(torch::kFloat) * 0.5f, torch::tensor({3e7f, -3e7f, 1e-30f, -1e-30f})})
               .view({1, -1});
  const int64_t in = w.size(1);
  QuantSpec spec{8, -1, false};
  auto s = torch::ones({1, 1}), z = torch::full({1, 1}, 128.5f);  // round(128.5) = 128
  EXPECT_TRUE(torch::equal(fake_quant(w, s, z, spec), efficientqat_reference(w, s, z, 8, -1)));
  auto expect = (torch::round(w) + 128).clamp(0, 255) - 128;
  EXPECT_TRUE(torch::equal(fake_quant(w, s, z, spec), expect)) << in;
}

TEST(FakeQuant, GradientsFollowStraightThroughConvention) {
  torch::manual_seed(9);
  for (int b : {2, 3, 4, 8})
    for (int64_t gs : {32L, 64L}) {
      QuantSpec spec{b, gs, false};
      auto w0 = torch::randn({16, 172}) * 0.1;
      auto p = init_params(w0, spec);
      auto s0 = p.scale * 0.8, z0 = p.zero + 0.3;  // clamped elements and a non-integral zero
      auto c = torch::randn({16, 172});             // L = sum(c * W^)
      auto run = [&](bool ops) {
        auto w = w0.clone().requires_grad_(true), s = s0.clone().requires_grad_(true),
             z = z0.clone().requires_grad_(true);
        auto out = ops ? fake_quant_torch_ops(w, s, z, spec) : fake_quant(w, s, z, spec);
        (out * c).sum().backward();
        return std::make_tuple(w.grad(), s.grad(), z.grad());
      };
      auto w = w0.clone().requires_grad_(true), s = s0.clone().requires_grad_(true),
           z = z0.clone().requires_grad_(true);
      (efficientqat_reference(w, s, z, b, gs) * c).sum().backward();
      for (bool ops : {false, true}) {
        auto [gw, gs_, gz] = run(ops);
        // The reference goes through (g * s) / s in autograd: equal up to that rounding.
        EXPECT_TRUE(torch::allclose(gw, w.grad(), 1e-6, 1e-7)) << b;
        EXPECT_TRUE(torch::equal(gw.eq(0), w.grad().eq(0))) << b;  // same clamp mask
        EXPECT_TRUE(torch::allclose(gs_, s.grad(), 1e-4, 1e-4)) << b << " ops " << ops;
        EXPECT_TRUE(torch::allclose(gz, z.grad(), 1e-4, 1e-4)) << b << " ops " << ops;
      }
    }
}

TEST(FakeQuant, GradientsMatchFiniteDifferencesWhereSmooth) {
  // Every weight saturated (scale tiny): W^ = (qmax - Z) s or (0 - Z) s, linear in s; dW = 0.
  QuantSpec spec{3, 32, false};
  torch::manual_seed(2);
  auto r = torch::randn({4, 64});
  auto w0 = torch::sign(r) * (2.0 + r.abs());
  auto s0 = torch::full({4, 2}, 0.01f);
  auto z0 = torch::full({4, 2}, 4.0f);
  auto c = torch::randn({4, 64});
  auto L = [&](const torch::Tensor& s) { return (fake_quant(w0, s, z0, spec) * c).sum().to(torch::kDouble).item<double>(); };
  auto w = w0.clone().requires_grad_(true), s = s0.clone().requires_grad_(true), z = z0.clone().requires_grad_(true);
  (fake_quant(w, s, z, spec) * c).sum().backward();
  EXPECT_EQ(w.grad().abs().max().item<float>(), 0.0f);
  const double eps = 1e-3;
  for (int64_t o = 0; o < 4; ++o)
    for (int64_t g = 0; g < 2; ++g) {
      auto sp = s0.clone(), sm = s0.clone();
      sp[o][g] += eps;
      sm[o][g] -= eps;
      const double fd = (L(sp) - L(sm)) / (2 * eps);
      EXPECT_NEAR(s.grad()[o][g].item<double>(), fd, 1e-2 * (1 + std::abs(fd)));
      // dL/dz for saturated weights is -s * sum(g): STE through round(z).
      const double expect_z = -0.01 * c[o].slice(0, g * 32, g * 32 + 32).sum().item<double>();
      EXPECT_NEAR(z.grad()[o][g].item<double>(), expect_z, 1e-5);
    }
  // In range: dL/dz = 0 and dL/dW = dL/dW^ (identity through the straight-through round).
  auto w1 = (torch::rand({4, 64}) - 0.5).requires_grad_(true);
  auto p = init_params(w1.detach(), spec);
  auto z1 = p.zero.clone().requires_grad_(true);
  (fake_quant(w1, p.scale, z1, spec) * c).sum().backward();
  EXPECT_TRUE(torch::equal(w1.grad(), c));
  EXPECT_EQ(z1.grad().abs().max().item<float>(), 0.0f);
}

// ---------------------------------------------------------------------------------------------
// QuantLinear

TEST(QuantLinear, OutputEqualsFakeQuantBitwise) {
  torch::manual_seed(13);
  for (int b : supported_bits())
    for (int64_t gs : supported_group_sizes())
      for (int64_t in : {172L, 256L}) {
        model::LinearImpl lin(in, 40, /*bias=*/b % 2 == 0);
        lin.reset_parameters();
        QuantSpec spec{b, gs, b == 4};
        InitOptions o;
        o.clip_search = b == 3;
        FakeQuantLinearImpl fq(lin, spec, o);
        auto ql = fq.to_quant_linear();
        auto x = torch::randn({3, 5, in});
        torch::NoGradGuard ng;
        auto y_fq = fq.forward(x);
        auto y_q = ql->forward(x);
        EXPECT_TRUE(torch::equal(y_fq, y_q)) << "bits " << b << " g" << gs << " in " << in;
        EXPECT_TRUE(torch::equal(ql->dequantize(), fq.quantized_weight()));
        EXPECT_TRUE(torch::equal(ql->dequantize_torch_ops(), ql->dequantize()));
        ql->set_cache(true);
        EXPECT_TRUE(torch::equal(ql->forward(x), y_fq));
        EXPECT_TRUE(torch::equal(ql->forward(x), y_fq));
      }
}

TEST(QuantLinear, HasNoFloatWeightParameter) {
  model::LinearImpl lin(64, 8, true);
  lin.reset_parameters();
  FakeQuantLinearImpl fq(lin, QuantSpec{4, 32, false});
  auto ql = fq.to_quant_linear();
  std::vector<std::string> params;
  for (const auto& p : ql->named_parameters()) params.push_back(p.key());
  EXPECT_EQ(params, std::vector<std::string>{"bias"});
  std::vector<std::string> bufs;
  for (const auto& p : ql->named_buffers()) bufs.push_back(p.key());
  EXPECT_EQ(bufs, (std::vector<std::string>{"qweight", "qzeros", "scales", "g_idx"}));
  EXPECT_EQ(ql->qweight.sizes(), (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(ql->qzeros.sizes(), (std::vector<int64_t>{2, 1}));
  EXPECT_EQ(ql->scales.scalar_type(), torch::kHalf);
  EXPECT_EQ(ql->packed_bytes(), packed_module_bytes(8, 64, QuantSpec{4, 32, false}));
}

// ---------------------------------------------------------------------------------------------
// Bit plan

TEST(BitPlan, ParsesAndValidates) {
  auto j = nlohmann::json::parse(R"({"version": 1, "modules": {
      "model.layers.0.self_attn.q_proj": {"bits": 3, "group_size": 32},
      "model.layers.0.mlp.down_proj": {"bits": 16},
      "model.layers.1.mlp.up_proj": {"bits": 8, "group_size": -1, "sym": true, "epochs": 3}}})");
  auto plan = parse_bit_plan(j, "p.json");
  EXPECT_EQ(plan.modules.size(), 3u);
  EXPECT_EQ(plan.quantized().size(), 2u);
  EXPECT_EQ(plan.modules.at("model.layers.1.mlp.up_proj").spec(), (QuantSpec{8, -1, true}));
  auto round = parse_bit_plan(bit_plan_to_json(plan), "again");
  EXPECT_EQ(round.modules.at("model.layers.0.self_attn.q_proj").spec(), (QuantSpec{3, 32, false}));

  auto bad = [&](const char* text) { return input_error([&] { parse_bit_plan(nlohmann::json::parse(text), "p.json"); }); };
  auto m = bad(R"({"modules": {"a": {"bits": 7}}})");
  EXPECT_NE(m.find("'a'"), std::string::npos) << m;
  EXPECT_NE(m.find("2, 3, 4, 5, 6, 8"), std::string::npos) << m;
  m = bad(R"({"modules": {"a": {"bits": 4, "group_size": 48}}})");
  EXPECT_NE(m.find("32, 64, 128, 256, -1"), std::string::npos) << m;
  m = bad(R"({"version": 2, "modules": {}})");
  EXPECT_NE(m.find("version"), std::string::npos) << m;
  m = bad(R"({"layers": {}})");
  EXPECT_NE(m.find("modules"), std::string::npos) << m;

  BitPlan p2 = parse_bit_plan(nlohmann::json::parse(R"({"modules": {"model.layers.0.self_attn.qproj": {"bits": 4}}})"), "p.json");
  m = input_error([&] {
    validate_plan_modules(p2, {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj"});
  });
  EXPECT_NE(m.find("model.layers.0.self_attn.qproj"), std::string::npos) << m;
  EXPECT_NE(m.find("did you mean 'model.layers.0.self_attn.q_proj'"), std::string::npos) << m;
}
