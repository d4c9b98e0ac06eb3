// GGUF export: the file layout (written, predicted, read back), the block encoders against
// ggml's documented block formats, the q/k row order, and llama.cpp itself (the npm package
// installed by tools/setup.sh) running the exported stories260K.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "mpqat/data/gguf_vocab.h"
#include "mpqat/data/tokenizer.h"
#include "mpqat/io/gguf.h"
#include "mpqat/io/safetensors.h"
#include "mpqat/model/hf_names.h"
#include "mpqat/model/llama2c.h"
#include "mpqat/model/loader.h"
#include "mpqat/model/random_model.h"
#include "mpqat/quant/gguf_blocks.h"
#include "mpqat/quant/gguf_export.h"
#include "mpqat/quant/gguf_kquants.h"
#include "mpqat/quant/gguf_layout.h"
#include "mpqat/util/error.h"
#include "run_command.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace mpqat;
using io::GgmlType;

namespace {

fs::path tmpdir(const std::string& name) { return mpqat::testing::fresh_temp_dir("gguf", name); }

quant::UnpackedModule random_module(int bits, bool sym, int64_t out, int64_t in, int64_t group, uint32_t seed) {
  std::mt19937 rng(seed);
  quant::UnpackedModule m;
  m.name = "test";
  m.out = out;
  m.in = in;
  m.spec = {bits, group, sym};
  const int64_t groups = quant::num_groups(in, group);
  const int32_t qmax = (1 << bits) - 1;
  std::uniform_int_distribution<int32_t> code(0, qmax);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (int64_t i = 0; i < out * in; ++i) m.codes.push_back(code(rng));
  for (int64_t i = 0; i < groups * out; ++i) {
    m.zeros.push_back(sym ? 1 << (bits - 1) : code(rng));
    m.scales.push_back(quant::fp32_to_fp16(scale(rng)));
  }
  for (int64_t j = 0; j < in; ++j) m.g_idx.push_back(static_cast<int32_t>(j / quant::group_width(in, group)));
  return m;
}

quant::GgufTypes types_with(GgmlType fallback, bool k_quants = true) {
  quant::GgufTypes t;
  t.fallback = fallback;
  t.k_quants = k_quants;
  return t;
}

// Encodes with the chosen type and returns (type, max |ggml dequantization - W^|).
std::pair<quant::GgufChoice, double> roundtrip(const quant::UnpackedModule& m, GgmlType fallback = GgmlType::F16,
                                               bool k_quants = true) {
  const auto c = quant::choose_gguf_type(m, types_with(fallback, k_quants));
  const uint64_t rb = io::ggml_row_bytes(c.type, m.in, "test");
  std::vector<uint8_t> buf(rb * static_cast<uint64_t>(m.out));
  quant::encode_unpacked(m, c, {}, buf.data());
  const auto ref = quant::dequantize_unpacked(m);
  std::vector<float> row(static_cast<size_t>(m.in));
  double err = 0;
  for (int64_t r = 0; r < m.out; ++r) {
    quant::dequantize_gguf_row(c.type, buf.data() + r * rb, m.in, row.data());
    for (int64_t j = 0; j < m.in; ++j) err = std::max(err, std::fabs(double(row[j]) - ref[r * m.in + j]));
  }
  return {c, err};
}

}  // namespace

TEST(Gguf, WriteReadRoundTripAndExactSize) {
  const auto d = tmpdir("rt");
  std::vector<io::GgufKV> kv = {
      {"general.architecture", std::string("llama")}, {"a.u32", uint32_t{7}}, {"a.i32", int32_t{-3}},
      {"a.f32", 1.5f}, {"a.bool", true}, {"a.strs", std::vector<std::string>{"x", "", "▁y"}},
      {"a.f32s", std::vector<float>{0.5f, -2.0f}}, {"a.i32s", std::vector<int32_t>{1, 6, 3}},
  };
  std::vector<io::GgufTensorSpec> t = {{"w", {64, 3}, GgmlType::Q8_0}, {"n", {5}, GgmlType::F32}};
  const std::string path = (d / "x.gguf").string();
  io::write_gguf(path, kv, t, [&](std::size_t i, uint8_t* dst) {
    for (uint64_t k = 0; k < t[i].nbytes(); ++k) dst[k] = static_cast<uint8_t>(k * 7 + i);
  });
  EXPECT_EQ(fs::file_size(path), io::gguf_file_size(kv, t));
  const auto h = io::read_gguf_header(path);
  EXPECT_EQ(h.version, 3u);
  ASSERT_EQ(h.kvs.size(), kv.size());
  for (size_t i = 0; i < kv.size(); ++i) {
    EXPECT_EQ(h.kvs[i].key, kv[i].key);
    EXPECT_TRUE(h.kvs[i].value == kv[i].value) << kv[i].key;
  }
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].ne, (std::vector<int64_t>{64, 3}));
  EXPECT_EQ(h.tensors[0].nbytes(), 3u * 2 * 34);
  EXPECT_EQ(h.data_offset % 32, 0u);
  EXPECT_EQ(h.offsets[1] % 32, 0u);
  const auto b = io::read_gguf_tensor(path, h, 1);
  for (uint64_t k = 0; k < b.size(); ++k) EXPECT_EQ(b[k], static_cast<uint8_t>(k * 7 + 1));
}

TEST(Gguf, RefusesBadLayoutsAndCorruptFiles) {
  const auto d = tmpdir("bad");
  const std::string path = (d / "x.gguf").string();
  auto none = [](std::size_t, uint8_t*) {};
  EXPECT_THROW(io::write_gguf(path, {}, {{"w", {48, 2}, GgmlType::Q4_0}}, none), InputError);  // 48 % 32
  EXPECT_THROW(io::write_gguf(path, {{"k", 1.0f}, {"k", 2.0f}}, {}, none), InputError);
  EXPECT_FALSE(fs::exists(path));
  io::write_gguf(path, {{"k", std::string("v")}}, {{"w", {32, 4}, GgmlType::F16}}, none);
  const auto size = fs::file_size(path);
  fs::resize_file(path, size - 10);  // tensor data cut short
  EXPECT_THROW(io::read_gguf_header(path), InputError);
  fs::resize_file(path, 20);  // inside the header
  EXPECT_THROW(io::read_gguf_header(path), InputError);
  std::ofstream(path) << "GGML not a gguf file";
  EXPECT_THROW(io::read_gguf_header(path), InputError);
}

TEST(Gguf, Q4_0BlockLayoutIsGgmls) {
  // ggml block_q4_0: fp16 d, then 16 bytes; byte j holds weight j (low nibble) and j+16 (high).
  quant::UnpackedModule m = random_module(4, true, 1, 32, 32, 1);
  for (int j = 0; j < 32; ++j) m.codes[j] = j % 16;
  const auto c = quant::choose_gguf_type(m, types_with(GgmlType::F16));
  ASSERT_EQ(c.type, GgmlType::Q4_0);
  std::vector<uint8_t> b(18);
  quant::encode_unpacked(m, c, {}, b.data());
  uint16_t d;
  std::memcpy(&d, b.data(), 2);
  EXPECT_EQ(d, m.scales[0]);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b[2 + j], (j % 16) | ((((j + 16) % 16)) << 4)) << j;
}

