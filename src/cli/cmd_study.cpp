// `mpqat study RECIPE [key=value ...] --out DIR [--dry-run]`: the seeds' comparison workflow
// (include/mpqat/cli/study.h, docs/study.md).
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "mpqat/cli/commands.h"
#include "mpqat/cli/study.h"
#include "mpqat/io/recipe.h"
#include "mpqat/util/error.h"

namespace mpqat::cli {

void add_study_command(CLI::App& app) {
  struct Args {
    std::string recipe, out;
    std::vector<std::string> overrides;
    bool dry_run = false;
    int ranks = 1;
  };
  auto a = std::make_shared<Args>();
  auto* sub = app.add_subcommand(
      "study", "Compare allocation / training / SGRA variants over budgets, calibration sizes and seeds: one "
               "`mpqat run` per cell, resumable, summarised in study.json / study.md / study.html");
  sub->add_option("recipe", a->recipe, "recipe YAML file with a study: section (see docs/study.md)")->required();
  sub->add_option("overrides", a->overrides, "recipe overrides as key.path=value, e.g. study.seeds=[0,1,2]");
  sub->add_option("--out", a->out, "study folder (cells/, sensitivity/, logs/, study.json, study.md, study.html)")
      ->required();
  sub->add_flag("--dry-run", a->dry_run, "list the cells and the budgets' bytes, run nothing");
  sub->add_option("--ranks", a->ranks, "ranks each cell runs on (mpqat launch -n RANKS: one per GPU, or Gloo on CPU)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  sub->callback([a] {
    const char* world = std::getenv("WORLD_SIZE");
    if (world && std::string(world) != "1")
      throw InputError("mpqat study launches its cells itself: start it without torchrun and give --ranks N "
                       "(WORLD_SIZE is " + std::string(world) + ")");
    const io::Recipe recipe = io::Recipe::from_file(a->recipe, a->overrides);
    StudyOptions o;
    o.dry_run = a->dry_run;
    o.ranks = a->ranks;
    run_study(recipe, a->out, o);
  });
}

}  // namespace mpqat::cli
