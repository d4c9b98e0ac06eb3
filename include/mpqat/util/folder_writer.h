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
// A failure in `fill` removes OUT.tmp.PID and rethrows; OUT is untouched.
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

// fsync of one file or folder; throws Error naming the path.
void fsync_path(const std::string& path);

}  // namespace mpqat::util
