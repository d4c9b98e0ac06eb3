// safetensors reader/writer: format checked against hand-built bytes (not produced by the
// writer), round trips, sharding, and a corrupt-file suite that must raise InputError.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "mpqat/io/safetensors.h"
#include "mpqat/util/error.h"

namespace fs = std::filesystem;
using mpqat::io::DType;
using mpqat::io::SafetensorsCheckpoint;
using mpqat::io::SafetensorsFile;
using mpqat::io::TensorToWrite;

namespace {

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::random_device rd;
    dir_ = fs::temp_directory_path() /
           ("mpqat_st_" + std::to_string(::getpid()) + "_" + std::to_string(rd()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string p(const std::string& name) const { return (dir_ / name).string(); }

  static void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good()) << path;
  }
  static std::string read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  static std::string le64(uint64_t v) {
    std::string s(8, '\0');
    for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    return s;
  }
  // A file whose header is exactly `header` followed by `data_bytes` bytes of data area.
  std::string make(const std::string& name, const std::string& header, std::size_t data_bytes) {
    const std::string path = p(name);
    write_bytes(path, le64(header.size()) + header + std::string(data_bytes, '\x5a'));
    return path;
  }
  // Asserts that opening `path` throws InputError whose message contains every `needle`.
  static void expect_input_error(const std::string& path, const std::vector<std::string>& needles) {
    try {
      SafetensorsFile f(path);
      ADD_FAILURE() << "no exception for " << path;
    } catch (const mpqat::InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << "message lacks the path: " << msg;
      for (const auto& n : needles)
        EXPECT_NE(msg.find(n), std::string::npos) << "message lacks '" << n << "': " << msg;
      EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "wrong exception type for " << path << ": " << e.what();
    }
  }
  bool has_temp_files() const {
    for (const auto& e : fs::recursive_directory_iterator(dir_))
      if (e.path().filename().string().find(".tmp.") != std::string::npos) return true;
    return false;
  }

  fs::path dir_;
};

std::vector<uint8_t> pattern(std::size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// ---------------------------------------------------------------------------------------------

TEST(SafetensorsDtype, SizesNamesAndParsing) {
  const std::vector<std::tuple<DType, std::size_t, std::string>> table = {
      {DType::F32, 4, "F32"}, {DType::F16, 2, "F16"}, {DType::BF16, 2, "BF16"},
      {DType::I64, 8, "I64"}, {DType::I32, 4, "I32"}, {DType::I16, 2, "I16"},
      {DType::I8, 1, "I8"},   {DType::U8, 1, "U8"},   {DType::BOOL, 1, "BOOL"}};
  for (const auto& [dt, size, name] : table) {
    EXPECT_EQ(mpqat::io::dtype_size(dt), size) << name;
    EXPECT_EQ(std::string(mpqat::io::dtype_name(dt)), name);
    EXPECT_EQ(mpqat::io::parse_dtype(name, "ctx"), dt);
  }
  try {
    mpqat::io::parse_dtype("F64", "my-context");
    ADD_FAILURE() << "F64 accepted";
  } catch (const mpqat::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("my-context"), std::string::npos) << msg;
    EXPECT_NE(msg.find("F64"), std::string::npos) << msg;
    EXPECT_NE(msg.find("BF16"), std::string::npos) << msg;  // the accepted list
  }
  EXPECT_THROW(mpqat::io::parse_dtype("f32", "ctx"), mpqat::InputError);  // case matters
}

