#include "mpqat/io/gguf.h"

#include <cstring>
#include <fstream>
#include <set>
#include <type_traits>

#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::io {

namespace {

// GGUF metadata value types (gguf_type in ggml's gguf.h).
enum : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8,
  kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

const std::vector<GgmlTypeTraits>& table() {
  static const std::vector<GgmlTypeTraits> t = {
      {GgmlType::F32, "F32", 1, 4},       {GgmlType::F16, "F16", 1, 2},
      {GgmlType::Q4_0, "Q4_0", 32, 18},   {GgmlType::Q4_1, "Q4_1", 32, 20},
      {GgmlType::Q5_0, "Q5_0", 32, 22},   {GgmlType::Q5_1, "Q5_1", 32, 24},
      {GgmlType::Q8_0, "Q8_0", 32, 34},   {GgmlType::Q2_K, "Q2_K", 256, 84},
      {GgmlType::Q3_K, "Q3_K", 256, 110}, {GgmlType::Q4_K, "Q4_K", 256, 144},
      {GgmlType::Q5_K, "Q5_K", 256, 176}, {GgmlType::Q6_K, "Q6_K", 256, 210},
  };
  return t;
}

uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

// Serialises the header (everything before the padding of the data area) into a string.
class Out {
 public:
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void str(const std::string& s) {
    u64(s.size());
    buf_.append(s);
  }
  void raw(const void* p, std::size_t n) { buf_.append(static_cast<const char*>(p), n); }
  std::string& buf() { return buf_; }

 private:
  std::string buf_;
};

template <class T>
void put_array(Out& o, uint32_t type, const std::vector<T>& v) {
  o.u32(kArray);
  o.u32(type);
  o.u64(v.size());
  if constexpr (std::is_same_v<T, std::string>) {
    for (const auto& s : v) o.str(s);
  } else {
    if (!v.empty()) o.raw(v.data(), v.size() * sizeof(T));
  }
}

void put_value(Out& o, const GgufValue& v) {
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, uint32_t>) { o.u32(kU32); o.raw(&x, 4); }
        else if constexpr (std::is_same_v<T, int32_t>) { o.u32(kI32); o.raw(&x, 4); }
        else if constexpr (std::is_same_v<T, float>) { o.u32(kF32); o.raw(&x, 4); }
        else if constexpr (std::is_same_v<T, bool>) { o.u32(kBool); const uint8_t b = x ? 1 : 0; o.raw(&b, 1); }
        else if constexpr (std::is_same_v<T, std::string>) { o.u32(kString); o.str(x); }
        else if constexpr (std::is_same_v<T, uint64_t>) { o.u32(kU64); o.raw(&x, 8); }
        else if constexpr (std::is_same_v<T, int64_t>) { o.u32(kI64); o.raw(&x, 8); }
        else if constexpr (std::is_same_v<T, double>) { o.u32(kF64); o.raw(&x, 8); }
        else if constexpr (std::is_same_v<T, std::vector<std::string>>) put_array(o, kString, x);
        else if constexpr (std::is_same_v<T, std::vector<float>>) put_array(o, kF32, x);
        else if constexpr (std::is_same_v<T, std::vector<int32_t>>) put_array(o, kI32, x);
        else if constexpr (std::is_same_v<T, std::vector<uint32_t>>) put_array(o, kU32, x);
      },
      v);
}