TEST(Gguf, EachSchemeMapsOntoItsBlockTypeAsDocumented) {
  struct Case {
    int bits;
    bool sym;
    GgmlType type;
    bool exact;
  };
  for (const auto& c : std::vector<Case>{{2, true, GgmlType::Q4_0, true}, {3, true, GgmlType::Q4_0, true},
                                         {4, true, GgmlType::Q4_0, true}, {3, false, GgmlType::Q4_0, true},
                                         {4, false, GgmlType::Q4_1, false}, {5, true, GgmlType::Q5_0, true},
                                         {5, false, GgmlType::Q5_1, false}, {6, false, GgmlType::Q8_0, true},
                                         {8, true, GgmlType::Q8_0, true}}) {
    for (int64_t group : {32, 64, -1}) {
      const auto m = random_module(c.bits, c.sym, 6, 128, group, static_cast<uint32_t>(c.bits * 10 + c.sym));
      const auto [choice, err] = roundtrip(m);
      EXPECT_EQ(choice.type, c.type) << c.bits << " sym " << c.sym << " g" << group;
      if (c.exact) {
        EXPECT_EQ(choice.how, "exact");
        EXPECT_EQ(err, 0.0) << c.bits;
      } else {
        // Only m = fp16(-z * s) is rounded: at most half an fp16 ulp of |z * s| <= 2^b * 0.05.
        EXPECT_EQ(choice.how, "exact codes, m rounded");
        EXPECT_GT(err, 0.0);
        EXPECT_LE(err, std::ldexp(1.0, c.bits) * 0.05 * std::ldexp(1.0, -11));
      }
    }
  }
  // (3-bit asymmetric: q - z stays in [-7, 7], so Q4_0 holds it exactly.)
  // Asymmetric 8-bit leaves int8: requantized to Q8_0, error at most half a Q8_0 step (+ fp16 d).
  const auto m8 = random_module(8, false, 4, 64, 32, 3);
  const auto [c8, e8] = roundtrip(m8);
  EXPECT_EQ(c8.type, GgmlType::Q8_0);
  EXPECT_EQ(c8.how, "requantized");
  EXPECT_LE(e8, 255 * 0.05 / 127 * 0.6);
  // No block form: a row of 48, or act-order groups -> the fallback, from W^.
  auto odd = random_module(4, true, 3, 48, 32, 4);
  EXPECT_EQ(roundtrip(odd, GgmlType::F32).first.type, GgmlType::F32);
  EXPECT_EQ(roundtrip(odd, GgmlType::F32).second, 0.0);
  auto perm = random_module(4, true, 3, 64, 32, 5);
  std::swap(perm.g_idx[0], perm.g_idx[40]);
  const auto pc = quant::choose_gguf_type(perm, types_with(GgmlType::F16));
  EXPECT_EQ(pc.type, GgmlType::F16);
  EXPECT_NE(pc.why.find("act-order"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// K-quants (Q2_K ... Q6_K)

namespace {

const GgmlType kKTypes[] = {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K};

// Relative RMS error of encoding `x` as `t` and decoding it with ggml's loops.
double k_rel_rms(GgmlType t, const std::vector<float>& x, const float* imp = nullptr, std::vector<float>* back = nullptr) {
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> buf(io::ggml_row_bytes(t, n, "test"));
  quant::encode_k_row(t, x.data(), n, imp, buf.data());
  std::vector<float> y(x.size());
  quant::dequantize_k_row(t, buf.data(), n, y.data());
  double e = 0, s = 0;
  for (size_t i = 0; i < x.size(); ++i) e += double(y[i] - x[i]) * (y[i] - x[i]), s += double(x[i]) * x[i];
  if (back) *back = y;
  return std::sqrt(e / s);
}

std::vector<float> gaussian_row(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, 0.02f);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = g(rng);
  return x;
}

}  // namespace

TEST(GgufKQuants, ErrorFallsWithBitsAndSitsNearTheGridsResolution) {
  // Gaussian weights: each type's relative RMS error is that of a uniform quantizer of its code
  // count over the sub-block's range, to within the scales' own rounding; more bits, less error.
  const auto x = gaussian_row(1024, 7);
  double prev = 1.0;
  const double bounds[] = {0.45, 0.22, 0.11, 0.055, 0.028};  // 2, 3, 4, 5, 6 bits
  for (int k = 0; k < 5; ++k) {
    const double e = k_rel_rms(kKTypes[k], x);
    std::printf("%s: relative RMS error %.4f\n", io::ggml_type_traits(kKTypes[k]).name, e);
    EXPECT_LT(e, bounds[k]) << io::ggml_type_traits(kKTypes[k]).name;
    EXPECT_LT(e, prev * 0.7) << io::ggml_type_traits(kKTypes[k]).name;
    prev = e;
  }
}

TEST(GgufKQuants, WeightsOnTheTypesOwnGridComeBackExactly) {
  // x built from the type's formula (table in gguf_kquants.h) with random d, sub-block scales,
  // mins and codes: the search finds a representation whose decoding is x (to fp32 rounding);
  // a code written at the wrong place of the block, or a scale in the wrong bits, would not.
  std::mt19937 rng(3);
  struct Form {
    GgmlType t;
    int sub, qmax, offset, slo, shi;  // scale codes slo..shi; the largest in magnitude is slo (or shi with mins)
    bool with_min;
  };
  for (const Form f : {Form{GgmlType::Q2_K, 16, 3, 0, 0, 15, true}, Form{GgmlType::Q3_K, 16, 7, 4, -32, 31, false},
                       Form{GgmlType::Q4_K, 32, 15, 0, 0, 63, true}, Form{GgmlType::Q5_K, 32, 31, 0, 0, 63, true},
                       Form{GgmlType::Q6_K, 16, 63, 32, -128, 127, false}}) {
    std::vector<float> x(512);
    for (int64_t b = 0; b < 2; ++b) {
      const float d = std::ldexp(1.0f, -10), dmin = std::ldexp(1.0f, -11);  // fp16 values, as the file holds them
      for (int s = 0; s < 256 / f.sub; ++s) {
        // Every sub-block uses its lowest and highest code, so its scale is the only fit; the
        // first holds the scale (and min) at the end of the grid that the type's d is fit to.
        const int top = f.with_min ? f.shi : f.slo;
        const int sc = s == 0 ? top : std::uniform_int_distribution<int>(f.with_min ? f.shi / 2 : f.slo / 2, f.shi)(rng);
        const int m = f.with_min ? (s == 0 ? f.shi : std::uniform_int_distribution<int>(0, f.shi)(rng)) : 0;
        for (int i = 0; i < f.sub; ++i) {
          const int c = i == 0 ? 0 : i == 1 ? f.qmax : std::uniform_int_distribution<int>(0, f.qmax)(rng);
          const float w = f.with_min ? d * sc * c - dmin * m : d * sc * (c - f.offset);
          x[static_cast<size_t>(b * 256 + s * f.sub + i)] = w;
        }
      }
    }
    std::vector<float> y;
    const double e = k_rel_rms(f.t, x, nullptr, &y);
    double worst = 0;
    for (size_t i = 0; i < x.size(); ++i) worst = std::max(worst, double(std::fabs(y[i] - x[i])));
    EXPECT_LT(worst, 1e-6) << io::ggml_type_traits(f.t).name << " relative RMS " << e;
  }
}

TEST(GgufKQuants, ImportantColumnsAreKeptCloser) {
  // Column weights (an importance matrix): the columns marked 100x more important come back
  // with less error than without the weights, the others may lose a little.
  const auto x = gaussian_row(1024, 11);
  std::vector<float> imp(x.size(), 1.0f);
  for (size_t j = 0; j < imp.size(); j += 4) imp[j] = 100.0f;
  for (GgmlType t : {GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K}) {
    std::vector<float> plain, weighted;
    k_rel_rms(t, x, nullptr, &plain);
    k_rel_rms(t, x, imp.data(), &weighted);
    double ep = 0, ew = 0;
    for (size_t j = 0; j < x.size(); j += 4)
      ep += double(plain[j] - x[j]) * (plain[j] - x[j]), ew += double(weighted[j] - x[j]) * (weighted[j] - x[j]);
    EXPECT_LT(ew, 0.9 * ep) << io::ggml_type_traits(t).name;
  }
}

TEST(GgufKQuants, PlansMapOntoKQuantsWhereTheyAreSmaller) {
  // Rows of 512: 2/3/6 bits and asymmetric 4/5 bits with groups other than 32 take the K-quant
  // of their bits; 4/5-bit groups of 32 and symmetric 4/5 bits keep their exact legacy types;
  // 8 bits stays Q8_0. Rows of 128 (no whole super-block) keep the legacy types, as does
  // k_quants off.
  struct Case {
    int bits;
    bool sym;
    int64_t group;
    GgmlType type;
  };
  for (const auto& c : std::vector<Case>{{2, false, 32, GgmlType::Q2_K},  {3, true, 128, GgmlType::Q3_K},
                                         {6, false, 32, GgmlType::Q6_K},  {4, false, 128, GgmlType::Q4_K},
                                         {5, false, -1, GgmlType::Q5_K},  {4, false, 32, GgmlType::Q4_1},
                                         {4, true, 128, GgmlType::Q4_0},  {5, true, 64, GgmlType::Q5_0},
                                         {8, true, 128, GgmlType::Q8_0}}) {
    const auto m = random_module(c.bits, c.sym, 4, 512, c.group, static_cast<uint32_t>(c.bits));
    const auto [choice, err] = roundtrip(m);
    EXPECT_EQ(choice.type, c.type) << c.bits << " sym " << c.sym << " g" << c.group;
    if (quant::is_k_quant(choice.type)) {
      EXPECT_EQ(choice.how, "requantized");
      EXPECT_FALSE(choice.why.empty());
    }
    EXPECT_EQ(roundtrip(m, GgmlType::F16, false).first.type,
              quant::gguf_choice_for_spec(m.spec, 512, types_with(GgmlType::F16, false)).type);
    EXPECT_FALSE(quant::is_k_quant(roundtrip(m, GgmlType::F16, false).first.type));
    const auto narrow = random_module(c.bits, c.sym, 4, 128, c.group == 128 ? 64 : c.group, 1);
    EXPECT_FALSE(quant::is_k_quant(roundtrip(narrow).first.type));
  }
  // Act-order: no legacy block form holds permuted groups; the K-quant of its bits instead of
  // the fallback (4-bit g32: Q4_1 otherwise).
  auto perm = random_module(4, false, 3, 256, 32, 5);
  std::swap(perm.g_idx[0], perm.g_idx[200]);
  const auto pc = quant::choose_gguf_type(perm, types_with(GgmlType::F16));
  EXPECT_EQ(pc.type, GgmlType::Q4_K);
  EXPECT_NE(pc.why.find("act-order"), std::string::npos);
  EXPECT_EQ(quant::choose_gguf_type(perm, types_with(GgmlType::F16, false)).type, GgmlType::F16);
  // A K-quant row must be whole super-blocks.
  std::vector<float> x(300, 0.0f);
  std::vector<uint8_t> b(1000);
  EXPECT_THROW(quant::encode_k_row(GgmlType::Q4_K, x.data(), 300, nullptr, b.data()), InputError);
}

// ---------------------------------------------------------------------------------------------
// stories260K (shared data)

namespace {

fs::path stories_folder() {
  const std::string sdir = mpqat::testing::shared_dir();
  if (sdir.empty()) return {};
  static fs::path dir;
  if (dir.empty()) {
    dir = tmpdir("stories") / "stories260K";
    const auto src = fs::path(sdir) / "data/models/stories260K";
    model::convert_llama2c((src / "stories260K.bin").string(), (src / "tok512.bin").string(), dir.string());
  }
  return dir;
}

}  // namespace

TEST(GgufStories, FloatExportHoldsEveryTensorWithRopeRowOrder) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K needed";
  const model::ModelFolder folder(dir.string());
  const auto vocab = data::gguf_vocab_metadata(folder.tokenizer());
  quant::GgufExportOptions o;
  o.float_type = GgmlType::F32;
  o.embedding_type = GgmlType::F32;
  const std::string out = (dir.parent_path() / "f32.gguf").string();
  const auto rep = quant::export_gguf(dir.string(), vocab, out, o);
  EXPECT_EQ(rep.file_bytes, rep.predicted_bytes);
  EXPECT_THROW(quant::export_gguf(dir.string(), vocab, out, o), InputError);  // exists, no force
  const auto h = io::read_gguf_header(out);
  const auto& cfg = folder.config();
  const auto* toks = std::get_if<std::vector<std::string>>(h.find("tokenizer.ggml.tokens"));
  ASSERT_NE(toks, nullptr);
  EXPECT_EQ(static_cast<int64_t>(toks->size()), cfg.vocab_size);
  EXPECT_EQ((*toks)[1], "<s>");
  EXPECT_EQ(std::get<uint32_t>(*h.find("llama.attention.head_count_kv")), cfg.num_key_value_heads);
  // blk.0.attn_k row (h, i, half) is the Hugging Face row (h, half, i).
  size_t ki = 0;
  while (h.tensors[ki].name != "blk.0.attn_k.weight") ++ki;
  const auto raw = io::read_gguf_tensor(out, h, ki);
  const auto k = folder.tensor("model.layers.0.self_attn.k_proj.weight", {cfg.kv_dim(), cfg.hidden_size});
  const int64_t hd = cfg.head_dim, C = cfg.hidden_size;
  for (int64_t head = 0; head < cfg.num_key_value_heads; ++head)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t g_row = head * hd + 2 * i + half, hf_row = head * hd + half * (hd / 2) + i;
        for (int64_t c = 0; c < C; ++c) {
          float v;
          std::memcpy(&v, raw.data() + (g_row * C + c) * 4, 4);
          ASSERT_EQ(v, k[hf_row][c].item<float>()) << g_row;
        }
      }
}

