// safetensors reader (mmap, zero-copy, strict validation) and atomic writer.
//
// Format: 8-byte little-endian u64 N, N bytes of a JSON object header, then the data area.
// Every header violation is an InputError naming the file (and the tensor when there is one):
// this parser is fed untrusted files and is fuzzed, so nothing is read before it is bounds-checked.
//
// Holes: the Hugging Face reference implementation requires the tensors to cover the data
// area contiguously. We accept holes between tensors (and trailing bytes after the last one)
// but reject overlaps: a hole cannot make us read a wrong byte, an overlap means two tensors
// alias each other, which no writer produces on purpose.
#include "mpqat/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::io {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Larger headers are not produced by any real writer; the cap keeps a hostile length field
// from making us parse (and allocate for) gigabytes of "JSON".
constexpr uint64_t kMaxHeaderBytes = 100ull * 1024 * 1024;
constexpr uint64_t kMaxIndexBytes = 256ull * 1024 * 1024;

constexpr const char* kAcceptedDtypes = "F32, F16, BF16, I64, I32, I16, I8, U8, BOOL";

std::string file_ctx(const std::string& path) { return "safetensors file '" + path + "'"; }

// Names come from untrusted headers: keep error messages one line and bounded.
std::string printable(const std::string& s) {
  constexpr std::size_t kMax = 200;
  std::string out;
  for (std::size_t i = 0; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  }
  if (s.size() > kMax) out += "...";
  return out;
}

std::string tensor_ctx(const std::string& path, const std::string& name) {
  return file_ctx(path) + ", tensor '" + printable(name) + "'";
}

[[noreturn]] void fail(const std::string& ctx, const std::string& what) {
  throw InputError(ctx + ": " + what);
}

// Reads a non-negative JSON integer; floats, negatives and non-numbers are rejected.
bool json_to_u64(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
    return true;
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

// numel * elem_size with overflow detection; numel must also fit int64 (TensorInfo::numel).
bool checked_nbytes(const std::vector<int64_t>& shape, std::size_t elem_size, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  if (n > static_cast<uint64_t>(INT64_MAX)) return false;
  if (__builtin_mul_overflow(n, static_cast<uint64_t>(elem_size), &n)) return false;
  *out = n;
  return true;
}

std::string errno_str(int e) { return std::strerror(e); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// dtypes

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

const char* config_dtype_name(DType dt, const std::string& context) {
  switch (dt) {
    case DType::F32: return "float32";
    case DType::F16: return "float16";
    case DType::BF16: return "bfloat16";
    default:
      throw InputError(context + ": dtype " + dtype_name(dt) + " is not a float dtype (accepted: F32, F16, BF16)");
  }
}

DType parse_float_dtype(const std::string& name, const std::string& context) {
  const auto d = util::to_lower(name);
  if (d == "f16" || d == "fp16" || d == "float16") return DType::F16;
  if (d == "bf16" || d == "bfloat16") return DType::BF16;
  if (d == "f32" || d == "fp32" || d == "float32") return DType::F32;
  throw InputError(context + " '" + name + "' is not supported (accepted: f16, bf16, f32)");
}

std::size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::F32:
      return 4;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::I64:
      return 8;
    case DType::I32:
      return 4;
    case DType::I16:
      return 2;
    case DType::I8:
      return 1;
    case DType::U8:
      return 1;
    case DType::BOOL:
      return 1;
  }
  throw Error("dtype_size: invalid DType value " + std::to_string(static_cast<int>(dt)));
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::I64:
      return "I64";
    case DType::I32:
      return "I32";
    case DType::I16:
      return "I16";
    case DType::I8:
      return "I8";
    case DType::U8:
      return "U8";
    case DType::BOOL:
      return "BOOL";
  }
  throw Error("dtype_name: invalid DType value " + std::to_string(static_cast<int>(dt)));
}

