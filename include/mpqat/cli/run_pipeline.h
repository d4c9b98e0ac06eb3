// `mpqat run`'s pipeline (docs/pipeline.md): FP baseline eval -> sensitivity -> allocation ->
// quantization (RTN or Block-AP [+ E2E-QP]) -> save -> reload through the loader -> eval ->
// report. Every stage records a hash of its inputs in OUT/stages.json; a re-run reuses a
// stage whose hash and outputs are unchanged.
#pragma once

#include <string>

namespace mpqat::io {
class Recipe;
}

namespace mpqat::cli {

// Runs the recipe into `out_dir` (created; an existing folder must be an earlier mpqat run or
// empty unless output.overwrite). Returns the path of report.json, or with output.stop_after the
// last output written (sensitivity.json, bitplan.json or checkpoint/).
std::string run_pipeline(const io::Recipe& recipe, const std::string& out_dir);

// What can be checked without computing, in a second or two (`mpqat run --dry-run`, and every
// run before its first stage): the model folder loads its config.json and safetensors headers
// (and they agree), the calibration file the stages need and the evaluation files exist and are
// not empty, and the size budget is within what the allocation menu can reach. Throws InputError
// naming the recipe key and the input.
void preflight_recipe(const io::Recipe& recipe);

}  // namespace mpqat::cli