namespace {

// llama.cpp through node (tools/llamacpp/check.mjs): `args` after the model path; the JSON it
// prints, or null with *why set when node or the package is absent.
nlohmann::json run_llamacpp(const std::string& gguf, const std::string& args, std::string* why) {
  const fs::path tool = fs::path(MPQAT_SOURCE_DIR) / "tools/llamacpp";
  if (std::system("node --version >/dev/null 2>&1") != 0) {
    *why = "node is not installed";
    return {};
  }
  if (!fs::exists(tool / "node_modules/@fugood/node-llama-linux-x64")) {
    *why = "llama.cpp's npm package is absent (tools/setup.sh installs it into tools/llamacpp/node_modules)";
    return {};
  }
  const std::string out = (fs::temp_directory_path() / ("mpqat_llamacpp_" + std::to_string(::getpid()))).string();
  const std::string cmd = "cd '" + tool.string() + "' && node check.mjs '" + gguf + "' " + args + " >" + out + " 2>/dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  std::ifstream in(out);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line[0] == '{') return nlohmann::json::parse(line);
  ADD_FAILURE() << "llama.cpp printed no result: " << cmd;
  return {};
}

// `mpqat eval DIR --generate PROMPT --greedy --json`: the text and each token's log-probability.
nlohmann::json mpqat_generate(const fs::path& dir, const std::string& prompt, int n, const fs::path& save_as) {
  const auto r = mpqat::testing::run_mpqat("eval '" + dir.string() + "' --generate '" + prompt +
                                           "' --greedy --json --max-new-tokens " + std::to_string(n));
  EXPECT_EQ(r.code, 0) << r.err;
  std::ofstream(save_as) << r.out;
  return nlohmann::json::parse(r.out);
}

struct EngineComparison {
  int positions = 0, same_argmax = 0;
  double max_logprob_diff = 0.0;
  std::vector<double> diffs;  // |log p difference| per position
  double median_diff() {
    if (diffs.empty()) return INFINITY;
    std::sort(diffs.begin(), diffs.end());
    return diffs[diffs.size() / 2];
  }
};

// llama.cpp decodes greedily from `prompt` the same text as mpqat, and, reading mpqat's tokens
// (teacher-forced), ranks mpqat's token first at every position; prints both engines'
// log-probabilities side by side. Returns false (test skipped) when llama.cpp is unavailable.
// top1_margin != 0 (a random model): the texts are not compared, positions whose prefix does not
// tokenize back are left out, and the top token is expected equal only where mpqat's margin is
// at least top1_margin (never when it is negative: the caller judges the counts in `cmp`).
bool compare_greedy(const fs::path& dir, const std::string& gguf, const std::string& prompt, EngineComparison* cmp,
                    double top1_margin = 0.0) {
  const auto eval_json = fs::path(gguf).replace_extension(".eval.json");
  const auto ours = mpqat_generate(dir, prompt, 64, eval_json);
  std::string why;
  const auto greedy = run_llamacpp(gguf, "'x' 64 '" + prompt + "'", &why);
  if (greedy.is_null()) {
    if (why.empty()) ADD_FAILURE() << "llama.cpp failed";
    else std::printf("skipped: %s\n", why.c_str());
    return false;
  }
  const auto& tokens = ours.at("tokens");
  EXPECT_EQ(tokens.size(), 64u) << ours.dump();
  if (top1_margin == 0)
    EXPECT_EQ(prompt + greedy.at("generated").get<std::string>(), ours.at("generated").get<std::string>());
  const auto scored = run_llamacpp(gguf, "--score '" + eval_json.string() + "' 5", &why);
  const auto& steps = scored.at("steps");
  EXPECT_EQ(steps.size(), tokens.size());
  std::printf("%4s %-12s %12s %12s %10s  %s\n", "pos", "token", "mpqat lp", "llama.cpp lp", "|diff|", "llama.cpp top-1");
  for (size_t i = 0; i < std::min(steps.size(), tokens.size()); ++i) {
    const auto& t = tokens[i];
    const auto& st = steps[i];
    if (top1_margin != 0 && !st.at("roundtrip").get<bool>()) continue;  // a random model's text: not every prefix tokenizes back
    EXPECT_TRUE(st.at("roundtrip").get<bool>()) << "position " << i << ": the prefix did not tokenize back";
    const auto& probs = st.at("probs");
    if (probs.empty()) {
      ADD_FAILURE() << "llama.cpp reported no probabilities at position " << i;
      continue;
    }
    const std::string piece = t.at("piece").get<std::string>();
    double theirs = -INFINITY;
    for (const auto& p : probs)
      if (p.at("tok_str").get<std::string>() == piece) theirs = std::log(p.at("prob").get<double>());
    const double lp = t.at("logprob").get<double>();
    const std::string top = probs[0].at("tok_str").get<std::string>();
    ++cmp->positions;
    cmp->same_argmax += top == piece;
    cmp->max_logprob_diff = std::max(cmp->max_logprob_diff, std::fabs(theirs - lp));
    cmp->diffs.push_back(std::fabs(theirs - lp));
    if (top1_margin >= 0 && t.at("margin").get<double>() >= top1_margin)
      EXPECT_EQ(top, piece) << "position " << i << " (mpqat's margin " << t.at("margin").get<double>() << ")";
    std::printf("%4zu %-12s %12.6f %12.6f %10.2e  %s\n", i, ("'" + piece + "'").c_str(), lp, theirs,
                std::fabs(theirs - lp), top.c_str());
  }
  std::printf("%d of %d positions with the same top token; max |log p difference| %.3e\n", cmp->same_argmax,
              cmp->positions, cmp->max_logprob_diff);
  return true;
}

// One block linear's scheme in a test plan.
struct LinearSpec {
  std::string rel;
  int bits;
  int64_t group;
  bool sym;
};

// `model` quantized by RTN (`mpqat quantize`) under a plan that gives the `rel` linear of each of
// its first `layers` blocks its spec; the plan is work/plan.json, the checkpoint `out`.
mpqat::testing::CommandResult rtn_quantize(const fs::path& model, const fs::path& work, int layers,
                                           const std::vector<LinearSpec>& specs, const fs::path& out) {
  nlohmann::json plan = {{"version", 1}, {"modules", nlohmann::json::object()}};
  for (int i = 0; i < layers; ++i)
    for (const auto& s : specs)
      plan["modules"]["model.layers." + std::to_string(i) + "." + s.rel] = {
          {"bits", s.bits}, {"group_size", s.group}, {"sym", s.sym}};
  std::ofstream(work / "plan.json") << plan.dump();
  return mpqat::testing::run_mpqat("quantize '" + model.string() + "' --plan '" + (work / "plan.json").string() +
                                   "' --method rtn --out '" + out.string() + "' --force");
}

}  // namespace