DType parse_dtype(const std::string& s, const std::string& context) {
  static const std::pair<const char*, DType> kTable[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16},
      {"I8", DType::I8},   {"U8", DType::U8},   {"BOOL", DType::BOOL}};
  for (const auto& [name, dt] : kTable)
    if (s == name) return dt;
  throw InputError(context + ": unknown dtype '" + s + "' (accepted: " + kAcceptedDtypes + ")");
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

struct SafetensorsFile::Impl {
  std::string path;
  void* map = nullptr;
  std::size_t map_len = 0;
  const uint8_t* data_area = nullptr;  // map + 8 + header length
  std::vector<std::string> names;      // sorted by data offset
  std::unordered_map<std::string, TensorInfo> infos;
  std::map<std::string, std::string> metadata;

  ~Impl() {
    if (map) ::munmap(map, map_len);
  }

  void open_and_map();
  void parse_header();
};

void SafetensorsFile::Impl::open_and_map() {
  const std::string ctx = file_ctx(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(ctx, "cannot open (" + errno_str(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    fail(ctx, "cannot stat (" + errno_str(e) + ")");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ctx, "not a regular file");
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    fail(ctx,
         "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length field");
  }
  void* m = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ, MAP_PRIVATE, fd, 0);
  const int e = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (m == MAP_FAILED) fail(ctx, "mmap failed (" + errno_str(e) + ")");
  map = m;
  map_len = static_cast<std::size_t>(size);
}

