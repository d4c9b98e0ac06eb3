// Content fingerprints of input files, for deciding whether saved progress still belongs to the
// inputs of a run (Block-AP's resume). Sampled, not a full hash, so that a 13 GB checkpoint costs
// milliseconds: the size, the first MiB (a safetensors file's header and its first tensors), 64
// pages of 4 KiB spread evenly over the file and the last 4 KiB, through FNV-1a. A retrained or
// replaced weight file differs in all of these with overwhelming probability; an edit that leaves
// every sampled byte unchanged is not detected.
#pragma once

#include <string>

namespace mpqat::util {

// 16 hex digits. Throws Error naming the file when it cannot be read.
std::string file_fingerprint(const std::string& path);
// The fingerprints of DIR's config.json and *.safetensors files (names included), combined.
std::string model_folder_fingerprint(const std::string& dir);

}  // namespace mpqat::util
