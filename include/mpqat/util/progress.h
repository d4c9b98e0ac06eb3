// A progress bar with rate and ETA for loops over data or layers. On a TTY it redraws one
// line on stderr (at most 10 times a second); otherwise it prints a plain line at most every
// few seconds and at the end. Only the output rank prints.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace mpqat::util {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "it");
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void advance(int64_t n = 1);
  // Extra text shown after the rate, e.g. "loss 0.0123".
  void set_postfix(const std::string& postfix);
  // Prints the final line (idempotent; also done by the destructor).
  void finish();

  // The line drawn for a state; pure, so it can be tested.
  static std::string render(const std::string& label, int64_t done, int64_t total,
                            double elapsed_s, const std::string& unit,
                            const std::string& postfix, int bar_width);

 private:
  void draw(bool final);

  std::string label_, unit_, postfix_;
  int64_t total_ = 0, done_ = 0;
  bool tty_ = false, enabled_ = true, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "1h02m", "3m07s", "12.3s"
std::string format_duration(double seconds);

}  // namespace mpqat::util