void SafetensorsFile::Impl::parse_header() {
  const std::string ctx = file_ctx(path);
  const auto* bytes = static_cast<const uint8_t*>(map);
  const uint64_t file_size = map_len;

  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | bytes[i];
  if (hlen > kMaxHeaderBytes)
    fail(ctx, "header length " + std::to_string(hlen) + " exceeds the " +
                  std::to_string(kMaxHeaderBytes) +
                  "-byte limit (corrupt or not a safetensors file)");
  if (hlen > file_size - 8)
    fail(ctx, "header length " + std::to_string(hlen) + " runs past the end of the file (" +
                  std::to_string(file_size) + " bytes)");
  if (hlen < 2)
    fail(ctx, "header length " + std::to_string(hlen) + " is too short for a JSON object");

  const uint8_t* hbeg = bytes + 8;
  const uint8_t* hend = hbeg + hlen;
  data_area = hend;
  const uint64_t data_size = file_size - 8 - hlen;

  json header;
  try {
    header = json::parse(hbeg, hend);
  } catch (const json::exception& ex) {
    fail(ctx, std::string("header is not valid JSON (") + ex.what() + ")");
  }
  if (!header.is_object()) fail(ctx, "header is not a JSON object");

  std::vector<TensorInfo> list;
  list.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(ctx, "__metadata__ is not a JSON object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          fail(ctx, "__metadata__ value for key '" + printable(m.key()) + "' is not a string");
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string tctx = tensor_ctx(path, name);
    if (!v.is_object()) fail(tctx, "entry is not a JSON object");

    TensorInfo info;
    info.name = name;

    auto dt = v.find("dtype");
    if (dt == v.end()) fail(tctx, "missing \"dtype\"");
    if (!dt->is_string()) fail(tctx, "\"dtype\" is not a string");
    info.dtype = parse_dtype(dt->get<std::string>(), tctx);

    auto sh = v.find("shape");
    if (sh == v.end()) fail(tctx, "missing \"shape\"");
    if (!sh->is_array()) fail(tctx, "\"shape\" is not an array");
    info.shape.reserve(sh->size());
    for (const json& d : *sh) {
      uint64_t u = 0;
      if (!json_to_u64(d, &u) || u > static_cast<uint64_t>(INT64_MAX))
        fail(tctx, "shape dimension " + d.dump() + " is not a non-negative integer");
      info.shape.push_back(static_cast<int64_t>(u));
    }

    auto off = v.find("data_offsets");
    if (off == v.end()) fail(tctx, "missing \"data_offsets\"");
    if (!off->is_array() || off->size() != 2 || !json_to_u64((*off)[0], &info.begin) ||
        !json_to_u64((*off)[1], &info.end))
      fail(tctx, "\"data_offsets\" must be [begin, end] of two non-negative integers, got " +
                     off->dump());
    if (info.begin > info.end) fail(tctx, "data_offsets " + off->dump() + " are not ascending");

    uint64_t expected = 0;
    if (!checked_nbytes(info.shape, dtype_size(info.dtype), &expected))
      fail(tctx, "shape " + shape_str(info.shape) + " x " + dtype_name(info.dtype) +
                     " overflows 64-bit byte count");
    if (info.end - info.begin != expected)
      fail(tctx, "data_offsets " + off->dump() + " span " + std::to_string(info.end - info.begin) +
                     " bytes but shape " + shape_str(info.shape) + " x " + dtype_name(info.dtype) +
                     " needs " + std::to_string(expected));
    if (info.end > data_size)
      fail(tctx, "data_offsets " + off->dump() + " run past the data area (" +
                     std::to_string(data_size) + " bytes)");
    list.push_back(std::move(info));
  }

  // Overlap check: after sorting by (begin, end) any overlap shows up between neighbours.
  std::sort(list.begin(), list.end(), [](const TensorInfo& a, const TensorInfo& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  for (std::size_t i = 1; i < list.size(); ++i) {
    const TensorInfo& a = list[i - 1];
    const TensorInfo& b = list[i];
    if (b.begin < a.end)
      fail(tensor_ctx(path, b.name), "data_offsets [" + std::to_string(b.begin) + ", " +
                                         std::to_string(b.end) + "] overlap tensor '" +
                                         printable(a.name) + "' at [" + std::to_string(a.begin) +
                                         ", " + std::to_string(a.end) + "]");
  }
  names.reserve(list.size());
  for (auto& info : list) {
    names.push_back(info.name);
    std::string key = info.name;
    infos.emplace(std::move(key), std::move(info));
  }
}

SafetensorsFile::SafetensorsFile(const std::string& path) : impl_(std::make_unique<Impl>()) {
  impl_->path = path;
  impl_->open_and_map();
  try {
    impl_->parse_header();
  } catch (const json::exception& ex) {
    // Defensive: every json access above is type-checked first, but never let one escape.
    throw InputError(file_ctx(path) + ": malformed header (" + ex.what() + ")");
  }
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const std::string& SafetensorsFile::path() const { return impl_->path; }
const std::vector<std::string>& SafetensorsFile::names() const { return impl_->names; }
bool SafetensorsFile::contains(const std::string& name) const {
  return impl_->infos.count(name) != 0;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = impl_->infos.find(name);
  if (it == impl_->infos.end())
    throw InputError(file_ctx(impl_->path) + ": no tensor named '" + name + "' (file has " +
                     std::to_string(impl_->names.size()) + " tensors)");
  return it->second;
}

const uint8_t* SafetensorsFile::data(const std::string& name) const {
  return impl_->data_area + info(name).begin;
}

void SafetensorsFile::release(const std::string& name) const {
  const auto& t = info(name);
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(impl_->data_area + t.begin) & ~(page - 1);
  const auto end = reinterpret_cast<uintptr_t>(impl_->data_area + t.end);
  // A read-only file mapping: dropped pages are read again from the page cache when touched.
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return impl_->metadata;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsCheckpoint

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_small_file(const std::string& path, uint64_t limit, const std::string& ctx) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) fail(ctx, "cannot read (" + ec.message() + ")");
  if (size > limit)
    fail(ctx, "file is " + std::to_string(size) + " bytes, over the " + std::to_string(limit) +
                  "-byte limit");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ctx, "cannot open (" + errno_str(errno) + ")");
  std::string s(static_cast<std::size_t>(size), '\0');
  in.read(s.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) fail(ctx, "short read");
  return s;
}

}  // namespace

