// util::write_folder_atomic: the output folder is always the old one whole or the new one whole,
// also when the writer is killed between its steps (death tests: the child is SIGKILLed through
// MPQAT_TEST_KILL_IN_FOLDER_SWAP; the parent then reads what is on disk).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>

#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using namespace mpqat;

namespace {

class FolderWriter : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "fast");  // fork only: the child writes into this root_
    root_ = fs::temp_directory_path() / ("mpqat_folder_writer_" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    out_ = (root_ / "ckpt").string();
  }
  void TearDown() override { fs::remove_all(root_); }

  // name -> content of every file under `dir`.
  static std::map<std::string, std::string> files(const fs::path& dir) {
    std::map<std::string, std::string> m;
    for (const auto& e : fs::recursive_directory_iterator(dir))
      if (e.is_regular_file()) m[fs::relative(e.path(), dir).string()] = util::read_file(e.path().string());
    return m;
  }
  // The entries of the parent folder besides `ckpt` (leftovers).
  std::vector<std::string> others() const {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(root_))
      if (e.path().filename() != "ckpt") v.push_back(e.path().filename().string());
    return v;
  }
  static void write(const fs::path& p, const std::string& s) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << s;
  }
  static void fill_old(const std::string& d) {
    write(fs::path(d) / "model.safetensors", std::string(4096, 'o'));
    write(fs::path(d) / "config.json", "{\"old\": true}");
    write(fs::path(d) / "only_old.txt", "old");
  }
  static void fill_new(const std::string& d) {
    write(fs::path(d) / "model-00001-of-00002.safetensors", std::string(5000, 'n'));
    write(fs::path(d) / "model-00002-of-00002.safetensors", std::string(100, 'm'));
    write(fs::path(d) / "config.json", "{\"new\": true}");
    write(fs::path(d) / "sub" / "nested.txt", "new");
  }
  std::map<std::string, std::string> expected(void (*fill)(const std::string&)) const {
    const auto d = root_ / "reference";
    fill(d.string());
    auto m = files(d);
    fs::remove_all(d);
    return m;
  }

  fs::path root_;
  std::string out_;
};

TEST_F(FolderWriter, WritesANewFolderAndLeavesNothingBeside) {
  util::write_folder_atomic(out_, fill_new);
  EXPECT_EQ(files(out_), expected(fill_new));
  EXPECT_TRUE(others().empty());
}

TEST_F(FolderWriter, ReplacesTheOldFolderWhole) {
  util::write_folder_atomic(out_, fill_old);
  util::write_folder_atomic(out_, fill_new);
  EXPECT_EQ(files(out_), expected(fill_new));  // nothing of the old one (only_old.txt) remains
  EXPECT_TRUE(others().empty());
}

TEST_F(FolderWriter, AFailingFillLeavesTheOldFolderAndNoTemp) {
  util::write_folder_atomic(out_, fill_old);
  EXPECT_THROW(util::write_folder_atomic(out_,
                                         [](const std::string& d) {
                                           fill_new(d);
                                           throw InputError("disk full (simulated)");
                                         }),
               InputError);
  EXPECT_EQ(files(out_), expected(fill_old));
  EXPECT_TRUE(others().empty());
}

TEST_F(FolderWriter, RefusesAFileWhereTheFolderShouldBe) {
  write(out_, "I am a file");
  try {
    util::write_folder_atomic(out_, fill_new, "checkpoint");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("checkpoint '" + out_ + "' exists and is a file"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(util::read_file(out_), "I am a file");
}

// Killed after the new folder is complete but before the swap: the old folder is in place.
TEST_F(FolderWriter, KilledBeforeTheSwapLeavesTheOldFolder) {
  util::write_folder_atomic(out_, fill_old);
  EXPECT_EXIT(
      {
        ::setenv("MPQAT_TEST_KILL_IN_FOLDER_SWAP", "1", 1);
        util::write_folder_atomic(out_, fill_new);
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGKILL), "");
  EXPECT_EQ(files(out_), expected(fill_old));
  // The complete new folder is left beside it under the .tmp.PID name (for the user to delete).
  ASSERT_EQ(others().size(), 1u);
  EXPECT_NE(others()[0].find("ckpt.tmp."), std::string::npos);
  EXPECT_EQ(files(root_ / others()[0]), expected(fill_new));
  // The next write of the same folder removes what the killed writer left.
  util::write_folder_atomic(out_, fill_new);
  EXPECT_EQ(files(out_), expected(fill_new));
  EXPECT_TRUE(others().empty());
}

// Killed after the swap, before the old folder is removed: the new folder is in place.
TEST_F(FolderWriter, KilledAfterTheSwapLeavesTheNewFolder) {
  util::write_folder_atomic(out_, fill_old);
  EXPECT_EXIT(
      {
        ::setenv("MPQAT_TEST_KILL_IN_FOLDER_SWAP", "2", 1);
        util::write_folder_atomic(out_, fill_new);
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGKILL), "");
  EXPECT_EQ(files(out_), expected(fill_new));
  ASSERT_EQ(others().size(), 1u);  // the old one, whole, under the .tmp.PID name
  EXPECT_EQ(files(root_ / others()[0]), expected(fill_old));
  util::recover_stale_writes(out_);
  EXPECT_EQ(files(out_), expected(fill_new));
  EXPECT_TRUE(others().empty());
}

// The fallback path's gap (old folder moved aside, killed before the new one was renamed in):
// the next command puts the old folder back; leftovers of a live writer are not touched.
TEST_F(FolderWriter, OldFolderOfAKilledWriterIsRestored) {
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ASSERT_GT(child, 0);
  int status = 0;
  ::waitpid(child, &status, 0);  // now a pid no process has
  const std::string dead = std::to_string(child);
  fill_old((root_ / ("ckpt.old." + dead)).string());
  fill_new((root_ / ("ckpt.tmp." + dead)).string());
  const std::string live = std::to_string(::getppid());
  fill_new((root_ / ("ckpt.tmp." + live)).string());
  util::recover_stale_writes(out_);
  EXPECT_EQ(files(out_), expected(fill_old));
  ASSERT_EQ(others().size(), 1u);
  EXPECT_EQ(others()[0], "ckpt.tmp." + live);
}

// Killed while filling: the old folder is untouched.
TEST_F(FolderWriter, KilledWhileFillingLeavesTheOldFolder) {
  util::write_folder_atomic(out_, fill_old);
  EXPECT_EXIT(
      {
        util::write_folder_atomic(out_, [](const std::string& d) {
          write(fs::path(d) / "config.json", "{\"new\": tr");
          ::kill(::getpid(), SIGKILL);
        });
        std::exit(0);
      },
      ::testing::KilledBySignal(SIGKILL), "");
  EXPECT_EQ(files(out_), expected(fill_old));
}

}  // namespace
