// The run report's JSON form, report.json (include/mpqat/eval/run_report.h, docs/reports.md):
// to_json writes what the pipeline fills; the *_from_json readers are the one place that reads
// a stored report, leniently.
#include "mpqat/eval/run_report.h"

#include <cmath>
#include <limits>
#include <set>

#include "mpqat/eval/json_access.h"
#include "mpqat/util/error.h"

namespace mpqat::eval {

using nlohmann::json;
using json_access::field;
using json_access::number;
using json_access::string_of;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The side's fields that have a typed home; any other numeric field is ModelMetrics::other.
const std::set<std::string>& typed_side_fields() {
  static const std::set<std::string> s{"ppl", "tasks", "classification", "streamed",
                                       "bytes", "avg_bits", "code_bits", "bpw"};
  return s;
}

template <class T>
void put(json& j, const char* key, const std::optional<T>& v) {
  if (v) j[key] = *v;
}

void put(json& j, const char* key, const std::string& v) {
  if (!v.empty()) j[key] = v;
}

std::optional<int64_t> integer(const json& obj, const char* key) {
  const auto d = number(obj, key);
  if (!d || !std::isfinite(*d)) return std::nullopt;
  return static_cast<int64_t>(*d);
}

std::optional<uint64_t> unsigned_of(const json& obj, const char* key) {
  const auto d = number(obj, key);
  if (!d || !std::isfinite(*d) || *d < 0) return std::nullopt;
  return static_cast<uint64_t>(*d);
}

std::optional<bool> flag(const json& obj, const char* key) {
  const json& v = field(obj, key);
  if (!v.is_boolean()) return std::nullopt;
  return v.get<bool>();
}

// A whole, non-negative number as an integer (a byte budget), anything else as a double.
json whole_or_double(double v) {
  if (std::isfinite(v) && v >= 0 && v < 9.2e18 && std::floor(v) == v) return static_cast<uint64_t>(v);
  return v;
}

}  // namespace

// ================================================================= to_json

json to_json(const ModelMetrics& m) {
  json j = json::object();
  if (m.ppl.size() == 1 && m.ppl.front().first.empty()) {
    j["ppl"] = m.ppl.front().second;
  } else if (!m.ppl.empty()) {
    for (const auto& [f, v] : m.ppl) j["ppl"][f] = v;
  }
  for (const auto& t : m.tasks) j["tasks"][t.task] = to_json(t);
  if (m.classification.size() == 1 && m.classification.front().first.empty()) {
    j["classification"] = m.classification.front().second.to_json();
  } else {
    for (const auto& [name, c] : m.classification) j["classification"][name] = c.to_json();
  }
  for (const auto& [k, v] : m.other) j[k] = v;
  put(j, "streamed", m.streamed);
  put(j, "bytes", m.bytes);
  put(j, "avg_bits", m.avg_bits);
  put(j, "code_bits", m.code_bits);
  put(j, "bpw", m.bpw);
  return j;
}

json to_json(const ReportLayer& l) {
  json j{{"name", l.name}};
  put(j, "block", l.block);
  put(j, "bits", l.bits);
  put(j, "group_size", l.group_size);
  for (const auto& [k, v] : l.sensitivity) j["sensitivity"][k] = v ? json(*v) : json(nullptr);
  return j;
}

json to_json(const ReportStage& s) {
  json j{{"name", s.name}};
  put(j, "part_of", s.part_of);
  put(j, "seconds", s.seconds);
  put(j, "reused", s.reused);
  put(j, "peak_rss_mib", s.peak_rss_mib);
  put(j, "peak_anon_mib", s.peak_anon_mib);
  put(j, "peak_file_mib", s.peak_file_mib);
  return j;
}

namespace {

json to_json(const ReportBlock& b) {
  json j = json::object();
  put(j, "block", b.block);
  put(j, "epochs", b.epochs);
  put(j, "steps", b.steps);
  put(j, "start_val_mse", b.start_val_mse);
  put(j, "best_val_mse", b.best_val_mse);
  put(j, "end_val_mse", b.end_val_mse);
  put(j, "kept_rtn", b.kept_rtn);
  put(j, "seconds", b.seconds);
  j["val_curve"] = b.val_curve;
  return j;
}

}  // namespace

