// `mpqat inspect DIR [--json]`: per-layer bits / group size / bytes, histogram, averages.
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "mpqat/cli/commands.h"
#include "mpqat/quant/inspect.h"

namespace mpqat::cli {

void add_inspect_command(CLI::App& app) {
  struct Opts {
    std::string dir;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("inspect", "Per-layer bits, group size, bytes; average bits; compression of a checkpoint");
  sub->add_option("checkpoint", o->dir, "checkpoint folder")->required();
  sub->add_flag("--json", o->json, "print JSON");
  sub->callback([o] {
    const auto r = quant::inspect_checkpoint(o->dir);
    if (o->json) std::cout << quant::inspect_to_json(r).dump(2) << "\n";
    else std::cout << quant::inspect_to_text(r);
  });
}

}  // namespace mpqat::cli