TEST(GgufStories, LlamaCppTokenizesAndGeneratesAsMpqat) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K needed";
  const std::string text = "Once upon a time, Tom saw a big dog. \"Hello!\" he said.";
  const std::string gguf = (dir.parent_path() / "f32.gguf").string();
  ASSERT_EQ(mpqat::testing::run_mpqat("export gguf '" + dir.string() + "' --out '" + gguf +
                                      "' --float-type f32 --embeddings f32 --force")
                .code,
            0);
  std::string why;
  const auto j = run_llamacpp(gguf, "'" + text + "' 1", &why);
  if (j.is_null()) {
    if (!why.empty()) GTEST_SKIP() << why;
    return;
  }
  const model::ModelFolder folder(dir.string());
  EXPECT_EQ(j.at("tokens").get<std::vector<int32_t>>(), folder.tokenizer().encode(text, false));
  // Float weights: the same 64 greedy tokens, and log-probabilities equal up to fp32 summation
  // order (measured 7e-6).
  EngineComparison cmp;
  if (!compare_greedy(dir, gguf, "Once upon a time", &cmp)) GTEST_SKIP() << "llama.cpp unavailable";
  EXPECT_EQ(cmp.same_argmax, 64);
  EXPECT_LT(cmp.max_logprob_diff, 1e-4);
}

TEST(GgufStories, LlamaCppRunsAMixedPlanOf4And5And8Bits) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K needed";
  const auto work = dir.parent_path();
  const auto q = work / "mixed";
  const auto qr = rtn_quantize(dir, work, 5,
                               {{"self_attn.q_proj", 4, 32, false},
                                {"self_attn.k_proj", 4, 32, true},
                                {"self_attn.v_proj", 5, 32, false},
                                {"self_attn.o_proj", 8, 32, true},
                                {"mlp.gate_proj", 5, 32, true},
                                {"mlp.up_proj", 8, 32, true},
                                {"mlp.down_proj", 4, 32, true}},
                               q);
  ASSERT_EQ(qr.code, 0) << qr.err;
  const std::string gguf = (work / "mixed.gguf").string();
  const auto ex = mpqat::testing::run_mpqat("export gguf '" + q.string() + "' --out '" + gguf + "' --fallback f32 --force");
  ASSERT_EQ(ex.code, 0) << ex.err;
  // The table names each conversion; the file is the predicted size.
  EXPECT_NE(ex.out.find("blk.0.attn_q.weight          w4g32        Q4_1   exact codes, m rounded"), std::string::npos)
      << ex.out;
  EXPECT_NE(ex.out.find("blk.0.attn_v.weight          w5g32        Q5_1"), std::string::npos);
  EXPECT_NE(ex.out.find("blk.0.ffn_gate.weight        w5g32 sym    Q5_0   exact"), std::string::npos);
  EXPECT_NE(ex.out.find("blk.0.attn_output.weight     w8g32 sym    Q8_0   exact"), std::string::npos);
  EXPECT_NE(ex.out.find("(" + std::to_string(fs::file_size(gguf)) + " predicted)"), std::string::npos);
  // llama.cpp multiplies quantized weights with activations rounded to 8 bits (Q8_0 / Q8_1),
  // mpqat in fp32: the greedy text is still the same, log-probabilities differ slightly.
  EngineComparison cmp;
  if (!compare_greedy(q, gguf, "Once upon a time", &cmp)) GTEST_SKIP() << "llama.cpp unavailable";
  EXPECT_EQ(cmp.same_argmax, 64);
  EXPECT_LT(cmp.max_logprob_diff, 0.1);
}