json to_json(const RunReport& r) {
  json j = json::object();
  j["model"] = r.model;
  put(j, "recipe", r.recipe);
  put(j, "name", r.name);
  put(j, "created", r.created);
  put(j, "mpqat_version", r.mpqat_version);
  put(j, "architecture", r.architecture);
  if (r.method)
    j["method"] = {{"allocation", r.method->allocation}, {"training", r.method->training}, {"e2e", r.method->e2e}};
  j["fp"] = to_json(r.fp);
  j["quantized"] = to_json(r.quantized);
  if (r.size)
    j["size"] = {{"file_bytes", r.size->file_bytes},
                 {"tensor_bytes", r.size->tensor_bytes},
                 {"fp16_bytes", r.size->fp16_bytes},
                 {"avg_bits_with_overhead", r.size->avg_bits_with_overhead},
                 {"bits_histogram", r.size->bits_histogram}};
  put(j, "compression", r.compression);
  if (r.budget) {
    json b{{"kind", r.budget->kind}, {"text", r.budget->text}};
    if (r.budget->value) b["value"] = whole_or_double(*r.budget->value);
    put(b, "actual", r.budget->actual);
    put(b, "predicted", r.budget->predicted);
    put(b, "met", r.budget->met);
    j["budget"] = b;
  }
  if (!r.allocation.is_null()) j["allocation"] = r.allocation;
  if (!r.layers.empty()) {
    j["layers"] = json::array();
    for (const auto& l : r.layers) j["layers"].push_back(to_json(l));
  }
  if (!r.blocks.empty()) {
    j["blocks"] = json::array();
    for (const auto& b : r.blocks) j["blocks"].push_back(to_json(b));
  }
  if (r.e2e)
    j["e2e"] = {{"steps", r.e2e->steps},
                {"start_loss", r.e2e->start_loss},
                {"end_loss", r.e2e->end_loss},
                {"nan_steps", r.e2e->nan_steps},
                {"seconds", r.e2e->seconds}};
  if (r.gptq)
    j["gptq"] = {{"proxy_loss", r.gptq->proxy_loss}, {"rtn_proxy_loss", r.gptq->rtn_proxy_loss}, {"seconds", r.gptq->seconds}};
  if (r.gguf) {
    j["exports"]["gguf"] = {{"path", r.gguf->path}, {"bytes", r.gguf->bytes}, {"bpw", r.gguf->bpw},
                            {"linear_bpw", r.gguf->linear_bpw}};
    if (!r.gguf->linear_types.empty()) j["exports"]["gguf"]["linear_types"] = r.gguf->linear_types;
    if (!r.gguf->table.empty()) j["exports"]["gguf"]["table"] = r.gguf->table;
  }
  put(j, "data", r.data);
  put(j, "sensitivity_metric", r.sensitivity_metric);
  if (r.calibration_samples || !r.calibration_sampling.empty()) {
    j["calibration"] = json::object();
    put(j["calibration"], "samples", r.calibration_samples);
    put(j["calibration"], "sampling", r.calibration_sampling);
  }
  if (!r.evaluation_path.empty() || r.evaluation_samples) {
    j["evaluation"] = json::object();
    put(j["evaluation"], "path", r.evaluation_path);
    put(j["evaluation"], "samples", r.evaluation_samples);
  }
  if (!r.stages.empty()) {
    j["stages"] = json::array();
    for (const auto& s : r.stages) j["stages"].push_back(to_json(s));
  }
  put(j, "seconds", r.seconds);
  return j;
}

// ================================================================= from_json (lenient)