// The writer's output, compared with bytes assembled by hand from the format description.
TEST_F(SafetensorsTest, WriterMatchesHandBuiltBytes) {
  const float a[2] = {1.0f, -2.0f};
  const uint8_t b[2] = {7, 9};
  const std::string path = p("hand.safetensors");
  mpqat::io::write_safetensors(
      path, {{"a", DType::F32, {2}, a, sizeof a}, {"b", DType::U8, {1, 2}, b, 2}},
      {{"format", "pt"}});

  std::string header = R"({"__metadata__":{"format":"pt"},)"
                       R"("a":{"data_offsets":[0,8],"dtype":"F32","shape":[2]},)"
                       R"("b":{"data_offsets":[8,10],"dtype":"U8","shape":[1,2]}})";
  while (header.size() % 8) header += ' ';
  std::string expected = le64(header.size()) + header;
  // IEEE-754 little endian: 1.0f = 0x3f800000, -2.0f = 0xc0000000.
  expected += std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8);
  expected += std::string("\x07\x09", 2);
  EXPECT_EQ(read_bytes(path), expected);
  EXPECT_FALSE(has_temp_files());
}

// The reader on a hand-built file in the key order the HF Python writer uses (not sorted),
// with trailing header spaces and a data area that is read back as floats.
TEST_F(SafetensorsTest, ReaderOnHandBuiltFile) {
  std::string header = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                       R"("ids":{"dtype":"I64","shape":[1],"data_offsets":[16,24]},)"
                       R"("__metadata__":{"format":"pt","note":"hi"}})";
  header += "    ";
  std::string data;
  const float w[4] = {0.5f, -1.25f, 3.0f, 1e-3f};
  const int64_t ids[1] = {-42};
  data.append(reinterpret_cast<const char*>(w), sizeof w);  // host is little endian (x86/arm)
  data.append(reinterpret_cast<const char*>(ids), sizeof ids);
  const std::string path = p("hf.safetensors");
  write_bytes(path, le64(header.size()) + header + data);

  SafetensorsFile f(path);
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.names(), (std::vector<std::string>{"w", "ids"}));  // offset order
  EXPECT_TRUE(f.contains("w"));
  EXPECT_FALSE(f.contains("x"));
  const auto& wi = f.info("w");
  EXPECT_EQ(wi.dtype, DType::F32);
  EXPECT_EQ(wi.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(wi.numel(), 4);
  EXPECT_EQ(wi.nbytes(), 16u);
  float got[4];
  std::memcpy(got, f.data("w"), sizeof got);
  EXPECT_EQ(got[0], 0.5f);
  EXPECT_EQ(got[1], -1.25f);
  EXPECT_EQ(got[2], 3.0f);
  EXPECT_EQ(got[3], 1e-3f);
  int64_t id;
  std::memcpy(&id, f.data("ids"), 8);
  EXPECT_EQ(id, -42);
  // Zero-copy: the pointer lies inside the mapping, right after the header.
  EXPECT_EQ(f.data("ids") - f.data("w"), 16);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hi");
  try {
    f.info("missing");
    ADD_FAILURE();
  } catch (const mpqat::InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos);
  }
}