namespace {

// A random Llama for the K-quant tests: rows of 256 (hidden 256, 4 heads of 64) and `ffn`, the
// 512-token vocabulary of stories260K's tokenizer.
model::ModelConfig k256_config(int64_t layers, int64_t ffn, int64_t kv_heads) {
  auto cfg = model::random_model_shape("tiny");
  cfg.num_hidden_layers = layers;
  cfg.hidden_size = 256;
  cfg.intermediate_size = ffn;
  cfg.num_attention_heads = 4;
  cfg.num_key_value_heads = kv_heads;
  cfg.head_dim = 64;
  cfg.vocab_size = 512;
  return cfg;
}

// `dst`: a copy of the float folder `src` (F32 tensors) whose tensors `fn` may change in place
// (name, values, columns).
void rewrite_model(const fs::path& src, const fs::path& dst,
                   const std::function<void(const std::string&, std::vector<float>&, int64_t)>& fn) {
  fs::create_directories(dst);
  for (const auto& e : fs::directory_iterator(src))
    if (e.path().filename() != "model.safetensors") fs::copy(e.path(), dst / e.path().filename());
  const io::SafetensorsFile in((src / "model.safetensors").string());
  std::vector<std::vector<float>> keep;
  std::vector<io::TensorToWrite> out;
  for (const auto& name : in.names()) {
    const auto& info = in.info(name);
    ASSERT_EQ(info.dtype, io::DType::F32) << name;
    const auto* p = reinterpret_cast<const float*>(in.data(name));
    keep.emplace_back(p, p + info.numel());
    fn(name, keep.back(), info.shape.size() == 2 ? info.shape[1] : info.numel());
    out.push_back({name, io::DType::F32, info.shape, keep.back().data(), keep.back().size() * sizeof(float)});
  }
  io::write_safetensors((dst / "model.safetensors").string(), out);
}

}  // namespace

// K-quants checked by llama.cpp: a random Llama whose rows are multiples of 256 (stories260K's
// rows of 64 hold no super-block), a plan of 2/3/4/5/6-bit modules exported as Q2_K ... Q6_K,
// and a float copy of the model holding exactly the weights the GGUF file decodes to (read
// back from the file, ggml's dequantization, the q/k rows put back in Hugging Face order):
// llama.cpp on the file and mpqat on the copy give the same log-probabilities, up to llama.cpp
// rounding activations to 8 bits (Q8_K) for its K-quant dot products.
TEST(GgufStories, LlamaCppDecodesKQuantsAsMpqatDoes) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K's tokenizer needed";
  const auto work = tmpdir("kquants");
  auto cfg = k256_config(2, 512, 2);
  model::RandomModelOptions ro;
  ro.dtype = io::DType::F32;
  ro.std = 0.05;
  ro.tokenizer_from = dir.string();
  const auto raw = work / "raw", rnd = work / "random";
  model::write_random_model(raw.string(), cfg, ro);
  // The head: 4x sharper, and no byte or control tokens (ids < 259 of the llama2.c vocabulary),
  // so greedy decoding writes words whose text tokenizes back to the same ids.
  rewrite_model(raw, rnd, [](const std::string& name, std::vector<float>& w, int64_t cols) {
    if (name != "lm_head.weight") return;
    for (auto& v : w) v *= 16.0f;
    std::fill(w.begin(), w.begin() + 259 * cols, 0.0f);
  });
  const auto q = work / "q";
  const auto qr = rtn_quantize(rnd, work, 2,
                               {{"self_attn.q_proj", 2, 32, false},
                                {"self_attn.k_proj", 3, 128, true},
                                {"self_attn.v_proj", 4, 128, false},
                                {"self_attn.o_proj", 5, 64, false},
                                {"mlp.gate_proj", 6, 32, false},
                                {"mlp.up_proj", 4, 32, false},
                                {"mlp.down_proj", 3, 32, false}},
                               q);
  ASSERT_EQ(qr.code, 0) << qr.err;
  const std::string gguf = (work / "k.gguf").string();
  const auto ex = mpqat::testing::run_mpqat("export gguf '" + q.string() + "' --out '" + gguf + "' --embeddings f32");
  ASSERT_EQ(ex.code, 0) << ex.err;
  std::printf("%s", ex.out.c_str());
  for (const char* row : {"blk.0.attn_q.weight          w2g32        Q2_K   requantized",
                          "blk.0.attn_k.weight          w3g128 sym   Q3_K   requantized",
                          "blk.0.attn_v.weight          w4g128       Q4_K   requantized",
                          "blk.0.attn_output.weight     w5g64        Q5_K   requantized",
                          "blk.0.ffn_gate.weight        w6g32        Q6_K   requantized",
                          "blk.0.ffn_up.weight          w4g32        Q4_1   exact codes, m rounded",
                          "blk.0.ffn_down.weight        w3g32        Q3_K   requantized"})
    EXPECT_NE(ex.out.find(row), std::string::npos) << row;
  EXPECT_NE(ex.out.find("(" + std::to_string(fs::file_size(gguf)) + " predicted)"), std::string::npos);

  // The float copy: the model's tensors replaced by their GGUF decoding (the embeddings as the
  // checkpoint's fp16 values, the linears as ggml decodes their blocks).
  const auto deq = work / "decoded";
  const auto h = io::read_gguf_header(gguf);
  rewrite_model(rnd, deq, [&](const std::string& name, std::vector<float>& w, int64_t) {
    const std::string gname = quant::gguf_tensor_name(name);
    for (std::size_t gi = 0; gi < h.tensors.size(); ++gi) {
      const auto& ts = h.tensors[gi];
      if (ts.name != gname) continue;
      const int64_t n = ts.ne[0], rows = ts.ne.size() > 1 ? ts.ne[1] : 1;
      const auto bytes = io::read_gguf_tensor(gguf, h, gi);
      const uint64_t rb = io::ggml_row_bytes(ts.type, n, gname);
      std::vector<int64_t> order;  // GGUF row k holds Hugging Face row order[k]
      if (name.find("q_proj") != std::string::npos) order = quant::gguf_rope_row_order(cfg.num_attention_heads, cfg.head_dim);
      if (name.find("k_proj") != std::string::npos) order = quant::gguf_rope_row_order(cfg.num_key_value_heads, cfg.head_dim);
      ASSERT_EQ(static_cast<int64_t>(w.size()), rows * n) << name;
      for (int64_t k = 0; k < rows; ++k) {
        const int64_t r = order.empty() ? k : order[static_cast<size_t>(k)];
        quant::dequantize_gguf_row(ts.type, bytes.data() + k * rb, n, w.data() + r * n);
      }
    }
  });

  // Measured (2-core AMD EPYC VM, 2026-12-07): 64 positions compared, 62 with the same top token
  // (the two others at mpqat margins 0.19 and 0.17), median |log p difference| 0.011, max 0.34;
  // the same model's legacy export (--k-quants off: Q4_0 ... Q8_0, whose layouts the tests above
  // check) against its checkpoint: median 0.014, max 0.14. llama.cpp rounds activations to 8
  // bits, and this random model amplifies that along the sequence. A misplaced code or scale
  // scrambles whole sub-blocks: differences of order 1 at most positions.
  EngineComparison cmp;
  if (!compare_greedy(deq, gguf, "Once upon a time", &cmp, -1.0)) GTEST_SKIP() << "llama.cpp unavailable";
  EXPECT_GE(cmp.positions, 24);
  EXPECT_GE(cmp.same_argmax, cmp.positions * 9 / 10);
  EXPECT_LT(cmp.median_diff(), 0.05);
  EXPECT_LT(cmp.max_logprob_diff, 1.0);
}

