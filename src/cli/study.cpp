// `mpqat study` (include/mpqat/cli/study.h, docs/study.md).
#include "mpqat/cli/study.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "mpqat/alloc/allocate.h"
#include "mpqat/eval/run_report.h"
#include "mpqat/eval/study_report.h"
#include "mpqat/io/recipe.h"
#include "mpqat/util/error.h"
#include "mpqat/util/folder_writer.h"
#include "mpqat/util/progress.h"
#include "mpqat/util/strings.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mpqat::cli {
namespace {

const std::vector<int> kUniformBits = {2, 3, 4, 5, 6, 8};

bool mixed_by_budget(const std::string& a) { return a == "qbo" || a == "mpq"; }
bool clustering(const std::string& a) { return a == "kmeans" || a == "percentile" || a == "hierarchical"; }
bool block_ap(const std::string& t) { return t == "block-ap" || t == "block-ap-gptq"; }

std::string allocation_label(const std::string& a) {
  if (a == "qbo") return "QBO";
  if (a == "mpq") return "MPQ";
  if (clustering(a)) return a + " preset";
  return a;
}

std::string training_label(const std::string& t) {
  if (t == "rtn") return "RTN";
  if (t == "gptq") return "GPTQ";
  if (t == "gptq-act-order") return "GPTQ act-order";
  if (t == "block-ap") return "Block-AP";
  return "Block-AP from GPTQ";
}

std::string sgra_label(const std::string& s) {
  if (s == "on") return " + SGRA";
  if (s == "equal-steps") return " + SGRA (equal steps)";
  return "";
}

// The checkpoint file bytes of the recipe's model at uniform `bits` (the size model's
// prediction, which equals the written file: test_alloc's ExactMatchesWrittenSafetensors).
uint64_t uniform_file_bytes(const io::Recipe& base, int bits) {
  io::Recipe r = base;
  for (const char* o : {"allocation.method=uniform", "allocation.budget.bytes=", "allocation.budget.avg_bits=0",
                        "allocation.budget.code_bits=0", "allocation.budget.compression=0"})
    r.apply_override(o);
  r.apply_override("allocation.uniform_bits=" + std::to_string(bits));
  const auto ao = alloc::alloc_options_from_recipe(r);
  const alloc::SizeModel sm(alloc::layout_from_folder(r.str("model.path")), alloc::size_options_from_recipe(r));
  return alloc::allocate(sm, alloc::equal_sensitivity(sm.layout()), ao).size.file_bytes;
}

// Budget (uniform bits) -> bytes: a menu bit-width's uniform size, or the linear interpolation
// between the nearest menu widths below and above.
uint64_t budget_bytes(const io::Recipe& r, double b, std::map<int, uint64_t>& uniform) {
  auto at = [&](int bits) {
    auto it = uniform.find(bits);
    if (it == uniform.end()) it = uniform.emplace(bits, uniform_file_bytes(r, bits)).first;
    return it->second;
  };
  int lo = 0, hi = 0;
  for (int u : kUniformBits) {
    if (u <= b + 1e-9) lo = u;
    if (u >= b - 1e-9 && hi == 0) hi = u;
  }
  if (lo == 0 || hi == 0)
    throw InputError(r.source() + ": study.budgets " + eval::budget_text(b) + " is outside the uniform bit-widths 2..8");
  if (lo == hi) return at(lo);
  const double t = (b - lo) / static_cast<double>(hi - lo);
  return static_cast<uint64_t>(std::llround(static_cast<double>(at(lo)) + t * static_cast<double>(at(hi) - at(lo))));
}

void check_study(const io::Recipe& r) {
  const auto alloc = r.strings("study.allocation"), train = r.strings("study.training");
  if (alloc.empty()) throw InputError(r.source() + ": study.allocation is empty (give uniform, qbo, mpq, ...)");
  if (train.empty()) throw InputError(r.source() + ": study.training is empty (give rtn, block-ap, gptq, ...)");
  if (r.strings("study.sgra").empty()) throw InputError(r.source() + ": study.sgra is empty (give off, on and/or equal-steps)");
  if (r.numbers("study.budgets").empty()) throw InputError(r.source() + ": study.budgets is empty (give sizes in uniform bits, e.g. [3, 4])");
  if (r.integers("study.seeds").empty()) throw InputError(r.source() + ": study.seeds is empty (give at least one seed, e.g. [0])");
  if (r.strings("evaluation.perplexity").empty() && r.strings("evaluation.tasks").empty() &&
      r.str("evaluation.classification.path").empty())
    throw InputError(r.source() + ": a study compares quality but the recipe evaluates nothing: set "
                                  "evaluation.perplexity, evaluation.tasks or evaluation.classification.path");
  if (r.str("model.path").empty()) throw InputError(r.source() + ": model.path is required (a Hugging Face model folder)");
}

std::vector<std::string> common_overrides(const io::Recipe& r, int64_t samples, int64_t seed, bool fp) {
  std::vector<std::string> o{"output.overwrite=true",
          "data.calibration.samples=" + std::to_string(samples),
          "data.calibration.seed=" + std::to_string(seed),
          "seed=" + std::to_string(seed),
          std::string("evaluation.fp_baseline=") + (fp ? "true" : "false"),
          "allocation.budget.bytes=",
          "allocation.budget.avg_bits=0",
          "allocation.budget.compression=0"};
  if (r.number("allocation.budget.code_bits") > 0) o.push_back("allocation.budget.code_bits=0");
  return o;
}

std::vector<std::string> training_overrides(const io::Recipe& r, const std::string& t, const std::string& sgra) {
  std::vector<std::string> o;
  if (t == "rtn") o.push_back("training.method=rtn");
  if (t == "gptq" || t == "gptq-act-order") {
    o.push_back("training.method=gptq");
    o.push_back(std::string("training.gptq.act_order=") + (t == "gptq" ? "false" : "true"));
  }
  if (block_ap(t)) {
    o.push_back("training.method=block-ap");
    const std::string init = r.str("training.init");
    o.push_back("training.init=" + (t == "block-ap-gptq" ? std::string("gptq") : init == "gptq" ? std::string("minmax") : init));
  }
  o.push_back(std::string("allocation.sgra.enabled=") + (sgra == "off" ? "false" : "true"));
  o.push_back(std::string("allocation.sgra.equal_steps=") + (sgra == "equal-steps" ? "true" : "false"));
  return o;
}

}  // namespace

