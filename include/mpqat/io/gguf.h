// GGUF v3, the file format of llama.cpp (and ollama, LM Studio on top of it): a writer that
// streams one tensor at a time into an atomic temp file, the exact file size of a layout (what
// the writer will produce, byte for byte), and a header reader for tests and inspection.
// No torch here; docs/gguf.md describes the layout and what mpqat puts in it.
//
// Layout (little-endian): "GGUF", u32 version 3, u64 tensor count, u64 metadata count; each
// metadata entry as key (u64 length + bytes), u32 value type, value (strings as u64 length +
// bytes, arrays as u32 element type + u64 count + elements); each tensor info as name, u32
// n_dims, u64 ne[n_dims] (ne[0] = the row length, the fastest-varying dimension), u32 ggml type,
// u64 offset into the data area; zero padding to `general.alignment` (32 by default); the data
// area, each tensor at an aligned offset.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <variant>
#include <vector>

namespace mpqat::io {

// The ggml tensor types mpqat writes (values as in ggml.h).
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;     // "Q4_0"
  int64_t block_elems;  // weights per block (1 for F32 / F16)
  uint64_t block_bytes;
};
// Throws InputError for a type value this table does not hold.
const GgmlTypeTraits& ggml_type_traits(GgmlType t);
// Bytes of a row of `n` weights; throws InputError naming `context` when n is not a multiple of
// the type's block.
uint64_t ggml_row_bytes(GgmlType t, int64_t n, const std::string& context);

// A metadata value. The writer emits each alternative as the GGUF type of the same name
// (vectors as arrays); the reader maps u8/u16 onto uint32_t and i8/i16 onto int32_t.
using GgufValue = std::variant<uint32_t, int32_t, float, bool, std::string, uint64_t, int64_t, double,
                               std::vector<std::string>, std::vector<float>, std::vector<int32_t>,
                               std::vector<uint32_t>>;

struct GgufKV {
  std::string key;
  GgufValue value;
};

struct GgufTensorSpec {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] = row length ("in"), ne[1] = rows ("out")
  GgmlType type = GgmlType::F32;
  // Bytes of the tensor's data; throws InputError when ne[0] does not divide into blocks.
  uint64_t nbytes() const;
  // nbytes() padded to the file's alignment: what the tensor occupies in the file.
  uint64_t padded_nbytes() const;
};

constexpr uint32_t kGgufVersion = 3;
constexpr uint64_t kGgufAlignment = 32;

// The size of the file write_gguf produces for this layout, to the byte.
uint64_t gguf_file_size(const std::vector<GgufKV>& kvs, const std::vector<GgufTensorSpec>& tensors);

// Writes `path` atomically (temp file + fsync + rename; an existing file is replaced only when
// the new one is complete). `fill(i, dst)` writes tensor i's nbytes() bytes into `dst`; tensors
// are requested in order, one at a time. Throws InputError for a duplicate key or tensor name, a
// "general.alignment" other than 32, or a tensor whose row does not divide into blocks.
void write_gguf(const std::string& path, const std::vector<GgufKV>& kvs,
                const std::vector<GgufTensorSpec>& tensors,
                const std::function<void(std::size_t i, uint8_t* dst)>& fill);

// A GGUF file's header as read back.
struct GgufHeader {
  uint32_t version = 0;
  std::vector<GgufKV> kvs;
  std::vector<GgufTensorSpec> tensors;
  std::vector<uint64_t> offsets;  // of each tensor, relative to data_offset
  uint64_t data_offset = 0;       // file offset of the data area
  uint64_t alignment = kGgufAlignment;
  uint64_t file_size = 0;
  // The value of `key`, or nullptr.
  const GgufValue* find(const std::string& key) const;
};
// Reads and checks the header of `path` (magic, version 2 or 3, every tensor inside the file).
// Throws InputError naming the file and the byte offset on a truncated or malformed header.
GgufHeader read_gguf_header(const std::string& path);
// The data of tensor i of a file read by read_gguf_header.
std::vector<uint8_t> read_gguf_tensor(const std::string& path, const GgufHeader& h, std::size_t i);

}  // namespace mpqat::io