// `mpqat imatrix`: E[x^2] per input column. Block 0's attention reads RMSNorm(embedding) (the
// random model's norm weights are 1), so its statistics follow from the embedding rows of the
// calibration tokens alone: computed here by brute force and compared. q, k and v read the same
// tensor, gate and up too. The exporter refuses an importance matrix of another shape.
TEST(GgufStories, ImatrixIsTheMeanSquareOfEachInputColumn) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K's tokenizer needed";
  const auto work = tmpdir("imatrix");
  auto cfg = k256_config(1, 256, 4);
  cfg.max_position_embeddings = 64;
  model::RandomModelOptions ro;
  ro.dtype = io::DType::F32;
  ro.tokenizer_from = dir.string();
  const auto m = work / "m";
  model::write_random_model(m.string(), cfg, ro);
  const auto calib = (work / "calib.txt").string();
  std::ofstream(calib) << "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.\n";
  const auto r = mpqat::testing::run_mpqat("imatrix '" + m.string() + "' --calib " + calib + " --samples 3 --seqlen 16 --out '" +
                                           (work / "im.json").string() + "'");
  ASSERT_EQ(r.code, 0) << r.err;
  const auto im = nlohmann::json::parse(mpqat::testing::slurp((work / "im.json").string()));
  const auto q = im.at("modules").at("model.layers.0.self_attn.q_proj").get<std::vector<double>>();
  ASSERT_EQ(q.size(), 256u);
  EXPECT_EQ(im["modules"]["model.layers.0.self_attn.k_proj"].get<std::vector<double>>(), q);
  EXPECT_EQ(im["modules"]["model.layers.0.self_attn.v_proj"].get<std::vector<double>>(), q);
  EXPECT_EQ(im["modules"]["model.layers.0.mlp.gate_proj"].get<std::vector<double>>(),
            im["modules"]["model.layers.0.mlp.up_proj"].get<std::vector<double>>());
  EXPECT_EQ(im["modules"]["model.layers.0.self_attn.o_proj"].size(), 256u);
  EXPECT_EQ(im["modules"]["model.layers.0.mlp.down_proj"].size(), 256u);
  // Brute force: the first 16 tokens of the file (BOS first), their embedding rows, RMSNorm.
  const model::ModelFolder folder(m.string());
  auto ids = folder.tokenizer().encode(mpqat::testing::slurp(calib), true);
  // Fewer than 3 x 16 tokens: the calibration takes consecutive windows from the start.
  ASSERT_GE(ids.size(), 16u);
  ASSERT_LT(ids.size(), 48u);
  ids.resize(ids.size() / 16 * 16);
  EXPECT_EQ(im.at("tokens").get<int64_t>(), static_cast<int64_t>(ids.size()));
  const io::SafetensorsFile st((m / "model.safetensors").string());
  const auto* emb = reinterpret_cast<const float*>(st.data("model.embed_tokens.weight"));
  std::vector<double> want(256, 0.0);
  for (int32_t id : ids) {
    const float* e = emb + static_cast<int64_t>(id) * 256;
    double ms = 0;
    for (int j = 0; j < 256; ++j) ms += double(e[j]) * e[j] / 256;
    for (int j = 0; j < 256; ++j) want[j] += double(e[j]) * e[j] / (ms + cfg.rms_norm_eps) / double(ids.size());
  }
  double worst = 0;
  for (int j = 0; j < 256; ++j) worst = std::max(worst, std::fabs(q[j] - want[j]) / want[j]);
  EXPECT_LT(worst, 1e-4);
  // A matrix of another model: one clear line naming the module and both widths.
  nlohmann::json bad = im;
  bad["modules"]["model.layers.0.mlp.down_proj"] = std::vector<double>(100, 1.0);
  std::ofstream(work / "bad.json") << bad.dump();
  const auto e = mpqat::testing::run_mpqat("export gguf '" + m.string() + "' --out '" + (work / "x.gguf").string() +
                                           "' --float-type q4_k --imatrix '" + (work / "bad.json").string() + "'");
  EXPECT_NE(e.code, 0);
  EXPECT_NE(e.err.find("gives 100 columns for 'model.layers.0.mlp.down_proj', which reads 256"), std::string::npos) << e.err;
  EXPECT_FALSE(fs::exists(work / "x.gguf"));
  std::ofstream(work / "junk.json") << "{\"modules\": {\"a\": [1, -2]}}";
  const auto j = mpqat::testing::run_mpqat("export gguf '" + m.string() + "' --out '" + (work / "x.gguf").string() +
                                           "' --imatrix '" + (work / "junk.json").string() + "'");
  EXPECT_NE(j.code, 0);
  EXPECT_NE(j.err.find("not a finite number >= 0"), std::string::npos) << j.err;
  // A float model's linears as Q4_K with the matrix: the export says so per tensor.
  const auto ok = mpqat::testing::run_mpqat("export gguf '" + m.string() + "' --out '" + (work / "x.gguf").string() +
                                            "' --float-type q4_k --imatrix '" + (work / "im.json").string() + "'");
  ASSERT_EQ(ok.code, 0) << ok.err;
  EXPECT_NE(ok.out.find("blk.0.attn_q.weight          float        Q4_K   quantized (imatrix)"), std::string::npos) << ok.out;
}

