// Small string and unit helpers shared by every layer (no torch).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace mpqat::util {

// Edit distance (insert, delete, substitute each cost 1); used to suggest the closest key.
std::size_t levenshtein(const std::string& a, const std::string& b);

// The candidate closest to `word` by edit distance, or "" when none is within
// max(2, |word| / 3) edits (a suggestion that far off would mislead more than help).
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

// Parses a byte size: "700MiB", "2.5GB", "123", "4 KiB", "1.5 gib". Decimal units (kB, MB, GB,
// TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) powers of 1024; case-insensitive.
// Throws InputError naming `context` and the accepted spellings.
uint64_t parse_bytes(const std::string& text, const std::string& context);

// "1.23 MiB" style rendering (binary units, 3 significant digits).
std::string format_bytes(uint64_t bytes);

// A plain-text table: columns padded to their widest cell, the first left-aligned and the rest
// right-aligned, a rule of '-' under the first (header) row, trailing spaces trimmed.
std::string text_table(const std::vector<std::vector<std::string>>& rows);

// Splits on a single character; keeps empty fields.
std::vector<std::string> split(const std::string& s, char sep);

std::string trim(const std::string& s);
std::string to_lower(std::string s);
bool starts_with(const std::string& s, const std::string& prefix);
bool ends_with(const std::string& s, const std::string& suffix);

// Appends code point `cp` encoded as UTF-8 (1 to 4 bytes).
void append_utf8(std::string& s, uint32_t cp);

// Writes `content` to `path` atomically (temp file in the same folder, fsync, rename), so a
// crash never leaves a half-written file. Throws Error naming the path.
void write_file_atomic(const std::string& path, const std::string& content);
// The same for content produced by `producer(fd)` (large files written piece by piece): temp
// file `path.tmp.PID`, fsync, rename over `path`, fsync of the folder. The temp file is removed
// when `producer` throws, and the exception goes on; `path` is untouched then.
void write_file_atomic_with(const std::string& path, const std::function<void(int fd)>& producer);
// write(2) of all `n` bytes (EINTR retried); throws Error naming `path`.
void write_fd_all(int fd, const void* buf, std::size_t n, const std::string& path);

// Reads a whole file; throws InputError naming the path when it cannot be read.
std::string read_file(const std::string& path);

// 64-bit FNV-1a of `s`, starting from `basis` (the standard offset basis by default): the
// identity hashes of resume fingerprints and the stage cache, and random-model tensor seeds.
inline constexpr uint64_t kFnv1aBasis = 1469598103934665603ull;
uint64_t fnv1a64(const std::string& s, uint64_t basis = kFnv1aBasis);
std::string fnv1a64_hex(const std::string& s);  // 16 lowercase hex digits

// Now, as 2026-12-05T14:09:24Z (UTC) and as 20261205_140924 (local time, for folder names).
std::string utc_iso_now();
std::string local_timestamp();

}  // namespace mpqat::util
