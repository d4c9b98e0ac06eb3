// `mpqat launch -n N -- <mpqat command>`: starts N local ranks of this binary with torchrun's
// environment, for users without torchrun. If one rank fails, the others are stopped (SIGTERM,
// then SIGKILL after a grace period) and the launcher reports which rank failed: never a hang.
#pragma once

#include <string>
#include <vector>

namespace mpqat::dist {

struct LaunchOptions {
  int nprocs = 1;
  int master_port = 0;         // 0 = pick a free port
  std::string master_addr = "127.0.0.1";
  double grace_seconds = 5.0;  // between SIGTERM and SIGKILL of the surviving ranks
};

// Runs `argv` (arguments after the program name) as N ranks of the executable `exe`.
// Returns 0 when every rank succeeded, else the first failing rank's exit code (or 1 when it
// was killed by a signal).
int launch_local(const std::string& exe, const std::vector<std::string>& argv,
                 const LaunchOptions& opts);

// Under a launcher (WORLD_SIZE > 1), an error every rank hits (an input check) is printed once
// per machine: the local ranks of one launch share a small file, keyed by their parent process
// (mpqat launch or torchrun's agent) and MASTER_PORT, in the temp folder. Returns whether this
// process is the first to report `line` (always true outside a launch, or when the file cannot
// be used). mpqat launch removes the file when its ranks have ended.
bool first_to_report(const std::string& line);
// That file for the ranks whose parent is `launcher_pid` and whose MASTER_PORT is `port`.
std::string report_file(long launcher_pid, int port);

// A TCP port that was free a moment ago on `addr`.
int find_free_port(const std::string& addr = "127.0.0.1");

}  // namespace mpqat::dist
