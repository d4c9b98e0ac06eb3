// `mpqat allocate`: bits per module under a size budget -> bitplan.json (docs/allocation.md).
#include <CLI/CLI.hpp>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "mpqat/alloc/allocate.h"
#include "mpqat/io/gguf.h"
#include "mpqat/quant/engines.h"
#include "mpqat/quant/gguf_layout.h"
#include "mpqat/cli/commands.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::cli {

void add_allocate_command(CLI::App& app) {
  struct Opts {
    std::string model, sens, budget, method = "qbo", out, unit = "module", solver = "dp", dtype = "f16";
    std::string preset, bits, group_sizes, target = "mpqat";
    int groups = 3, min_bits = 2, max_bits = 16, uniform_bits = 4;
    std::vector<std::string> pins;
    bool tie_qkv = false, tie_gate_up = false, json = false, no_sgra = false, sym = false, allow_modelled = false;
  };
  auto o = std::make_shared<Opts>();
  auto* sub = app.add_subcommand("allocate", "Choose bits per layer under a size budget "
                                             "(QBO, MPQ, clustering presets) -> bitplan.json");
  sub->add_option("--model", o->model, "model folder (config.json; safetensors header for OPT/BERT)")->required();
  sub->add_option("--sensitivity", o->sens, "sensitivity.json (docs/formats.md)")->required();
  sub->add_option("--budget", o->budget, "avg_bits=3.0 (bpw: codes, scales, zeros, g_idx) | code_bits=3.0 (codes only) | bytes=700KiB | compression=4");
  sub->add_option("--method", o->method, "qbo, mpq, kmeans, percentile, hierarchical, uniform");
  sub->add_option("--groups", o->groups, "clustering: number of groups");
  sub->add_option("--preset", o->preset, "clustering: bits per group, most sensitive first (16,8,4)");
  sub->add_option("--bits", o->bits, "candidate bits, e.g. 2,3,4,8 (16 = may keep float)");
  sub->add_option("--group-sizes", o->group_sizes, "candidate group sizes, e.g. 32,128 (-1 = per row)");
  sub->add_option("--min-bits", o->min_bits, "lowest bits a unit may get");
  sub->add_option("--max-bits", o->max_bits, "highest bits a unit may get");
  sub->add_option("--uniform-bits", o->uniform_bits, "method uniform: bits of every unit");
  sub->add_flag("--tie-qkv", o->tie_qkv, "q/k/v of one layer get equal bits");
  sub->add_flag("--tie-gate-up", o->tie_gate_up, "gate/up of one layer get equal bits");
  sub->add_option("--pin", o->pins, "REGEX=BITS (matched from the start of the name), repeatable");
  sub->add_option("--unit", o->unit, "module or block")->check(CLI::IsMember({"module", "block"}));
  sub->add_option("--solver", o->solver, "dp (exact) or lagrangian")->check(CLI::IsMember({"dp", "lagrangian"}));
  sub->add_option("--dtype", o->dtype, "dtype of unquantized tensors in the checkpoint: f16, bf16, f32")
      ->check(CLI::IsMember({"f16", "bf16", "f32"}));
  sub->add_flag("--sym", o->sym, "symmetric quantization");
  sub->add_flag("--no-sgra", o->no_sgra, "do not write SGRA settings");
  sub->add_option("--target", o->target,
                  "engine the checkpoint is for: mpqat, gptqmodel (2/3/4/8 bits), vllm (symmetric 4/8 bits, "
                  "groups -1/32/64/128, q/k/v and gate/up tied), llama.cpp (every option priced in the bytes "
                  "of the GGUF type `mpqat export gguf` gives it: K-quants for 2/3/6 bits on rows of 256); the menu is restricted to it")
      ->capture_default_str();
  sub->add_flag("--allow-modelled-omega", o->allow_modelled,
                "qbo/mpq: model omegas the sensitivity file lacks from the score instead of refusing");
  sub->add_option("--out", o->out, "output bitplan.json")->required();
  sub->add_flag("--json", o->json, "print the result as JSON");
  sub->callback([o] {
    auto ints = [](const std::string& s, const std::string& what) {
      std::vector<int64_t> v;
      for (const auto& t : util::split(s, ',')) {
        try {
          std::size_t used = 0;
          v.push_back(std::stoll(util::trim(t), &used));
          if (used != util::trim(t).size()) throw std::invalid_argument("x");
        } catch (const std::exception&) {
          throw InputError(what + " '" + s + "' must be comma-separated integers");
        }
      }
      return v;
    };
    alloc::AllocOptions ao;
    ao.method = alloc::parse_method(o->method);
    if (!o->budget.empty()) ao.budget = alloc::parse_budget(o->budget);
    if (!o->bits.empty()) {
      ao.bits.clear();
      for (auto b : ints(o->bits, "--bits")) ao.bits.push_back(static_cast<int>(b));
    }
    if (!o->group_sizes.empty()) ao.group_sizes = ints(o->group_sizes, "--group-sizes");
    ao.groups = o->groups;
    if (!o->preset.empty()) {
      ao.preset.clear();
      for (auto b : ints(o->preset, "--preset")) ao.preset.push_back(static_cast<int>(b));
    } else if (o->groups == 4) {
      ao.preset = {32, 16, 8, 4};
    }
    ao.unit_block = o->unit == "block";
    ao.min_bits = o->min_bits;
    ao.max_bits = o->max_bits;
    ao.uniform_bits = o->uniform_bits;
    ao.tie_qkv = o->tie_qkv;
    ao.tie_gate_up = o->tie_gate_up;
    ao.lagrangian = o->solver == "lagrangian";
    ao.sym = o->sym;
    ao.sgra = !o->no_sgra;
    ao.allow_modelled_omega = o->allow_modelled;
    ao.target = o->target;
    ao = alloc::for_target(ao);
    for (const auto& p : o->pins) {
      const auto eq = p.rfind('=');
      if (eq == std::string::npos || eq == 0) throw InputError("--pin '" + p + "' must be REGEX=BITS");
      ao.pins.emplace_back(p.substr(0, eq), static_cast<int>(ints(p.substr(eq + 1), "--pin bits").at(0)));
    }
    alloc::SizeOptions so;
    so.float_dtype = io::parse_float_dtype(o->dtype, "--dtype");
    if (!quant::engine_menu(ao.target, "--target").gptq_layout) {
      // llama.cpp: price the plan as the GGUF file `mpqat export gguf` writes from its checkpoint
      // (default types; general.name from this folder, as export names a checkpoint of it).
      alloc::GgufSizing g;
      g.vocab = gguf_vocab_of_folder(o->model, "allocate --target llama.cpp");
      g.name = quant::gguf_default_name(o->model, "");
      g.source = o->model;
      g.sym = ao.sym;
      so.gguf = std::move(g);
    }
    const alloc::SizeModel sm(alloc::layout_from_folder(o->model), so);
    const auto sens = alloc::load_sensitivity(o->sens);
    const auto r = alloc::allocate(sm, sens, ao);
    alloc::write_plan(o->out, r, sm, ao);
    if (o->json) {
      auto j = alloc::summary_json(r);
      j["plan"] = o->out;
      std::cout << j.dump(2) << "\n";
    } else {
      std::cout << alloc::result_text(r) << "plan written to " << o->out << "\n";
    }
  });
}

}  // namespace mpqat::cli
