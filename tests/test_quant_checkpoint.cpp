// Mixed-precision checkpoints: RTN from a plan, writer, detecting loader, inspect, CLI, and
// clear errors on corrupt / inconsistent checkpoints. The stories260K case (real model, all six
// bit-widths) checks that the reloaded checkpoint's perplexity equals the fake-quant model's.
#include <gtest/gtest.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "mpqat/alloc/allocate.h"
#include "mpqat/cli/commands.h"
#include "mpqat/data/tokenizer.h"
#include "mpqat/eval/perplexity.h"
#include "mpqat/model/llama2c.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/config.h"
#include "mpqat/model/llama.h"
#include "mpqat/model/loader.h"
#include "mpqat/quant/bitplan.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/quant/inspect.h"
#include "mpqat/quant/quant_linear.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"
#include "test_util.h"
#include "float_folder.h"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace mpqat;

namespace {

fs::path temp_dir(const std::string& tag) { return mpqat::testing::fresh_temp_dir("test_qckpt", tag); }

template <typename F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  }
  return "<no InputError>";
}

json tiny_config() {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"hidden_size", 64},
              {"intermediate_size", 172},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"vocab_size", 50},
              {"max_position_embeddings", 64},
              {"rms_norm_eps", 1e-5},
              {"tie_word_embeddings", false}};
}

// A float model folder: config.json + model.safetensors (F32).
void save_float_folder(const model::TransformerModel& m, const json& cfg, const fs::path& dir) {
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << cfg.dump(2);
  mpqat::testing::write_f32_safetensors(m, dir);
}

// Every tensor of a folder's checkpoint as raw bytes, to rewrite it with edits.
struct RawTensor {
  io::DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
std::map<std::string, RawTensor> read_all(const fs::path& dir) {
  io::SafetensorsCheckpoint ck(dir.string());
  std::map<std::string, RawTensor> out;
  for (const auto& n : ck.names()) {
    const auto& i = ck.info(n);
    out[n] = {i.dtype, i.shape, std::vector<uint8_t>(ck.data(n), ck.data(n) + i.nbytes())};
  }
  return out;
}
void write_all(const fs::path& dir, const std::map<std::string, RawTensor>& ts) {
  for (const auto& e : fs::directory_iterator(dir))
    if (util::ends_with(e.path().string(), ".safetensors") || util::ends_with(e.path().string(), ".index.json"))
      fs::remove(e.path());
  std::vector<io::TensorToWrite> tw;
  for (const auto& [n, t] : ts) tw.push_back({n, t.dtype, t.shape, t.bytes.data(), t.bytes.size()});
  io::write_safetensors((dir / "model.safetensors").string(), tw);
}
json read_json(const fs::path& p) { return json::parse(util::read_file(p.string())); }
void write_json(const fs::path& p, const json& j) { std::ofstream(p) << j.dump(2); }

// Plan over the tiny model: all six bit-widths, several group sizes, one module left float.
quant::BitPlan tiny_plan() {
  const int bits[] = {2, 3, 4, 5, 6, 8};
  const int64_t groups[] = {32, 64, 128, -1, 256};
  json mods = json::object();
  int k = 0;
  for (int l = 0; l < 2; ++l)
    for (const auto& rn : model::block_linear_names()) {
      const std::string name = "model.layers." + std::to_string(l) + "." + rn;
      if (l == 1 && rn == "self_attn.o_proj") mods[name] = {{"bits", 16}};
      else mods[name] = {{"bits", bits[k % 6]}, {"group_size", groups[k % 5]}, {"sym", k % 7 == 3}};
      ++k;
    }
  return quant::parse_bit_plan(json{{"version", 1}, {"modules", mods}}, "tiny plan");
}

class TinyCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = temp_dir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    cfg_ = model::parse_model_config(tiny_config());
    torch::manual_seed(21);
    src_ = model::build_model(cfg_);
    save_float_folder(*src_, tiny_config(), root_ / "float");
    plan_ = tiny_plan();
    // Reference: the fake-quant model with every other tensor rounded to fp16 (the storage).
    ref_ = model::load_any_model(model::ModelFolder((root_ / "float").string()));
    quant::apply_fake_quant(*ref_, plan_);
    torch::NoGradGuard ng;
    for (auto& item : ref_->named_parameters(true)) {
      const auto& k = item.key();
      if (util::ends_with(k, ".scale") || util::ends_with(k, ".zero")) continue;
      if (util::ends_with(k, "_proj.weight") && plan_.quantized().count(k.substr(0, k.size() - 7))) continue;
      item.value().copy_(item.value().to(torch::kHalf).to(torch::kFloat));
    }
    auto qm = model::load_any_model(model::ModelFolder((root_ / "float").string()));
    quant::rtn_quantize(*qm, plan_);
    quant::SaveOptions so;
    so.source_dir = (root_ / "float").string();
    so.plan = &plan_;
    so.max_shard_bytes = 20000;  // several shards
    quant::save_quantized_checkpoint(*qm, (root_ / "q").string(), so);
    ids_ = torch::randint(0, 50, {2, 16}, torch::kLong);
  }
  void TearDown() override { fs::remove_all(root_); }

  torch::Tensor logits(model::TransformerModel& m) {
    torch::NoGradGuard ng;
    return m.forward(ids_, torch::Tensor());
  }

  fs::path root_;
  model::ModelConfig cfg_;
  model::ModelPtr src_, ref_;
  quant::BitPlan plan_;
  torch::Tensor ids_;
};

}  // namespace