struct SafetensorsCheckpoint::Impl {
  struct Shard {
    std::string path;
    std::vector<std::string> expected;  // tensors the index places in this shard
    std::mutex mu;                      // guards lazy mapping of `file`
    std::unique_ptr<SafetensorsFile> file;
  };
  std::string source;                               // what the user passed, for error messages
  std::string index_path;                           // empty when a single file
  std::vector<std::unique_ptr<Shard>> shards;       // sorted by path
  std::map<std::string, std::size_t> tensor_shard;  // name -> index into shards
  std::map<std::string, std::string> index_metadata;

  void open_index(const std::string& path);
  void open_single(const std::string& path);
  Shard& shard_of(const std::string& name);
  SafetensorsFile& mapped(Shard& s);
};

void SafetensorsCheckpoint::Impl::open_single(const std::string& path) {
  auto shard = std::make_unique<Shard>();
  shard->path = path;
  shard->file = std::make_unique<SafetensorsFile>(path);  // eager: we need its tensor names
  for (const auto& n : shard->file->names()) tensor_shard.emplace(n, 0);
  shards.push_back(std::move(shard));
}

void SafetensorsCheckpoint::Impl::open_index(const std::string& path) {
  index_path = path;
  const std::string ctx = "safetensors index '" + path + "'";
  const std::string text = read_small_file(path, kMaxIndexBytes, ctx);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& ex) {
    fail(ctx, std::string("not valid JSON (") + ex.what() + ")");
  }
  if (!j.is_object()) fail(ctx, "not a JSON object");
  auto wm = j.find("weight_map");
  if (wm == j.end()) fail(ctx, "missing \"weight_map\"");
  if (!wm->is_object()) fail(ctx, "\"weight_map\" is not an object of tensor name -> shard file");
  auto md = j.find("metadata");
  if (md != j.end() && !md->is_null()) {
    if (!md->is_object()) fail(ctx, "\"metadata\" is not an object");
    for (auto it = md->begin(); it != md->end(); ++it)
      index_metadata[it.key()] =
          it.value().is_string() ? it.value().get<std::string>() : it.value().dump();
  }

  const fs::path dir = fs::path(path).parent_path();
  std::map<std::string, std::vector<std::string>> by_shard;  // shard file -> tensors
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string())
      fail(ctx, "weight_map entry for tensor '" + it.key() + "' is not a string file name");
    const std::string shard = it.value().get<std::string>();
    const fs::path sp(shard);
    bool bad = shard.empty() || sp.is_absolute();
    for (const auto& part : sp)
      if (part == "..") bad = true;
    if (bad)
      fail(ctx, "weight_map entry for tensor '" + it.key() + "' names shard '" + shard +
                    "'; expected a relative file name inside the index's folder");
    by_shard[shard].push_back(it.key());
  }
  for (auto& [shard, tensors] : by_shard) {
    const std::string full = (dir / shard).string();
    std::error_code ec;
    if (!fs::is_regular_file(full, ec))
      fail(ctx, "shard '" + full + "' (holding tensor '" + tensors.front() + "') does not exist");
    auto s = std::make_unique<Shard>();
    s->path = full;
    for (const auto& t : tensors) tensor_shard.emplace(t, shards.size());
    s->expected = std::move(tensors);
    shards.push_back(std::move(s));
  }
}

SafetensorsFile& SafetensorsCheckpoint::Impl::mapped(Shard& s) {
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.file) {
    auto f = std::make_unique<SafetensorsFile>(s.path);
    for (const auto& t : s.expected)
      if (!f->contains(t))
        throw InputError("safetensors index '" + index_path + "' places tensor '" + t +
                         "' in shard '" + s.path + "', which does not contain it");
    s.file = std::move(f);
  }
  return *s.file;
}

