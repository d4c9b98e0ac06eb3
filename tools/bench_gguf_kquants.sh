#!/usr/bin/env bash
# GGUF K-quants, measured: on runs/stories-k256 (tools/make_stories_k256.sh: a 3.5M-parameter
# Llama whose rows are multiples of 256), for uniform plans w2g32, w3g32, w4g128 and w6g32
# (asymmetric), the held-out perplexity (context 256) of
#   - the mpqat checkpoint (RTN, and Block-AP from RTN),
#   - the GGUF file llama.cpp runs, decoded (`export gguf --decoded-out`) and evaluated by mpqat:
#     requantized into Q2_K / Q3_K / Q4_K / Q6_K without and with the importance matrix
#     measured on that checkpoint (`mpqat imatrix`),
#   - the float model quantized straight into the same K-quant (`--float-type qN_k`, the way
#     llama.cpp's own quantizer starts from float weights), without and with an imatrix,
# and the block linears' bpw of the K-quant file and of the exact legacy file (--k-quants off).
# Prints one markdown table (docs/gguf.md). Environment: MPQAT (build/mpqat), WORK
# (runs/bench-gguf-kquants), SAMPLES (64 calibration windows of 256 tokens), EPOCHS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
MPQAT=${MPQAT:-build/mpqat}
WORK=${WORK:-runs/bench-gguf-kquants}
SAMPLES=${SAMPLES:-64}
EPOCHS=${EPOCHS:-2}
M=runs/stories-k256
[ -f "$M/model.safetensors" ] || tools/make_stories_k256.sh
mkdir -p "$WORK"
ppl() { "$MPQAT" eval "$1" --ppl "$M/heldout.txt" --context 256 --json 2>/dev/null | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["ppl"])'; }
lbpw() { sed -n 's/.*block linears \([0-9.]*\) bpw.*/\1/p' "$1"; }
ktype() { awk '$1=="blk.0.attn_q.weight"{print $3}' "$1"; }

"$MPQAT" imatrix "$M" --calib "$M/calib.txt" --samples "$SAMPLES" --seqlen 256 --out "$WORK/fp.imatrix.json" >/dev/null
echo "| plan | GGUF type | bpw K / legacy | FP -> K | FP -> K + imatrix | RTN ckpt | RTN -> K | RTN -> K + imatrix | Block-AP ckpt | Block-AP -> K + imatrix |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for spec in 2:32:q2_k 3:32:q3_k 4:128:q4_k 6:32:q6_k; do
  IFS=: read -r bits group ftype <<<"$spec"
  tag=w${bits}g${group}
  d=$WORK/$tag
  mkdir -p "$d"
  tools/uniform_plan.py "$M" "$bits" "$group" "$d/plan.json"
  # Float model straight into the K-quant.
  "$MPQAT" export gguf "$M" --out "$d/fp.gguf" --float-type "$ftype" --decoded-out "$d/fp.dec" --force >/dev/null
  "$MPQAT" export gguf "$M" --out "$d/fp_im.gguf" --float-type "$ftype" --imatrix "$WORK/fp.imatrix.json" \
    --decoded-out "$d/fp_im.dec" --force >/dev/null
  row="| $tag | "
  for method in rtn bap; do
    ck=$d/$method
    if [ ! -f "$ck/config.json" ]; then
      if [ $method = rtn ]; then
        "$MPQAT" quantize "$M" --plan "$d/plan.json" --method rtn --out "$ck" >/dev/null 2>&1
      else
        "$MPQAT" train "$M" --plan "$d/plan.json" --calib "$M/calib.txt" --samples "$SAMPLES" --seqlen 256 \
          --epochs "$EPOCHS" --no-sgra --out "$ck" >"$d/bap.log" 2>&1
      fi
    fi
    "$MPQAT" imatrix "$ck" --calib "$M/calib.txt" --samples "$SAMPLES" --seqlen 256 --out "$d/$method.imatrix.json" >/dev/null
    "$MPQAT" export gguf "$ck" --out "$d/$method.gguf" --decoded-out "$d/$method.dec" --force >"$d/$method.export.txt"
    "$MPQAT" export gguf "$ck" --out "$d/${method}_im.gguf" --imatrix "$d/$method.imatrix.json" \
      --decoded-out "$d/${method}_im.dec" --force >/dev/null
    "$MPQAT" export gguf "$ck" --out "$d/${method}_legacy.gguf" --k-quants off --force >"$d/$method.legacy.txt"
  done
  row+="$(ktype "$d/rtn.export.txt") | $(lbpw "$d/rtn.export.txt") / $(lbpw "$d/rtn.legacy.txt") ($(ktype "$d/rtn.legacy.txt")) | "
  row+="$(ppl "$d/fp.dec") | $(ppl "$d/fp_im.dec") | $(ppl "$d/rtn") | $(ppl "$d/rtn.dec") | $(ppl "$d/rtn_im.dec") | "
  row+="$(ppl "$d/bap") | $(ppl "$d/bap_im.dec") |"
  echo "$row"
done
echo
echo "FP perplexity: $(ppl "$M") (runs/stories-k256, held-out TinyStories, context 256)"
