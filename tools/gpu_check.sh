#!/usr/bin/env bash
# One command for a lent GPU machine (docs/gpu.md): after `bash .devdeps/build-on-device.sh`
# (../shared/device/) built build-gpu/ against PyTorch's LibTorch (CUDA + NCCL), it checks
#   1. the test suite on that build (the Cuda.* tests compare CUDA with CPU; the rest check
#      that the LibTorch 2.x build behaves as the 1.13 one),
#   2. stories260K end to end (mpqat run: Fisher, QBO, Block-AP, save, reload, perplexity) on
#      CUDA and on CPU: held-out perplexity equal within 1e-3 relative,
#   3. one Block-AP step of a Llama-2-7B-shaped block at 2048 tokens (tokens/s, peak GPU memory),
#   4. streamed Fisher and Block-AP of the TinyLlama-1.1B-shaped random model on CUDA (seconds,
#      peak GPU memory),
#   5. where the transformers package imports, logits of random Llama / Qwen2 / OPT / BERT
#      models built by transformers against mpqat's loader,
# and writes one results table (markdown) to $OUT/gpu_check.md (the device tool brings $OUT back)
# or ./gpu_check.md. Budget: GPU_CHECK_SECONDS (default 420) for all steps together, after the
# build; each step has its own timeout, cut to what is left, and is reported; a failed or timed-out
# step does not stop the others.
#   DEVICE=cpu tools/gpu_check.sh     the same steps on the CPU (to check the script itself)
set -uo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build-gpu}
[ -x "$B/mpqat" ] || B=build
DEV=${DEVICE:-cuda}
DATA=${MPQAT_SHARED_DIR:-}
[ -n "$DATA" ] || { [ -d .devdeps/data ] && DATA=$PWD/.devdeps; } || true
[ -n "$DATA" ] || DATA=$(cd .. && pwd)/shared
export MPQAT_SHARED_DIR=$DATA
OUTDIR=${OUT:-.}
W=${WORK:-/tmp/mpqat_gpu_check}
rm -rf "$W"; mkdir -p "$W"
REPORT="$OUTDIR/gpu_check.md"
rows=()
row() { rows+=("| $1 | $2 | $3 |"); echo "[gpu_check] $1: $2 ($3)"; }
# Peak GPU memory of a command, sampled by nvidia-smi (includes the CUDA context).
gpu_peak_start() {
  rm -f "$W/smi.txt"
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$W/smi.txt" 2>/dev/null &
    SMI=$!
  else SMI=; fi
}
gpu_peak_stop() {
  [ -n "${SMI:-}" ] && kill "$SMI" 2>/dev/null && wait "$SMI" 2>/dev/null
  [ -s "$W/smi.txt" ] && sort -n "$W/smi.txt" | tail -1 | awk '{print $1 " MiB"}' || echo "n/a"
}
END=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-420} ))
# tmo WANT: WANT seconds, or what is left of the budget; 1 (the step fails at once) under 10 s.
tmo() { local left=$(( END - $(date +%s) )); (( left < 10 )) && { echo 1; return; }; (( left < $1 )) && echo "$left" || echo "$1"; }
secs() { python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f} s')" "$1"; }

host="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
echo "# mpqat GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), device $DEV, ${host:-no nvidia-smi}, build $B" > "$REPORT"

# 1. The test suite on this build.
t=$(date +%s.%N)
timeout "$(tmo 200)" ctest --test-dir "$B" -j"$(nproc)" --output-on-failure > "$W/ctest.log" 2>&1; rc=$?
if [ $rc = 0 ]; then
  row "test suite ($B)" "pass" "$(grep -E 'tests passed' "$W/ctest.log" | tail -1), $(secs "$t")"
elif [ $rc = 124 ]; then
  row "test suite ($B)" "FAIL (timed out)" "$(grep -cE 'Passed' "$W/ctest.log") suites passed before the limit, $(secs "$t")"
else
  row "test suite ($B)" "FAIL" "$(grep -E 'tests passed|\*\*\*Failed|Timeout' "$W/ctest.log" | tr '\n' ' ' | cut -c1-300)"
fi
grep -E "^\[ +OK \] Cuda\.|^\[  FAILED  \] Cuda\.|Cuda\..*SKIPPED" "$W/ctest.log" | head -8 | sed 's/^/    /' >> "$W/cuda_tests.txt" || true

# 2. stories260K end to end on $DEV and on CPU.
S=$DATA/data/models/stories260K
if [ -f "$S/stories260K.bin" ]; then
  "$B/mpqat" convert llama2c "$S/stories260K.bin" --tokenizer "$S/tok512.bin" --out "$W/stories" > /dev/null
  head -c 300000 "$DATA/data/text/tinystories/validation_part1.txt" > "$W/calib.txt"
  tail -c 200000 "$DATA/data/text/tinystories/validation_part1.txt" > "$W/heldout.txt"
  devs=("$DEV"); [ "$DEV" = cpu ] || devs+=(cpu)
  for d in "${devs[@]}"; do
    t=$(date +%s.%N)
    timeout "$(tmo 120)" "$B/mpqat" run recipes/stories260K.yaml model.path="$W/stories" model.device="$d" \
        data.calibration.path="$W/calib.txt" "evaluation.perplexity=[$W/heldout.txt]" evaluation.context=512 \
        data.calibration.samples=32 output.report_formats=[json] output.dir="$W/run_$d" > "$W/run_$d.log" 2>&1
    echo "$? $(secs "$t")" > "$W/run_$d.rc"
  done
  python3 - "$W" "$DEV" >> "$W/rows.txt" <<'PY'
