#!/usr/bin/env bash
# Model benchmark table: load time, forward tokens/s and peak resident memory, with the whole
# model in memory and with block streaming (one block at a time from the mapped file).
#   tools/bench_model.sh MODEL_DIR [--tokens T] [--batch B] [--repeats R]
# One process per mode, since peak RSS never decreases within a process.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MPQAT_BENCH_BIN:-$root/build/mpqat_bench_model}
[ $# -ge 1 ] || { echo "usage: $0 MODEL_DIR [--tokens T] [--batch B] [--repeats R]" >&2; exit 2; }
dir=$1; shift
printf "%-10s %8s %10s %12s %14s %14s\n" mode layers load_s forward_s tokens_per_s peak_rss_MiB
for mode in full streaming; do
  "$bin" "$dir" --mode "$mode" "$@" | python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
print("%-10s %8d %10.3f %12.4f %14.1f %14.1f" % (j["mode"], j["layers"], j["load_s"],
      j["forward_s"], j["tokens_per_s"], j["peak_rss_mib"]))'
done
