// `mpqat wizard`: the seeds' two-phase menu (model, phase, calibration, metrics, evaluation,
// grouping, bits) as a question-and-answer session that writes a recipe for `mpqat run`.
//
// The session reads one answer per line from `WizardIO::in`, so a terminal, a pipe and a test's
// std::istringstream all drive it alike. No torch here (the logic compiles in seconds).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace mpqat::cli {

struct WizardIO {
  std::istream& in;
  std::ostream& out;
  // True on a terminal (the user's typing is already on screen). False when answers come from a
  // pipe or a file: each answer taken is then echoed after its prompt, so the transcript reads
  // like a session.
  bool interactive = false;
};

struct WizardOptions {
  std::string out_path = "recipe.yaml";  // the recipe file written
  // Defaults offered at the file questions ("" = none: the question needs an answer). The model
  // folder's default is "." when the current folder holds a config.json.
  std::string model_default;
  std::string calibration_default;
  std::string evaluation_default;
  std::string command_name = "mpqat";  // how the printed `... run FILE` command starts
  bool write = true;                   // false: build and validate the recipe, write nothing
};

struct WizardResult {
  std::string yaml;        // the recipe text (written to `path` when options.write)
  std::string path;        // options.out_path
  std::string command;     // "mpqat run 'recipe.yaml'"
  bool run_requested = false;  // the last answer was y
};

// Runs the whole session. A bad answer is refused with the allowed values and the question is
// asked again. Throws InputError "wizard: input ended at question '<title>'" when the input ends
// before the last question is answered. The recipe is validated by io::Recipe before it is
// written (atomically).
WizardResult run_wizard(WizardIO& io, const WizardOptions& options);

// What the wizard can tell about a data file without tokenizing it.
struct DataFileInfo {
  bool readable = false;
  std::string format;                // "tsv", "csv", "jsonl", "text"
  int64_t rows = -1;                 // examples (header excluded); -1 = unknown (plain text)
  std::vector<std::string> columns;  // TSV/CSV header, or the first JSONL object's keys
};
// Counts non-empty lines: TSV/CSV minus the header row, JSONL one example per line. A CSV field
// holding a quoted line break is counted as two rows (the count only caps sample sizes).
DataFileInfo inspect_data_file(const std::string& path);

// "mpqat run 'my recipe.yaml'": `path` single-quoted for a POSIX shell when it needs quoting.
std::string shell_quote(const std::string& s);

}  // namespace mpqat::cli
