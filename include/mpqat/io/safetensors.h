// safetensors reader and writer (no torch here: tensors are typed byte spans).
//
// Reader: the file is memory-mapped read-only; the header is parsed and validated once
// (header length within the file, valid JSON, known dtypes, size == shape x dtype,
// offsets inside the data area, no overlaps); tensor bytes are never copied.
// Writer: atomic (temp file in the same folder + rename), optional sharding with a
// model.safetensors.index.json, exactly as Hugging Face writes them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mpqat::io {

enum class DType { F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

// Bytes per element.
std::size_t dtype_size(DType dt);

// A floating-point storage dtype by name: f16 / fp16 / float16, bf16 / bfloat16, f32 / fp32 /
// float32 (case-insensitive). Throws InputError naming `context` otherwise.
DType parse_float_dtype(const std::string& name, const std::string& context);
// The safetensors spelling: "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL".
const char* dtype_name(DType dt);
// Parses the safetensors spelling; throws InputError naming `context` and the accepted list.
DType parse_dtype(const std::string& s, const std::string& context);
// The Hugging Face config spelling (config.json's torch_dtype) of a float dtype: "float32",
// "float16", "bfloat16". Throws InputError naming `context` for any other dtype.
const char* config_dtype_name(DType dt, const std::string& context);
// A tensor shape as "[4096, 11008]", for messages.
std::string shape_str(const std::vector<int64_t>& shape);

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offset of the first byte, relative to the data area
  uint64_t end = 0;    // one past the last byte, relative to the data area
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// One memory-mapped .safetensors file. Movable, not copyable; unmaps on destruction.
class SafetensorsFile {
 public:
  // Throws InputError naming the file (and the tensor) on any violation.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const;
  // Tensor names in the order of their data offsets.
  const std::vector<std::string>& names() const;
  bool contains(const std::string& name) const;
  // Throws InputError naming the file when the tensor is absent.
  const TensorInfo& info(const std::string& name) const;
  // Pointer to the tensor's first byte inside the mapping (valid while this object lives).
  const uint8_t* data(const std::string& name) const;
  // Drops the tensor's pages from this process's resident memory (they stay in the page cache
  // and are read again when touched): a block-at-a-time reader calls it after copying a tensor,
  // so the mapped checkpoint does not accumulate in the process's footprint.
  void release(const std::string& name) const;
  // The "__metadata__" string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A checkpoint that is one file or a set of shards: opens either a .safetensors file, a
// model.safetensors.index.json, or a folder holding one of them (index preferred).
// Shards are mapped lazily, on first access to one of their tensors.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::string& path_or_dir);
  ~SafetensorsCheckpoint();
  SafetensorsCheckpoint(SafetensorsCheckpoint&&) noexcept;
  SafetensorsCheckpoint& operator=(SafetensorsCheckpoint&&) noexcept;

  // Every tensor name across all shards, sorted.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;
  const uint8_t* data(const std::string& name) const;
  // SafetensorsFile::release of the shard holding the tensor.
  void release(const std::string& name) const;
  // The file holding the tensor.
  const std::string& file_of(const std::string& name) const;
  // Metadata of the first shard (index.json "metadata" is merged in when present).
  std::map<std::string, std::string> metadata() const;
  // Total bytes of tensor data across all shards.
  uint64_t total_tensor_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A tensor to write: the bytes are borrowed, not copied, until the write returns.
struct TensorToWrite {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  std::size_t nbytes = 0;  // must equal numel(shape) * dtype_size(dtype)
};

// Writes one .safetensors file atomically (temp file + fsync + rename). Tensors are laid
// out in the order given; the header is padded with spaces to a multiple of 8 bytes.
void write_safetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The facts the size model (alloc) must agree with byte for byte live here, beside the writer:
// Bytes of one file's header as write_safetensors writes it: the 8-byte length and the JSON
// padded with spaces to a multiple of 8 (tensor data pointers are not read).
uint64_t header_bytes(const std::vector<TensorToWrite>& tensors, const std::map<std::string, std::string>& metadata);
// How write_safetensors_sharded groups tensors of these byte sizes into files: greedily in the
// given order, a new file when the next tensor would pass max_shard_bytes (0 = one file); a
// tensor larger than the limit gets a file alone. Indices into `sizes`, one group per file.
std::vector<std::vector<std::size_t>> plan_shards(const std::vector<uint64_t>& sizes, uint64_t max_shard_bytes);
// "<stem>-0000(i+1)-of-0000n.safetensors"
std::string shard_file_name(const std::string& stem, std::size_t i, std::size_t n);

// Writes `dir/<stem>.safetensors` when everything fits in max_shard_bytes (0 = no limit),
// else `dir/<stem>-0000k-of-0000n.safetensors` shards plus `dir/<stem>.safetensors.index.json`
// ({"metadata": {"total_size": N}, "weight_map": {name: shard}}). Returns the files written.
std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::vector<TensorToWrite>& tensors,
    const std::map<std::string, std::string>& metadata = {}, uint64_t max_shard_bytes = 0,
    const std::string& stem = "model");

// The same with the bytes produced one file at a time: `tensors` give names, dtypes and shapes
// (data may be null); before file i is written, produce(i, part) sets `data` of that file's
// tensors (which must stay valid until the next call). Only one file's bytes need to exist at a
// time: a model larger than memory can be written.
using ShardProducer = std::function<void(std::size_t file, std::vector<TensorToWrite>& part)>;
std::vector<std::string> write_safetensors_sharded(
    const std::string& dir, const std::vector<TensorToWrite>& tensors, const ShardProducer& produce,
    const std::map<std::string, std::string>& metadata = {}, uint64_t max_shard_bytes = 0,
    const std::string& stem = "model");

}  // namespace mpqat::io