SafetensorsCheckpoint::Impl::Shard& SafetensorsCheckpoint::Impl::shard_of(const std::string& name) {
  auto it = tensor_shard.find(name);
  if (it == tensor_shard.end())
    throw InputError("safetensors checkpoint '" + source + "': no tensor named '" + name + "'");
  return *shards[it->second];
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& path_or_dir)
    : impl_(std::make_unique<Impl>()) {
  impl_->source = path_or_dir;
  std::error_code ec;
  const fs::path p(path_or_dir);
  if (fs::is_directory(p, ec)) {
    const fs::path idx = p / "model.safetensors.index.json";
    const fs::path single = p / "model.safetensors";
    if (fs::is_regular_file(idx, ec)) {
      impl_->open_index(idx.string());
      return;
    }
    if (fs::is_regular_file(single, ec)) {
      impl_->open_single(single.string());
      return;
    }
    // Other stems (write_safetensors_sharded's `stem`): one index, else one file.
    std::vector<std::string> indexes, files;
    for (fs::directory_iterator it(p, ec), end; !ec && it != end; it.increment(ec)) {
      if (!it->is_regular_file(ec)) continue;
      const std::string fname = it->path().filename().string();
      if (ends_with(fname, ".safetensors.index.json")) indexes.push_back(it->path().string());
      if (ends_with(fname, ".safetensors")) files.push_back(it->path().string());
    }
    if (indexes.size() == 1) {
      impl_->open_index(indexes.front());
      return;
    }
    if (indexes.empty() && files.size() == 1) {
      impl_->open_single(files.front());
      return;
    }
    std::sort(indexes.begin(), indexes.end());
    std::sort(files.begin(), files.end());
    std::string found;
    for (const auto& f : indexes) found += " " + fs::path(f).filename().string();
    for (const auto& f : files) found += " " + fs::path(f).filename().string();
    throw InputError("safetensors checkpoint folder '" + path_or_dir +
                     "': expected model.safetensors.index.json, model.safetensors, exactly one "
                     "*.safetensors.index.json or exactly one *.safetensors file; found" +
                     (found.empty() ? std::string(" none") : ":" + found));
  }
  if (!fs::exists(p, ec))
    throw InputError("safetensors checkpoint '" + path_or_dir + "' does not exist");
  if (ends_with(path_or_dir, ".json"))
    impl_->open_index(path_or_dir);
  else
    impl_->open_single(path_or_dir);
}

SafetensorsCheckpoint::~SafetensorsCheckpoint() = default;
SafetensorsCheckpoint::SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept = default;
SafetensorsCheckpoint& SafetensorsCheckpoint::operator=(SafetensorsCheckpoint&&) noexcept = default;

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->tensor_shard.size());
  for (const auto& kv : impl_->tensor_shard) out.push_back(kv.first);
  return out;  // std::map iteration order is already sorted
}

bool SafetensorsCheckpoint::contains(const std::string& name) const {
  return impl_->tensor_shard.count(name) != 0;
}

const TensorInfo& SafetensorsCheckpoint::info(const std::string& name) const {
  return impl_->mapped(impl_->shard_of(name)).info(name);
}

const uint8_t* SafetensorsCheckpoint::data(const std::string& name) const {
  return impl_->mapped(impl_->shard_of(name)).data(name);
}

void SafetensorsCheckpoint::release(const std::string& name) const {
  impl_->mapped(impl_->shard_of(name)).release(name);
}

const std::string& SafetensorsCheckpoint::file_of(const std::string& name) const {
  return impl_->shard_of(name).path;
}

std::map<std::string, std::string> SafetensorsCheckpoint::metadata() const {
  std::map<std::string, std::string> out;
  if (!impl_->shards.empty()) out = impl_->mapped(*impl_->shards.front()).metadata();
  // Index values win: "total_size" describes the whole checkpoint, not the first shard.
  for (const auto& kv : impl_->index_metadata) out[kv.first] = kv.second;
  return out;
}

uint64_t SafetensorsCheckpoint::total_tensor_bytes() const {
  // Maps every shard (header parse only, no data is touched).
  uint64_t total = 0;
  for (const auto& [name, idx] : impl_->tensor_shard)
    total += impl_->mapped(*impl_->shards[idx]).info(name).nbytes();
  return total;
}

// ---------------------------------------------------------------------------------------------
// Writer

