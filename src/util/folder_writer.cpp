#include "mpqat/util/folder_writer.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

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

}  // namespace

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

}  // namespace mpqat::util
