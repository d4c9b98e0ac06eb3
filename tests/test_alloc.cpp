// Allocation: exact MCKP vs brute force, Lagrangian gap, clustering vs hand results / brute
// force, SGRA mapping, budgets, the size model vs hand-computed bytes and real written files.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "mpqat/alloc/allocate.h"
#include "mpqat/alloc/cluster.h"
#include "mpqat/alloc/solver.h"
#include "mpqat/io/recipe.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/engines.h"
#include "mpqat/quant/scheme.h"
#include "mpqat/util/error.h"

namespace fs = std::filesystem;
using namespace mpqat;
using namespace mpqat::alloc;

namespace {

std::vector<std::vector<McOption>> random_instance(std::mt19937_64& rng, int n, int maxo, uint64_t maxc) {
  std::uniform_int_distribution<int> no(1, maxo);
  std::uniform_int_distribution<uint64_t> c(0, maxc);
  std::uniform_real_distribution<double> v(0, 10);
  std::vector<std::vector<McOption>> cl(n);
  for (auto& k : cl) {
    const int m = no(rng);
    for (int o = 0; o < m; ++o) k.push_back({c(rng), std::round(v(rng) * 4) / 4});  // ties on purpose
  }
  return cl;
}

double sum_value(const std::vector<std::vector<McOption>>& cl, const std::vector<int>& ch) {
  double s = 0;
  for (std::size_t j = 0; j < cl.size(); ++j) s += cl[j][ch[j]].value;
  return s;
}
uint64_t sum_cost(const std::vector<std::vector<McOption>>& cl, const std::vector<int>& ch) {
  uint64_t s = 0;
  for (std::size_t j = 0; j < cl.size(); ++j) s += cl[j][ch[j]].cost;
  return s;
}

model::ModelConfig tiny_cfg(bool tie = false, int layers = 2) {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}}, {"model_type", "llama"}, {"hidden_size", 64},
                      {"intermediate_size", 172}, {"num_hidden_layers", layers}, {"num_attention_heads", 4},
                      {"num_key_value_heads", 2}, {"vocab_size", 32}, {"max_position_embeddings", 128},
                      {"tie_word_embeddings", tie}};
  return model::parse_model_config(j, "tiny");
}

Sensitivity tiny_sens(const ModelLayout& L, unsigned seed) {
  std::mt19937_64 rng(seed);
  std::lognormal_distribution<double> ln(0, 1.5);
  Sensitivity s;
  for (const auto& l : L.linears) s.modules[l.name].score = ln(rng);
  return s;
}

}  // namespace

TEST(AllocSolver, DpEqualsBruteForceOnRandomInstances) {
  std::mt19937_64 rng(7);
  int feasible = 0;
  for (int t = 0; t < 400; ++t) {
    const int n = 1 + t % 6;
    auto cl = random_instance(rng, n, 5, t % 3 == 0 ? 5 : 100);
    const uint64_t lo = mckp_min_cost(cl), hi = mckp_max_cost(cl);
    std::uniform_int_distribution<uint64_t> cap(lo > 3 ? lo - 3 : 0, hi + 3);
    const uint64_t C = cap(rng);
    const auto bf = solve_mckp_brute(cl, C);
    const auto dp = solve_mckp_dp(cl, C);
    ASSERT_EQ(bf.feasible, dp.feasible) << "instance " << t;
    if (!bf.feasible) continue;
    ++feasible;
    EXPECT_NEAR(dp.value, bf.value, 1e-9) << "instance " << t;
    EXPECT_LE(sum_cost(cl, dp.choice), C);
    EXPECT_EQ(sum_cost(cl, dp.choice), dp.cost);
    EXPECT_NEAR(sum_value(cl, dp.choice), dp.value, 1e-9);
    const auto lg = solve_mckp_lagrangian(cl, C);
    ASSERT_TRUE(lg.feasible);
    EXPECT_LE(lg.cost, C);
    EXPECT_GE(lg.value, dp.value - 1e-9);        // gap >= 0
    EXPECT_LE(lg.lower_bound, dp.value + 1e-9);  // dual bound below the optimum
  }
  EXPECT_GT(feasible, 250);
}

