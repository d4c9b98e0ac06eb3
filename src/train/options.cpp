// Recipe -> train options (include/mpqat/train/options.h).
#include "mpqat/train/options.h"

#include <algorithm>

#include "mpqat/io/recipe.h"
#include "mpqat/util/error.h"

#include <spdlog/spdlog.h>

namespace mpqat::train {

BlockApOptions block_ap_options_from_recipe(const io::Recipe& r, int64_t sequences) {
  BlockApOptions bo;
  bo.epochs = static_cast<int>(r.integer("training.epochs"));
  bo.use_sgra = r.flag("allocation.sgra.enabled");
  bo.sgra_equal_steps = r.flag("allocation.sgra.equal_steps");
  bo.batch_size = r.integer("training.batch_size");
  bo.lr_weights = r.number("training.lr_weights");
  bo.lr_quant = r.number("training.lr_quant");
  bo.min_lr_ratio = r.number("training.min_lr_ratio");
  bo.train_norm = r.flag("training.train_norm");
  bo.init.clip_search = r.str("training.init") == "mse";
  bo.gptq_init = r.str("training.init") == "gptq";
  bo.gptq = gptq_options_from_recipe(r);
  bo.gptq_train_scales = r.flag("training.gptq.train_scales");
  int64_t nval = r.integer("data.validation_samples");
  if (!r.is_set("data.validation_samples") && sequences > 1 && nval > sequences / 4) {
    // The default (16) on a small calibration set: a quarter of it validates (said in the log).
    const int64_t was = nval;
    nval = std::max<int64_t>(1, sequences / 4);
    spdlog::info("data.validation_samples: the default {} is more than a quarter of the {} calibration sequences; "
                 "using {} (set it to choose)", was, sequences, nval);
  }
  if (sequences > 1 && nval >= sequences)
    throw InputError(r.source() + ": data.validation_samples " + std::to_string(nval) +
                     " leaves nothing to train on: the calibration data gives " + std::to_string(sequences) +
                     " sequences (data.calibration.samples); use fewer validation samples");
  const int64_t training = sequences - (sequences > 1 ? nval : 0);
  if (training < bo.batch_size)
    throw InputError(r.source() + ": the calibration data gives " + std::to_string(training) +
                     " training sequences, fewer than one batch (training.batch_size " + std::to_string(bo.batch_size) +
                     "); add calibration text or lower training.batch_size");
  bo.val_fraction = sequences > 1 ? static_cast<double>(nval) / static_cast<double>(sequences) : 0.0;
  bo.cache = model::cache_options(r.str("training.cache_dtype"), r.str("training.cache_memory_limit"),
                                  r.str("training.cache_dir"),
                                  {"training.cache_dtype", "training.cache_memory_limit", "training.cache_dir"});
  bo.nan_lr_backoff = r.number("training.nan_lr_backoff");
  bo.resume = r.flag("training.resume");
  bo.seed = static_cast<uint64_t>(r.integer("seed"));
  return bo;
}

quant::GptqOptions gptq_options_from_recipe(const io::Recipe& r) {
  quant::GptqOptions g;
  g.damp = r.number("training.gptq.damp");
  g.act_order = r.flag("training.gptq.act_order");
  g.static_groups = r.flag("training.gptq.static_groups");
  g.block_columns = r.integer("training.gptq.block_columns");
  return g;
}

GptqRunOptions gptq_run_options_from_recipe(const io::Recipe& r) {
  GptqRunOptions go;
  go.gptq = gptq_options_from_recipe(r);
  go.init.clip_search = r.str("training.init") == "mse";
  go.cache = model::cache_options(r.str("training.cache_dtype"), r.str("training.cache_memory_limit"),
                                  r.str("training.cache_dir"),
                                  {"training.cache_dtype", "training.cache_memory_limit", "training.cache_dir"});
  go.chunk = r.integer("training.batch_size");
  return go;
}

E2eOptions e2e_options_from_recipe(const io::Recipe& r) {
  E2eOptions eo;
  eo.epochs = static_cast<int>(r.integer("training.e2e.epochs"));
  eo.lr = r.number("training.e2e.lr");
  eo.warmup_ratio = r.number("training.e2e.warmup_ratio");
  eo.grad_clip = r.number("training.e2e.grad_clip");
  eo.batch_size = r.integer("training.e2e.batch_size");
  eo.seed = static_cast<uint64_t>(r.integer("seed"));
  return eo;
}

}  // namespace mpqat::train
