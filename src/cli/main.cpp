// mpqat: the one binary. Parses the command line with CLI11 and maps failures to exit codes:
// 0 ok, 1 runtime failure, 2 usage or input error. Library code throws; only main exits.
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "mpqat/cli/commands.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/dist/launcher.h"
#include "mpqat/quant/checkpoint.h"
#include "mpqat/util/error.h"
#include "mpqat/util/host_allocator.h"
#include "mpqat/util/log.h"
#include "mpqat/util/torch_compat.h"

namespace {

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

// One line on stderr; under a launcher, once for all local ranks that hit the same error.
int report(const char* kind, const std::string& what, int code) {
  const std::string line = std::string("mpqat: ") + kind + ": " + first_line(what);
  if (mpqat::dist::first_to_report(line)) std::fprintf(stderr, "%s\n", line.c_str());
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  mpqat::util::install_host_allocator();  // before any tensor exists
  mpqat::quant::install_packed_loader();   // the model layer loads packed checkpoints through it
  CLI::App app{"mpqat: sensitivity-guided mixed-precision quantization-aware training of LLMs.\n"
               "Measure layer sensitivity, allocate bits under a size budget, train block by "
               "block, save a packed mixed-precision checkpoint and evaluate it.",
               "mpqat"};
  app.option_defaults()->always_capture_default();
  app.set_version_flag("--version", fmt::format("mpqat {} (LibTorch {}{})", MPQAT_VERSION,
                                                mpqat::util::torch_version_string(),
#ifdef MPQAT_HAVE_NCCL
                                                ", CUDA+NCCL"
#else
                                                ", CPU+Gloo"
#endif
                                                ));
  app.require_subcommand(1);
  app.fallthrough();
  std::string log_level = "info";
  bool all_ranks = false;
  try {
    const auto env = mpqat::dist::read_launch_env();
    mpqat::util::init_logging(log_level, env.rank, env.world_size, false);
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error, off")
        ->trigger_on_parse()
        ->each([&](const std::string& lvl) {
          mpqat::util::init_logging(lvl, env.rank, env.world_size, all_ranks);
        });
    app.add_flag("--log-all-ranks", all_ranks, "log from every rank, not only rank 0")
        ->trigger_on_parse()
        ->each([&](const std::string&) {
          mpqat::util::init_logging(log_level, env.rank, env.world_size, true);
        });

    mpqat::cli::add_run_command(app);
    mpqat::cli::add_study_command(app);
    mpqat::cli::add_sensitivity_command(app);
    mpqat::cli::add_allocate_command(app);
    mpqat::cli::add_train_command(app);
    mpqat::cli::add_quantize_command(app);
    mpqat::cli::add_eval_command(app);
    mpqat::cli::add_inspect_command(app);
    mpqat::cli::add_convert_command(app);
    mpqat::cli::add_export_command(app);
    mpqat::cli::add_imatrix_command(app);
    mpqat::cli::add_similarity_command(app);
    mpqat::cli::add_wizard_command(app);
    mpqat::cli::add_launch_command(app);
    mpqat::cli::add_fit_command(app);
    mpqat::cli::add_random_model_command(app);

    // An unknown command word: one line naming it and the commands there are.
    if (argc > 1 && argv[1][0] != '-') {
      const std::string word = argv[1];
      std::string names;
      bool known = false;
      for (const auto* sub : app.get_subcommands([](CLI::App*) { return true; })) {
        known = known || sub->get_name() == word;
        if (!sub->get_group().empty()) names += (names.empty() ? "" : ", ") + sub->get_name();
      }
      if (!known)
        throw mpqat::InputError("unknown command '" + word + "' (accepted: " + names + "; mpqat --help lists them)");
    }
    app.parse(argc, argv);
  } catch (const mpqat::cli::ExitRequest& e) {
    return e.code;
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints CLI11's message and the "Run with --help" hint
    return 2;
  } catch (const mpqat::InputError& e) {
    return report("error", e.what(), 2);
  } catch (const mpqat::NotImplementedError& e) {
    return report("error", e.what(), 2);
  } catch (const mpqat::Error& e) {
    return report("failed", e.what(), 1);
  } catch (const std::exception& e) {
    return report("failed", e.what(), 1);
  }
  return 0;
}
