// `mpqat run RECIPE [key=value ...]`: the whole pipeline from one recipe file.
#include <chrono>
#include <ctime>
#include <filesystem>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "mpqat/alloc/allocate.h"
#include "mpqat/cli/commands.h"
#include "mpqat/cli/run_pipeline.h"
#include "mpqat/io/recipe.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {
namespace {

struct RunArgs {
  std::string recipe;
  std::vector<std::string> overrides;
  bool dry_run = false;
  bool print_schema = false;
};

std::string resolve_output_dir(const io::Recipe& r) {
  std::string dir = r.str("output.dir");
  const std::string stamp = util::local_timestamp();
  for (const auto& [key, val] : {std::pair<std::string, std::string>{"{name}", r.str("output.name")},
                                 {"{timestamp}", stamp}}) {
    for (auto pos = dir.find(key); pos != std::string::npos; pos = dir.find(key)) {
      dir.replace(pos, key.size(), val);
    }
  }
  return dir;
}

// With sensitivities at hand (sensitivity.file), --dry-run also shows the bit plan the
// allocation stage would choose and its predicted size against the budget, before any
// training. Without them the plan depends on the sensitivity stage, so it is only announced.
void print_planned_allocation(const io::Recipe& r) {
  const std::string sens = r.str("sensitivity.file");
  if (sens.empty()) {
    std::cout << "# allocation: decided after the sensitivity stage (set sensitivity.file to "
                 "preview the bit plan here)\n";
    return;
  }
  const alloc::AllocOptions ao = alloc::alloc_options_from_recipe(r);
  const alloc::SizeModel sm(alloc::layout_from_folder(r.str("model.path")), alloc::size_options_from_recipe(r));
  const auto result = alloc::allocate(sm, alloc::load_sensitivity(sens), ao);
  std::cout << "# planned allocation (" << alloc::method_name(ao.method) << ")\n"
            << alloc::result_text(result);
}

void run(const RunArgs& a) {
  if (a.print_schema) {
    std::cout << io::recipe_schema_markdown();
    return;
  }
  if (a.recipe.empty()) {
    throw InputError("mpqat run needs a recipe file, e.g. mpqat run recipes/quickstart.yaml");
  }
  const io::Recipe recipe = io::Recipe::from_file(a.recipe, a.overrides);
  if (a.dry_run) {
    preflight_recipe(recipe);
    std::cout << "# resolved from " << a.recipe << "\n" << recipe.to_yaml();
    print_planned_allocation(recipe);
    std::cout << "# checked: model folder, data files, budget\n";
    return;
  }
  run_pipeline(recipe, resolve_output_dir(recipe));
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto args = std::make_shared<RunArgs>();
  auto* sub = app.add_subcommand(
      "run", "Run the whole pipeline from a recipe: FP eval -> sensitivity -> allocation -> "
             "QAT -> save -> reload -> eval -> report");
  sub->add_option("recipe", args->recipe, "recipe YAML file (see docs/recipes.md)");
  sub->add_option("overrides", args->overrides,
                  "recipe overrides as key.path=value, e.g. training.epochs=3 model.path=DIR");
  sub->add_flag("--dry-run", args->dry_run, "validate and print the fully resolved recipe, run nothing");
  sub->add_flag("--print-schema", args->print_schema,
                "print every recipe key with its type, default and meaning (Markdown)");
  sub->callback([args] { run(*args); });
}

}  // namespace mpqat::cli