// Checks the layout and returns the tensors' offsets in the data area.
std::vector<uint64_t> plan(const std::vector<GgufKV>& kvs, const std::vector<GgufTensorSpec>& tensors,
                           uint64_t* data_bytes) {
  std::set<std::string> keys;
  for (const auto& kv : kvs) {
    if (!keys.insert(kv.key).second) throw InputError("GGUF metadata key '" + kv.key + "' appears twice");
    if (kv.key == "general.alignment") {
      const auto* a = std::get_if<uint32_t>(&kv.value);
      if (!a || *a != kGgufAlignment)
        throw InputError("GGUF metadata general.alignment: this writer lays tensors out at 32 bytes (u32 32)");
    }
  }
  std::set<std::string> names;
  std::vector<uint64_t> offsets;
  uint64_t off = 0;
  for (const auto& t : tensors) {
    if (!names.insert(t.name).second) throw InputError("GGUF tensor '" + t.name + "' appears twice");
    if (t.ne.empty() || t.ne.size() > 4)
      throw InputError("GGUF tensor '" + t.name + "' has " + std::to_string(t.ne.size()) +
                       " dimensions (1 to 4 accepted)");
    offsets.push_back(off);
    off += t.padded_nbytes();
  }
  *data_bytes = off;
  return offsets;
}

std::string header_bytes(const std::vector<GgufKV>& kvs, const std::vector<GgufTensorSpec>& tensors,
                         const std::vector<uint64_t>& offsets) {
  Out o;
  o.raw("GGUF", 4);
  o.u32(kGgufVersion);
  o.u64(tensors.size());
  o.u64(kvs.size());
  for (const auto& kv : kvs) {
    o.str(kv.key);
    put_value(o, kv.value);
  }
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    o.str(t.name);
    o.u32(static_cast<uint32_t>(t.ne.size()));
    for (int64_t d : t.ne) o.u64(static_cast<uint64_t>(d));
    o.u32(static_cast<uint32_t>(t.type));
    o.u64(offsets[i]);
  }
  o.buf().append(align_up(o.buf().size(), kGgufAlignment) - o.buf().size(), '\0');
  return std::move(o.buf());
}

// A bounds-checked cursor over the header bytes.
class In {
 public:
  In(std::ifstream& f, std::string path, uint64_t size) : f_(f), path_(std::move(path)), size_(size) {}
  void raw(void* p, uint64_t n) {
    if (pos_ + n > size_ || !f_.read(static_cast<char*>(p), static_cast<std::streamsize>(n)))
      fail("the file ends inside the header");
    pos_ += n;
  }
  template <class T>
  T get() {
    T v{};
    raw(&v, sizeof(T));
    return v;
  }
  std::string str() {
    const uint64_t n = get<uint64_t>();
    if (n > size_ - pos_) fail("a string of " + std::to_string(n) + " bytes runs past the end of the file");
    std::string s(n, '\0');
    raw(s.data(), n);
    return s;
  }
  uint64_t count(uint64_t elem_bytes) {
    const uint64_t n = get<uint64_t>();
    if (elem_bytes && n > (size_ - pos_) / elem_bytes)
      fail("an array of " + std::to_string(n) + " elements runs past the end of the file");
    return n;
  }
  [[noreturn]] void fail(const std::string& what) const {
    throw InputError("GGUF file '" + path_ + "', byte " + std::to_string(pos_) + ": " + what);
  }
  uint64_t pos() const { return pos_; }

 private:
  std::ifstream& f_;
  std::string path_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

uint64_t scalar_bytes(uint32_t type) {
  switch (type) {
    case kU8: case kI8: case kBool: return 1;
    case kU16: case kI16: return 2;
    case kU32: case kI32: case kF32: return 4;
    case kU64: case kI64: case kF64: return 8;
    default: return 0;
  }
}

template <class T>
std::vector<T> read_array_as(In& in, uint32_t et, uint64_t n) {
  std::vector<T> v;
  v.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    switch (et) {
      case kU8: v.push_back(static_cast<T>(in.get<uint8_t>())); break;
      case kI8: v.push_back(static_cast<T>(in.get<int8_t>())); break;
      case kU16: v.push_back(static_cast<T>(in.get<uint16_t>())); break;
      case kI16: v.push_back(static_cast<T>(in.get<int16_t>())); break;
      case kU32: v.push_back(static_cast<T>(in.get<uint32_t>())); break;
      case kI32: v.push_back(static_cast<T>(in.get<int32_t>())); break;
      case kBool: v.push_back(static_cast<T>(in.get<uint8_t>())); break;
      default: in.fail("array element type " + std::to_string(et) + " cannot be read as numbers");
    }
  }
  return v;
}