TEST_F(TinyCheckpoint, WrittenFolderFollowsTheFormat) {
  const auto q = root_ / "q";
  EXPECT_TRUE(fs::exists(q / "model.safetensors.index.json"));  // sharded
  EXPECT_FALSE(fs::exists(root_ / ("q.tmp." + std::to_string(::getpid()))));
  const auto cfg = read_json(q / "config.json");
  const auto& qc = cfg["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "gptq");
  EXPECT_EQ(qc["checkpoint_format"], "gptq_v2");
  EXPECT_EQ(qc["desc_act"], false);
  EXPECT_EQ(cfg["hidden_size"], 64);  // the source config is preserved
  EXPECT_TRUE(qc["dynamic"].contains("-:^model\\.layers\\.1\\.self_attn\\.o_proj$")) << qc["dynamic"].dump();
  EXPECT_TRUE(cfg["mpqat"]["bit_plan"]["modules"].contains("model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(cfg["mpqat"]["provenance"]["created"].get<std::string>().empty());
  io::SafetensorsCheckpoint ck(q.string());
  const auto& i = ck.info("model.layers.0.mlp.down_proj.qweight");  // k = 6: 2 bits, g64, in 172
  EXPECT_EQ(i.dtype, io::DType::I32);
  EXPECT_EQ(i.shape, (std::vector<int64_t>{11, 64}));            // ceil(172 * 2 / 32)
  EXPECT_EQ(ck.info("model.layers.0.mlp.down_proj.scales").shape, (std::vector<int64_t>{3, 64}));  // 64 + 64 + 44
  EXPECT_EQ(ck.info("model.layers.0.mlp.down_proj.scales").dtype, io::DType::F16);
  EXPECT_EQ(ck.info("model.layers.0.mlp.down_proj.qzeros").shape, (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(ck.info("model.layers.0.mlp.down_proj.g_idx").shape, (std::vector<int64_t>{172}));
  EXPECT_EQ(ck.info("model.embed_tokens.weight").dtype, io::DType::F16);
  EXPECT_EQ(ck.info("model.layers.1.self_attn.o_proj.weight").dtype, io::DType::F16);
  EXPECT_FALSE(ck.contains("model.layers.0.mlp.down_proj.weight"));
}

// The size model predicts the real writer's sharded output to the byte: it shares the packed
// tensor list and the shard / header rules with the writer, so a change to either shows here.
TEST_F(TinyCheckpoint, SizeModelPredictsTheShardedSaveToTheByte) {
  alloc::SizeOptions so;
  so.max_shard_bytes = 20000;  // as SetUp saved it
  const alloc::SizeModel sm(alloc::layout_from_config(cfg_), so);
  std::vector<alloc::Choice> ch;
  for (const auto& l : sm.layout().linears) {
    const auto& mp = plan_.modules.at(l.name);
    ch.push_back(mp.quantized() ? alloc::Choice{mp.bits, mp.group_size} : alloc::Choice{16, 0});
  }
  const auto ps = sm.exact(ch);
  uint64_t bytes = 0;
  int files = 0;
  for (const auto& e : fs::directory_iterator(root_ / "q"))
    if (e.path().extension() == ".safetensors") {
      bytes += fs::file_size(e.path());
      ++files;
    }
  EXPECT_GT(files, 2);
  EXPECT_EQ(ps.shards, files);
  EXPECT_EQ(ps.file_bytes, bytes);
  EXPECT_EQ(ps.tensor_bytes, io::SafetensorsCheckpoint((root_ / "q").string()).total_tensor_bytes());
  // Every packed tensor has the list's dtype and shape.
  io::SafetensorsCheckpoint ck((root_ / "q").string());
  for (const auto& [name, mp] : plan_.modules) {
    if (!mp.quantized()) continue;
    const auto& l = sm.layout().linears[std::distance(
        sm.layout().linears.begin(),
        std::find_if(sm.layout().linears.begin(), sm.layout().linears.end(), [&](const auto& x) { return x.name == name; }))];
    for (const auto& t : quant::packed_tensor_shapes(l.out, l.in, mp.spec())) {
      EXPECT_EQ(ck.info(name + t.suffix).dtype, t.dtype) << name << t.suffix;
      EXPECT_EQ(ck.info(name + t.suffix).shape, t.shape) << name << t.suffix;
    }
  }
}

TEST_F(TinyCheckpoint, ReloadDetectsPlanAndEqualsFakeQuantBitwise) {
  model::ModelFolder f((root_ / "q").string());
  ASSERT_TRUE(quant::is_quantized_folder(f.dir()));
  auto m = quant::load_quantized_model(f);
  for (const auto& [name, lin] : m->named_linears()) {
    const auto& mp = plan_.modules.at(name);
    auto q = std::dynamic_pointer_cast<quant::QuantLinearImpl>(lin);
    ASSERT_EQ(q != nullptr, mp.quantized()) << name;
    if (q) EXPECT_EQ(q->spec(), mp.spec()) << name;
  }
  EXPECT_TRUE(torch::equal(logits(*m), logits(*ref_)));
  {
    // Block-at-a-time loading gives the same blocks.
    torch::NoGradGuard ng;
    const auto ctx = m->context(ids_, torch::Tensor());
    auto h = m->embed(ids_, ctx);  // (B, T, C)
    for (int64_t i = 0; i < m->num_blocks(); ++i) {
      auto blk = quant::load_quantized_block(f, i);
      auto hb = blk->run(h, ctx);
      h = m->run_block(i, h, ctx);
      EXPECT_TRUE(torch::equal(hb, h)) << "block " << i;
    }
    EXPECT_THROW(quant::load_quantized_block(f, 2), InputError);
  }
  const auto r = quant::inspect_checkpoint(f.dir());
  ASSERT_EQ(r.modules.size(), 14u);
  for (const auto& im : r.modules) {
    const auto& mp = plan_.modules.at(im.name);
    EXPECT_EQ(im.bits, mp.quantized() ? mp.bits : 16) << im.name;
    if (mp.quantized()) EXPECT_EQ(im.group_size, mp.group_size) << im.name;
  }
  EXPECT_EQ(r.bits_histogram.at(16), 1);
  EXPECT_GT(r.compression_ratio, 1.0);
  EXPECT_LT(r.avg_bits, r.avg_bits_with_overhead);
  const auto j = quant::inspect_to_json(r);
  for (const char* k : {"modules", "total_bytes", "avg_bits", "avg_bits_with_overhead", "compression_ratio",
                        "bits_histogram", "fp16_bytes"})
    EXPECT_TRUE(j.contains(k)) << k;
  EXPECT_EQ(j["modules"][0]["name"], "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(j["total_bytes"].get<uint64_t>(), io::SafetensorsCheckpoint(f.dir()).total_tensor_bytes());
}

TEST_F(TinyCheckpoint, UniformV1CheckpointWithoutDynamicLoads) {
  // Quantize every module to 4 bits g32, then rewrite as GPTQ v1 (zero - 1 stored), no dynamic.
  json mods = json::object();
  for (const auto& n : model::quantizable_linear_names(cfg_)) mods[n] = {{"bits", 4}, {"group_size", 32}};
  auto plan = quant::parse_bit_plan(json{{"modules", mods}}, "uniform");
  auto qm = model::load_any_model(model::ModelFolder((root_ / "float").string()));
  quant::rtn_quantize(*qm, plan);
  quant::SaveOptions so;
  so.source_dir = (root_ / "float").string();
  quant::save_quantized_checkpoint(*qm, (root_ / "u2").string(), so);
  auto v2 = quant::load_quantized_model(model::ModelFolder((root_ / "u2").string()));

  fs::copy(root_ / "u2", root_ / "u1", fs::copy_options::recursive);
  auto cfg = read_json(root_ / "u1/config.json");
  cfg["quantization_config"].erase("dynamic");
  cfg["quantization_config"]["checkpoint_format"] = "gptq";
  write_json(root_ / "u1/config.json", cfg);
  auto ts = read_all(root_ / "u1");
  for (auto& [n, t] : ts) {
    if (!util::ends_with(n, ".qzeros")) continue;
    const int64_t g = t.shape[0], out = t.shape[1] * 8;
    auto z = quant::unpack_qzeros(reinterpret_cast<const int32_t*>(t.bytes.data()), g, out, 4);
    for (auto& v : z) v = (v - 1) & 15;
    auto p = quant::pack_qzeros(z.data(), g, out, 4);
    std::memcpy(t.bytes.data(), p.data(), t.bytes.size());
  }
  write_all(root_ / "u1", ts);
  auto v1 = quant::load_quantized_model(model::ModelFolder((root_ / "u1").string()));
  EXPECT_TRUE(torch::equal(logits(*v1), logits(*v2)));
  EXPECT_EQ(quant::inspect_checkpoint((root_ / "u1").string()).bits_histogram.at(4), 14);
}

TEST_F(TinyCheckpoint, InconsistentCheckpointsGiveClearErrors) {
  const auto q = root_ / "q";
  auto copy = [&](const std::string& tag) {
    const auto d = root_ / tag;
    fs::copy(q, d, fs::copy_options::recursive);
    return d;
  };
  auto load_err = [&](const fs::path& d) {
    return input_error([&] { quant::load_quantized_model(model::ModelFolder(d.string())); });
  };
  // Config says 4 bits, tensors say 3 (q_proj of layer 0 is 2-bit g32 in the plan -> k=0;
  // k_proj is 3-bit g64): add an override claiming 4 bits for k_proj.
  {
    const auto d = copy("bits");
    auto cfg = read_json(d / "config.json");
    json dyn = json::object();
    dyn["+:^model\\.layers\\.0\\.self_attn\\.k_proj$"] = {{"bits", 4}, {"group_size", 64}};
    for (auto& [k, v] : cfg["quantization_config"]["dynamic"].items())
      if (k.find("layers\\.0\\.self_attn\\.k_proj") == std::string::npos) dyn[k] = v;
    cfg["quantization_config"]["dynamic"] = dyn;
    write_json(d / "config.json", cfg);
    const auto m = load_err(d);
    EXPECT_NE(m.find("model.layers.0.self_attn.k_proj"), std::string::npos) << m;
    EXPECT_NE(m.find("3-bit"), std::string::npos) << m;
    EXPECT_NE(m.find("says 4 bits"), std::string::npos) << m;
    EXPECT_EQ(input_error([&] { quant::inspect_checkpoint(d.string()); }), m);
  }
  // Missing scales.
  {
    const auto d = copy("scales");
    auto ts = read_all(d);
    ts.erase("model.layers.1.mlp.up_proj.scales");
    write_all(d, ts);
    const auto m = load_err(d);
    EXPECT_NE(m.find("'model.layers.1.mlp.up_proj.scales' is missing"), std::string::npos) << m;
  }
  // qweight rows that match no bit-width (q_proj: in 64 -> rows 4, 6, 8, 10, 12, 16 accepted).
  {
    const auto d = copy("rows");
    auto ts = read_all(d);
    auto& t = ts.at("model.layers.0.self_attn.q_proj.qweight");
    t.shape[0] = 7;
    t.bytes.assign(7 * 64 * 4, 0);
    write_all(d, ts);
    const auto m = load_err(d);
    EXPECT_NE(m.find("has 7 rows, which matches no bit-width for 64 input features"), std::string::npos) << m;
  }
  // Group count that disagrees with the config's group size.
  {
    const auto d = copy("groups");
    auto ts = read_all(d);
    auto& s = ts.at("model.layers.0.mlp.down_proj.scales");  // g64 -> 3 groups
    s.shape[0] = 6;
    s.bytes.resize(6 * 64 * 2);
    write_all(d, ts);
    const auto m = load_err(d);
    EXPECT_NE(m.find("6 scale groups for 172 inputs (group size 32)"), std::string::npos) << m;
    EXPECT_NE(m.find("group_size 64"), std::string::npos) << m;
  }
  // A packed module that the config marks unquantized, and a float module the config quantizes.
  {
    const auto d = copy("excl");
    auto cfg = read_json(d / "config.json");
    cfg["quantization_config"]["dynamic"].erase("-:^model\\.layers\\.1\\.self_attn\\.o_proj$");
    write_json(d / "config.json", cfg);
    const auto m = load_err(d);
    EXPECT_NE(m.find("has no tensor 'model.layers.1.self_attn.o_proj.qweight'"), std::string::npos) << m;
  }
  // g_idx out of range.
  {
    const auto d = copy("gidx");
    auto ts = read_all(d);
    auto& g = ts.at("model.layers.0.mlp.down_proj.g_idx");
    reinterpret_cast<int32_t*>(g.bytes.data())[5] = 99;
    write_all(d, ts);
    EXPECT_NE(load_err(d).find("outside [0, 3)"), std::string::npos);
  }
}

// `mpqat inspect` runs every check the loader runs: each corruption below is refused by both,
// with the same line, instead of inspect printing sizes of a checkpoint eval cannot load.
TEST_F(TinyCheckpoint, InspectRefusesWhatTheLoaderRefuses) {
  const auto q = root_ / "q";
  int n = 0;
  auto check = [&](const std::function<void(const fs::path&)>& corrupt, const std::string& expected) {
    const auto d = root_ / ("case" + std::to_string(n++));
    fs::copy(q, d, fs::copy_options::recursive);
    corrupt(d);
    const auto m = input_error([&] { quant::load_quantized_model(model::ModelFolder(d.string())); });
    EXPECT_NE(m.find(expected), std::string::npos) << m;
    EXPECT_EQ(input_error([&] { quant::inspect_checkpoint(d.string()); }), m);
  };
  // Out-of-range g_idx (down_proj is g64 over 172 inputs: 3 groups).
  check([](const fs::path& d) {
    auto ts = read_all(d);
    reinterpret_cast<int32_t*>(ts.at("model.layers.0.mlp.down_proj.g_idx").bytes.data())[5] = 99;
    write_all(d, ts);
  }, "maps input column 5 to group 99, outside [0, 3)");
  // A float .weight beside the packed tensors.
  check([](const fs::path& d) {
    auto ts = read_all(d);
    ts["model.layers.0.self_attn.q_proj.weight"] = {io::DType::F16, {64, 64}, std::vector<uint8_t>(64 * 64 * 2, 0)};
    write_all(d, ts);
  }, "has both 'model.layers.0.self_attn.q_proj.weight' and 'model.layers.0.self_attn.q_proj.qweight'");
  // A pack_dtype this reader does not unpack.
  check([](const fs::path& d) {
    auto cfg = read_json(d / "config.json");
    cfg["quantization_config"]["pack_dtype"] = "int16";
    write_json(d / "config.json", cfg);
  }, "pack_dtype \"int16\" is not supported (accepted: \"int32\")");
  // A format version from the future.
  check([](const fs::path& d) {
    auto cfg = read_json(d / "config.json");
    cfg["mpqat"]["format_version"] = 7;
    write_json(d / "config.json", cfg);
  }, "mpqat.format_version 7 is not one this mpqat reads");
  // A recorded bit plan that disagrees with the tensors (q_proj of layer 0 is 2-bit g32).
  check([](const fs::path& d) {
    auto cfg = read_json(d / "config.json");
    cfg["mpqat"]["bit_plan"]["modules"]["model.layers.0.self_attn.q_proj"]["bits"] = 4;
    write_json(d / "config.json", cfg);
  }, "mpqat.bit_plan says module 'model.layers.0.self_attn.q_proj' is 4-bit g32 but its tensors are 2-bit g32");
  // A float tensor whose shape disagrees with config.json, and one of an integer dtype.
  check([](const fs::path& d) {
    auto ts = read_all(d);
    auto& t = ts.at("model.layers.1.input_layernorm.weight");
    t.shape = {32};
    t.bytes.resize(32 * io::dtype_size(t.dtype));
    write_all(d, ts);
  }, "tensor 'model.layers.1.input_layernorm.weight' has shape [32] but config.json implies [64]");
  check([](const fs::path& d) {
    auto ts = read_all(d);
    auto& t = ts.at("model.norm.weight");
    t.dtype = io::DType::I32;
    t.bytes.resize(64 * 4);
    write_all(d, ts);
  }, "tensor 'model.norm.weight' has dtype I32 (accepted for float tensors: F16, BF16, F32)");
  // The untouched checkpoint passes both.
  EXPECT_NO_THROW(quant::inspect_checkpoint(q.string()));
}

// Engines: the mixed tiny plan runs only in mpqat; a symmetric 4/8-bit plan with q/k/v and
// gate/up tied loads in vLLM too, and its config names vLLM's fused modules in `dynamic`.
TEST_F(TinyCheckpoint, InspectSaysWhichEnginesLoadIt) {
  auto engines = [](const quant::InspectReport& r) {
    std::map<std::string, std::pair<bool, std::string>> m;
    for (const auto& e : r.engines) m[e.name] = {e.loads, e.why_not};
    return m;
  };
  const auto mixed = engines(quant::inspect_checkpoint((root_ / "q").string()));
  EXPECT_TRUE(mixed.at("mpqat").first);
  EXPECT_FALSE(mixed.at("gptqmodel").first);
  EXPECT_NE(mixed.at("gptqmodel").second.find("5-bit modules"), std::string::npos) << mixed.at("gptqmodel").second;
  EXPECT_FALSE(mixed.at("vllm").first);
  EXPECT_FALSE(mixed.at("llama.cpp").first);

  json mods = json::object();
  for (int l = 0; l < 2; ++l)
    for (const auto& rn : model::block_linear_names()) {
      const bool wide = l == 0 && rn.rfind("self_attn.", 0) == 0 && rn != "self_attn.o_proj";
      mods["model.layers." + std::to_string(l) + "." + rn] = {{"bits", wide ? 8 : 4}, {"group_size", -1}, {"sym", true}};
    }
  const auto plan = quant::parse_bit_plan(json{{"version", 1}, {"modules", mods}}, "vllm plan");
  auto qm = model::load_any_model(model::ModelFolder((root_ / "float").string()));
  quant::rtn_quantize(*qm, plan);
  quant::SaveOptions so;
  so.source_dir = (root_ / "float").string();
  so.plan = &plan;
  quant::save_quantized_checkpoint(*qm, (root_ / "v").string(), so);
  const auto cfg = read_json(root_ / "v" / "config.json");
  const auto& dyn = cfg["quantization_config"]["dynamic"];
  ASSERT_TRUE(dyn.contains("+:^model\\.layers\\.0\\.self_attn\\.qkv_proj$")) << dyn.dump();
  EXPECT_EQ(dyn["+:^model\\.layers\\.0\\.self_attn\\.qkv_proj$"]["bits"], 8);
  EXPECT_FALSE(dyn.contains("+:^model\\.layers\\.0\\.mlp\\.gate_up_proj$"));  // at the default spec
  const auto v = engines(quant::inspect_checkpoint((root_ / "v").string()));
  EXPECT_TRUE(v.at("vllm").first) << v.at("vllm").second;
  EXPECT_TRUE(v.at("gptqmodel").first) << v.at("gptqmodel").second;
  // The fused rules match no real module: the loader (which checks every module's tensors against
  // the rule that matches it) loads the checkpoint.
  auto back = quant::load_quantized_model(model::ModelFolder((root_ / "v").string()));
  EXPECT_TRUE(torch::isfinite(logits(*back)).all().item<bool>());
}

TEST_F(TinyCheckpoint, QuantizeAndInspectCli) {
  const auto plan_path = root_ / "plan.json";
  write_json(plan_path, quant::bit_plan_to_json(plan_));
  auto run = [](std::vector<std::string> args) {
    CLI::App app;
    cli::add_quantize_command(app);
    cli::add_inspect_command(app);
    std::vector<const char*> argv = {"mpqat"};
    for (const auto& a : args) argv.push_back(a.c_str());
    ::testing::internal::CaptureStdout();
    app.parse(static_cast<int>(argv.size()), argv.data());
    return ::testing::internal::GetCapturedStdout();
  };
  const auto out = root_ / "cli_q";
  run({"quantize", (root_ / "float").string(), "--plan", plan_path.string(), "--method", "rtn", "--out", out.string()});
  const auto j = json::parse(run({"inspect", out.string(), "--json"}));
  ASSERT_EQ(j["modules"].size(), 14u);
  for (const auto& mj : j["modules"]) {
    const auto& mp = plan_.modules.at(mj["name"].get<std::string>());
    EXPECT_EQ(mj["bits"].get<int>(), mp.quantized() ? mp.bits : 16);
  }
  const auto text = run({"inspect", out.string()});
  EXPECT_NE(text.find("bits histogram"), std::string::npos) << text;
  EXPECT_NE(text.find("compression"), std::string::npos) << text;
  auto loaded = quant::load_quantized_model(model::ModelFolder(out.string()));
  EXPECT_TRUE(torch::equal(logits(*loaded), logits(*ref_)));

  // Unknown module in the plan: named, with the closest real one.
  write_json(root_ / "bad.json", json{{"modules", {{"model.layers.0.mlp.dwn_proj", {{"bits", 4}}}}}});
  auto m = input_error([&] {
    run({"quantize", (root_ / "float").string(), "--plan", (root_ / "bad.json").string(), "--out",
         (root_ / "bad_out").string()});
  });
  ::testing::internal::GetCapturedStdout();
  EXPECT_NE(m.find("model.layers.0.mlp.dwn_proj"), std::string::npos) << m;
  EXPECT_NE(m.find("did you mean 'model.layers.0.mlp.down_proj'"), std::string::npos) << m;
  // Existing output without --force.
  m = input_error([&] {
    run({"quantize", (root_ / "float").string(), "--plan", plan_path.string(), "--out", out.string()});
  });
  ::testing::internal::GetCapturedStdout();
  EXPECT_NE(m.find("--force"), std::string::npos) << m;
}

// ---------------------------------------------------------------------------------------------
// Real model

TEST(QuantStories260K, AllSixBitWidthsSaveReloadAndPerplexityEqualsFakeQuant) {
  const auto shared = mpqat::testing::shared_dir();
  if (shared.empty()) GTEST_SKIP() << "shared data not found (set MPQAT_SHARED_DIR or put it at ../shared)";
  const auto root = temp_dir("stories");
  const auto src = fs::path(shared) / "data/models/stories260K";
  const auto fdir = root / "stories260K";
  model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(), fdir.string());
  model::ModelFolder folder(fdir.string());
  const auto& cfg = folder.config();

  const int bits[] = {2, 3, 4, 5, 6, 8};
  const int64_t groups[] = {32, 64, 128, -1};
  json mods = json::object();
  int k = 0;
  for (const auto& n : model::quantizable_linear_names(cfg)) {
    if (k == 33) mods[n] = {{"bits", 16}};  // one module kept float
    else mods[n] = {{"bits", bits[k % 6]}, {"group_size", groups[(k / 6) % 4]}};
    ++k;
  }
  ASSERT_EQ(k, 35);
  const auto plan = quant::parse_bit_plan(json{{"version", 1}, {"modules", mods}}, "stories plan");

  // Fake-quant reference with the other tensors rounded to fp16 as the checkpoint stores them.
  auto ref = model::load_any_model(folder);
  quant::apply_fake_quant(*ref, plan);
  {
    torch::NoGradGuard ng;
    for (auto& item : ref->named_parameters(true)) {
      const auto& key = item.key();
      const auto dot = key.rfind('.');
      if (plan.quantized().count(key.substr(0, dot))) continue;
      item.value().copy_(item.value().to(torch::kHalf).to(torch::kFloat));
    }
  }
  auto qm = model::load_any_model(folder);
  quant::rtn_quantize(*qm, plan);
  quant::SaveOptions so;
  so.source_dir = fdir.string();
  so.plan = &plan;
  const auto qdir = root / "q";
  quant::save_quantized_checkpoint(*qm, qdir.string(), so);
  EXPECT_TRUE(fs::exists(qdir / "tokenizer.bin"));

  model::ModelFolder qf(qdir.string());
  auto loaded = quant::load_quantized_model(qf);
  std::set<int> seen;
  for (const auto& [name, lin] : loaded->named_linears()) {
    const auto& mp = plan.modules.at(name);
    auto q = std::dynamic_pointer_cast<quant::QuantLinearImpl>(lin);
    ASSERT_EQ(q != nullptr, mp.quantized()) << name;
    if (!q) continue;
    EXPECT_EQ(q->spec().bits, mp.bits) << name;
    EXPECT_EQ(q->spec().group_size, mp.group_size) << name;
    seen.insert(q->spec().bits);
  }
  EXPECT_EQ(seen.size(), 6u);
  const auto r = quant::inspect_checkpoint(qdir.string());
  for (const auto& im : r.modules) EXPECT_EQ(im.bits, plan.modules.at(im.name).bits) << im.name;

  // 20 windows of 512 tokens from the TinyStories file.
  const auto text = util::read_file((fs::path(shared) / "data/text/tinystories/validation_part1.txt").string());
  auto ids = qf.tokenizer().encode(text.substr(0, 80000), true);
  ASSERT_GE(ids.size(), 20u * 512u);
  ids.resize(20 * 512);
  auto as_llama = [](const model::ModelPtr& p) { return std::dynamic_pointer_cast<model::LlamaForCausalLM>(p); };
  const auto p_ref = eval::evaluate_perplexity(*as_llama(ref), ids, 512, 4);
  const auto p_q = eval::evaluate_perplexity(*as_llama(loaded), ids, 512, 4);
  EXPECT_EQ(p_q.windows, 20);
  EXPECT_EQ(p_q.nll, p_ref.nll);
  EXPECT_EQ(p_q.ppl, p_ref.ppl);
  // Sanity: quantization hurts, but the model still works (fp32 ppl on this file is ~4.9).
  const auto p_fp = eval::evaluate_perplexity(*as_llama(model::load_any_model(folder)), ids, 512, 4);
  EXPECT_GT(p_q.ppl, p_fp.ppl);
  EXPECT_LT(p_q.ppl, 100.0);
  std::cout << "stories260K 20x512: fp32 ppl " << p_fp.ppl << ", mixed 2..8-bit ppl " << p_q.ppl << "\n";
  fs::remove_all(root);
}
