// Each subcommand lives in src/cli/cmd_<name>.cpp and registers itself on the root app.
// Callbacks throw mpqat::InputError / mpqat::Error; main() maps them to exit codes 2 / 1.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}
namespace mpqat::io {
struct GgufKV;
}

namespace mpqat::cli {

// Thrown by a command that has already reported its outcome and must exit with `code`
// (e.g. `launch` passing on a failed rank's exit code).
struct ExitRequest {
  int code;
};

void add_run_command(CLI::App& app);
void add_study_command(CLI::App& app);
void add_sensitivity_command(CLI::App& app);
void add_allocate_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_inspect_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_imatrix_command(CLI::App& app);
void add_similarity_command(CLI::App& app);
void add_wizard_command(CLI::App& app);
void add_launch_command(CLI::App& app);  // also registers the hidden `dist-check`
void add_fit_command(CLI::App& app);
void add_random_model_command(CLI::App& app);  // hidden

// The tokenizer metadata a GGUF file of the model folder `dir` carries (cmd_export.cpp);
// InputError naming `what` and the folder when it has no tokenizer.
std::vector<io::GgufKV> gguf_vocab_of_folder(const std::string& dir, const std::string& what);

}  // namespace mpqat::cli
