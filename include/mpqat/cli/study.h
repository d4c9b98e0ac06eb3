// `mpqat study RECIPE --out DIR` (docs/study.md): the seeds' comparison workflow as one command.
// The recipe's `study:` section names the axes (allocation methods, training methods, SGRA
// off/on/equal-steps, budgets in uniform bits, calibration sizes, seeds); every combination is
// one `mpqat run` of the recipe with a few keys overridden, in DIR/cells/<cell>/. Stages are
// shared: one sensitivity (and one FP evaluation) per calibration set, and the mixed plans get
// the byte size of the uniform plan at each budget, so rows compare at equal bytes. A killed
// study resumes where it stopped; study.json / study.md / study.html summarise the rows.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace mpqat::io {
class Recipe;
}

namespace mpqat::cli {

// One sensitivity (and, for the first, the FP baseline) per calibration set.
struct StudySensitivity {
  std::string name;  // folder under DIR/sensitivity/
  int64_t samples = 0, seed = 0;
  bool fp_baseline = false;
  std::vector<std::string> overrides;  // "key=value" on top of DIR/recipe.yaml
};

// One row of the study: one `mpqat run`.
struct StudyCell {
  std::string name;     // folder under DIR/cells/
  std::string variant;  // "qbo + Block-AP + SGRA" (rows of one variant differ by budget, size, seed)
  std::string allocation, training, sgra;
  std::optional<double> budget;  // in uniform bits (none: clustering presets)
  uint64_t budget_bytes = 0;     // the mixed plan's allocation.budget.bytes (0: none)
  int64_t samples = 0, seed = 0;
  std::string sensitivity;  // StudySensitivity::name it reads ("" = the recipe's sensitivity.file)
  bool fp_baseline = false;
  std::vector<std::string> overrides;
};

struct StudyPlan {
  std::map<double, uint64_t> budget_bytes;  // budget (uniform bits) -> checkpoint file bytes
  std::vector<StudySensitivity> sensitivities;
  std::vector<StudyCell> cells;
};

// The cells of the recipe's study section, in run order (per calibration set: its sensitivity,
// then per budget the uniform cells before the mixed ones). `dir` is the study folder the
// overrides point into. The budgets' bytes come from the size model (they equal the written
// uniform checkpoints: tested). Throws InputError for a study that names nothing to compare or a
// budget the bit menu cannot bracket.
StudyPlan plan_study(const io::Recipe& recipe, const std::string& dir);

struct StudyOptions {
  std::string exe = "/proc/self/exe";  // the mpqat binary each cell runs
  bool dry_run = false;                // print the plan, run nothing
  int ranks = 1;                       // > 1: each cell as `mpqat launch -n ranks -- run ...`
};

// Runs (or resumes) the study in `dir`: DIR/recipe.yaml (the resolved recipe), each cell's
// `mpqat run` with its output in DIR/cells/<cell>/ (log: run.log), then study.json, study.md and
// study.html (rewritten after every cell, atomically). A cell whose report.json exists for the
// same recipe and overrides is not run again. Throws InputError when a cell fails (naming its log).
void run_study(const io::Recipe& recipe, const std::string& dir, const StudyOptions& opts = {});

}  // namespace mpqat::cli
