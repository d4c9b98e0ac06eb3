// The stage cache of `mpqat run` (include/mpqat/cli/stage_cache.h).
#include "mpqat/cli/stage_cache.h"

#include <sys/stat.h>

#include <algorithm>
#include <sstream>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "mpqat/io/recipe.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mpqat::cli {

std::string file_identity(const std::string& path) {
  if (path.empty()) return "-";
  std::ostringstream os;
  auto one = [&](const fs::path& p) {
    struct stat st{};
    if (::stat(p.c_str(), &st) == 0)
      os << fs::absolute(p).lexically_normal().string() << ":" << st.st_size << ":" << st.st_mtim.tv_sec << "."
         << st.st_mtim.tv_nsec << ";";
    else
      os << p.string() << ":missing;";
  };
  if (fs::is_directory(path)) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(path))
      if (e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) one(f);
  } else {
    one(path);
  }
  return os.str();
}

std::string keys_text(const io::Recipe& r, const std::vector<std::string>& prefixes) {
  const json all = r.to_json();
  std::ostringstream os;
  for (const auto& k : io::recipe_schema()) {
    bool match = false;
    for (const auto& p : prefixes) match = match || util::starts_with(k.path, p);
    if (!match) continue;
    std::string ptr = "/" + k.path;
    std::replace(ptr.begin(), ptr.end(), '.', '/');
    const auto jp = json::json_pointer(ptr);
    os << k.path << "=" << (all.contains(jp) ? all.at(jp).dump() : "null") << "\n";
  }
  return os.str();
}

StageCache::StageCache(fs::path dir, bool main) : dir_(std::move(dir)), main_(main) {
  const auto p = dir_ / "stages.json";
  if (fs::exists(p)) {
    try {
      state_ = json::parse(util::read_file(p.string()));
    } catch (const json::exception&) {
      state_ = json::object();
    }
  }
  if (!state_.is_object()) state_ = json::object();
}

namespace {

double mib(uint64_t b) { return static_cast<double>(b) / 1048576.0; }

void take_max(util::PeakMemory::Peak& a, const util::PeakMemory::Peak& b) {
  a.rss = std::max(a.rss, b.rss);
  a.anon = std::max(a.anon, b.anon);
  a.file = std::max(a.file, b.file);
}

}  // namespace

void StageCache::begin(const std::string& name) {
  stage_ = name;
  parts_max_ = {};
  t0_ = std::chrono::steady_clock::now();
  peak_ = std::make_unique<util::PeakMemory>();
}

void StageCache::part_begin(const std::string& name) {
  part_ = name;
  part_t0_ = std::chrono::steady_clock::now();
  part_peak_ = std::make_unique<util::PeakMemory>();
}

void StageCache::part_done() {
  if (!part_peak_) return;
  const auto p = part_peak_->stop();
  part_peak_.reset();
  take_max(parts_max_, p);
  eval::ReportStage st;
  st.name = part_;
  st.part_of = stage_;
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - part_t0_).count();
  st.peak_rss_mib = mib(p.rss);
  st.peak_anon_mib = mib(p.anon);
  st.peak_file_mib = mib(p.file);
  report_.push_back(st);
}

bool StageCache::reusable(const std::string& name, const std::string& hash, const std::vector<fs::path>& outputs) {
  outputs_ = outputs;
  if (!state_.contains(name) || state_[name].value("hash", "") != hash) return false;
  for (const auto& o : outputs)
    if (!fs::exists(o)) return false;
  // The outputs must be the files this stage wrote (runs before this check recorded none).
  if (state_[name].contains("outputs"))
    for (const auto& o : outputs) {
      const auto& rec = state_[name]["outputs"];
      const std::string key = o.filename().string();
      if (!rec.contains(key) || rec[key].get<std::string>() != file_identity(o.string())) {
        spdlog::warn("stage {}: '{}' changed since this stage wrote it; computing the stage again", name, o.string());
        return false;
      }
    }
  return true;
}

void StageCache::done(const std::string& name, const std::string& hash, bool reused) {
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  part_done();
  auto peak = peak_ ? peak_->stop() : util::PeakMemory::Peak{};
  peak_.reset();
  take_max(peak, parts_max_);
  if (!reused) {
    json outs = json::object();
    for (const auto& o : outputs_) outs[o.filename().string()] = file_identity(o.string());
    state_[name] = {{"hash", hash}, {"seconds", seconds}, {"outputs", outs}};
  }
  outputs_.clear();
  eval::ReportStage st;
  st.name = name;
  st.seconds = reused ? state_[name].value("seconds", 0.0) : seconds;
  st.reused = reused;
  st.peak_rss_mib = mib(peak.rss);
  st.peak_anon_mib = mib(peak.anon);
  st.peak_file_mib = mib(peak.file);
  report_.push_back(st);
  if (main_) {
    util::write_file_atomic((dir_ / "stages.json").string(), state_.dump(2) + "\n");
    json stages = json::array();
    for (const auto& s : report_) stages.push_back(eval::to_json(s));
    util::write_file_atomic((dir_ / "stage_report.json").string(), stages.dump(2) + "\n");
  }
}

}  // namespace mpqat::cli