GgufValue read_value(In& in, uint32_t type) {
  switch (type) {
    case kU8: return static_cast<uint32_t>(in.get<uint8_t>());
    case kI8: return static_cast<int32_t>(in.get<int8_t>());
    case kU16: return static_cast<uint32_t>(in.get<uint16_t>());
    case kI16: return static_cast<int32_t>(in.get<int16_t>());
    case kU32: return in.get<uint32_t>();
    case kI32: return in.get<int32_t>();
    case kF32: return in.get<float>();
    case kBool: return in.get<uint8_t>() != 0;
    case kString: return in.str();
    case kU64: return in.get<uint64_t>();
    case kI64: return in.get<int64_t>();
    case kF64: return in.get<double>();
    case kArray: {
      const uint32_t et = in.get<uint32_t>();
      if (et == kString) {
        const uint64_t n = in.count(8);
        std::vector<std::string> v;
        v.reserve(n);
        for (uint64_t i = 0; i < n; ++i) v.push_back(in.str());
        return v;
      }
      const uint64_t eb = scalar_bytes(et);
      if (eb == 0) in.fail("array element type " + std::to_string(et) + " is not a GGUF scalar type");
      const uint64_t n = in.count(eb);
      if (et == kF32) {
        std::vector<float> v(n);
        if (n) in.raw(v.data(), n * 4);
        return v;
      }
      if (et == kU32 || et == kU8 || et == kU16) return read_array_as<uint32_t>(in, et, n);
      if (et == kI32 || et == kI8 || et == kI16 || et == kBool) return read_array_as<int32_t>(in, et, n);
      in.fail("arrays of 64-bit or f64 elements are not read by this reader");
    }
    default:
      in.fail("metadata value type " + std::to_string(type) + " is not a GGUF type (0-12)");
  }
}

}  // namespace

const GgmlTypeTraits& ggml_type_traits(GgmlType t) {
  for (const auto& e : table())
    if (e.type == t) return e;
  throw InputError("ggml tensor type " + std::to_string(static_cast<uint32_t>(t)) +
                   " is not one mpqat reads or writes (F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K)");
}

uint64_t ggml_row_bytes(GgmlType t, int64_t n, const std::string& context) {
  const auto& tr = ggml_type_traits(t);
  if (n < 0 || n % tr.block_elems != 0)
    throw InputError(context + ": a row of " + std::to_string(n) + " weights does not divide into " +
                     tr.name + " blocks of " + std::to_string(tr.block_elems));
  return static_cast<uint64_t>(n / tr.block_elems) * tr.block_bytes;
}

uint64_t GgufTensorSpec::nbytes() const {
  if (ne.empty()) throw InputError("GGUF tensor '" + name + "' has no dimensions");
  uint64_t rows = 1;
  for (std::size_t i = 1; i < ne.size(); ++i) {
    if (ne[i] < 0) throw InputError("GGUF tensor '" + name + "' has a negative dimension");
    rows *= static_cast<uint64_t>(ne[i]);
  }
  return rows * ggml_row_bytes(type, ne[0], "GGUF tensor '" + name + "'");
}

uint64_t GgufTensorSpec::padded_nbytes() const { return align_up(nbytes(), kGgufAlignment); }

uint64_t gguf_file_size(const std::vector<GgufKV>& kvs, const std::vector<GgufTensorSpec>& tensors) {
  uint64_t data = 0;
  const auto offsets = plan(kvs, tensors, &data);
  return header_bytes(kvs, tensors, offsets).size() + data;
}