TEST_F(SafetensorsTest, RoundTripEveryDtypeWithMetadata) {
  const std::vector<DType> all = {DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
                                  DType::I16, DType::I8,  DType::U8,   DType::BOOL};
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<TensorToWrite> ts;
  uint32_t seed = 1;
  for (DType dt : all) {
    const std::string n = mpqat::io::dtype_name(dt);
    for (const auto& shape : std::vector<std::vector<int64_t>>{{3, 5}, {}, {0, 4}, {7}}) {
      int64_t numel = 1;
      for (auto d : shape) numel *= d;
      bufs.push_back(pattern(static_cast<std::size_t>(numel) * mpqat::io::dtype_size(dt), seed++));
      if (dt == DType::BOOL)
        for (auto& b : bufs.back()) b &= 1;
      ts.push_back(
          {"t." + n + ".r" + std::to_string(shape.size()) + "." + std::to_string(ts.size()), dt,
           shape, bufs.back().data(), bufs.back().size()});
    }
  }
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"k", "v w\"x"}, {"", "e"}};
  const std::string path = p("all.safetensors");
  mpqat::io::write_safetensors(path, ts, meta);

  SafetensorsFile f(path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.names().size(), ts.size());
  // Offsets follow the given order, so names() (offset order) is the write order except
  // that zero-byte tensors may tie with their neighbour; compare as sets plus content.
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const auto& t = ts[i];
    ASSERT_TRUE(f.contains(t.name)) << t.name;
    const auto& info = f.info(t.name);
    EXPECT_EQ(info.dtype, t.dtype) << t.name;
    EXPECT_EQ(info.shape, t.shape) << t.name;
    EXPECT_EQ(info.nbytes(), t.nbytes) << t.name;
    if (t.nbytes) {
      EXPECT_EQ(std::memcmp(f.data(t.name), t.data, t.nbytes), 0) << t.name;
    }
  }
  // Header padding keeps the data area 8-byte aligned (mapping base is page aligned).
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data(ts.front().name)) % 8, 0u);
  uint64_t hlen = 0;
  const std::string raw = read_bytes(path);
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(hlen % 8, 0u);
  uint64_t total = 0;
  for (const auto& t : ts) total += t.nbytes;
  EXPECT_EQ(raw.size(), 8 + hlen + total);  // no holes, no trailing bytes

  // Move semantics keep the mapping alive.
  SafetensorsFile g(std::move(f));
  EXPECT_EQ(std::memcmp(g.data(ts[0].name), ts[0].data, ts[0].nbytes), 0);
  SafetensorsCheckpoint ck(path);
  EXPECT_EQ(ck.total_tensor_bytes(), total);
  EXPECT_EQ(ck.metadata(), meta);
}

