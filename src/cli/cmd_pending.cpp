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

void add_train_command(CLI::App& app) {
  auto p = std::make_shared<Pending>();
  p->i1 = 128;
  p->i2 = 512;
  auto* sub = app.add_subcommand("train", "Block-wise QAT (Block-AP with SGRA), optional "
                                          "E2E-QP -> quantized checkpoint");
  sub->add_option("model", p->s1, "model folder")->required();
  sub->add_option("--plan", p->s2, "bitplan.json")->required();
  sub->add_option("--calib", p->s3, "calibration data")->required();
  sub->add_option("--samples", p->i1, "calibration sequences");
  sub->add_option("--seqlen", p->i2, "tokens per sequence");
  sub->add_flag("--e2e", p->b1, "run E2E-QP after Block-AP");
  sub->add_option("--out", p->s4, "output checkpoint folder")->required();
  pending(sub, "mpqat train (issue #7, [M6])");
}

void add_wizard_command(CLI::App& app) {
  auto p = std::make_shared<Pending>();
  p->s1 = "recipe.yaml";
  auto* sub = app.add_subcommand("wizard", "Interactive two-phase menu that writes a recipe "
                                           "(the seeds' workflow)");
  sub->add_option("--out", p->s1, "recipe file to write");
  pending(sub, "mpqat wizard (issue #9, [M8])");
}

}  // namespace mpqat::cli