void write_gguf(const std::string& path, const std::vector<GgufKV>& kvs,
                const std::vector<GgufTensorSpec>& tensors,
                const std::function<void(std::size_t i, uint8_t* dst)>& fill) {
  uint64_t data = 0;
  const auto offsets = plan(kvs, tensors, &data);
  const std::string header = header_bytes(kvs, tensors, offsets);
  util::write_file_atomic_with(path, [&](int fd) {
    util::write_fd_all(fd, header.data(), header.size(), path);
    std::vector<uint8_t> buf;
    uint64_t written = 0;
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      const uint64_t n = tensors[i].nbytes();
      const uint64_t padded = align_up(n, kGgufAlignment);
      buf.assign(padded, 0);
      fill(i, buf.data());
      util::write_fd_all(fd, buf.data(), padded, path);
      written += padded;
    }
    if (written != data) throw Error("GGUF writer: wrote " + std::to_string(written) + " data bytes for '" + path +
                                     "', planned " + std::to_string(data));
  });
}

const GgufValue* GgufHeader::find(const std::string& key) const {
  for (const auto& kv : kvs)
    if (kv.key == key) return &kv.value;
  return nullptr;
}

GgufHeader read_gguf_header(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) throw InputError("cannot read GGUF file '" + path + "'");
  GgufHeader h;
  h.file_size = static_cast<uint64_t>(f.tellg());
  f.seekg(0);
  In in(f, path, h.file_size);
  char magic[4];
  in.raw(magic, 4);
  if (std::memcmp(magic, "GGUF", 4) != 0) in.fail("not a GGUF file (the first 4 bytes are not 'GGUF')");
  h.version = in.get<uint32_t>();
  if (h.version != 2 && h.version != 3) in.fail("GGUF version " + std::to_string(h.version) + " (2 or 3 accepted)");
  const uint64_t n_tensors = in.count(8 + 4 + 8 + 4 + 8);
  const uint64_t n_kv = in.count(8 + 4 + 1);
  for (uint64_t i = 0; i < n_kv; ++i) {
    GgufKV kv;
    kv.key = in.str();
    kv.value = read_value(in, in.get<uint32_t>());
    if (kv.key == "general.alignment") {
      const auto* a = std::get_if<uint32_t>(&kv.value);
      if (!a || *a == 0 || (*a & (*a - 1)) != 0) in.fail("general.alignment is not a u32 power of two");
      h.alignment = *a;
    }
    h.kvs.push_back(std::move(kv));
  }
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorSpec t;
    t.name = in.str();
    const uint32_t nd = in.get<uint32_t>();
    if (nd == 0 || nd > 4) in.fail("tensor '" + t.name + "' has " + std::to_string(nd) + " dimensions (1-4)");
    for (uint32_t d = 0; d < nd; ++d) t.ne.push_back(static_cast<int64_t>(in.get<uint64_t>()));
    t.type = static_cast<GgmlType>(in.get<uint32_t>());
    h.offsets.push_back(in.get<uint64_t>());
    h.tensors.push_back(std::move(t));
  }
  h.data_offset = align_up(in.pos(), h.alignment);
  for (std::size_t i = 0; i < h.tensors.size(); ++i) {
    const auto& t = h.tensors[i];
    uint64_t nb = 0;
    try {
      nb = t.nbytes();
    } catch (const InputError& e) {
      in.fail(e.what());
    }
    if (h.offsets[i] % h.alignment != 0 || h.data_offset + h.offsets[i] + nb > h.file_size)
      in.fail("tensor '" + t.name + "' (" + std::to_string(nb) + " bytes at data offset " +
              std::to_string(h.offsets[i]) + ") is misaligned or runs past the end of the file");
  }
  return h;
}

std::vector<uint8_t> read_gguf_tensor(const std::string& path, const GgufHeader& h, std::size_t i) {
  const auto& t = h.tensors.at(i);
  std::vector<uint8_t> out(t.nbytes());
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(h.data_offset + h.offsets.at(i)));
  if (!f || !f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size())))
    throw InputError("GGUF file '" + path + "': cannot read tensor '" + t.name + "'");
  return out;
}

}  // namespace mpqat::io
