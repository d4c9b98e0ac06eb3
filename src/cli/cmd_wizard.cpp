// `mpqat wizard [--out recipe.yaml]`: the seeds' interactive two-phase menu. Asks the questions
// (mpqat/cli/wizard.h), writes the recipe, shows the equivalent `mpqat run` command and, when
// the last answer is y, runs it as a child process of the same binary and exits with its code.
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "mpqat/cli/commands.h"
#include "mpqat/cli/wizard.h"
#include "mpqat/util/error.h"

namespace mpqat::cli {
namespace {
namespace fs = std::filesystem;

struct WizardArgs {
  std::string out = "recipe.yaml";
  std::string model, calibration, evaluation;
};

// The bundled SST-2 split (../shared/data/classification/sst2/<file>) when it is there: the
// seeds' workflow on the data this project ships. "" otherwise.
std::string shared_sst2(const std::string& file) {
  std::vector<fs::path> roots;
  if (const char* e = std::getenv("MPQAT_SHARED_DIR")) roots.emplace_back(e);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  // <repo>/build/mpqat -> <repo>/../shared
  if (!ec) roots.push_back(exe.parent_path().parent_path().parent_path() / "shared");
  roots.emplace_back("../shared");
  for (const auto& r : roots) {
    const fs::path p = r / "data" / "classification" / "sst2" / file;
    if (fs::is_regular_file(p, ec)) return p.lexically_normal().string();
  }
  return "";
}

// Runs `<this binary> run <recipe>` and returns its exit code.
int run_recipe(const std::string& recipe) {
  std::cout.flush();
  std::cerr.flush();
  const pid_t pid = ::fork();
  if (pid < 0) throw Error(fmt::format("wizard: cannot start mpqat run: {}", std::strerror(errno)));
  if (pid == 0) {
    const char* argv[] = {"mpqat", "run", recipe.c_str(), nullptr};
    ::execv("/proc/self/exe", const_cast<char* const*>(argv));
    std::fprintf(stderr, "mpqat: failed: wizard: cannot run /proc/self/exe: %s\n",
                 std::strerror(errno));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      throw Error(fmt::format("wizard: waiting for mpqat run: {}", std::strerror(errno)));
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

void run(const WizardArgs& a) {
  WizardOptions o;
  o.out_path = a.out;
  o.model_default = a.model;
  o.calibration_default = a.calibration.empty() ? shared_sst2("alps_train.tsv") : a.calibration;
  o.evaluation_default = a.evaluation.empty() ? shared_sst2("glue_sst2_dev.tsv") : a.evaluation;
  WizardIO io{std::cin, std::cout, ::isatty(STDIN_FILENO) == 1};
  const WizardResult r = run_wizard(io, o);
  if (!r.run_requested) return;
  std::cout << "\nrunning: " << r.command << "\n";
  const int code = run_recipe(r.path);
  if (code != 0) throw ExitRequest{code};
}

}  // namespace

void add_wizard_command(CLI::App& app) {
  auto args = std::make_shared<WizardArgs>();
  auto* sub = app.add_subcommand(
      "wizard", "Interactive two-phase menu (the seeds' workflow) that writes a recipe and can "
                "run it; reads answers line by line from stdin when it is not a terminal");
  sub->add_option("--out", args->out, "recipe file to write");
  sub->add_option("--model", args->model, "model folder offered as the first default");
  sub->add_option("--calibration", args->calibration,
                  "calibration file offered as default (else the bundled SST-2 train split)");
  sub->add_option("--evaluation", args->evaluation,
                  "evaluation file offered as default (else the bundled SST-2 dev split)");
  sub->callback([args] { run(*args); });
}

}  // namespace mpqat::cli