ModelMetrics model_metrics_from_json(const json& side) {
  ModelMetrics m;
  const json& ppl = field(side, "ppl");
  if (ppl.is_number()) {
    m.ppl.emplace_back("", ppl.get<double>());
  } else if (ppl.is_object()) {
    for (auto it = ppl.begin(); it != ppl.end(); ++it) {
      if (it->is_number()) {
        m.ppl.emplace_back(it.key(), it->get<double>());
      } else if (it->is_object()) {  // an `mpqat eval` perplexity result {"ppl", "nll", ..}
        auto v = number(*it, "ppl");
        if (!v) v = number(*it, "perplexity");
        if (v) m.ppl.emplace_back(it.key(), *v);
      }
    }
  }
  const json& tasks = field(side, "tasks");
  if (tasks.is_object())
    for (auto it = tasks.begin(); it != tasks.end(); ++it) {
      if (it->is_object()) {
        m.tasks.push_back(multiple_choice_from_json(it.key(), *it));
      } else if (it->is_number()) {  // a bare accuracy
        m.tasks.push_back(multiple_choice_from_json(it.key(), json{{"acc", *it}}));
      }
    }
  const json& cls = field(side, "classification");
  if (cls.is_object()) {
    bool nested = false;
    for (const auto& v : cls) nested = nested || v.is_object();
    if (!nested) {
      m.classification.emplace_back("", classification_from_json(cls));
    } else {  // {"imdb": {"accuracy": ..}, ..} as `mpqat eval` writes it
      for (auto it = cls.begin(); it != cls.end(); ++it)
        if (it->is_object()) m.classification.emplace_back(it.key(), classification_from_json(*it));
    }
  }
  if (side.is_object())
    for (auto it = side.begin(); it != side.end(); ++it)
      if (!typed_side_fields().count(it.key()) && it->is_number()) m.other.emplace_back(it.key(), it->get<double>());
  m.streamed = flag(side, "streamed");
  m.bytes = unsigned_of(side, "bytes");
  m.avg_bits = number(side, "avg_bits");
  m.code_bits = number(side, "code_bits");
  m.bpw = number(side, "bpw");
  return m;
}

std::vector<ReportLayer> report_layers_from_json(const json& layers) {
  std::vector<ReportLayer> out;
  if (!layers.is_array()) return out;
  for (const auto& e : layers) {
    if (!e.is_object()) continue;
    ReportLayer l;
    l.name = field(e, "name").is_number() ? field(e, "name").dump() : string_of(field(e, "name"));
    l.block = integer(e, "block");
    l.bits = integer(e, "bits");
    l.group_size = integer(e, "group_size");
    const json& s = field(e, "sensitivity");
    if (s.is_number()) {
      l.sensitivity.emplace_back("sensitivity", s.get<double>());
    } else if (s.is_object()) {
      for (auto it = s.begin(); it != s.end(); ++it)
        if (it->is_number()) l.sensitivity.emplace_back(it.key(), it->get<double>());
        else if (it->is_null()) l.sensitivity.emplace_back(it.key(), std::nullopt);
    }
    out.push_back(std::move(l));
  }
  return out;
}

namespace {

std::vector<ReportBlock> blocks_from_json(const json& blocks) {
  std::vector<ReportBlock> out;
  if (!blocks.is_array()) return out;
  for (const auto& e : blocks) {
    ReportBlock b;
    b.block = integer(e, "block");
    b.epochs = integer(e, "epochs");
    b.steps = integer(e, "steps");
    b.start_val_mse = number(e, "start_val_mse");
    b.best_val_mse = number(e, "best_val_mse");
    b.end_val_mse = number(e, "end_val_mse");
    b.seconds = number(e, "seconds");
    b.kept_rtn = flag(e, "kept_rtn");
    const json& vc = field(e, "val_curve");
    if (vc.is_array())
      for (const auto& v : vc) b.val_curve.push_back(number(v).value_or(kNaN));
    out.push_back(std::move(b));
  }
  return out;
}

std::vector<ReportStage> stages_from_json(const json& stages) {
  std::vector<ReportStage> out;
  if (!stages.is_array()) return out;
  for (const auto& e : stages) {
    ReportStage s;
    s.name = string_of(field(e, "name"));
    s.part_of = string_of(field(e, "part_of"));
    s.seconds = number(e, "seconds");
    s.reused = flag(e, "reused");
    s.peak_rss_mib = number(e, "peak_rss_mib");
    s.peak_anon_mib = number(e, "peak_anon_mib");
    s.peak_file_mib = number(e, "peak_file_mib");
    out.push_back(std::move(s));
  }
  return out;
}

// A string field's text; a number is dumped.
std::string text_of(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number() || v.is_boolean()) return v.dump();
  return "";
}

}  // namespace

