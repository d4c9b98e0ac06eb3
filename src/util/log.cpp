#include "mpqat/util/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <fmt/format.h>

#include "mpqat/util/error.h"

namespace mpqat::util {
namespace {
int g_rank = 0;
}

void init_logging(const std::string& level, int rank, int world_size, bool all_ranks) {
  g_rank = rank;
  const auto lvl = spdlog::level::from_str(level);
  // from_str maps unknown names to "off"; only accept "off" when it was asked for.
  if (lvl == spdlog::level::off && level != "off") {
    throw InputError(fmt::format(
        "--log-level '{}' is not a level; use one of trace, debug, info, warn, error, off", level));
  }
  auto logger = spdlog::stderr_color_mt("mpqat");
  if (world_size > 1) {
    logger->set_pattern(fmt::format("[%H:%M:%S] [rank {}] [%^%l%$] %v", rank));
  } else {
    logger->set_pattern("[%H:%M:%S] [%^%l%$] %v");
  }
  logger->set_level((rank == 0 || all_ranks) ? lvl : std::max(lvl, spdlog::level::warn));
  spdlog::set_default_logger(logger);
}

bool is_output_rank() { return g_rank == 0; }

}  // namespace mpqat::util