// allocation.target llama.cpp: QBO solves in GGUF bytes, and the GGUF file exported from the
// plan's checkpoint has the predicted size to the byte (asymmetric: Q4_1/Q5_1/Q8_0; symmetric:
// Q4_0/Q5_0/Q8_0).
TEST(GgufStories, AllocatorPredictsTheExportedFileForTheLlamaCppTarget) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K needed";
  const auto work = dir.parent_path();
  // Scores only (no omega tables): the allocator models each candidate's loss from them.
  nlohmann::json sens = {{"version", 1}, {"modules", nlohmann::json::object()}};
  const model::ModelFolder folder(dir.string());
  std::mt19937 rng(5);
  for (const auto& t : model::llama_tensors(folder.config()))
    if (!t.linear.empty()) sens["modules"][t.linear] = {{"score", 0.5 + std::uniform_real_distribution<double>(0, 1)(rng)}};
  std::ofstream(work / "sens.json") << sens.dump();
  for (const bool sym : {false, true}) {
    SCOPED_TRACE(sym ? "symmetric" : "asymmetric");
    const std::string tag = sym ? "sym" : "asym";
    const auto plan = work / ("plan_" + tag + ".json");
    const auto al = mpqat::testing::run_mpqat(
        "allocate --model '" + dir.string() + "' --sensitivity '" + (work / "sens.json").string() +
        "' --method qbo --bits 2,3,4,5,6,8,16 --group-sizes 32,128 --budget bytes=340000 --target llama.cpp" +
        (sym ? " --sym" : "") + " --out '" + plan.string() + "' --json");
    ASSERT_EQ(al.code, 0) << al.err;
    const auto summary = nlohmann::json::parse(al.out);
    EXPECT_TRUE(summary.at("fits").get<bool>());
    EXPECT_EQ(summary.at("target"), "llama.cpp");
    // The menu is the engine's: 4/5/8 bits at g32 (and float for the 172-wide down_proj).
    std::set<int> bits;
    const auto p = nlohmann::json::parse(std::ifstream(plan));
    for (const auto& [name, m] : p.at("modules").items()) {
      bits.insert(m.at("bits").get<int>());
      if (m.at("bits").get<int>() < 16) {
        EXPECT_EQ(m.at("group_size").get<int64_t>(), 32) << name;
        EXPECT_NE(name.find("proj"), std::string::npos);
      }
      if (name.find("down_proj") != std::string::npos) EXPECT_EQ(m.at("bits").get<int>(), 16) << name;
    }
    for (int b : bits) EXPECT_TRUE(b == 4 || b == 5 || b == 8 || b == 16) << b;
    EXPECT_GE(bits.size(), 3u) << "a mixed plan (5 and 8 bits, float down_proj) was expected: " << al.out;

    const auto q = work / ("ckpt_" + tag);
    ASSERT_EQ(mpqat::testing::run_mpqat("quantize '" + dir.string() + "' --plan '" + plan.string() +
                                        "' --method rtn --out '" + q.string() + "' --force")
                  .code,
              0);
    const auto gguf = work / ("plan_" + tag + ".gguf");
    const auto ex = mpqat::testing::run_mpqat("export gguf '" + q.string() + "' --out '" + gguf.string() + "' --force");
    ASSERT_EQ(ex.code, 0) << ex.err;
    EXPECT_EQ(fs::file_size(gguf), summary.at("predicted_bytes").get<uint64_t>()) << ex.out;
    EXPECT_LE(fs::file_size(gguf), 340000u);
    EXPECT_NE(ex.out.find(sym ? "Q5_0" : "Q5_1"), std::string::npos) << ex.out;
    EXPECT_NE(ex.out.find("Q8_0"), std::string::npos) << ex.out;
  }
}

// The same for K-quants: on a model whose rows are multiples of 256 the llama.cpp menu holds
// 2/3/6 bits and groups of 128 as Q2_K / Q3_K / Q6_K / Q4_K ...; QBO prices them in those bytes
// and the exported file has the predicted size to the byte.
TEST(GgufStories, AllocatorPredictsKQuantExportsForTheLlamaCppTarget) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K's tokenizer needed";
  const auto work = tmpdir("kalloc");
  auto cfg = k256_config(2, 512, 2);
  model::RandomModelOptions ro;
  ro.tokenizer_from = dir.string();
  const auto m = work / "m";
  model::write_random_model(m.string(), cfg, ro);
  nlohmann::json sens = {{"version", 1}, {"modules", nlohmann::json::object()}};
  std::mt19937 rng(9);
  for (const auto& t : model::llama_tensors(cfg))
    if (!t.linear.empty()) sens["modules"][t.linear] = {{"score", 0.5 + std::uniform_real_distribution<double>(0, 1)(rng)}};
  std::ofstream(work / "sens.json") << sens.dump();
  // Between all-Q3_K and all-Q4_K linears (about 3.44 and 4.5 bpw of 1.2M weights).
  const auto plan = work / "plan.json";
  const auto al = mpqat::testing::run_mpqat("allocate --model '" + m.string() + "' --sensitivity '" +
                                            (work / "sens.json").string() +
                                            "' --method qbo --bits 2,3,4,5,6,8 --group-sizes 32,128 --budget bytes=1250000 "
                                            "--target llama.cpp --out '" + plan.string() + "' --json");
  ASSERT_EQ(al.code, 0) << al.err;
  const auto summary = nlohmann::json::parse(al.out);
  const auto q = work / "q";
  ASSERT_EQ(mpqat::testing::run_mpqat("quantize '" + m.string() + "' --plan '" + plan.string() + "' --method rtn --out '" +
                                      q.string() + "'")
                .code,
            0);
  const auto gguf = work / "k.gguf";
  const auto ex = mpqat::testing::run_mpqat("export gguf '" + q.string() + "' --out '" + gguf.string() + "'");
  ASSERT_EQ(ex.code, 0) << ex.err;
  EXPECT_EQ(fs::file_size(gguf), summary.at("predicted_bytes").get<uint64_t>()) << ex.out;
  EXPECT_LE(fs::file_size(gguf), 1250000u);
  EXPECT_NE(ex.out.find("_K "), std::string::npos) << "no K-quant in the plan: " << ex.out;
}

// `mpqat run` with output.formats gguf on rows of 256: the 3-bit modules go to Q3_K, searched
// with the importance matrix measured on the checkpoint (imatrix.json in the run folder), and
// the report's export entry is the file's.
TEST(GgufStories, RunWritesAKQuantGgufWithItsImatrix) {
  const auto dir = stories_folder();
  if (dir.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K needed";
  const auto work = tmpdir("krun");
  auto cfg = k256_config(1, 256, 4);
  cfg.max_position_embeddings = 128;
  model::RandomModelOptions ro;
  ro.tokenizer_from = dir.string();
  const auto m = work / "m";
  model::write_random_model(m.string(), cfg, ro);
  const std::string text = (work / "calib.txt").string();
  std::ofstream(text) << std::string(2000, 'a') << " Once upon a time there was a cat.\n";
  const auto out = work / "run";
  const auto r = mpqat::testing::run_mpqat(
      "run " + std::string(MPQAT_SOURCE_DIR) + "/recipes/quickstart.yaml model.path=" + m.string() +
      " data.calibration.path=" + text + " data.calibration.samples=4 data.calibration.seqlen=64 "
      "'evaluation.perplexity=[]' evaluation.fp_baseline=false allocation.method=uniform allocation.uniform_bits=3 "
      "training.method=rtn 'output.formats=[safetensors, gguf]' output.dir=" + out.string());
  ASSERT_EQ(r.code, 0) << r.err << r.out;
  ASSERT_TRUE(fs::exists(out / "imatrix.json"));
  const auto im = nlohmann::json::parse(mpqat::testing::slurp((out / "imatrix.json").string()));
  EXPECT_EQ(im.at("tokens").get<int64_t>(), 4 * 64);
  EXPECT_EQ(im.at("modules").size(), 7u);
  EXPECT_NE(r.out.find("block linears 3.438 bpw (Q3_K x7)"), std::string::npos) << r.out;
  const auto rep = nlohmann::json::parse(mpqat::testing::slurp((out / "report.json").string()));
  EXPECT_EQ(rep.at("exports").at("gguf").at("bytes").get<uint64_t>(), fs::file_size(out / "model.gguf"));
  EXPECT_EQ(rep["exports"]["gguf"].at("linear_types").at("Q3_K").get<int>(), 7);
  // The per-tensor table beside it, each Q3_K row with its imatrix mark.
  const std::string table = mpqat::testing::slurp((out / "gguf_export.txt").string());
  EXPECT_NE(table.find("Q3_K   requantized (imatrix)"), std::string::npos) << table;
  const auto h = io::read_gguf_header((out / "model.gguf").string());
  int k = 0;
  for (const auto& t : h.tensors) k += t.type == GgmlType::Q3_K;
  EXPECT_EQ(k, 7);
}

// general.name's default names the base model's folder however the path is written, so
// `mpqat allocate --model .` and the export of that model's checkpoint write the same header.
TEST(Gguf, DefaultNameIsTheBaseModelsFolder) {
  const auto cwd = fs::current_path();
  const std::string here = cwd.filename().string();
  EXPECT_EQ(quant::gguf_default_name(".", ""), here);
  EXPECT_EQ(quant::gguf_default_name("./", ""), here);
  EXPECT_EQ(quant::gguf_default_name((cwd / "m7b/").string(), ""), "m7b");
  EXPECT_EQ(quant::gguf_default_name("runs/llama/../m7b", ""), "m7b");
  // A packed checkpoint: the source model its provenance records, not its own folder.
  EXPECT_EQ(quant::gguf_default_name("runs/x/checkpoint", "/models/Llama-2-7b-hf"), "Llama-2-7b-hf");
}

namespace {

// GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others for
// U+0100 onwards, in byte order.
std::vector<std::string> byte_level_alphabet() {
  auto utf8 = [](uint32_t cp) {
    std::string s;
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return s;
  };
  std::vector<std::string> a(256);
  uint32_t next = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    a[b] = utf8(printable ? b : next++);
  }
  return a;
}

}  // namespace