RunReport run_report_from_json(const json& j) {
  if (!j.is_object())
    throw InputError("run report: expected a JSON object (docs/reports.md), got " + std::string(j.type_name()));
  if (!j.contains("model") || !(j["model"].is_string() || j["model"].is_number()))
    throw InputError("run report: 'model' is missing or not a string; expected the model's path or name");
  for (const char* k : {"fp", "quantized"})
    if (!j.contains(k) || !j[k].is_object())
      throw InputError(std::string("run report: '") + k +
                       "' is missing or not an object; expected {\"ppl\": .., \"tasks\": .., \"bytes\": ..}");
  RunReport r;
  r.model = text_of(j["model"]);
  r.recipe = text_of(field(j, "recipe"));
  r.name = text_of(field(j, "name"));
  r.created = text_of(field(j, "created"));
  r.mpqat_version = text_of(field(j, "mpqat_version"));
  r.architecture = text_of(field(j, "architecture"));
  if (const json& m = field(j, "method"); m.is_object())
    r.method = RunReport::Method{string_of(field(m, "allocation")), string_of(field(m, "training")),
                                 flag(m, "e2e").value_or(false)};
  r.fp = model_metrics_from_json(j["fp"]);
  r.quantized = model_metrics_from_json(j["quantized"]);
  if (const json& s = field(j, "size"); s.is_object()) {
    ReportSize z;
    z.file_bytes = unsigned_of(s, "file_bytes").value_or(0);
    z.tensor_bytes = unsigned_of(s, "tensor_bytes").value_or(0);
    z.fp16_bytes = unsigned_of(s, "fp16_bytes").value_or(0);
    z.avg_bits_with_overhead = number(s, "avg_bits_with_overhead").value_or(0.0);
    if (const json& h = field(s, "bits_histogram"); h.is_array())
      for (const auto& p : h)
        if (p.is_array() && p.size() == 2 && p[0].is_number() && p[1].is_number())
          z.bits_histogram[p[0].get<int64_t>()] = p[1].get<int64_t>();
    r.size = z;
  }
  r.compression = number(j, "compression");
  if (const json& b = field(j, "budget"); b.is_object())
    r.budget = ReportBudget{text_of(field(b, "kind")), text_of(field(b, "text")), number(b, "value"),
                            unsigned_of(b, "actual"),  unsigned_of(b, "predicted"), flag(b, "met")};
  r.allocation = field(j, "allocation");
  r.layers = report_layers_from_json(field(j, "layers"));
  r.blocks = blocks_from_json(field(j, "blocks"));
  if (const json& e = field(j, "e2e"); e.is_object())
    r.e2e = ReportE2e{integer(e, "steps").value_or(0), integer(e, "nan_steps").value_or(0),
                      number(e, "start_loss").value_or(kNaN), number(e, "end_loss").value_or(kNaN),
                      number(e, "seconds").value_or(0.0)};
  if (const json& g = field(j, "gptq"); g.is_object())
    r.gptq = ReportGptq{number(g, "proxy_loss").value_or(kNaN), number(g, "rtn_proxy_loss").value_or(kNaN),
                        number(g, "seconds").value_or(0.0)};
  if (const json& g = field(field(j, "exports"), "gguf"); g.is_object()) {
    r.gguf = ReportGguf{string_of(field(g, "path")), unsigned_of(g, "bytes").value_or(0),
                        number(g, "bpw").value_or(kNaN), number(g, "linear_bpw").value_or(kNaN), {},
                        string_of(field(g, "table"))};
    if (const json& t = field(g, "linear_types"); t.is_object())
      for (auto it = t.begin(); it != t.end(); ++it)
        if (it->is_number()) r.gguf->linear_types[it.key()] = it->get<int64_t>();
  }
  r.data = text_of(field(j, "data"));
  r.sensitivity_metric = text_of(field(j, "sensitivity_metric"));
  r.calibration_samples = integer(field(j, "calibration"), "samples");
  r.calibration_sampling = string_of(field(field(j, "calibration"), "sampling"));
  r.evaluation_path = string_of(field(field(j, "evaluation"), "path"));
  r.evaluation_samples = integer(field(j, "evaluation"), "samples");
  r.stages = stages_from_json(field(j, "stages"));
  r.seconds = number(j, "seconds");
  return r;
}

std::optional<double> mean_ppl(const ModelMetrics& m) {
  if (m.ppl.empty()) return std::nullopt;
  double s = 0;
  for (const auto& [f, v] : m.ppl) s += v;
  return s / static_cast<double>(m.ppl.size());
}

}  // namespace mpqat::eval
