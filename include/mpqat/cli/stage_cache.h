// `mpqat run`'s stage cache (OUT/stages.json, docs/pipeline.md): every stage records a hash of its
// inputs; a later run reuses a stage whose hash is unchanged and whose outputs still exist. It
// also measures each stage as it runs: seconds, peak resident memory and, sampled, its anonymous
// and file-backed parts (util/memory.h), which report.json's "stages" carries.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mpqat/eval/run_report.h"  // ReportStage
#include "mpqat/util/memory.h"

namespace mpqat::io {
class Recipe;
}

namespace mpqat::cli {

// Identity of a file or folder for stage hashes: path, size and modification time of each file.
std::string file_identity(const std::string& path);
// The recipe's values under the given key prefixes, as canonical text.
std::string keys_text(const io::Recipe& r, const std::vector<std::string>& prefixes);

class StageCache {
 public:
  // Reads `dir`/stages.json when present; only the main rank writes it.
  StageCache(std::filesystem::path dir, bool main);
  // Starts a stage's clock and memory sampler.
  void begin(const std::string& name);
  // True when `name` finished earlier with `hash` and every output still exists and is the one
  // that stage wrote (file_identity recorded by done(): a file replaced or edited since, e.g. by
  // another run, is recomputed, with a log line saying which).
  bool reusable(const std::string& name, const std::string& hash,
                const std::vector<std::filesystem::path>& outputs);
  // Ends the stage begun last: records hash, seconds and the identity of the outputs last passed
  // to reusable() (unless reused) and its report entry;
  // rewrites stages.json and stage_report.json (this run's report(), also when it stops early).
  void done(const std::string& name, const std::string& hash, bool reused);
  // A measured part of the running stage (Block-AP, E2E-QP, the save): its own report entry
  // {"name", "part_of", "seconds", "peak_*"}; the stage's peaks include its parts'.
  void part_begin(const std::string& name);
  void part_done();
  void forget(const std::string& name) { state_.erase(name); }
  // This run's stages and parts: name, seconds, reused, peak_rss_mib, peak_anon_mib, peak_file_mib.
  const std::vector<eval::ReportStage>& report() const { return report_; }

 private:
  std::filesystem::path dir_;
  bool main_;
  nlohmann::json state_;
  std::vector<eval::ReportStage> report_;
  std::chrono::steady_clock::time_point t0_, part_t0_;
  std::unique_ptr<util::PeakMemory> peak_, part_peak_;
  std::string stage_, part_;
  std::vector<std::filesystem::path> outputs_;  // of the stage begun last (reusable())
  util::PeakMemory::Peak parts_max_;  // the parts' peaks so far (their samplers reset VmHWM)
};

}  // namespace mpqat::cli
