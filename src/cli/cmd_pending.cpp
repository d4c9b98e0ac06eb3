// Subcommands whose implementation has not landed yet. Each declares its final options (so
// --help documents the contract) and fails with exit code 2 saying which issue brings it.
#include <CLI/CLI.hpp>

#include "mpqat/cli/commands.h"
#include "mpqat/util/error.h"

namespace mpqat::cli {
namespace {

struct Pending {
  std::string s1, s2, s3, s4;
  std::vector<std::string> v1;
  int i1 = 0, i2 = 0;
  bool b1 = false, b2 = false;
};

void pending(CLI::App* sub, const std::string& what) {
  sub->callback([what] { throw NotImplementedError(what); });
}

}  // namespace

void add_wizard_command(CLI::App& app) {
  auto p = std::make_shared<Pending>();
  p->s1 = "recipe.yaml";
  auto* sub = app.add_subcommand("wizard", "Interactive two-phase menu that writes a recipe "
                                           "(the seeds' workflow)");
  sub->add_option("--out", p->s1, "recipe file to write");
  pending(sub, "mpqat wizard (issue #9, [M8])");
}

}  // namespace mpqat::cli
