#!/usr/bin/env bash
# Block-AP step benchmark (docs/benchmarks.md, "Block-AP step (train)"): tokens/s, step time and
# peak RSS of one Block-AP optimisation step on a random Llama block, mpqat's fused fake-quant
# vs the same step in plain LibTorch ops, each variant in its own process.
#   tools/bench_train.sh [quick|7b] [extra args: --threads N --steps N --variant fused|ops|both ...]
#     quick (default): hidden 512, FFN 1376, 8 heads, context 256, 5 steps, 1 thread (seconds; its
#                      small parallel regions stall when a second OpenMP thread shares a busy core)
#     7b:              Llama-2-7B block (4096 / 11008 / 32 heads), context 2048, batch 1,
#                      2 steps, every CPU, run under `nice -n 10` (7 GB; 1-2 minutes per step on 2 cores)
# BUILD_DIR (default build) holds mpqat_bench_train. Later arguments override the mode's.
set -euo pipefail
MODE="${1:-quick}"
case "$MODE" in
  quick | 7b) shift || true ;;
  -*) MODE=quick ;;
  *)
    echo "error: mode '$MODE': accepted are quick, 7b" >&2
    exit 2
    ;;
esac
BUILD="${BUILD_DIR:-build}"
BIN="$BUILD/mpqat_bench_train"
if [[ ! -x "$BIN" ]]; then
  echo "error: $BIN not found (build the project first: cmake --build $BUILD --target mpqat_bench_train)" >&2
  exit 2
fi
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -m), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
if [[ "$MODE" == quick ]]; then
  "$BIN" --hidden 512 --intermediate 1376 --heads 8 --kv-heads 8 --context 256 --batch 1 --bits 4 --group 128 \
    --steps 5 --threads 1 "$@"
else
  nice -n 10 "$BIN" --hidden 4096 --intermediate 11008 --heads 32 --kv-heads 32 --context 2048 --batch 1 \
    --bits 4 --group 128 --steps 2 "$@"
fi
