// Activation second moments per block linear (include/mpqat/sensitivity/imatrix.h).
#include "mpqat/sensitivity/imatrix.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>

#include <nlohmann/json.hpp>

#include "mpqat/model/linear.h"
#include "mpqat/model/model.h"
#include "mpqat/util/error.h"
#include "mpqat/util/strings.h"

namespace mpqat::sensitivity {

using nlohmann::json;

namespace {

// Sum over tokens of x_j^2 (fp64) and the token count of one linear's input.
struct ColumnMoments {
  torch::Tensor sum_sq;
  int64_t tokens = 0;
};

// Passes its input to the wrapped linear after adding x_j^2 to the module's moments.
class RecordingLinear : public model::LinearImpl {
 public:
  RecordingLinear(model::LinearPtr inner, ColumnMoments* acc)
      : model::LinearImpl(inner->in_features(), inner->out_features(), false), inner_(std::move(inner)), acc_(acc) {}
  torch::Tensor forward(const torch::Tensor& x) override {
    const auto x2 = x.reshape({-1, in_features_}).to(torch::kDouble);  // (tokens, in)
    const auto s = (x2 * x2).sum(0).cpu();
    acc_->sum_sq = acc_->sum_sq.defined() ? acc_->sum_sq + s : s;
    acc_->tokens += x2.size(0);
    return inner_->forward(x);
  }

 private:
  model::LinearPtr inner_;
  ColumnMoments* acc_;
};

// `inner`'s blocks with every linear wrapped in a RecordingLinear (a block is wrapped once,
// also when an in-memory source hands out the same block again; the wrappers are removed when
// this source goes).
class RecordingBlocks : public model::BlockSource {
 public:
  RecordingBlocks(model::BlockSource& inner, std::map<std::string, ColumnMoments>* acc) : inner_(inner), acc_(acc) {}
  ~RecordingBlocks() override {
    for (auto& [block, originals] : wrapped_)
      for (auto& [rel, lin] : originals) block->set_linear(rel, lin);
  }
  model::TransformerModel& shell() override { return inner_.shell(); }
  const model::ModelConfig& config() const override { return inner_.config(); }
  int64_t num_blocks() const override { return inner_.num_blocks(); }
  bool streaming() const override { return inner_.streaming(); }
  torch::Device device() const override { return inner_.device(); }
  model::BlockPtr block(int64_t i) override {
    auto b = inner_.block(i);
    for (const auto& [blk, originals] : wrapped_)
      if (blk == b) return b;
    std::vector<std::pair<std::string, model::LinearPtr>> originals;
    for (const auto& [rel, lin] : b->linears()) {
      originals.emplace_back(rel, lin);
      b->set_linear(rel, std::make_shared<RecordingLinear>(lin, &(*acc_)[inner_.block_prefix(i) + rel]));
    }
    if (!inner_.streaming()) wrapped_.emplace_back(b, std::move(originals));
    return b;
  }

 private:
  model::BlockSource& inner_;
  std::map<std::string, ColumnMoments>* acc_;
  std::vector<std::pair<model::BlockPtr, std::vector<std::pair<std::string, model::LinearPtr>>>> wrapped_;
};

}  // namespace

ImportanceMatrix collect_importance(model::BlockSource& src, const std::vector<std::vector<int32_t>>& sequences,
                                    int64_t batch) {
  if (sequences.empty()) throw InputError("importance matrix: no calibration sequences");
  if (batch < 1) throw InputError("importance matrix: batch must be >= 1");
  torch::NoGradGuard ng;
  std::map<std::string, ColumnMoments> acc;
  std::vector<model::ModelInput> inputs;
  for (std::size_t i = 0; i < sequences.size(); i += static_cast<std::size_t>(batch)) {
    const auto end = std::min(sequences.size(), i + static_cast<std::size_t>(batch));
    inputs.push_back(model::pad_right({sequences.begin() + static_cast<std::ptrdiff_t>(i),
                                       sequences.begin() + static_cast<std::ptrdiff_t>(end)},
                                      0));
  }
  {
    RecordingBlocks rec(src, &acc);
    model::run_inputs(rec, inputs, [](std::size_t, const at::Tensor&) {});
  }
  ImportanceMatrix m;
  for (auto& [name, a] : acc) {
    if (!a.sum_sq.defined() || a.tokens == 0) continue;
    const auto mean = (a.sum_sq / static_cast<double>(a.tokens)).to(torch::kFloat).contiguous();
    m.modules[name].assign(mean.data_ptr<float>(), mean.data_ptr<float>() + mean.numel());
    m.tokens = a.tokens;
  }
  return m;
}

ImportanceMatrix importance_of_folder(const std::string& dir, const std::string& calib,
                                      const data::CalibrationOptions& co, const model::StreamingOptions& st) {
  const model::ModelFolder folder(dir);
  if (folder.config().is_sequence_classifier())
    throw InputError("importance matrix of '" + dir + "': a sequence classifier (an imatrix is measured on causal LMs)");
  if (!folder.has_tokenizer())
    throw InputError("importance matrix of '" + dir + "': no tokenizer (tokenizer.json, tokenizer.model or tokenizer.bin)");
  data::CalibrationOptions c = co;  // windows no longer than the model's context
  c.seqlen = std::min<int64_t>(c.seqlen, folder.config().max_position_embeddings);
  const auto cal = data::load_token_calibration(calib, folder.tokenizer(), c);
  auto src = model::open_blocks(folder, st);
  auto m = collect_importance(*src, cal.sequences);
  m.model = dir;
  m.calibration = calib;
  return m;
}

void write_importance(const std::string& path, const ImportanceMatrix& m) {
  json j{{"version", 1}, {"model", m.model}, {"calibration", m.calibration}, {"tokens", m.tokens},
         {"modules", json::object()}};
  for (const auto& [name, v] : m.modules) j["modules"][name] = v;
  util::write_file_atomic(path, j.dump() + "\n");
}

ImportanceMatrix read_importance(const std::string& path) {
  json j;
  try {
    j = json::parse(util::read_file(path));
  } catch (const json::exception& e) {
    throw InputError("importance matrix '" + path + "': not JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("modules") || !j["modules"].is_object())
    throw InputError("importance matrix '" + path +
                     "': expected {\"version\": 1, \"modules\": {LINEAR: [E[x^2] per input column]}} (mpqat imatrix)");
  ImportanceMatrix m;
  m.model = j.value("model", "");
  m.calibration = j.value("calibration", "");
  m.tokens = j.value("tokens", int64_t{0});
  for (const auto& [name, v] : j["modules"].items()) {
    if (!v.is_array() || v.empty())
      throw InputError("importance matrix '" + path + "': modules." + name + " is not a non-empty array of numbers");
    auto& out = m.modules[name];
    for (const auto& x : v) {
      if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() < 0)
        throw InputError("importance matrix '" + path + "': modules." + name +
                         " holds a value that is not a finite number >= 0");
      out.push_back(x.get<float>());
    }
  }
  return m;
}

}  // namespace mpqat::sensitivity