TEST_F(SafetensorsTest, EmptyFileOfNoTensorsRoundTrips) {
  const std::string path = p("empty.safetensors");
  mpqat::io::write_safetensors(path, {});
  SafetensorsFile f(path);
  EXPECT_TRUE(f.names().empty());
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(SafetensorsTest, ShardedRoundTripWithIndex) {
  // Sizes 40, 40, 100, 8, 8 with max 64: greedy gives [40] [40] [100 alone] [8, 8].
  std::vector<std::vector<uint8_t>> bufs = {pattern(40, 1), pattern(40, 2), pattern(100, 3),
                                            pattern(8, 4), pattern(8, 5)};
  std::vector<TensorToWrite> ts = {{"layers.0.w", DType::F32, {10}, bufs[0].data(), 40},
                                   {"layers.0.b", DType::F16, {4, 5}, bufs[1].data(), 40},
                                   {"embed", DType::U8, {10, 10}, bufs[2].data(), 100},
                                   {"z", DType::I64, {1}, bufs[3].data(), 8},
                                   {"a", DType::I8, {2, 4}, bufs[4].data(), 8}};
  const std::string out = p("ckpt");
  const auto files =
      mpqat::io::write_safetensors_sharded(out, ts, {{"format", "pt"}}, /*max_shard_bytes=*/64);
  const std::vector<std::string> expected_files = {
      out + "/model-00001-of-00004.safetensors", out + "/model-00002-of-00004.safetensors",
      out + "/model-00003-of-00004.safetensors", out + "/model-00004-of-00004.safetensors",
      out + "/model.safetensors.index.json"};
  EXPECT_EQ(files, expected_files);
  EXPECT_FALSE(has_temp_files());

  // The index, read with a JSON parser independent of our reader.
  const auto index = nlohmann::json::parse(read_bytes(out + "/model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), 196u);
  EXPECT_EQ(index["weight_map"]["layers.0.w"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.0.b"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["embed"], "model-00003-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["z"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["a"], "model-00004-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"].size(), 5u);
  {
    SafetensorsFile last(out + "/model-00004-of-00004.safetensors");
    EXPECT_EQ(last.names(), (std::vector<std::string>{"z", "a"}));  // given order
    EXPECT_EQ(last.metadata().at("format"), "pt");
  }

  for (const std::string& src : {out, out + "/model.safetensors.index.json"}) {
    SafetensorsCheckpoint ck(src);
    EXPECT_EQ(ck.names(),
              (std::vector<std::string>{"a", "embed", "layers.0.b", "layers.0.w", "z"}));
    for (std::size_t i = 0; i < ts.size(); ++i) {
      const auto& t = ts[i];
      EXPECT_TRUE(ck.contains(t.name));
      EXPECT_EQ(ck.info(t.name).shape, t.shape);
      EXPECT_EQ(ck.info(t.name).dtype, t.dtype);
      EXPECT_EQ(std::memcmp(ck.data(t.name), t.data, t.nbytes), 0) << t.name;
    }
    EXPECT_EQ(ck.file_of("embed"), out + "/model-00003-of-00004.safetensors");
    EXPECT_EQ(ck.total_tensor_bytes(), 196u);
    const auto meta = ck.metadata();
    EXPECT_EQ(meta.at("format"), "pt");
    EXPECT_EQ(meta.at("total_size"), "196");
    EXPECT_FALSE(ck.contains("nope"));
    EXPECT_THROW(ck.info("nope"), mpqat::InputError);
  }

  // Lazy mapping under concurrent first access.
  {
    SafetensorsCheckpoint ck(out);
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    for (int k = 0; k < 8; ++k)
      threads.emplace_back([&, k] {
        const auto& t = ts[k % ts.size()];
        if (std::memcmp(ck.data(t.name), t.data, t.nbytes) != 0) ++bad;
      });
    for (auto& th : threads) th.join();
    EXPECT_EQ(bad.load(), 0);
    SafetensorsCheckpoint moved(std::move(ck));
    EXPECT_EQ(moved.info("a").nbytes(), 8u);
  }

  // Rewriting with another layout removes the stale one: 3 shards, then a single file.
  mpqat::io::write_safetensors_sharded(out, ts, {}, 100);  // [40,40] [100] [8,8] -> 3 shards
  EXPECT_FALSE(fs::exists(out + "/model-00001-of-00004.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model-00004-of-00004.safetensors"));
  EXPECT_TRUE(fs::exists(out + "/model-00003-of-00003.safetensors"));
  EXPECT_EQ(SafetensorsCheckpoint(out).names().size(), 5u);

  const auto single = mpqat::io::write_safetensors_sharded(out, ts, {}, 0);
  EXPECT_EQ(single, (std::vector<std::string>{out + "/model.safetensors"}));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  std::size_t n_files = 0;
  for (const auto& e : fs::directory_iterator(out)) (void)e, ++n_files;
  EXPECT_EQ(n_files, 1u);
  SafetensorsCheckpoint ck(out);
  EXPECT_EQ(ck.file_of("z"), out + "/model.safetensors");
  EXPECT_EQ(std::memcmp(ck.data("embed"), bufs[2].data(), 100), 0);

  // And back to shards: the stale single file goes.
  mpqat::io::write_safetensors_sharded(out, ts, {}, 64);
  EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
  EXPECT_EQ(SafetensorsCheckpoint(out).file_of("a"), out + "/model-00004-of-00004.safetensors");
}

TEST_F(SafetensorsTest, ShardedWithOtherStemAndOneShard) {
  const auto buf = pattern(16, 9);
  const std::vector<TensorToWrite> ts = {{"x", DType::F32, {4}, buf.data(), 16}};
  const auto files = mpqat::io::write_safetensors_sharded(p("s"), ts, {}, 1000, "adapter");
  EXPECT_EQ(files, (std::vector<std::string>{p("s") + "/adapter.safetensors"}));
  SafetensorsCheckpoint ck(p("s"));  // the only *.safetensors in the folder
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"x"}));

  const auto buf2 = pattern(16, 10);
  const std::vector<TensorToWrite> two = {{"x", DType::F32, {4}, buf.data(), 16},
                                          {"y", DType::F32, {4}, buf2.data(), 16}};
  mpqat::io::write_safetensors_sharded(p("s"), two, {}, 16, "adapter");
  EXPECT_FALSE(fs::exists(p("s") + "/adapter.safetensors"));
  SafetensorsCheckpoint ck2(p("s"));  // the only *.safetensors.index.json in the folder
  EXPECT_EQ(std::memcmp(ck2.data("y"), buf2.data(), 16), 0);
}

TEST_F(SafetensorsTest, CheckpointFolderResolution) {
  fs::create_directories(p("empty"));
  try {
    SafetensorsCheckpoint ck(p("empty"));
    ADD_FAILURE();
  } catch (const mpqat::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(p("empty")), std::string::npos) << msg;
    EXPECT_NE(msg.find("model.safetensors.index.json"), std::string::npos) << msg;
  }
  const auto buf = pattern(4, 1);
  fs::create_directories(p("two"));
  mpqat::io::write_safetensors(p("two/a.safetensors"), {{"x", DType::U8, {4}, buf.data(), 4}});
  mpqat::io::write_safetensors(p("two/b.safetensors"), {{"x", DType::U8, {4}, buf.data(), 4}});
  try {
    SafetensorsCheckpoint ck(p("two"));
    ADD_FAILURE();
  } catch (const mpqat::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("a.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("b.safetensors"), std::string::npos) << msg;
  }
  // model.safetensors wins over other files.
  mpqat::io::write_safetensors(p("two/model.safetensors"), {{"m", DType::U8, {4}, buf.data(), 4}});
  EXPECT_EQ(SafetensorsCheckpoint(p("two")).names(), (std::vector<std::string>{"m"}));
  EXPECT_THROW(SafetensorsCheckpoint(p("nonexistent")), mpqat::InputError);
}

// ---------------------------------------------------------------------------------------------
// Corrupt files: each must be an InputError naming the file (and the tensor).

TEST_F(SafetensorsTest, CorruptEmptyAndTruncated) {
  write_bytes(p("empty.st"), "");
  expect_input_error(p("empty.st"), {"8"});
  write_bytes(p("short.st"), std::string("\x10\x00\x00\x00\x00", 5));
  expect_input_error(p("short.st"), {"shorter"});
  expect_input_error(p("nonexistent.st"), {"cannot open"});
  fs::create_directories(p("adir"));
  expect_input_error(p("adir"), {"regular"});
}

TEST_F(SafetensorsTest, CorruptHeaderLength) {
  write_bytes(p("beyond.st"), le64(1000) + std::string(10, ' '));
  expect_input_error(p("beyond.st"), {"1000"});
  write_bytes(p("absurd.st"), le64(uint64_t{1} << 63) + "{}");
  expect_input_error(p("absurd.st"), {"limit"});
  write_bytes(p("max.st"), le64(~uint64_t{0}) + "{}");
  expect_input_error(p("max.st"), {"header length"});
  write_bytes(p("zero.st"), le64(0) + "{}");
  expect_input_error(p("zero.st"), {"header"});
}

TEST_F(SafetensorsTest, CorruptJson) {
  expect_input_error(make("badjson.st", "{\"a\": [1, 2", 0), {"JSON"});
  expect_input_error(make("garbage.st", std::string("\xff\xfe\x00\x01", 4), 0), {"JSON"});
  expect_input_error(make("array.st", "[1,2,3]", 0), {"not a JSON object"});
  expect_input_error(make("string.st", "\"hello\"", 0), {"not a JSON object"});
  expect_input_error(make("entry.st", R"({"t1": 5})", 0), {"'t1'", "not a JSON object"});
}

TEST_F(SafetensorsTest, CorruptFields) {
  expect_input_error(
      make("dtype.st", R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", 8),
      {"'w'", "F64", "F32, F16, BF16, I64, I32, I16, I8, U8, BOOL"});
  expect_input_error(make("dtype2.st", R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
                     {"'w'", "dtype"});
  expect_input_error(make("nodtype.st", R"({"w":{"shape":[1],"data_offsets":[0,4]}})", 4),
                     {"'w'", "missing \"dtype\""});
  expect_input_error(make("noshape.st", R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", 4),
                     {"'w'", "missing \"shape\""});
  expect_input_error(make("shape.st", R"({"w":{"dtype":"F32","shape":4,"data_offsets":[0,4]}})", 4),
                     {"'w'", "shape"});
  expect_input_error(
      make("neg.st", R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
      {"'w'", "-1"});
  expect_input_error(
      make("frac.st", R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,10]}})", 10),
      {"'w'", "2.5"});
  expect_input_error(
      make("strdim.st", R"({"w":{"dtype":"F32","shape":["1"],"data_offsets":[0,4]}})", 4),
      {"'w'", "shape"});
  expect_input_error(make("nooff.st", R"({"w":{"dtype":"F32","shape":[1]}})", 4),
                     {"'w'", "missing \"data_offsets\""});
  expect_input_error(
      make("off3.st", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8),
      {"'w'", "data_offsets"});
  expect_input_error(
      make("offneg.st", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", 8),
      {"'w'", "data_offsets"});
  expect_input_error(
      make("offflt.st", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", 8),
      {"'w'", "data_offsets"});
  expect_input_error(
      make("desc.st", R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})", 8),
      {"'w'", "ascending"});
  expect_input_error(make("meta.st", R"({"__metadata__":{"k":1}})", 0), {"__metadata__", "'k'"});
  expect_input_error(make("meta2.st", R"({"__metadata__":[1]})", 0), {"__metadata__"});
}

TEST_F(SafetensorsTest, CorruptSizesAndOffsets) {
  // 3 floats need 12 bytes, the offsets give 8.
  expect_input_error(
      make("size.st", R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 12),
      {"'w'", "12"});
  // Offsets beyond the 4-byte data area.
  expect_input_error(make("oob.st", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
                     {"'w'", "data area"});
  expect_input_error(
      make(
          "oob2.st",
          R"({"w":{"dtype":"U8","shape":[0],"data_offsets":[18446744073709551615,18446744073709551615]}})",
          4),
      {"'w'", "data area"});
  // Overlap: b starts inside a.
  expect_input_error(make("overlap.st",
                          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                          12),
                     {"'b'", "'a'", "overlap"});
  // Identical ranges overlap too.
  expect_input_error(make("same.st",
                          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("b":{"dtype":"I32","shape":[1],"data_offsets":[0,4]}})",
                          4),
                     {"overlap"});
  // numel * size overflow.
  expect_input_error(
      make("ovf.st", R"({"w":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})",
           0),
      {"'w'", "overflow"});
  expect_input_error(
      make("ovf2.st",
           R"({"w":{"dtype":"U8","shape":[4294967296,4294967296,2],"data_offsets":[0,0]}})", 0),
      {"'w'", "overflow"});
  // A dimension beyond u64 parses as a float in JSON: not an integer.
  expect_input_error(
      make("huge.st", R"({"w":{"dtype":"U8","shape":[99999999999999999999],"data_offsets":[0,0]}})",
           0),
      {"'w'"});
}

// Holes between tensors and trailing bytes are accepted (see the comment in safetensors.cpp).
TEST_F(SafetensorsTest, HolesAreAccepted) {
  SafetensorsFile f(make("holes.st",
                         R"({"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]},)"
                         R"("a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                         R"("e":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})",
                         20));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"a", "e", "b"}));
  EXPECT_EQ(f.data("b")[0], 0x5a);
}

