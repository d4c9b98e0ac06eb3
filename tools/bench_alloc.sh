#!/usr/bin/env bash
# Allocation solver timing (exact DP vs Lagrangian) for 7B- and 70B-sized menus.
# Uses build/mpqat_bench_alloc when built; otherwise compiles the torch-free sources into /tmp.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${MPQAT_BENCH_ALLOC:-$ROOT/build/mpqat_bench_alloc}"
if [[ ! -x "$BIN" ]]; then
  BIN=/tmp/mpqat_bench_alloc.$$
  g++ -std=c++17 -O2 -I"$ROOT/include" "$ROOT"/src/alloc/*.cpp "$ROOT/src/util/strings.cpp" \
    "$ROOT/src/model/config.cpp" "$ROOT/src/io/safetensors.cpp" "$ROOT/src/io/recipe.cpp" \
    "$ROOT/src/io/recipe_schema.cpp" "$ROOT/src/quant/scheme.cpp" "$ROOT/bench/bench_alloc.cpp" \
    -lfmt -lyaml-cpp -pthread -o "$BIN"
  trap 'rm -f "$BIN"' EXIT
fi
echo "# allocation solver time ($(nproc) cores, $(date -u +%Y-%m-%d))"
"$BIN"
