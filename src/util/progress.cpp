#include "mpqat/util/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>

#include "mpqat/util/log.h"

namespace mpqat::util {

std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 60) return fmt::format("{:.1f}s", s);
  const auto total = static_cast<int64_t>(s + 0.5);
  if (total < 3600) return fmt::format("{}m{:02d}s", total / 60, static_cast<int>(total % 60));
  return fmt::format("{}h{:02d}m", total / 3600, static_cast<int>((total % 3600) / 60));
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total) {
  tty_ = ::isatty(STDERR_FILENO) == 1;
  enabled_ = is_output_rank();
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() { finish(); }

void Progress::advance(int64_t n) {
  done_ += n;
  const auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if ((tty_ && since >= 0.1) || (!tty_ && since >= 5.0)) draw(false);
}

void Progress::set_postfix(const std::string& postfix) { postfix_ = postfix; }

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

std::string Progress::render(const std::string& label, int64_t done, int64_t total,
                             double elapsed_s, const std::string& unit,
                             const std::string& postfix, int bar_width) {
  const double rate = elapsed_s > 0 ? static_cast<double>(done) / elapsed_s : 0.0;
  std::string line = label + " ";
  if (total > 0) {
    const double frac = std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
    if (bar_width > 0) {
      const int fill = static_cast<int>(frac * bar_width);
      line += "[" + std::string(fill, '#') + std::string(bar_width - fill, '.') + "] ";
    }
    line += fmt::format("{}/{} ({:3.0f}%)", done, total, frac * 100.0);
  } else {
    line += fmt::format("{}", done);
  }
  line += fmt::format(" {:.2f} {}/s", rate, unit);
  line += " elapsed " + format_duration(elapsed_s);
  if (total > 0 && done < total) {
    line += " eta " + (rate > 0 ? format_duration(static_cast<double>(total - done) / rate) : "?");
  }
  if (!postfix.empty()) line += " | " + postfix;
  return line;
}

void Progress::draw(bool final) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const std::string line = render(label_, done_, total_, elapsed, unit_, postfix_, tty_ ? 30 : 0);
  if (tty_) {
    std::fprintf(stderr, "\r\033[2K%s%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace mpqat::util