TEST_F(SafetensorsTest, IndexErrors) {
  const auto buf = pattern(8, 3);
  fs::create_directories(p("ix"));
  mpqat::io::write_safetensors(p("ix/model-00001-of-00002.safetensors"),
                               {{"a", DType::U8, {8}, buf.data(), 8}});
  // Missing shard: named in the error, found at construction.
  write_bytes(
      p("ix/model.safetensors.index.json"),
      R"({"metadata":{"total_size":16},"weight_map":{"a":"model-00001-of-00002.safetensors",)"
      R"("b":"model-00002-of-00002.safetensors"}})");
  try {
    SafetensorsCheckpoint ck(p("ix"));
    ADD_FAILURE();
  } catch (const mpqat::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model-00002-of-00002.safetensors"), std::string::npos) << msg;
    EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
  }
  // A tensor the index places in a shard that lacks it: found when that shard is mapped.
  write_bytes(p("ix/model.safetensors.index.json"),
              R"({"weight_map":{"a":"model-00001-of-00002.safetensors",)"
              R"("b":"model-00001-of-00002.safetensors"}})");
  SafetensorsCheckpoint ck(p("ix"));
  EXPECT_TRUE(ck.contains("b"));
  EXPECT_EQ(ck.file_of("b"), p("ix/model-00001-of-00002.safetensors"));
  try {
    ck.info("b");
    ADD_FAILURE();
  } catch (const mpqat::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("'b'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("model-00001-of-00002.safetensors"), std::string::npos) << msg;
  }
  const std::string ipath = p("ix/model.safetensors.index.json");
  auto expect_index_error = [&](const std::string& text, const std::string& needle) {
    write_bytes(ipath, text);
    try {
      SafetensorsCheckpoint c(ipath);
      ADD_FAILURE() << text;
    } catch (const mpqat::InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(ipath), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
  };
  expect_index_error("{not json", "JSON");
  expect_index_error("[]", "not a JSON object");
  expect_index_error(R"({"metadata":{}})", "weight_map");
  expect_index_error(R"({"weight_map":[]})", "weight_map");
  expect_index_error(R"({"weight_map":{"a":3}})", "'a'");
  expect_index_error(R"({"weight_map":{"a":"../x.safetensors"}})", "../x.safetensors");
  expect_index_error(R"({"weight_map":{"a":"/etc/passwd"}})", "/etc/passwd");
  expect_index_error(R"({"weight_map":{"a":"a.safetensors"},"metadata":3})", "metadata");
}

TEST_F(SafetensorsTest, WriterValidation) {
  const auto buf = pattern(16, 1);
  const std::string path = p("w.safetensors");
  auto expect_err = [&](const std::vector<TensorToWrite>& ts, const std::string& needle) {
    try {
      mpqat::io::write_safetensors(path, ts);
      ADD_FAILURE() << needle;
    } catch (const mpqat::InputError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    }
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(has_temp_files());
  };
  expect_err({{"w", DType::F32, {3}, buf.data(), 16}}, "'w'");  // 12 != 16
  expect_err({{"w", DType::F32, {-4}, buf.data(), 16}}, "negative");
  expect_err({{"w", DType::U8, {16}, nullptr, 16}}, "null");
  expect_err({{"w", DType::U8, {8}, buf.data(), 8}, {"w", DType::U8, {8}, buf.data(), 8}}, "twice");
  expect_err({{"__metadata__", DType::U8, {8}, buf.data(), 8}}, "reserved");

  // An unwritable destination is an Error naming the path, with no temp file left behind.
  const std::string bad = p("no/such/dir/x.safetensors");
  try {
    mpqat::io::write_safetensors(bad, {{"w", DType::U8, {8}, buf.data(), 8}});
    ADD_FAILURE();
  } catch (const mpqat::Error& e) {
    EXPECT_NE(std::string(e.what()).find(bad), std::string::npos) << e.what();
  }
  EXPECT_FALSE(has_temp_files());

  // Overwriting an existing file replaces it atomically.
  mpqat::io::write_safetensors(path, {{"w", DType::U8, {8}, buf.data(), 8}});
  mpqat::io::write_safetensors(path, {{"v", DType::U8, {16}, buf.data(), 16}});
  SafetensorsFile f(path);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"v"}));
  EXPECT_FALSE(has_temp_files());
}

}  // namespace