TEST(AllocSolver, MoreBudgetNeverWorse) {
  std::mt19937_64 rng(11);
  for (int t = 0; t < 50; ++t) {
    auto cl = random_instance(rng, 8, 6, 50);
    double prev = std::numeric_limits<double>::infinity();
    for (uint64_t C = mckp_min_cost(cl); C <= mckp_max_cost(cl); C += 7) {
      const auto r = solve_mckp_dp(cl, C);
      ASSERT_TRUE(r.feasible);
      EXPECT_LE(r.value, prev + 1e-12);
      prev = r.value;
    }
  }
}

TEST(AllocSolver, LargeMenuExactAgainstBoundAndFast) {
  // 80 blocks x 7 modules x 12 options: the DP must return a plan within budget whose value
  // lies between the Lagrangian dual bound and the Lagrangian primal.
  std::mt19937_64 rng(3);
  std::lognormal_distribution<double> ln(0, 1.5);
  std::vector<std::vector<McOption>> cl;
  uint64_t nw = 0;
  const std::vector<std::pair<int64_t, int64_t>> sh = {{8192, 8192}, {1024, 8192}, {1024, 8192}, {8192, 8192},
                                                       {28672, 8192}, {28672, 8192}, {8192, 28672}};
  for (int b = 0; b < 80; ++b)
    for (auto [o, i] : sh) {
      const double s = ln(rng);
      std::vector<McOption> v;
      for (int bits : {2, 3, 4, 5, 6, 8})
        for (int64_t g : {64, 128})
          v.push_back({quant::packed_module_bytes(o, i, {bits, g, false}),
                       s * double(o * i) * std::pow(4.0, -bits) * std::log(double(g)) / std::log(128.0)});
      cl.push_back(v);
      nw += uint64_t(o * i);
    }
  const uint64_t C = nw * 7 / 16;  // 3.5 bits
  const auto dp = solve_mckp_dp(cl, C);
  const auto lg = solve_mckp_lagrangian(cl, C);
  ASSERT_TRUE(dp.feasible);
  EXPECT_LE(dp.cost, C);
  EXPECT_LE(dp.value, lg.value + 1e-6);
  EXPECT_GE(dp.value, lg.lower_bound - 1e-6 * std::fabs(lg.lower_bound));
}

TEST(AllocCluster, KMeansHandComputed) {
  const std::vector<double> v = {1, 2, 10, 11, 50};
  EXPECT_EQ(cluster_scores(v, 3, ClusterMethod::KMeans), (std::vector<int>{2, 2, 1, 1, 0}));
  EXPECT_EQ(cluster_scores(v, 3, ClusterMethod::Hierarchical), (std::vector<int>{2, 2, 1, 1, 0}));
  // Percentile: ranks 50,11,10,2,1 -> floor(r*3/5) = 0,0,1,1,2
  EXPECT_EQ(cluster_scores(v, 3, ClusterMethod::Percentile), (std::vector<int>{2, 1, 1, 0, 0}));
}

TEST(AllocCluster, KMeansEqualsBruteForceOverContiguousPartitions) {
  std::mt19937_64 rng(5);
  std::uniform_real_distribution<double> u(0, 100);
  for (int t = 0; t < 100; ++t) {
    const int n = 3 + t % 8, k = 2 + t % 3;
    std::vector<double> v(n);
    for (auto& x : v) x = u(rng);
    const auto g = cluster_scores(v, k, ClusterMethod::KMeans);
    std::vector<double> s = v;
    std::sort(s.begin(), s.end());
    // Every way to cut the sorted values into k non-empty runs.
    double best = std::numeric_limits<double>::infinity();
    std::vector<int> cut(k - 1);
    std::function<void(int, int)> rec = [&](int idx, int start) {
      if (idx == k - 1) {
        std::vector<int> gg(n);
        int c = 0;
        for (int i = 0; i < n; ++i) {
          while (c < k - 1 && i >= cut[c]) ++c;
          gg[i] = c;
        }
        best = std::min(best, grouping_sse(s, gg));
        return;
      }
      for (int p = start; p <= n - (k - 1 - idx); ++p) {
        cut[idx] = p;
        rec(idx + 1, p + 1);
      }
    };
    rec(0, 1);
    EXPECT_NEAR(grouping_sse(v, g), best, 1e-9 * (1 + best)) << "trial " << t;
  }
}

