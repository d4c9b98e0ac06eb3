// Quantization schemes, group geometry and the packed (GPTQ-style) layout. No torch here: the
// allocator, the inspector and the CLI reason about sizes without pulling in LibTorch.
//
// Scheme: uniform affine, unsigned codes q in [0, 2^b - 1], per group of `group_size`
// consecutive input features of one output row (group_size -1 = the whole row).
// When in_features is not a multiple of group_size the LAST group of each row is smaller
// (in_features % group_size columns); groups = ceil(in / group_size), g_idx[i] = i / group_size.
//
// Packing (docs/checkpoint-format.md): a sequence of b-bit codes is one little-endian bit
// stream; code k occupies bits [k*b, k*b + b), word w holds stream bits [32w, 32w + 32), bit 0
// is the least significant bit of the word. Words = ceil(n * b / 32); unused high bits of the
// last word are zero. For b = 2, 4, 8 this is exactly GPTQ's layout (32/b codes per word,
// lowest bits first); for b = 3 it is exactly GPTQ's 3-in-32 layout (32 codes across 3 words,
// codes 10 and 21 straddling words); 5 and 6 bits follow the same rule (32 codes in 5 words,
// 16 codes in 3 words).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mpqat/io/safetensors.h"

namespace mpqat::quant {

enum class QuantType { W2, W3, W4, W5, W6, W8 };

struct QuantTypeTraits {
  QuantType type;
  int bits;
  int32_t qmax;      // 2^bits - 1
  int unit_values;   // codes per whole-word unit of the stream: lcm(32, bits) / bits
  int unit_words;    // words per unit: lcm(32, bits) / 32
  const char* name;  // "w4"
};

// One row per supported bit-width, in increasing bits.
const std::vector<QuantTypeTraits>& quant_type_table();
bool is_supported_bits(int bits);
// Throws InputError naming `context` and listing the accepted bit-widths.
const QuantTypeTraits& traits_for_bits(int bits, const std::string& context);
// {2, 3, 4, 5, 6, 8}
const std::vector<int>& supported_bits();
// {32, 64, 128, 256, -1}
const std::vector<int64_t>& supported_group_sizes();

struct QuantSpec {
  int bits = 4;
  int64_t group_size = 128;  // -1 = one group per output row
  bool sym = false;          // symmetric: zero fixed at 2^(b-1), scale from max |w|
  int32_t qmax() const { return (int32_t(1) << bits) - 1; }
  bool operator==(const QuantSpec& o) const {
    return bits == o.bits && group_size == o.group_size && sym == o.sym;
  }
};

// Throws InputError naming `context` when bits or group_size is not accepted.
void validate_spec(const QuantSpec& spec, const std::string& context);
std::string spec_str(const QuantSpec& spec);  // "w4g128", "w3g-1 sym"

// Columns of a full group (in_features for group_size -1).
inline int64_t group_width(int64_t in_features, int64_t group_size) {
  return group_size <= 0 || group_size > in_features ? in_features : group_size;
}
inline int64_t num_groups(int64_t in_features, int64_t group_size) {
  const int64_t g = group_width(in_features, group_size);
  return (in_features + g - 1) / g;
}

// Words holding n codes of `bits` bits: ceil(n * bits / 32).
inline int64_t packed_words(int64_t n, int bits) { return (n * bits + 31) / 32; }
// The supported bit-widths b with packed_words(n, b) == words (several only when n < 32).
std::vector<int> bits_for_packed_words(int64_t words, int64_t n);

// Packs n codes read at vals[k * in_stride] into packed_words(n, bits) words written at
// words[w * out_stride]. Throws InputError naming `context` when a code is outside [0, 2^b-1].
void pack_stream(const int32_t* vals, int64_t n, int64_t in_stride, int bits, int32_t* words,
                 int64_t out_stride, const std::string& context = "codes");
// Inverse of pack_stream.
void unpack_stream(const int32_t* words, int64_t n, int64_t in_stride, int bits, int32_t* vals,
                   int64_t out_stride);

// codes (out, in) row-major -> qweight (packed_words(in, bits), out) row-major
std::vector<int32_t> pack_qweight(const int32_t* codes, int64_t out, int64_t in, int bits);
// qweight (packed_words(in, bits), out) -> codes (out, in)
std::vector<int32_t> unpack_qweight(const int32_t* qweight, int64_t out, int64_t in, int bits);
// zeros (groups, out) row-major -> qzeros (groups, packed_words(out, bits))
std::vector<int32_t> pack_qzeros(const int32_t* zeros, int64_t groups, int64_t out, int bits);
// qzeros (groups, packed_words(out, bits)) -> zeros (groups, out)
std::vector<int32_t> unpack_qzeros(const int32_t* qzeros, int64_t groups, int64_t out, int bits);

// The tensors one packed linear is stored as, in the writer's order (docs/checkpoint-format.md):
//   <module>.qweight  I32 [packed_words(in, b), out]
//   <module>.qzeros   I32 [groups, packed_words(out, b)]
//   <module>.scales   F16 [groups, out]
//   <module>.g_idx    I32 [in]
// The one list: the checkpoint writer, the size model and the tests all read it.
struct PackedTensorShape {
  const char* suffix;  // ".qweight"
  io::DType dtype;
  std::vector<int64_t> shape;
  uint64_t nbytes() const;
};
std::vector<PackedTensorShape> packed_tensor_shapes(int64_t out, int64_t in, const QuantSpec& spec);

// Bytes of one packed module: the sum over packed_tensor_shapes (bias excluded).
uint64_t packed_module_bytes(int64_t out, int64_t in, const QuantSpec& spec);

// The "__metadata__" of every safetensors file of a quantized checkpoint (the writer's and the
// size model's one home).
const std::map<std::string, std::string>& checkpoint_file_metadata();

}  // namespace mpqat::quant
