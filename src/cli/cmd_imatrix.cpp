// `mpqat imatrix MODEL --calib FILE --out imatrix.json [--samples N] [--seqlen L] [--seed S]`:
// the importance matrix (E[x^2] per input column of every block linear) that `mpqat export
// gguf --imatrix` weighs its K-quant search with (sensitivity/imatrix.h, docs/gguf.md).
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>

#include "mpqat/cli/commands.h"
#include "mpqat/dist/communicator.h"
#include "mpqat/model/block_source.h"
#include "mpqat/sensitivity/imatrix.h"

namespace mpqat::cli {

void add_imatrix_command(CLI::App& app) {
  struct Opts {
    std::string model, calib, out, device = "auto", memory_limit = "auto";
    int64_t samples = 128, seqlen = 512;
    uint64_t seed = 0;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("imatrix",
                                 "Measure E[x^2] per input column of every block linear on calibration text (the "
                                 "importance matrix GGUF K-quants are searched with)");
  sub->add_option("MODEL", o->model, "model folder, float or quantized (measure the one you export)")->required();
  sub->add_option("--calib", o->calib, "calibration text or JSONL")->required();
  sub->add_option("--out", o->out, "imatrix.json to write (atomically)")->required();
  sub->add_option("--samples", o->samples, "calibration windows")->capture_default_str();
  sub->add_option("--seqlen", o->seqlen, "tokens per window")->capture_default_str();
  sub->add_option("--seed", o->seed, "window sampling seed")->capture_default_str();
  sub->add_option("--device", o->device, "auto, cpu or cuda (one block at a time on it)")->capture_default_str();
  sub->add_option("--memory-limit", o->memory_limit, "stream blocks past this many bytes (auto: 80% of free)")
      ->capture_default_str();
  sub->callback([o] {
    data::CalibrationOptions co;
    co.samples = o->samples;
    co.seqlen = o->seqlen;
    co.seed = o->seed;
    const auto comm = dist::Communicator::from_env();
    model::StreamingOptions st;
    st.device = dist::resolve_device(o->device, *comm, "--device");
    st.memory_limit = model::parse_memory_limit(o->memory_limit, "--memory-limit");
    st.limit_key = "--memory-limit";
    const auto m = sensitivity::importance_of_folder(o->model, o->calib, co, st);
    sensitivity::write_importance(o->out, m);
    std::cout << "imatrix: " << m.modules.size() << " linears over " << m.tokens << " tokens -> " << o->out << "\n";
  });
}

}  // namespace mpqat::cli