TEST(AllocCluster, HierarchicalDeterministicTies) {
  // Equal merge costs everywhere at first: the lowest-index pair merges first.
  EXPECT_EQ(cluster_scores({0, 1, 2, 3}, 2, ClusterMethod::Hierarchical), (std::vector<int>{1, 1, 0, 0}));
  const std::vector<double> v = {5, 5, 5, 1, 1, 9, 9, 3};
  const auto a = cluster_scores(v, 3, ClusterMethod::Hierarchical);
  EXPECT_EQ(a, cluster_scores(v, 3, ClusterMethod::Hierarchical));
  EXPECT_EQ(a, (std::vector<int>{1, 1, 1, 2, 2, 0, 0, 2}));
}

TEST(AllocSgra, LinearRankMapping) {
  const auto s = sgra_settings({3, 1, 2}, SgraRanges{});
  EXPECT_EQ(s[1].epochs, 2);
  EXPECT_EQ(s[2].epochs, 3);
  EXPECT_EQ(s[0].epochs, 4);
  EXPECT_DOUBLE_EQ(s[1].lr_scale, 0.5);
  EXPECT_DOUBLE_EQ(s[2].lr_scale, 1.0);
  EXPECT_DOUBLE_EQ(s[0].lr_scale, 1.5);
  EXPECT_EQ(s[1].patience, 2);
  EXPECT_EQ(s[2].patience, 4);  // round(3.5)
  EXPECT_EQ(s[0].patience, 5);
  EXPECT_THROW(sgra_settings({1}, SgraRanges{4, 2, 0.5, 1.5, 2, 5}), InputError);
}

namespace {
// Every module at `bits` (the reference the budget tests compare with).
AllocResult uniform_plan(const SizeModel& sm, const Sensitivity& sens, int bits) {
  AllocOptions u;
  u.method = Method::Uniform;
  u.uniform_bits = bits;
  return allocate(sm, sens, u);
}
}  // namespace

TEST(AllocBudget, Parsing) {
  auto b = parse_budget("bytes=700KiB");
  EXPECT_EQ(b.kind, BudgetKind::Bytes);
  EXPECT_EQ(b.value, 716800.0);
  EXPECT_EQ(parse_budget("avg_bits=3.0").kind, BudgetKind::AvgBits);
  EXPECT_EQ(parse_budget("compression=4").value, 4.0);
  EXPECT_THROW(parse_budget("avg_bits"), InputError);
  EXPECT_THROW(parse_budget("bits=3"), InputError);
  EXPECT_THROW(parse_budget("avg_bits=x"), InputError);
  EXPECT_THROW(parse_budget("compression=-1"), InputError);
  const SizeModel sm(layout_from_config(tiny_cfg()));
  const int64_t nw = sm.layout().linear_weights();
  EXPECT_EQ(budget_total(parse_budget("avg_bits=3"), sm), uint64_t(3 * nw / 8));
  EXPECT_EQ(budget_total(parse_budget("compression=4"), sm), sm.fp16_bytes() / 4);
  EXPECT_EQ(parse_budget("code_bits=3").kind, BudgetKind::CodeBits);
  EXPECT_EQ(budget_total(parse_budget("code_bits=3"), sm), uint64_t(3 * nw));
  EXPECT_EQ(budget_metric(BudgetKind::CodeBits), SizeMetric::CodeBits);
  try {
    parse_budget("bits=3");
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("code_bits=3.0"), std::string::npos) << e.what();
  }
}

