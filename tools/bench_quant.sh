#!/usr/bin/env bash
# Quantization kernel benchmark (docs/benchmarks.md): fake-quant fwd+bwd vs linear, dequant+matmul
# vs fp32 matmul, pack speed, for Llama-7B-shaped weights at g128.
#   tools/bench_quant.sh [BUILD_DIR] [extra args: --tokens 512 --reps 5 --bits 4 --small --device cuda]
set -euo pipefail
BUILD="${1:-build}"
shift || true
BIN="$BUILD/mpqat_bench_quant"
if [[ ! -x "$BIN" ]]; then
  echo "error: $BIN not found (build the project first: cmake --build $BUILD --target mpqat_bench_quant)" >&2
  exit 2
fi
echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(uname -m), $(nproc) cores"
"$BIN" "$@"
if [[ "${MPQAT_BENCH_CUDA:-0}" == "1" ]]; then
  echo
  "$BIN" --device cuda "$@"
fi
