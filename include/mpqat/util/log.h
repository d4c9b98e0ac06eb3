// Logging setup (spdlog). Library code logs with spdlog::info/warn/... directly; main()
// calls init_logging once. In a multi-rank run only rank 0 logs below `warn`, unless
// all_ranks is set, and every line carries the rank.
#pragma once

#include <string>

namespace mpqat::util {

// level: trace, debug, info, warn, error, off. Throws InputError for anything else.
void init_logging(const std::string& level, int rank = 0, int world_size = 1,
                  bool all_ranks = false);

// True when this process should print user-facing output (rank 0, or single process).
bool is_output_rank();

}  // namespace mpqat::util