StudyPlan plan_study(const io::Recipe& r, const std::string& dir) {
  check_study(r);
  StudyPlan plan;
  std::map<int, uint64_t> uniform;
  const auto budgets = r.numbers("study.budgets");
  for (double b : budgets) plan.budget_bytes[b] = budget_bytes(r, b, uniform);
  std::vector<int64_t> sizes = r.integers("study.samples");
  if (sizes.empty()) sizes.push_back(r.integer("data.calibration.samples"));
  const auto allocs = r.strings("study.allocation"), trains = r.strings("study.training");
  const auto sgras = r.strings("study.sgra");
  const std::string user_sens = r.str("sensitivity.file");
  const auto seeds = r.integers("study.seeds");
  // At the bytes of the menu's lowest bit-width the only plan that fits is uniform: no QBO / MPQ
  // cells there (the header of a mixed checkpoint is also a few bytes longer).
  int64_t lowest_bits = 16;
  for (int64_t b : r.integers("allocation.bits"))
    if (b < 16) lowest_bits = std::min(lowest_bits, std::max<int64_t>(b, r.integer("allocation.min_bits")));
  const fs::path d(dir);
  bool fp_given = false;
  for (int64_t n : sizes)
    for (int64_t seed : seeds) {
      const std::string calib = fmt::format("n{}-s{}", n, seed);
      // Every cell reads its calibration set's sensitivity (the recipe's, or the one measured for
      // the set): `mpqat run` measures one even for uniform bits (SGRA and the report's per-layer
      // table use it). The float model is evaluated once: by the first sensitivity run, or by the
      // first cell when the recipe brings its own sensitivity.
      const std::string sens_name = user_sens.empty() ? "sens-" + calib : "";
      const std::string sens_file =
          user_sens.empty() ? (d / "sensitivity" / sens_name / "sensitivity.json").string() : user_sens;
      std::vector<StudyCell> cells;
      for (double b : budgets)
        for (const auto& a : allocs) {
          const bool menu_bits = std::find(kUniformBits.begin(), kUniformBits.end(), static_cast<int>(b)) !=
                                     kUniformBits.end() && std::floor(b) == b;
          if (a == "uniform" && !menu_bits) continue;                // no uniform plan at a fraction
          if (clustering(a) && b != budgets.front()) continue;       // presets ignore the budget
          if (mixed_by_budget(a) && b <= lowest_bits + 1e-9) continue;  // only uniform fits there
          for (const auto& t : trains) {
            // SGRA schedules training only: RTN and GPTQ cells run once.
            for (const auto& s : block_ap(t) ? sgras : std::vector<std::string>{"off"}) {
              StudyCell c;
              c.allocation = a, c.training = t, c.sgra = s, c.samples = n, c.seed = seed;
              if (!clustering(a)) c.budget = b;
              c.variant = allocation_label(a) + " + " + training_label(t) + sgra_label(s);
              c.name = fmt::format("{}-{}{}{}-{}", a, t, s == "off" ? "" : s == "on" ? "-sgra" : "-sgra-eq",
                                   c.budget ? "-b" + eval::budget_text(b) : "", calib);
              c.fp_baseline = !user_sens.empty() && !fp_given && r.flag("evaluation.fp_baseline");
              fp_given = fp_given || c.fp_baseline;
              c.overrides = common_overrides(r, n, seed, c.fp_baseline);
              c.overrides.push_back("output.dir=" + (d / "cells" / c.name).string());
              c.overrides.push_back("output.stop_after=report");
              c.overrides.push_back("allocation.method=" + a);
              if (a == "uniform") c.overrides.push_back("allocation.uniform_bits=" + eval::budget_text(b));
              if (mixed_by_budget(a)) {
                c.budget_bytes = plan.budget_bytes[b];
                c.overrides.push_back("allocation.budget.bytes=" + std::to_string(c.budget_bytes));
              }
              for (auto& o : training_overrides(r, t, s)) c.overrides.push_back(std::move(o));
              c.sensitivity = sens_name;
              c.overrides.push_back("sensitivity.file=" + sens_file);
              cells.push_back(std::move(c));
            }
          }
        }
      if (!cells.empty() && user_sens.empty()) {
        StudySensitivity s;
        s.name = sens_name;
        s.samples = n, s.seed = seed;
        s.fp_baseline = !fp_given && r.flag("evaluation.fp_baseline");
        fp_given = fp_given || s.fp_baseline;
        s.overrides = common_overrides(r, n, seed, s.fp_baseline);
        s.overrides.push_back("output.dir=" + (d / "sensitivity" / s.name).string());
        s.overrides.push_back("output.stop_after=sensitivity");
        s.overrides.push_back("allocation.method=kmeans");  // needs a sensitivity, no budget
        plan.sensitivities.push_back(s);
      }
      for (auto& c : cells) plan.cells.push_back(std::move(c));
    }
  if (plan.cells.empty()) throw InputError(r.source() + ": the study section gives no cell to run");
  return plan;
}

