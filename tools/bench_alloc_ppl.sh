#!/usr/bin/env bash
# Perplexity at equal bytes on stories260K: uniform RTN vs QBO vs MPQ (same bytes / average
# bits as each uniform point) and the seeds' clustering presets, all RTN, so the allocator
# alone is compared. Calibration and evaluation text are disjoint parts of the TinyStories
# validation file (first 250 kB / the rest).
#   tools/bench_alloc_ppl.sh [OUT_DIR]      (default runs/alloc-ppl; prints a Markdown table)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mpqat=build/mpqat
data=${MPQAT_SHARED_DIR:-$root/../shared}/data
out=${1:-runs/alloc-ppl}
g=${GROUP:-32}
mkdir -p "$out"
src=$data/text/tinystories/validation_part1.txt
head -c 250000 "$src" > "$out/calib.txt"
tail -c +250001 "$src" > "$out/eval.txt"
"$mpqat" convert llama2c "$data/models/stories260K/stories260K.bin" \
  --tokenizer "$data/models/stories260K/tok512.bin" --out "$out/fp" --force >/dev/null
"$mpqat" sensitivity "$out/fp" --calib "$out/calib.txt" --samples 64 --seqlen 256 \
  --metrics fisher --bits 2,3,4,5,6,8 --group-sizes "$g" --out "$out/sens.json" --quiet >/dev/null

jq_py() { python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
ppl() { "$mpqat" eval "$1" --ppl "$out/eval.txt" --context 512 --batch-size 8 --json | jq_py 'round(j["ppl"], 4)'; }
# quantize PLAN NAME: prints "bytes avg_bits_with_overhead ppl"
point() {
  "$mpqat" quantize "$out/fp" --plan "$1" --method rtn --out "$out/$2" --force >/dev/null
  local ins
  ins=$("$mpqat" inspect "$out/$2" --json)
  local bytes avg
  bytes=$(echo "$ins" | jq_py 'j["total_bytes"]')
  avg=$(echo "$ins" | jq_py 'repr(j["avg_bits_with_overhead"])')
  echo "$bytes $avg $(ppl "$out/$2")"
}
r3() { python3 -c "print(f'{float($1):.3f}')"; }
alloc() {  # NAME ARGS...
  local name=$1; shift
  "$mpqat" allocate --model "$out/fp" --sensitivity "$out/sens.json" --group-sizes "$g" \
    --bits 2,3,4,5,6,8 --out "$out/$name.json" "$@" >/dev/null
}

echo "| method | bytes (tensors) | avg bits (with scales/zeros) | ppl (TinyStories, ctx 512) |"
echo "|---|---|---|---|"
echo "| FP32 (fp16 bytes) | $("$mpqat" inspect "$out/fp" --json 2>/dev/null | jq_py 'j.get("fp16_bytes", "-")' || echo -) | 16 | $(ppl "$out/fp") |"
for b in 2 3 4; do
  alloc "u$b" --method uniform --uniform-bits "$b"
  read -r ub ua up <<<"$(point "$out/u$b.json" "q_u$b")"
  echo "| uniform ${b}-bit g$g | $ub | $(r3 "$ua") | $up |"
  alloc "qbo$b" --method qbo --budget "avg_bits=$ua"
  read -r qb qa qp <<<"$(point "$out/qbo$b.json" "q_qbo$b")"
  echo "| QBO at uniform-${b} size | $qb | $(r3 "$qa") | $qp |"
  alloc "mpq$b" --method mpq --budget "avg_bits=$ua"
  read -r mb ma mp <<<"$(point "$out/mpq$b.json" "q_mpq$b")"
  echo "| MPQ at uniform-${b} size | $mb | $(r3 "$ma") | $mp |"
done
for m in kmeans percentile hierarchical; do
  for preset in 8,4,2 8,4,3; do
    alloc "$m-${preset//,/}" --method "$m" --groups 3 --preset "$preset"
    read -r cb ca cp <<<"$(point "$out/$m-${preset//,/}.json" "q_$m-${preset//,/}")"
    echo "| $m [${preset}] | $cb | $(r3 "$ca") | $cp |"
  done
done
