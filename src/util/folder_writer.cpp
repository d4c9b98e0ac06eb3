#include "mpqat/util/folder_writer.h"

#include <fcntl.h>
#include <sys/file.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "mpqat/util/error.h"

namespace fs = std::filesystem;

namespace mpqat::util {

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(fmt::format("cannot open '{}' to sync it: {}", path, std::strerror(errno)));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // EINVAL: a file system that does not sync this kind of file (some do not sync folders).
  if (rc != 0 && err != EINVAL) throw Error(fmt::format("cannot sync '{}': {}", path, std::strerror(err)));
}

namespace {

void maybe_die(int step) {
  const char* v = std::getenv("MPQAT_TEST_KILL_IN_FOLDER_SWAP");
  if (v != nullptr && std::atoi(v) == step) ::kill(::getpid(), SIGKILL);
}

void sync_tree(const fs::path& dir) {
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() || e.is_directory()) fsync_path(e.path().string());
  fsync_path(dir.string());
}

// True when no process `pid` exists (a writer that was killed).
bool dead(const std::string& pid_text) {
  if (pid_text.empty() || pid_text.find_first_not_of("0123456789") != std::string::npos) return false;
  const long pid = std::strtol(pid_text.c_str(), nullptr, 10);
  if (pid <= 0 || pid == ::getpid()) return false;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

}  // namespace

void recover_stale_writes(const std::string& out_dir, const std::string& what) {
  const fs::path out(out_dir);
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  const std::string name = out.filename().string();
  std::error_code ec;
  if (name.empty() || !fs::is_directory(parent, ec)) return;
  std::vector<fs::path> tmps, olds;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string f = e.path().filename().string();
    for (const auto& [tag, list] : {std::pair<std::string, std::vector<fs::path>*>{".tmp.", &tmps}, {".old.", &olds}})
      if (f.size() > name.size() + tag.size() && f.compare(0, name.size() + tag.size(), name + tag) == 0 &&
          dead(f.substr(name.size() + tag.size())))
        list->push_back(e.path());
  }
  // A writer killed between moving the old folder aside and renaming the new one in (the
  // fallback without RENAME_EXCHANGE): the old folder is whole; put it back.
  for (const auto& old : olds) {
    if (!fs::exists(out, ec) && ::rename(old.c_str(), out.c_str()) == 0) {
      fprintf(stderr, "warning: restored the previous %s '%s' from '%s', left by a writer that was killed\n",
              what.c_str(), out_dir.c_str(), old.string().c_str());
      continue;
    }
    fs::remove_all(old, ec);
  }
  // Half-written new folders, or old folders a killed writer had swapped out: never OUT itself.
  for (const auto& tmp : tmps) {
    fs::remove_all(tmp, ec);
    if (!ec) fprintf(stderr, "warning: removed '%s', left by a %s writer that was killed\n", tmp.string().c_str(), what.c_str());
  }
}

void write_folder_atomic(const std::string& out_dir, const std::function<void(const std::string&)>& fill,
                         const std::string& what) {
  const fs::path out(out_dir);
  if (out.filename().empty())
    throw InputError(fmt::format("{} '{}': name a folder, not a path ending in '/'", what, out_dir));
  const fs::path parent = out.has_parent_path() ? out.parent_path() : fs::path(".");
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw Error(fmt::format("cannot create '{}' for the {} '{}': {}", parent.string(), what, out_dir, ec.message()));
  if (fs::exists(out) && !fs::is_directory(out))
    throw InputError(fmt::format("{} '{}' exists and is a file, not a folder", what, out_dir));
  recover_stale_writes(out_dir, what);
  const std::string pid = std::to_string(::getpid());
  const fs::path tmp = parent / (out.filename().string() + ".tmp." + pid);
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) throw Error(fmt::format("cannot create '{}': {}", tmp.string(), ec.message()));
  try {
    fill(tmp.string());
    sync_tree(tmp);
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw Error(fmt::format("writing {} '{}' failed: {}", what, out_dir, e.what()));
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  maybe_die(1);

  if (!fs::exists(out)) {
    if (::rename(tmp.c_str(), out.c_str()) != 0) {
      const int err = errno;
      fs::remove_all(tmp, ec);
      throw Error(fmt::format("cannot rename '{}' to '{}': {}", tmp.string(), out_dir, std::strerror(err)));
    }
  } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) != 0) {
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) {
      const int err = errno;
      fs::remove_all(tmp, ec);
      throw Error(fmt::format("cannot swap '{}' into '{}': {}", tmp.string(), out_dir, std::strerror(err)));
    }
    // No atomic exchange here: move the old folder aside, then the new one in.
    const fs::path old = parent / (out.filename().string() + ".old." + pid);
    fs::remove_all(old, ec);
    if (::rename(out.c_str(), old.c_str()) != 0) {
      const int err = errno;
      fs::remove_all(tmp, ec);
      throw Error(fmt::format("cannot move '{}' aside to '{}': {}", out_dir, old.string(), std::strerror(err)));
    }
    if (::rename(tmp.c_str(), out.c_str()) != 0) {
      const int err = errno;
      throw Error(fmt::format("cannot rename '{}' to '{}': {}; the previous {} is whole in '{}' and the new one in '{}'",
                              tmp.string(), out_dir, std::strerror(err), what, old.string(), tmp.string()));
    }
    fs::rename(old, tmp, ec);  // step 3 removes it from there
  }
  fsync_path(parent.string());
  maybe_die(2);
  fs::remove_all(tmp, ec);  // the old folder, or nothing
}

FolderLock::FolderLock(const std::string& dir, const std::string& what) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(fmt::format("cannot create the {} '{}': {}", what, dir, ec.message()));
  const std::string path = (fs::path(dir) / kFileName).string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw Error(fmt::format("cannot open the lock file '{}': {}", path, std::strerror(errno)));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char buf[32] = {0};
    const ssize_t n = ::pread(fd_, buf, sizeof(buf) - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK) throw Error(fmt::format("cannot lock '{}': {}", path, std::strerror(err)));
    std::string pid = n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
    while (!pid.empty() && (pid.back() == '\n' || pid.back() == ' ')) pid.pop_back();
    throw InputError(fmt::format("{} '{}' is in use by another mpqat process{} (lock '{}'); wait for it to finish or "
                                 "choose another folder",
                                 what, dir, pid.empty() ? "" : " (pid " + pid + ")", path));
  }
  const std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    throw Error(fmt::format("cannot write the lock file '{}': {}", path, std::strerror(errno)));
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace mpqat::util