import json, sys, os
w, dev = sys.argv[1:]
def ppl(d):
    p = os.path.join(w, f"run_{d}", "report.json")
    return json.load(open(p))["quantized"]["ppl"] if os.path.exists(p) else None
a, b = ppl(dev), ppl("cpu")
rc = {d: open(os.path.join(w, f"run_{d}.rc")).read().split() for d in (dev, "cpu")}
if a is None or b is None:
    print(f"stories260K end to end|FAIL|exit {rc[dev][0]} on {dev}, {rc['cpu'][0]} on cpu (see run_*.log)")
else:
    rel = abs(a - b) / b
    print(f"stories260K end to end (held-out ppl after Block-AP)|{'pass' if rel <= 1e-3 else 'FAIL'}|"
          f"{dev} {a:.5f} vs cpu {b:.5f}, rel diff {rel:.2e}; {rc[dev][1]} {rc[dev][2]} vs {rc['cpu'][1]} {rc['cpu'][2]}")
PY
  while IFS='|' read -r a b c; do row "$a" "$b" "$c"; done < "$W/rows.txt"; rm -f "$W/rows.txt"
else
  row "stories260K end to end" "skipped" "no $S (carry .devdeps with the data)"
fi

# 3. One Block-AP step of a Llama-2-7B-shaped block at 2048 tokens.
if [ -x "$B/mpqat_bench_train" ]; then
  gpu_peak_start; t=$(date +%s.%N)
  timeout "$(tmo 120)" "$B/mpqat_bench_train" --hidden 4096 --intermediate 11008 --heads 32 --kv-heads 32 --context 2048 \
      --batch 1 --bits 4 --group 128 --steps 2 --variant fused --device "$DEV" > "$W/bap7b.log" 2>&1
  rc=$?; peak=$(gpu_peak_stop)
  row "Block-AP step, Llama-2-7B block, 2048 tokens" "$([ $rc = 0 ] && echo pass || echo "FAIL ($rc)")" \
      "$(grep -iE 'tok/s|tokens/s' "$W/bap7b.log" | tail -1 | cut -c1-160); peak GPU $peak; $(secs "$t")"
fi

# 4. Streamed Fisher and Block-AP of the TinyLlama-1.1B-shaped random model.
if [ -f "$DATA/data/tokenizers/llama2/tokenizer.model" ]; then
  timeout "$(tmo 90)" "$B/mpqat" random-model "$W/tl" --shape 1b --tokenizer-from "$DATA/data/tokenizers/llama2" > "$W/tl.log" 2>&1
  head -c 60000 "$DATA/data/text/wikitext2/valid.txt" > "$W/wt_calib.txt"
  cat > "$W/tl.yaml" <<EOF
model: {path: $W/tl, device: $DEV}
data: {calibration: {path: $W/wt_calib.txt, samples: 8, seqlen: 512}, validation_samples: 2}
sensitivity: {metrics: [fisher]}
allocation: {method: qbo, budget: {avg_bits: 3.0}, bits: [2, 3, 4, 8], group_sizes: [128], sgra: {enabled: false}}
training: {method: block-ap, epochs: 1, batch_size: 2}
evaluation: {fp_baseline: false}
output: {stop_after: quantize, dir: $W/tl_run}
EOF
  gpu_peak_start; t=$(date +%s.%N)
  timeout "$(tmo 180)" "$B/mpqat" run "$W/tl.yaml" >> "$W/tl.log" 2>&1; rc=$?
  peak=$(gpu_peak_stop)
  detail=$(python3 - "$W/tl_run/stage_report.json" <<'PY' 2>/dev/null
import json, sys
st = {s["name"]: s for s in json.load(open(sys.argv[1]))}
print(", ".join(f"{n} {st[n]['seconds']:.1f} s (host anon {st[n]['peak_anon_mib']:.0f} MiB)" for n in ("sensitivity", "block_ap") if n in st))
PY
)
  row "TinyLlama-1.1B shape: streamed Fisher + Block-AP, 8 x 512 tokens" "$([ $rc = 0 ] && echo pass || echo "FAIL ($rc)")" \
      "${detail:-see tl.log}; peak GPU $peak; $(secs "$t")"
else
  row "TinyLlama-1.1B shape" "skipped" "no Llama-2 tokenizer under $DATA/data/tokenizers"
fi

# 5. Logits against transformers.
if python3 -c "import transformers, torch, numpy" 2> /dev/null; then
  t=$(date +%s.%N)
  if timeout "$(tmo 90)" python3 tools/check_hf_parity.py "$W/hf" > "$W/hf.log" 2>&1 &&
     MPQAT_HF_PARITY_DIR="$W/hf" timeout "$(tmo 60)" "$B/mpqat_tests" --gtest_filter='HFParity.*' >> "$W/hf.log" 2>&1; then
    row "logits vs transformers (llama, qwen2, opt x3, bert)" "pass" "$(grep -m1 '^transformers' "$W/hf.log"), $(secs "$t")"
  else
    row "logits vs transformers" "FAIL" "$(grep -E 'Failure|Error|error' "$W/hf.log" | head -3 | tr '\n' ' ' | cut -c1-300)"
  fi
else
  row "logits vs transformers" "skipped" "the transformers package does not import here"
fi

{
  echo
  echo "| check | result | measured |"
  echo "|---|---|---|"
  printf '%s\n' "${rows[@]}"
  [ -s "$W/cuda_tests.txt" ] && { echo; echo "Cuda.* tests:"; cat "$W/cuda_tests.txt"; }
} >> "$REPORT"
cp "$W"/*.log "$OUTDIR"/ 2> /dev/null || true
cat "$REPORT"
