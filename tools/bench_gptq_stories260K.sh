#!/usr/bin/env bash
# The GPTQ table of docs/quantization.md: stories260K at uniform 3-bit g32 (or BITS / GROUP),
# 128 x 256 calibration tokens from calib.txt, held-out perplexity at context 512, for FP, RTN,
# GPTQ, GPTQ act-order, Block-AP from RTN and Block-AP from GPTQ (the stories260K recipe's
# learning rates), with the seconds of each quantization.
#   tools/bench_gptq_stories260K.sh        (needs build/mpqat and ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
MPQAT=${MPQAT:-build/mpqat}
BITS=${BITS:-3}
GROUP=${GROUP:-32}
M=runs/stories260K-hf
OUT=runs/gptq-stories260K
tools/prepare_stories260K.sh >/dev/null
mkdir -p "$OUT"
tools/uniform_plan.py "$M" "$BITS" "$GROUP" "$OUT/plan.json"
ppl() { "$MPQAT" eval "$1" --ppl "$M/heldout.txt" --context 512 --json 2>/dev/null |
        python3 -c "import json,sys; print(f\"{json.load(sys.stdin)['ppl']:.3f}\")"; }
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > "$OUT/last.log" 2>&1 || { cat "$OUT/last.log" >&2; exit 1; }; t1=$(date +%s.%N);
         python3 -c "print(f'{$t1 - $t0:.1f}')"; }
calib=(--calib "$M/calib.txt" --samples 128 --seqlen 256)
echo "| method | ppl (held-out, context 512) | seconds |"
echo "|---|---:|---:|"
echo "| FP | $(ppl "$M") | |"
s=$(secs "$MPQAT" quantize "$M" --plan "$OUT/plan.json" --method rtn --out "$OUT/rtn" --force)
echo "| RTN w${BITS}g${GROUP} | $(ppl "$OUT/rtn") | $s |"
s=$(secs "$MPQAT" quantize "$M" --plan "$OUT/plan.json" --method gptq "${calib[@]}" --out "$OUT/gptq" --force)
echo "| GPTQ | $(ppl "$OUT/gptq") | $s |"
s=$(secs "$MPQAT" quantize "$M" --plan "$OUT/plan.json" --method gptq --act-order "${calib[@]}" --out "$OUT/gptq-ao" --force)
echo "| GPTQ act-order | $(ppl "$OUT/gptq-ao") | $s |"
s=$(secs "$MPQAT" train "$M" --plan "$OUT/plan.json" "${calib[@]}" --recipe recipes/stories260K.yaml --out "$OUT/bap" --force)
echo "| Block-AP from RTN | $(ppl "$OUT/bap") | $s |"
s=$(secs "$MPQAT" train "$M" --plan "$OUT/plan.json" "${calib[@]}" --recipe recipes/stories260K.yaml --init gptq --out "$OUT/bap-gptq" --force)
echo "| Block-AP from GPTQ | $(ppl "$OUT/bap-gptq") | $s |"