TEST(AllocBudget, CodeBitsCountCodesOnly) {
  // The seeds' "average 4.0 bits (same compression as uniform 4-bit)": uniform 4-bit fits a
  // code_bits=4 budget exactly, though its bpw (scales, zeros, g_idx) is higher.
  const SizeModel sm(layout_from_config(tiny_cfg(false, 4)));
  const auto sens = tiny_sens(sm.layout(), 1);
  const auto ur = uniform_plan(sm, sens, 4);
  EXPECT_DOUBLE_EQ(ur.size.code_bits, 4.0);
  EXPECT_EQ(ur.size.code_bit_total, uint64_t(4 * sm.layout().linear_weights()));
  EXPECT_GT(ur.size.avg_bits, 4.0);
  AllocOptions q;
  q.method = Method::QBO;
  q.bits = {2, 3, 4, 8};
  q.group_sizes = {32};
  q.budget = parse_budget("code_bits=4");
  const auto r = allocate(sm, sens, q);
  EXPECT_EQ(r.metric, SizeMetric::CodeBits);
  EXPECT_LE(r.size.code_bit_total, r.budget_total);
  EXPECT_LE(r.size.code_bits, 4.0 + 1e-12);
  EXPECT_GT(r.size.code_bits, 3.5);  // the solver spends the budget
  // An avg_bits (bpw) budget of the same number buys fewer code bits: g32's scales and zeros count.
  q.budget = parse_budget("avg_bits=4");
  const auto rb = allocate(sm, sens, q);
  EXPECT_LT(rb.size.code_bits, r.size.code_bits);
  // Below the menu's smallest code bits: refused with the limits in code bits.
  q.budget = parse_budget("code_bits=1.5");
  try {
    allocate(sm, sens, q);
    FAIL() << "code_bits=1.5 accepted with a 2..8-bit menu";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("2.0000 code bits"), std::string::npos) << e.what();
  }
}

TEST(AllocSize, HandComputedBytes) {
  // hidden 64, kv_dim 32, intermediate 172, vocab 32, 2 layers, untied head.
  const SizeModel sm(layout_from_config(tiny_cfg()));
  const auto& L = sm.layout();
  ASSERT_EQ(L.linears.size(), 14u);
  EXPECT_EQ(L.linears[0].name, "model.layers.0.self_attn.q_proj");
  // q_proj (64, 64) at 4 bits, g32: qweight 8x64 i32, qzeros 2x8 i32, scales 2x64 f16, g_idx 64 i32
  EXPECT_EQ(sm.module_tensor_bytes(0, {4, 32}), 2048u + 64u + 256u + 256u);
  // k_proj (32, 64) at 3 bits, g128 (one group): qweight 6x32, qzeros 1x3, scales 1x32, g_idx 64
  EXPECT_EQ(sm.module_tensor_bytes(1, {3, 128}), 6u * 32 * 4 + 3 * 4 + 32 * 2 + 64 * 4);
  // down_proj (64, 172) at 2 bits, g32 -> 6 groups (last one 12 wide): qweight ceil(344/32)=11 x 64
  EXPECT_EQ(sm.module_tensor_bytes(6, {2, 32}), 11u * 64 * 4 + 6 * 4 * 4 + 6 * 64 * 2 + 172 * 4);
  EXPECT_EQ(sm.module_tensor_bytes(6, {16, 0}), 64u * 172 * 2);
  // embed + head 32x64 each, 2 x 2 block norms + final norm of 64.
  EXPECT_EQ(sm.fixed_tensor_bytes(), 2u * 32 * 64 * 2 + 5 * 64 * 2);
  EXPECT_EQ(sm.fp16_bytes(), 2u * uint64_t(tiny_cfg().num_parameters()));
  const SizeModel tied(layout_from_config(tiny_cfg(true)));
  EXPECT_EQ(tied.fixed_tensor_bytes(), 32u * 64 * 2 + 5 * 64 * 2);
}

