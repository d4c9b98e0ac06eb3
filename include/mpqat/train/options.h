// The recipe's training section (and the data keys Block-AP needs) as train options: the one
// mapping `mpqat run` and `mpqat train` share, so the two cannot drift (docs/recipes.md).
// Callers set what a recipe does not hold: device, communicator, state folder.
#pragma once

#include <cstdint>

#include "mpqat/train/block_ap.h"
#include "mpqat/train/e2e_qp.h"
#include "mpqat/train/gptq.h"

namespace mpqat::io {
class Recipe;
}

namespace mpqat::train {

// training.* (epochs, batch_size, learning rates, min_lr_ratio, train_norm, init, cache_*,
// nan_lr_backoff, resume), allocation.sgra.enabled, seed; val_fraction from
// data.validation_samples of `sequences` calibration sequences (at most half).
BlockApOptions block_ap_options_from_recipe(const io::Recipe& r, int64_t sequences);
// training.gptq.* (damp, act_order, static_groups, block_columns).
quant::GptqOptions gptq_options_from_recipe(const io::Recipe& r);
// training.gptq.*, training.init (mse = clipping search for the group parameters), the
// training.cache_* keys, training.batch_size as the forward chunk. Callers set device / comm.
GptqRunOptions gptq_run_options_from_recipe(const io::Recipe& r);
// training.e2e.* and seed.
E2eOptions e2e_options_from_recipe(const io::Recipe& r);

}  // namespace mpqat::train