namespace {

// Checks one tensor and returns its byte count; InputError names `ctx` and the tensor.
uint64_t validate_tensor(const TensorToWrite& t, const std::string& ctx) {
  const std::string tctx = ctx + ", tensor '" + t.name + "'";
  if (t.name == "__metadata__") fail(tctx, "the name __metadata__ is reserved by the format");
  for (int64_t d : t.shape)
    if (d < 0) fail(tctx, "shape " + shape_str(t.shape) + " has a negative dimension");
  uint64_t expected = 0;
  if (!checked_nbytes(t.shape, dtype_size(t.dtype), &expected))
    fail(tctx, "shape " + shape_str(t.shape) + " overflows a 64-bit byte count");
  if (t.nbytes != expected)
    fail(tctx, "nbytes " + std::to_string(t.nbytes) + " != shape " + shape_str(t.shape) + " x " +
                   dtype_name(t.dtype) + " = " + std::to_string(expected));
  if (expected > 0 && t.data == nullptr) fail(tctx, "data pointer is null");
  return expected;
}

void validate_all(const std::vector<TensorToWrite>& tensors, const std::string& ctx) {
  std::set<std::string> seen;
  for (const auto& t : tensors) {
    validate_tensor(t, ctx);
    if (!seen.insert(t.name).second) fail(ctx, "tensor name '" + t.name + "' appears twice");
  }
}

std::string build_header(const std::vector<TensorToWrite>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  json h = json::object();
  uint64_t off = 0;
  for (const auto& t : tensors) {
    json e = json::object();
    e["dtype"] = dtype_name(t.dtype);
    e["shape"] = t.shape;
    e["data_offsets"] = json::array({off, off + t.nbytes});
    off += t.nbytes;
    h[t.name] = std::move(e);
  }
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::string s = h.dump();
  // Padding keeps the data area 8-byte aligned in the mapping, as the HF writer does.
  s.append((8 - s.size() % 8) % 8, ' ');
  return s;
}

}  // namespace

uint64_t header_bytes(const std::vector<TensorToWrite>& tensors, const std::map<std::string, std::string>& metadata) {
  return 8 + build_header(tensors, metadata).size();
}

std::vector<std::vector<std::size_t>> plan_shards(const std::vector<uint64_t>& sizes, uint64_t max_shard_bytes) {
  // Greedy packing in the given order; a tensor larger than the limit gets a shard alone.
  std::vector<std::vector<std::size_t>> groups;
  uint64_t cur = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const bool fits = max_shard_bytes == 0 || (!groups.empty() && cur + sizes[i] <= max_shard_bytes);
    if (groups.empty() || !fits) {
      groups.emplace_back();
      cur = 0;
    }
    groups.back().push_back(i);
    cur += sizes[i];
  }
  return groups;
}

std::string shard_file_name(const std::string& stem, std::size_t i, std::size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "-%05zu-of-%05zu.safetensors", i + 1, n);
  return stem + buf;
}

void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  validate_all(tensors, "writing safetensors file '" + path + "'");
  std::string header;
  try {
    header = build_header(tensors, metadata);
  } catch (const json::exception& ex) {
    // e.g. a tensor name or metadata string that is not valid UTF-8.
    throw InputError("writing safetensors file '" + path + "': cannot encode header (" + ex.what() +
                     ")");
  }
  util::write_file_atomic_with(path, [&](int fd) {
    uint8_t len[8];
    const uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
    util::write_fd_all(fd, len, 8, path);
    util::write_fd_all(fd, header.data(), header.size(), path);
    for (const auto& t : tensors)
      if (t.nbytes) util::write_fd_all(fd, t.data, t.nbytes, path);
  });
}