TEST(AllocSize, ExactMatchesWrittenSafetensorsAndBoundHolds) {
  const SizeModel sm(layout_from_config(tiny_cfg(false, 3)));
  const auto& L = sm.layout();
  std::mt19937_64 rng(9);
  const std::vector<Choice> menu = {{2, 32}, {3, 64}, {4, 128}, {5, -1}, {6, 32}, {8, 256}, {16, 0}};
  const fs::path dir = fs::temp_directory_path() / ("mpqat_alloc_test_" + std::to_string(::getpid()));
  for (int t = 0; t < 10; ++t) {
    std::vector<Choice> ch(L.linears.size());
    for (auto& c : ch) c = menu[rng() % menu.size()];
    const PlanSize ps = sm.exact(ch);
    // Write the packed layout's tensors in the writer's order and measure the file (the io rules;
    // TinyCheckpoint.SizeModelPredictsTheShardedSaveToTheByte checks the real writer, sharded).
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<io::TensorToWrite> tw;
    auto add = [&](const std::string& n, io::DType dt, std::vector<int64_t> s) {
      int64_t e = 1;
      for (auto d : s) e *= d;
      bufs.emplace_back(size_t(e) * io::dtype_size(dt));
      tw.push_back({n, dt, s, nullptr, bufs.back().size()});
    };
    for (const auto& p : L.params) {
      if (p.linear >= 0 && !p.is_bias && ch[p.linear].quantized()) continue;
      add(p.name, io::DType::F16, p.shape);
    }
    std::map<std::string, std::size_t> packed;
    for (std::size_t i = 0; i < ch.size(); ++i)
      if (ch[i].quantized()) packed[L.linears[i].name] = i;
    for (const auto& [n, i] : packed) {
      const auto& l = L.linears[i];
      for (const auto& pt : quant::packed_tensor_shapes(l.out, l.in, quant::QuantSpec{ch[i].bits, ch[i].group_size, false}))
        add(n + pt.suffix, pt.dtype, pt.shape);
    }
    for (std::size_t k = 0; k < tw.size(); ++k) tw[k].data = bufs[k].data();
    fs::remove_all(dir);
    io::write_safetensors_sharded(dir.string(), tw, {{"format", "pt"}}, 0, "model");
    EXPECT_EQ(fs::file_size(dir / "model.safetensors"), ps.file_bytes) << "trial " << t;
    EXPECT_EQ(io::SafetensorsCheckpoint(dir.string()).total_tensor_bytes(), ps.tensor_bytes);
    // The additive model the solver uses: exact for tensors / linears, an upper bound for files.
    for (auto m : {SizeMetric::FileBytes, SizeMetric::TensorBytes, SizeMetric::LinearBytes}) {
      uint64_t s = sm.fixed_cost(m);
      for (std::size_t i = 0; i < ch.size(); ++i) s += sm.option_cost(m, i, ch[i]);
      if (m == SizeMetric::FileBytes) {
        EXPECT_GE(s, ps.file_bytes);
        EXPECT_LE(s, ps.file_bytes + 64 + 2 * 14 * 5 * 6);  // only offset digits and padding
      } else {
        EXPECT_EQ(s, ps.of(m));
      }
    }
  }
  fs::remove_all(dir);
}

TEST(AllocPlan, QboMeetsBudgetBeatsUniformAndIsAcceptedByQuantize) {
  const SizeModel sm(layout_from_config(tiny_cfg(false, 4)));
  const auto sens = tiny_sens(sm.layout(), 1);
  const auto ur = uniform_plan(sm, sens, 4);
  for (auto kind : {std::string("bytes="), std::string("avg_bits="), std::string("compression=")}) {
    AllocOptions q;
    q.method = Method::QBO;
    const auto& us = ur.size;
    q.budget = parse_budget(kind == "bytes="      ? kind + std::to_string(us.file_bytes)
                            : kind == "avg_bits=" ? kind + std::to_string(us.avg_bits + 1e-9)
                                                  : kind + std::to_string(double(sm.fp16_bytes()) / double(us.tensor_bytes) - 1e-9));
    const auto r = allocate(sm, sens, q);
    EXPECT_TRUE(r.fits) << kind;
    EXPECT_LE(r.size.of(r.metric), r.budget_total);
    EXPECT_LE(r.objective, ur.objective + 1e-12) << kind;
    ASSERT_TRUE(r.lagrangian_gap.has_value());
    EXPECT_GE(*r.lagrangian_gap, -1e-12);
    const auto plan = quant::parse_bit_plan(plan_to_json(r, sm, q), "plan");
    EXPECT_EQ(plan.modules.size(), sm.layout().linears.size());
  }
}