namespace {

using Clock = std::chrono::steady_clock;

// Runs `exe args...` with stdout and stderr appended to `log`; returns its exit status.
int run_child(const std::string& exe, const std::vector<std::string>& args, const std::string& log) {
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw Error("cannot write the log '" + log + "'");
  std::vector<std::string> argv_s{exe};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::cout.flush();
  const pid_t pid = fork();
  if (pid < 0) {
    ::close(fd);
    throw Error("mpqat study: fork failed");
  }
  if (pid == 0) {
    dup2(fd, STDOUT_FILENO);
    dup2(fd, STDERR_FILENO);
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  ::close(fd);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// The cell's own error line (mpqat's "mpqat: error: ..." or, without one, its last line), so the
// study's one-line message says why the cell failed.
std::string cell_error(const std::string& log) {
  std::istringstream in(fs::exists(log) ? util::read_file(log) : std::string());
  std::string last, error;
  for (std::string l; std::getline(in, l);) {
    l = util::trim(l);
    if (l.empty()) continue;
    last = l;
    if (l.find("error:") != std::string::npos) error = l;
  }
  return error.empty() ? last : error;
}

// The identity of a cell's work: the base recipe and its overrides.
std::string cell_key(const std::string& base_yaml, const std::vector<std::string>& overrides) {
  std::string s = base_yaml;
  for (const auto& o : overrides) s += "\n" + o;
  return util::fnv1a64_hex(s);
}

bool finished(const fs::path& marker, const fs::path& output, const std::string& key) {
  if (!fs::exists(marker) || !fs::exists(output)) return false;
  try {
    return json::parse(util::read_file(marker.string())).value("key", "") == key;
  } catch (const json::exception&) {
    return false;
  }
}

// Runs one `mpqat run` unless it finished earlier with the same inputs. Returns true when it ran.
bool run_or_reuse(const StudyOptions& o, const fs::path& dir, const std::string& base_yaml, const std::string& name,
                  const std::vector<std::string>& overrides, const fs::path& out_folder, const fs::path& output) {
  const std::string key = cell_key(base_yaml, overrides);
  const fs::path marker = dir / "done" / (name + ".json");
  if (finished(marker, output, key)) return false;
  fs::create_directories(dir / "logs");
  fs::create_directories(dir / "done");
  const std::string log = (dir / "logs" / (name + ".log")).string();
  std::vector<std::string> args;
  if (o.ranks > 1) args = {"launch", "-n", std::to_string(o.ranks), "--"};  // every cell on all ranks
  args.push_back("run");
  args.push_back((dir / "recipe.yaml").string());
  args.insert(args.end(), overrides.begin(), overrides.end());
  util::write_file_atomic(log, "# mpqat " + fmt::format("{}", fmt::join(args, " ")) + "\n");
  const int rc = run_child(o.exe, args, log);
  if (rc != 0 || !fs::exists(output))
    throw InputError(fmt::format("mpqat study: {} failed (exit {}; log {}; rerun the study to resume): {}", name, rc,
                                 log, cell_error(log)));
  util::write_file_atomic(marker.string(), json{{"key", key}, {"folder", out_folder.string()}}.dump() + "\n");
  return true;
}

double stage_seconds(const eval::RunReport& report, const std::string& name) {
  for (const auto& s : report.stages)
    if (s.name == name && s.part_of.empty()) return s.seconds.value_or(0.0);
  return 0.0;
}

// One row of study.json from a cell's report.
json study_row(const StudyCell& c, const eval::RunReport& rep, bool with_layers) {
  json row{{"cell", c.name},       {"variant", c.variant},  {"allocation", c.allocation}, {"training", c.training},
           {"sgra", c.sgra},       {"samples", c.samples},  {"seed", c.seed}};
  row["budget_bits"] = c.budget ? json(*c.budget) : json(nullptr);
  row["budget_bytes"] = c.budget_bytes ? json(c.budget_bytes) : json(nullptr);
  const eval::ModelMetrics& q = rep.quantized;
  row["bytes"] = rep.size ? rep.size->file_bytes : 0;
  row["bpw"] = q.bpw.value_or(0.0);
  row["code_bits"] = q.code_bits.value_or(0.0);
  row["compression"] = rep.compression.value_or(0.0);
  if (const auto p = eval::mean_ppl(q)) {
    row["ppl"] = *p;  // several files: their mean, each kept
    if (q.ppl.size() > 1) row["ppl_files"] = eval::to_json(q)["ppl"];
  }
  for (const auto& t : q.tasks) row["tasks"][t.task] = t.acc;
  if (!q.classification.empty()) {
    const auto& m = q.classification.front().second;
    row["classification"] = {{"accuracy", m.accuracy}, {"f1", m.headline_f1()}};
  }
  row["train_seconds"] = stage_seconds(rep, "quantize");
  row["run_seconds"] = rep.seconds.value_or(0.0);
  int64_t epochs = 0, steps = 0;
  std::vector<double> curve;  // mean over blocks of val MSE / start val MSE, per epoch
  std::vector<int> count;
  for (const auto& b : rep.blocks) {
    epochs += b.epochs.value_or(0);
    steps += b.steps.value_or(0);
    const double start = b.start_val_mse.value_or(0.0);
    if (!(start > 0)) continue;
    for (std::size_t e = 0; e < b.val_curve.size(); ++e) {
      if (curve.size() <= e) curve.resize(e + 1, 0.0), count.resize(e + 1, 0);
      curve[e] += b.val_curve[e] / start;
      ++count[e];
    }
  }
  if (!rep.blocks.empty()) {
    row["epochs"] = epochs;
    row["steps"] = steps;
    for (std::size_t e = 0; e < curve.size(); ++e) curve[e] /= std::max(1, count[e]);
    row["val_curve"] = curve;
  }
  if (with_layers && !rep.layers.empty()) row["layers"] = eval::to_json(rep)["layers"];
  return row;
}

std::string machine_text() {
  std::string cpu;
  if (fs::exists("/proc/cpuinfo")) {
    std::istringstream in(util::read_file("/proc/cpuinfo"));
    for (std::string l; std::getline(in, l);)
      if (util::starts_with(l, "model name")) {
        cpu = util::trim(l.substr(l.find(':') + 1));
        break;
      }
  }
  return fmt::format("{} CPU cores{}", std::thread::hardware_concurrency(), cpu.empty() ? "" : " (" + cpu + ")");
}

// study.json, study.md and study.html from the rows so far.
void write_study_files(const fs::path& dir, const json& study) {
  util::write_file_atomic((dir / "study.json").string(), study.dump(2) + "\n");
  util::write_file_atomic((dir / "study.md").string(), eval::render_study_markdown(study));
  util::write_file_atomic((dir / "study.html").string(), eval::render_study_html(study));
}

}  // namespace

void run_study(const io::Recipe& r, const std::string& dir_text, const StudyOptions& o) {
  const fs::path dir(dir_text);
  const StudyPlan plan = plan_study(r, dir_text);
  const std::size_t total = plan.sensitivities.size() + plan.cells.size();
  std::cout << fmt::format("study: {} cells ({} sensitivity runs, {} rows) into {}\n", total, plan.sensitivities.size(),
                           plan.cells.size(), dir.string());
  for (const auto& [b, bytes] : plan.budget_bytes)
    std::cout << fmt::format("  budget {} bits = {} bytes (uniform {}-bit checkpoint{})\n", eval::budget_text(b), bytes,
                             eval::budget_text(b), std::floor(b) == b ? "" : ", interpolated");
  if (o.dry_run) {
    for (const auto& s : plan.sensitivities) std::cout << "  sensitivity/" << s.name << "\n";
    for (const auto& c : plan.cells) std::cout << "  cells/" << c.name << "  (" << c.variant << ")\n";
    return;
  }
  if (fs::exists(dir) && !fs::is_directory(dir)) throw InputError("--out '" + dir.string() + "' is a file, not a folder");
  fs::create_directories(dir);
  util::FolderLock lock(dir.string(), "study folder");
  r.write_resolved(dir.string());  // DIR/recipe.yaml: the base every cell overrides
  // A cell's identity: the recipe without its study section (adding a seed or an axis value
  // reruns nothing that exists) and the cell's overrides.
  io::Recipe keyed = r;
  for (const auto& k : io::recipe_schema())
    if (util::starts_with(k.path, "study.")) keyed.set(k.path, k.default_yaml, "study");
  const std::string base_yaml = keyed.to_yaml();

  json study{{"recipe", r.source()},
             {"model", r.str("model.path")},
             {"machine", machine_text()},
             {"created", util::utc_iso_now()},
             {"axes", {{"allocation", r.strings("study.allocation")},
                       {"training", r.strings("study.training")},
                       {"sgra", r.strings("study.sgra")},
                       {"budgets", r.numbers("study.budgets")},
                       {"samples", r.integers("study.samples")},
                       {"seeds", r.integers("study.seeds")}}},
             {"rows", json::array()}};
  for (const auto& [b, bytes] : plan.budget_bytes) study["budget_bytes"][eval::budget_text(b)] = bytes;
  std::size_t k = 0;
  double ran_seconds = 0;
  std::size_t ran_cells = 0;
  auto progress = [&](const std::string& what, bool ran, double secs, const std::string& result) {
    ++k;
    if (ran) ran_seconds += secs, ++ran_cells;
    // The rest at the mean time of the cells run so far (cells done earlier are not counted).
    const std::string eta = ran_cells > 0 && k < total
                                ? fmt::format("; about {} left", util::format_duration(ran_seconds / static_cast<double>(ran_cells) *
                                                                                      static_cast<double>(total - k)))
                                : std::string();
    std::cout << fmt::format("[{}/{}] {} {}{}\n", k, total, what,
                             ran ? fmt::format("({:.1f} s{})", secs, eta) : std::string("(done earlier)"), result)
              << std::flush;
  };
  for (const auto& s : plan.sensitivities) {
    const fs::path out = dir / "sensitivity" / s.name;
    const auto t0 = Clock::now();
    const bool ran = run_or_reuse(o, dir, base_yaml, s.name, s.overrides, out, out / "sensitivity.json");
    progress("sensitivity " + s.name, ran, std::chrono::duration<double>(Clock::now() - t0).count(), "");
    if (s.fp_baseline && fs::exists(out / "fp_eval.json"))
      study["fp"] = json::parse(util::read_file((out / "fp_eval.json").string()));
  }
  const int64_t first_seed = plan.cells.front().seed, first_n = plan.cells.front().samples;
  for (const auto& c : plan.cells) {
    const fs::path out = dir / "cells" / c.name;
    const auto t0 = Clock::now();
    const bool ran = run_or_reuse(o, dir, base_yaml, c.name, c.overrides, out, out / "report.json");
    const auto rep = eval::run_report_from_json(json::parse(util::read_file((out / "report.json").string())));
    json row = study_row(c, rep, c.seed == first_seed && c.samples == first_n);
    if (c.fp_baseline) study["fp"] = eval::to_json(rep.fp);
    // The float model's size is in every report; fp_eval.json of a sensitivity run lacks it.
    if (study.contains("fp") && !study["fp"].contains("bytes")) study["fp"]["bytes"] = rep.fp.bytes.value_or(0);
    std::string result = ":";
    if (row.contains("ppl")) result += fmt::format(" ppl {:.3f},", row["ppl"].get<double>());
    if (row.contains("classification"))
      result += fmt::format(" accuracy {:.4f}, F1 {:.4f},", row["classification"]["accuracy"].get<double>(),
                            row["classification"]["f1"].get<double>());
    if (row.contains("tasks"))
      for (const auto& [t, acc] : row["tasks"].items()) result += fmt::format(" {} {:.4f},", t, acc.get<double>());
    result += fmt::format(" {} bytes, {:.2f} bpw", row["bytes"].get<uint64_t>(), row["bpw"].get<double>());
    progress(c.variant + (c.budget ? " @ " + eval::budget_text(*c.budget) + " bits" : "") +
                 fmt::format(", n{} seed {}", c.samples, c.seed),
             ran, std::chrono::duration<double>(Clock::now() - t0).count(), result);
    study["rows"].push_back(std::move(row));
    write_study_files(dir, study);  // after every cell: a killed study leaves its rows so far
  }
  std::cout << "study: " << (dir / "study.md").string() << ", study.json, study.html\n";
}

}  // namespace mpqat::cli
