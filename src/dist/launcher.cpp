#include "mpqat/dist/launcher.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/file.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "mpqat/util/error.h"

namespace mpqat::dist {
namespace {

volatile sig_atomic_t g_stop_signal = 0;
void on_signal(int sig) { g_stop_signal = sig; }

}  // namespace

std::string report_file(long launcher_pid, int port) {
  return (std::filesystem::temp_directory_path() / fmt::format("mpqat-launch-{}-{}.errors", launcher_pid, port)).string();
}

bool first_to_report(const std::string& line) {
  const char* ws = std::getenv("WORLD_SIZE");
  const char* port = std::getenv("MASTER_PORT");
  if (!ws || std::atoi(ws) <= 1 || !port) return true;
  const std::string path = report_file(static_cast<long>(::getppid()), std::atoi(port));
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return true;
  bool first = true;
  if (::flock(fd, LOCK_EX) == 0) {
    std::string seen;
    char buf[4096];
    ssize_t n = 0;
    ::lseek(fd, 0, SEEK_SET);
    while ((n = ::read(fd, buf, sizeof(buf))) > 0) seen.append(buf, static_cast<size_t>(n));
    const std::string entry = line + "\n";
    first = ("\n" + seen).find("\n" + entry) == std::string::npos;
    if (first && ::write(fd, entry.data(), entry.size()) < 0) {
      // Not recorded: another rank may print it too, which is only a repeated line.
    }
    ::flock(fd, LOCK_UN);
  }
  ::close(fd);
  return first;
}

int find_free_port(const std::string& addr) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw Error(fmt::format("cannot open a socket: {}", std::strerror(errno)));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  ::inet_pton(AF_INET, addr.c_str(), &sa.sin_addr);
  socklen_t len = sizeof(sa);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(fmt::format("cannot find a free port on {}: {}", addr, std::strerror(err)));
  }
  const int port = ntohs(sa.sin_port);
  ::close(fd);
  return port;
}

int launch_local(const std::string& exe, const std::vector<std::string>& argv,
                 const LaunchOptions& opts) {
  if (opts.nprocs < 1) throw InputError(fmt::format("launch: -n must be >= 1, got {}", opts.nprocs));
  if (argv.empty()) {
    throw InputError("launch: give the mpqat command to run after --, e.g. "
                     "mpqat launch -n 2 -- train MODEL --plan PLAN.json ...");
  }
  const int port = opts.master_port > 0 ? opts.master_port : find_free_port(opts.master_addr);
  std::vector<pid_t> pids(opts.nprocs, -1);
  for (int r = 0; r < opts.nprocs; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(fmt::format("launch: fork failed: {}", std::strerror(errno)));
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(opts.nprocs).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(opts.nprocs).c_str(), 1);
      ::setenv("MASTER_ADDR", opts.master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::unsetenv("TORCHELASTIC_USE_AGENT_STORE");
      std::vector<char*> args;
      args.push_back(const_cast<char*>(exe.c_str()));
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(exe.c_str(), args.data());
      std::fprintf(stderr, "mpqat launch: cannot execute %s: %s\n", exe.c_str(), std::strerror(errno));
      ::_exit(127);
    }
    pids[r] = pid;
  }
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  int alive = opts.nprocs;
  int result = 0;
  int failed_rank = -1;
  bool stopping = false;
  auto stop_deadline = std::chrono::steady_clock::time_point::max();
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      int r = 0;
      while (r < opts.nprocs && pids[r] != pid) ++r;
      if (r == opts.nprocs) continue;
      pids[r] = -1;
      --alive;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && failed_rank < 0 && !stopping) {
        failed_rank = r;
        result = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
        const std::string how = WIFEXITED(status)
                                    ? fmt::format("exited with code {}", WEXITSTATUS(status))
                                    : fmt::format("was killed by signal {}", WTERMSIG(status));
        spdlog::error("launch: rank {} {}; stopping the other {} rank(s)", r, how, alive);
      }
      if (!ok && !stopping) {
        stopping = true;
        stop_deadline = std::chrono::steady_clock::now() +
                        std::chrono::milliseconds(static_cast<int>(opts.grace_seconds * 1000));
        for (pid_t p : pids) {
          if (p > 0) ::kill(p, SIGTERM);
        }
      }
      continue;
    }
    if (g_stop_signal && !stopping) {
      stopping = true;
      result = 128 + g_stop_signal;
      spdlog::warn("launch: interrupted; stopping all ranks");
      stop_deadline = std::chrono::steady_clock::now() +
                      std::chrono::milliseconds(static_cast<int>(opts.grace_seconds * 1000));
      for (pid_t p : pids) {
        if (p > 0) ::kill(p, SIGTERM);
      }
    }
    if (stopping && std::chrono::steady_clock::now() > stop_deadline) {
      for (pid_t p : pids) {
        if (p > 0) ::kill(p, SIGKILL);
      }
      stop_deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::unlink(report_file(static_cast<long>(::getpid()), port).c_str());
  return result;
}

}  // namespace mpqat::dist