TEST(AllocPlan, TiesPinsAndClusteringPresets) {
  const SizeModel sm(layout_from_config(tiny_cfg(false, 4)));
  const auto sens = tiny_sens(sm.layout(), 2);
  AllocOptions o;
  o.method = Method::MPQ;
  o.budget = parse_budget("avg_bits=5.5");  // tiny layers: g_idx and scales cost ~1.2 bits
  o.tie_qkv = o.tie_gate_up = true;
  o.pins = {{"model.layers.0.*", 8}};
  const auto r = allocate(sm, sens, o);
  std::map<std::string, int> bits;
  for (const auto& m : r.modules) bits[m.name] = m.choice.bits;
  for (int b = 0; b < 4; ++b) {
    const std::string p = "model.layers." + std::to_string(b) + ".";
    EXPECT_EQ(bits[p + "self_attn.q_proj"], bits[p + "self_attn.k_proj"]);
    EXPECT_EQ(bits[p + "self_attn.q_proj"], bits[p + "self_attn.v_proj"]);
    EXPECT_EQ(bits[p + "mlp.gate_proj"], bits[p + "mlp.up_proj"]);
  }
  EXPECT_EQ(bits["model.layers.0.mlp.down_proj"], 8);
  for (const auto& m : r.modules) EXPECT_LE(m.choice.bits, 8);  // MPQ: 2..8 only

  AllocOptions k;
  k.method = Method::KMeans;
  k.groups = 3;
  k.preset = {16, 8, 4};
  const auto kr = allocate(sm, sens, k);
  // The most sensitive module gets 16, the least 4.
  const auto mx = std::max_element(kr.modules.begin(), kr.modules.end(), [](auto& a, auto& b) { return a.score < b.score; });
  const auto mn = std::min_element(kr.modules.begin(), kr.modules.end(), [](auto& a, auto& b) { return a.score < b.score; });
  EXPECT_EQ(mx->choice.bits, 16);
  EXPECT_EQ(mn->choice.bits, 4);
  k.preset = {8, 4};
  EXPECT_THROW(allocate(sm, sens, k), InputError);
}

TEST(AllocErrors, BudgetLimitsMismatchAndPins) {
  const SizeModel sm(layout_from_config(tiny_cfg()));
  auto sens = tiny_sens(sm.layout(), 3);
  AllocOptions o;
  o.budget = parse_budget("avg_bits=1.0");
  try {
    allocate(sm, sens, o);
    FAIL();
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("below the smallest"), std::string::npos) << m;
    EXPECT_NE(m.find("largest"), std::string::npos) << m;
  }
  o.budget = parse_budget("avg_bits=15.0");
  EXPECT_THROW(allocate(sm, sens, o), InputError);
  o.budget = parse_budget("avg_bits=4.0");
  auto bad = sens;
  bad.modules.erase("model.layers.1.mlp.up_proj");
  try {
    allocate(sm, bad, o);
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.1.mlp.up_proj"), std::string::npos);
  }
  bad = sens;
  bad.modules["model.layers.0.self_attn.qproj"].score = 1;
  EXPECT_THROW(allocate(sm, bad, o), InputError);
  o.tie_qkv = true;
  o.pins = {{"model.layers.0.self_attn.q_proj", 8}, {"model.layers.0.self_attn.k_proj", 4}};
  EXPECT_THROW(allocate(sm, sens, o), InputError);
  o.pins = {{"nothing.here", 4}};
  EXPECT_THROW(allocate(sm, sens, o), InputError);
}

// The trap of a sensitivity table computed for g128 and an allocation asked at g32: refused,
// naming the missing candidates and the command; allowed on request, and counted; score-only
// files (no tables) are modelled and counted.
TEST(AllocSensitivity, MissingOmegaCandidatesAreRefusedUnlessAllowed) {
  const SizeModel sm(layout_from_config(tiny_cfg(false, 1)));
  Sensitivity s;
  s.source = "sens.json";
  for (const auto& l : sm.layout().linears) {
    s.modules[l.name].score = 1.0;
    for (int b : {2, 3, 4, 8}) s.modules[l.name].omega[std::to_string(b) + ":128"] = std::pow(4.0, -b);
  }
  AllocOptions o;
  o.method = Method::QBO;
  o.bits = {2, 3, 4, 8};
  o.budget = parse_budget("avg_bits=4.5");
  o.group_sizes = {128};
  EXPECT_EQ(allocate(sm, s, o).modelled_omegas, 0u);
  o.group_sizes = {32, 128};
  std::string m = "<no InputError>";
  try {
    allocate(sm, s, o);
  } catch (const InputError& e) {
    m = e.what();
  }
  EXPECT_NE(m.find("sens.json has no omega for the candidates 2:32, 3:32, 4:32, 8:32"), std::string::npos) << m;
  EXPECT_NE(m.find("--group-sizes 32"), std::string::npos) << m;
  EXPECT_NE(m.find("--allow-modelled-omega"), std::string::npos) << m;
  o.method = Method::MPQ;
  EXPECT_THROW(allocate(sm, s, o), InputError);
  o.allow_modelled_omega = true;
  const auto r = allocate(sm, s, o);
  EXPECT_EQ(r.modelled_omegas, 4u * sm.layout().linears.size());
  EXPECT_NE(result_text(r).find("omegas were modelled"), std::string::npos);
  EXPECT_EQ(summary_json(r)["modelled_omegas"].get<size_t>(), 4u * sm.layout().linears.size());
  // Score-only sensitivities: every quantized candidate is modelled, without an error.
  o.allow_modelled_omega = false;
  o.method = Method::QBO;
  const auto r2 = allocate(sm, tiny_sens(sm.layout(), 3), o);
  EXPECT_EQ(r2.modelled_omegas, 8u * sm.layout().linears.size());
}