namespace {

// True when `fname` is `<stem>-DDDDD-of-DDDDD.safetensors`.
bool is_shard_name(const std::string& fname, const std::string& stem) {
  const std::string prefix = stem + "-";
  const std::string tail = ".safetensors";
  if (fname.size() != prefix.size() + 14 + tail.size()) return false;
  if (fname.compare(0, prefix.size(), prefix) != 0 || !ends_with(fname, tail)) return false;
  const std::string mid = fname.substr(prefix.size(), 14);  // DDDDD-of-DDDDD
  for (int i = 0; i < 14; ++i) {
    const bool digit = (i < 5 || i >= 9);
    if (digit && !std::isdigit(static_cast<unsigned char>(mid[i]))) return false;
  }
  return mid.compare(5, 4, "-of-") == 0;
}

}  // namespace

// Stale files: a previous write into the same folder with the same stem may have produced
// a different layout. Shards are written first and the index (or the single file) last, so
// the folder keeps pointing at a complete layout until the commit point; afterwards every
// `<stem>.safetensors`, `<stem>.safetensors.index.json` and `<stem>-DDDDD-of-DDDDD.safetensors`
// not part of this write is removed, so no stale index can describe a different layout.
std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes,
    const std::string& stem) {
  return write_safetensors_sharded(dir, tensors, nullptr, metadata, max_shard_bytes, stem);
}

std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::vector<TensorToWrite>& tensors, const ShardProducer& produce,
    const std::map<std::string, std::string>& metadata, uint64_t max_shard_bytes,
    const std::string& stem) {
  const std::string ctx = "writing safetensors checkpoint '" + dir + "'";
  if (stem.empty() || stem.find('/') != std::string::npos)
    throw InputError(ctx + ": stem '" + stem + "' must be a non-empty file name without '/'");
  if (!produce) validate_all(tensors, ctx);

  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(ctx + ": cannot create folder (" + ec.message() + ")");

  std::vector<uint64_t> sizes;
  for (const auto& t : tensors) sizes.push_back(t.nbytes);
  const auto groups = plan_shards(sizes, max_shard_bytes);
  // One shard's tensors, their bytes filled by `produce` when given.
  auto part_of = [&](std::size_t i) {
    std::vector<TensorToWrite> part;
    for (auto k : groups[i]) part.push_back(tensors[k]);
    if (produce) {
      produce(i, part);
      validate_all(part, ctx);
    }
    return part;
  };

  const fs::path d(dir);
  std::vector<std::string> written;
  if (groups.size() <= 1) {
    const std::string path = (d / (stem + ".safetensors")).string();
    write_safetensors(path, groups.empty() ? tensors : part_of(0), metadata);
    written.push_back(path);
  } else {
    const std::size_t n = groups.size();
    if (n > 99999)
      throw InputError(ctx + ": " + std::to_string(n) +
                       " shards exceed the 99999 limit of the naming scheme");
    json weight_map = json::object();
    uint64_t total = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const std::string fname = shard_file_name(stem, i, n);
      const auto part = part_of(i);
      for (const auto& t : part) {
        weight_map[t.name] = fname;
        total += t.nbytes;
      }
      const std::string path = (d / fname).string();
      write_safetensors(path, part, metadata);
      written.push_back(path);
    }
    json index = json::object();
    index["metadata"] = json::object({{"total_size", total}});
    index["weight_map"] = std::move(weight_map);
    const std::string text = index.dump(2) + "\n";
    const std::string ipath = (d / (stem + ".safetensors.index.json")).string();
    util::write_file_atomic_with(ipath, [&](int fd) { util::write_fd_all(fd, text.data(), text.size(), ipath); });
    written.push_back(ipath);
  }

  // Remove what a previous write left behind (see comment above).
  std::set<std::string> keep;
  for (const auto& w : written) keep.insert(fs::path(w).filename().string());
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string fname = it->path().filename().string();
    if (keep.count(fname)) continue;
    if (fname == stem + ".safetensors" || fname == stem + ".safetensors.index.json" ||
        is_shard_name(fname, stem))
      stale.push_back(it->path());
  }
  for (const auto& s : stale) fs::remove(s, ec);  // best effort: the new layout is complete
  return written;
}

}  // namespace mpqat::io
