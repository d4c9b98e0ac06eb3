// The one way mpqat writes an output folder (checkpoints, converted and generated models):
// build it aside, then swap it into place, so that the user's folder is at every instant either
// the old one whole or the new one whole, never missing and never half-written.
//
//   1. `fill` writes the new folder's files into OUT.tmp.PID (a sibling: same file system);
//      every file and the folder itself are fsync'ed;
//   2. OUT and OUT.tmp.PID are exchanged in one atomic step (renameat2 RENAME_EXCHANGE), or,
//      when OUT does not exist, OUT.tmp.PID is renamed to OUT; the parent folder is fsync'ed;
//   3. the old folder (now at OUT.tmp.PID) is removed.
// A crash during 1 leaves OUT untouched (and a stale OUT.tmp.PID to delete); during 3, OUT is
// the new folder. On a file system without RENAME_EXCHANGE the old folder is renamed aside
// (OUT.old.PID) just before the new one is renamed in: the one instant without OUT then has the
// old folder whole beside it, and the error message names it.
// A failure in `fill` removes OUT.tmp.PID and rethrows; OUT is untouched. The next write of OUT
// first cleans up (or recovers from) what a killed writer left (recover_stale_writes).
//
// Test seam: MPQAT_TEST_KILL_IN_FOLDER_SWAP=1 (after step 1) or =2 (after step 2) sends the
// process SIGKILL there (tests/test_folder_writer.cpp checks what a crash leaves).
#pragma once

#include <functional>
#include <string>

namespace mpqat::util {

// Writes folder `out` through `fill(tmp_dir)` as above. `what` names the folder in errors
// ("checkpoint", "model folder"). Throws Error naming the path on any file-system failure.
void write_folder_atomic(const std::string& out, const std::function<void(const std::string& tmp_dir)>& fill,
                         const std::string& what = "output folder");

// What a killed writer of `out` left beside it (OUT.tmp.PID / OUT.old.PID of a process that no
// longer exists): an OUT.old.PID is renamed back to OUT when OUT is missing (the fallback path's
// one gap), every other leftover is removed; each action is one warning line on stderr.
// write_folder_atomic calls it first; a command may call it before reading OUT.
void recover_stale_writes(const std::string& out, const std::string& what = "output folder");

// An exclusive lock of one process on a folder it works in (an `mpqat run` output folder, a
// Block-AP state folder): flock on DIR/.mpqat.lock, which holds the holder's pid. The kernel drops
// the lock when the holder exits or is killed, so a stale lock file is simply taken over. The
// folder is created when missing. Throws InputError naming the folder and the holding pid when
// another process holds it.
class FolderLock {
 public:
  FolderLock(const std::string& dir, const std::string& what);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;
  static constexpr const char* kFileName = ".mpqat.lock";

 private:
  int fd_ = -1;
};

// fsync of one file or folder; throws Error naming the path.
void fsync_path(const std::string& path);

}  // namespace mpqat::util