// allocation.target: the menu is what the engine runs (quant/engines.h).
TEST(AllocTarget, MenuIsWhatTheEngineRuns) {
  AllocOptions o;
  o.bits = {2, 3, 4, 5, 6, 8, 16};
  o.group_sizes = {32, 128, 256};
  o.target = "gptqmodel";
  auto g = for_target(o);
  EXPECT_EQ(g.bits, (std::vector<int>{2, 3, 4, 8, 16}));
  EXPECT_FALSE(g.sym);
  o.target = "vllm";
  auto v = for_target(o);
  EXPECT_EQ(v.bits, (std::vector<int>{4, 8, 16}));
  EXPECT_EQ(v.group_sizes, (std::vector<int64_t>{32, 128}));
  EXPECT_TRUE(v.sym && v.tie_qkv && v.tie_gate_up);
  EXPECT_EQ(for_target(v).bits, v.bits);  // idempotent
  o.bits = {2, 3};
  EXPECT_THROW(for_target(o), InputError);
  o.bits = {2, 3, 4};
  o.pins = {{"model.layers.0.", 3}};
  EXPECT_THROW(for_target(o), InputError);
  o.pins.clear();
  o.target = "llama.cpp";  // every bit-width: K-quants hold 2/3/6 bits and other groups (rows of 256)
  o.bits = {2, 3, 4, 5, 6, 8, 16};
  auto l = for_target(o);
  EXPECT_EQ(l.bits, (std::vector<int>{2, 3, 4, 5, 6, 8, 16}));
  EXPECT_EQ(l.group_sizes, o.group_sizes);
  EXPECT_FALSE(l.sym);
  // ... priced in GGUF bytes only: a safetensors size model is refused (a programming error).
  try {
    allocate(SizeModel(layout_from_config(tiny_cfg())), tiny_sens(layout_from_config(tiny_cfg()), 1), l);
    ADD_FAILURE() << "a safetensors size model was accepted for llama.cpp";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("GGUF sizing"), std::string::npos) << e.what();
  }
  // Recipes write the GPTQ layout: a llama.cpp target there names the commands that do it.
  try {
    alloc_options_from_recipe(io::Recipe::from_yaml(
        "model:\n  path: /m\nallocation:\n  method: qbo\n  target: llama.cpp\n  budget:\n    avg_bits: 4.5\n", "r.yaml"));
    ADD_FAILURE() << "allocation.target llama.cpp was accepted in a recipe";
  } catch (const NotImplementedError& e) {
    EXPECT_NE(std::string(e.what()).find("mpqat allocate --target llama.cpp"), std::string::npos) << e.what();
  }
  o.target = "tensorrt";
  EXPECT_THROW(for_target(o), InputError);

  // A QBO plan for vLLM: symmetric 4/8 bits only, q/k/v and gate/up of each layer tied.
  const SizeModel sm(layout_from_config(tiny_cfg(false, 2)));
  AllocOptions q;
  q.method = Method::QBO;
  q.bits = {2, 3, 4, 5, 6, 8};
  q.budget = parse_budget("avg_bits=5.5");
  q.group_sizes = {32, 128, -1};
  q.target = "vllm";
  const auto r = allocate(sm, tiny_sens(sm.layout(), 5), q);
  EXPECT_EQ(r.target, "vllm");
  std::map<std::string, int> bits;
  std::map<std::string, int64_t> in;
  for (const auto& l : sm.layout().linears) in[l.name] = l.in;
  bool some_not_divisible = false;
  for (const auto& l : sm.layout().linears) some_not_divisible = some_not_divisible || l.in % 32 != 0;
  EXPECT_TRUE(some_not_divisible) << "the test model should have a width 32 does not divide";
  for (const auto& m : r.modules) {
    EXPECT_TRUE(m.choice.bits == 4 || m.choice.bits == 8) << m.name << " " << m.choice.bits;
    EXPECT_TRUE(m.choice.group_size == -1 || in[m.name] % m.choice.group_size == 0) << m.name;
    bits[m.name] = m.choice.bits;
  }
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(bits[p + "self_attn.q_proj"], bits[p + "self_attn.k_proj"]);
    EXPECT_EQ(bits[p + "self_attn.q_proj"], bits[p + "self_attn.v_proj"]);
    EXPECT_EQ(bits[p + "mlp.gate_proj"], bits[p + "mlp.up_proj"]);
  }
  EXPECT_EQ(summary_json(r)["target"], "vllm");
}

