#!/usr/bin/env bash
# Model benchmark table (any family: Llama, OPT, BERT): load time, forward tokens/s and peak
# resident memory, with the whole model in memory and with block streaming (one block at a time
# from the mapped file).
#   tools/bench_model.sh MODEL_DIR [--tokens T] [--batch B] [--repeats R]
# One process per mode, since peak RSS never decreases within a process.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${MPQAT_BENCH_BIN:-$root/build/mpqat_bench_model}
[ $# -ge 1 ] || { echo "usage: $0 MODEL_DIR [--tokens T] [--batch B] [--repeats R]" >&2; exit 2; }
dir=$1; shift
# peak_rss counts the mapped checkpoint's pages too; anon_MiB (heap: weights, activations) and
# file_MiB (mapped checkpoint pages, reclaimable) are read after the last forward.
printf "%-10s %7s %8s %10s %13s %13s %9s %9s\n" mode layers load_s forward_s tokens_per_s \
  peak_rss_MiB anon_MiB file_MiB
for mode in full streaming; do
  "$bin" "$dir" --mode "$mode" "$@" | python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
print("%-10s %7d %8.3f %10.4f %13.1f %13.1f %9.1f %9.1f" % (j["mode"], j["layers"],
      j["load_s"], j["forward_s"], j["tokens_per_s"], j["peak_rss_mib"], j["rss_anon_mib"],
      j["rss_file_mib"]))'
done