// A byte-level BPE tokenizer.json (every byte a token, merges, <|endoftext|>) goes into the GGUF as
// llama.cpp's "gpt2" vocabulary with the pre-tokenizer named by its split regex (GPT-2's ByteLevel
// regex: "gpt-2"; Llama-3's Split regex: "llama-bpe"), and llama.cpp tokenizes text to mpqat's ids.
TEST(GgufByteLevel, LlamaCppTokenizesAsMpqat) {
 for (const bool llama3 : {false, true}) {
  SCOPED_TRACE(llama3 ? "Llama-3 split" : "GPT-2 split");
  const auto dir = tmpdir(llama3 ? "bytelevel3" : "bytelevel");
  const auto model = dir / "model";
  ASSERT_EQ(mpqat::testing::run_mpqat("random-model '" + model.string() +
                                      "' --shape tiny --layers 1 --hidden 128 --ffn 256 --vocab 320 --dtype f32 "
                                      "--shard-size 0")
                .code,
            0);
  const auto alpha = byte_level_alphabet();
  const std::string G = alpha[' '];  // "Ġ"
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[alpha[static_cast<size_t>(b)]] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {G, "w"}, {"o", "r"}, {G + "w", "or"},
      {"l", "d"}, {G + "wor", "ld"}, {G, "t"}, {G + "t", "he"}, {"i", "n"}, {G, "in"}};
  nlohmann::json m = nlohmann::json::array();
  int next = 256;
  for (const auto& [a, b] : merges) {
    m.push_back(a + " " + b);
    if (!vocab.contains(a + b)) vocab[a + b] = next++;
  }
  nlohmann::json tj;
  tj["version"] = "1.0";
  tj["added_tokens"] = nlohmann::json::array({{{"id", next}, {"content", "<|endoftext|>"}, {"special", true}}});
  tj["normalizer"] = nullptr;
  tj["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  if (llama3)
    tj["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex", "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                       "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  tj["post_processor"] = {{"type", "ByteLevel"}};
  tj["decoder"] = {{"type", "ByteLevel"}};
  tj["model"] = {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"vocab", vocab}, {"merges", m}};
  if (!llama3) {  // ByteLevel's add_prefix_space: refused, naming the file and the accepted setting
    auto with_prefix = tj;
    with_prefix["pre_tokenizer"]["add_prefix_space"] = true;
    std::ofstream(model / "tokenizer.json") << with_prefix.dump();
    const auto bad = mpqat::testing::run_mpqat("export gguf '" + model.string() + "' --out '" + (dir / "bad.gguf").string() + "'");
    EXPECT_NE(bad.code, 0);
    EXPECT_NE(bad.err.find((model / "tokenizer.json").string()), std::string::npos) << bad.err;
    EXPECT_NE(bad.err.find("add_prefix_space false is supported"), std::string::npos) << bad.err;
    EXPECT_FALSE(fs::exists(dir / "bad.gguf"));
  }
  std::ofstream(model / "tokenizer.json") << tj.dump();

  const auto gguf = dir / "bl.gguf";
  const auto ex = mpqat::testing::run_mpqat("export gguf '" + model.string() + "' --out '" + gguf.string() +
                                            "' --float-type f32 --embeddings f32 --force");
  ASSERT_EQ(ex.code, 0) << ex.err;
  const auto h = io::read_gguf_header(gguf.string());
  auto str_kv = [&](const std::string& key) {
    for (const auto& kv : h.kvs)
      if (kv.key == key) return std::get<std::string>(kv.value);
    return std::string();
  };
  EXPECT_EQ(str_kv("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(str_kv("tokenizer.ggml.pre"), llama3 ? "llama-bpe" : "gpt-2");

  const std::string text = "hello world, in the hello world!\n  Caf\xC3\xA9 42 12345 its";
  std::string why;
  const auto j = run_llamacpp(gguf.string(), "'" + text + "' 1 'hello'", &why);
  if (j.is_null()) {
    if (!why.empty()) GTEST_SKIP() << why;
    return;
  }
  const model::ModelFolder folder(model.string());
  const auto ours = folder.tokenizer().encode(text, false);
  EXPECT_EQ(j.at("tokens").get<std::vector<int32_t>>(), ours);
  EXPECT_LT(ours.size(), text.size()) << "the merges should apply";
 }
}

// llama3 RoPE scaling (Llama-3.1 and later): the export writes rope_freqs.weight, and llama.cpp's
// log-probabilities of mpqat's tokens then match mpqat's (teacher-forced, F32 weights) on
// stories260K given a llama3 scaling that moves 3 of its 4 frequencies (original context 64).
TEST(GgufStories, Llama3RopeScalingMatchesLlamaCpp) {
  const auto stories = stories_folder();
  if (stories.empty()) GTEST_SKIP() << "shared data absent (set MPQAT_SHARED_DIR): stories260K needed";
  const auto dir = tmpdir("llama3rope");
  const auto model = dir / "model";
  fs::create_directories(model);
  for (const auto& e : fs::directory_iterator(stories))
    if (e.is_regular_file()) fs::copy_file(e.path(), model / e.path().filename());
  auto cfg = nlohmann::json::parse(std::ifstream(model / "config.json"));
  cfg["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  std::ofstream(model / "config.json") << cfg.dump(2);
  const auto gguf = dir / "l3.gguf";
  const auto ex = mpqat::testing::run_mpqat("export gguf '" + model.string() + "' --out '" + gguf.string() +
                                            "' --float-type f32 --embeddings f32 --force");
  ASSERT_EQ(ex.code, 0) << ex.err;
  EXPECT_NE(ex.out.find("rope_freqs.weight"), std::string::npos) << ex.out;
  const auto eval_json = dir / "l3.eval.json";
  const auto ours = mpqat_generate(model, "Once upon a time", 64, eval_json);
  std::string why;
  const auto scored = run_llamacpp(gguf.string(), "--score '" + eval_json.string() + "' 8", &why);
  if (scored.is_null()) {
    if (!why.empty()) GTEST_SKIP() << why;
    return;
  }
  const auto& steps = scored.at("steps");
  const auto& tokens = ours.at("tokens");
  ASSERT_EQ(steps.size(), tokens.size());
  double worst = 0.0;
  int found = 0;
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_TRUE(steps[i].at("roundtrip").get<bool>()) << i;
    for (const auto& p : steps[i].at("probs"))
      if (p.at("tok_str").get<std::string>() == tokens[i].at("piece").get<std::string>()) {
        worst = std::max(worst, std::fabs(std::log(p.at("prob").get<double>()) - tokens[i].at("logprob").get<double>()));
        ++found;
      }
  }
  EXPECT_EQ(found, static_cast<int>(tokens.size())) << "mpqat's token was not among llama.cpp's top 8";
  std::printf("llama3 RoPE: max |log p difference| %.3e over %zu positions\n", worst, tokens.size());
  EXPECT_LT(worst, 1e-3);
}