TEST(AllocTarget, EngineSupportNamesWhatBlocksIt) {
  using quant::ModuleView;
  EXPECT_EQ(quant::fused_name("model.layers.3.self_attn.k_proj"), "model.layers.3.self_attn.qkv_proj");
  EXPECT_EQ(quant::fused_name("model.layers.3.mlp.up_proj"), "model.layers.3.mlp.gate_up_proj");
  EXPECT_EQ(quant::fused_name("model.layers.3.mlp.down_proj"), "");
  auto view = [](const std::string& rel, int bits, bool sym) {
    return ModuleView{"model.layers.0." + rel, true, quant::QuantSpec{bits, 128, sym}};
  };
  std::vector<ModuleView> ok{view("self_attn.q_proj", 4, true), view("self_attn.k_proj", 4, true),
                             view("self_attn.v_proj", 4, true), view("mlp.gate_proj", 8, true),
                             view("mlp.up_proj", 8, true),      view("mlp.down_proj", 4, true)};
  EXPECT_TRUE(quant::engine_support(quant::engine_menu("vllm", "t"), ok).loads);
  EXPECT_TRUE(quant::engine_support(quant::engine_menu("gptqmodel", "t"), ok).loads);
  auto untied = ok;
  untied[1].spec.bits = 8;
  const auto u = quant::engine_support(quant::engine_menu("vllm", "t"), untied);
  EXPECT_FALSE(u.loads);
  EXPECT_NE(u.why_not.find("model.layers.0.self_attn.qkv_proj"), std::string::npos) << u.why_not;
  auto odd = ok;
  odd[5] = view("mlp.down_proj", 5, false);
  const auto g = quant::engine_support(quant::engine_menu("gptqmodel", "t"), odd);
  EXPECT_FALSE(g.loads);
  EXPECT_NE(g.why_not.find("5-bit modules (1 modules)"), std::string::npos) << g.why_not;
  const auto v = quant::engine_support(quant::engine_menu("vllm", "t"), odd);
  EXPECT_NE(v.why_not.find("asymmetric modules (1 modules)"), std::string::npos) << v.why_not;
  EXPECT_FALSE(quant::engine_support(quant::engine_menu("llama.cpp", "t"), ok).loads);
}

TEST(AllocSensitivity, ParsesSchemaAndOmegaTable) {
  const SizeModel sm(layout_from_config(tiny_cfg(false, 1)));
  nlohmann::json j = {{"version", 1}, {"calibration", {{"dataset", "x"}}}, {"modules", nlohmann::json::object()}};
  for (const auto& l : sm.layout().linears) j["modules"][l.name] = {{"score", 2.0}, {"omega", {{"4:128", 0.5}}}};
  const auto s = parse_sensitivity(j, "s");
  const auto& l0 = sm.layout().linears[0];
  EXPECT_DOUBLE_EQ(module_omega(s, l0, {4, 128}), 0.5);
  EXPECT_DOUBLE_EQ(module_omega(s, l0, {16, 0}), 0.0);
  // Noise model: score * numel * 4^-b * ln(group width) / ln(128); 64 inputs -> width 64.
  EXPECT_NEAR(module_omega(s, l0, {2, 128}), 2.0 * 64 * 64 / 16.0 * std::log(64.0) / std::log(128.0), 1e-12);
  j["version"] = 2;
  EXPECT_THROW(parse_sensitivity(j, "s"), InputError);
}
