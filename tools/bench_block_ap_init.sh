#!/usr/bin/env bash
# Block-AP's start, RTN or GPTQ, over seeds (Llama-family models): the table "Block-AP from GPTQ" of
# docs/quantization.md. Per model and uniform width (group 32): `mpqat train` from RTN, from GPTQ
# (the default: GPTQ's scales stay) and from GPTQ with its scales trained too
# (--gptq-train-scales), 128 x 256 calibration tokens of MODEL/calib.txt, the model recipe's
# learning rates, SGRA off; held-out perplexity of MODEL/heldout.txt; mean and standard deviation
# over the seeds (each seed draws other calibration sequences and another shuffle).
#   tools/bench_block_ap_init.sh                         (stories260K: needs ../shared/data)
#   MODEL=checkpoints/kjv-llama CONTEXT=256 SEEDS="0 1 2" STARTS="rtn gptq" tools/bench_block_ap_init.sh
# Environment: MPQAT (build/mpqat), MODEL (runs/stories260K-hf), RECIPE (recipes/stories260K.yaml),
# BITS ("2 3 4"), SEEDS ("0 1 2 3 4"), CONTEXT (512), STARTS ("rtn gptq gptq-train-scales").
set -euo pipefail
cd "$(dirname "$0")/.."
MPQAT=${MPQAT:-build/mpqat}
MODEL=${MODEL:-runs/stories260K-hf}
RECIPE=${RECIPE:-recipes/stories260K.yaml}
BITS=${BITS:-2 3 4}
SEEDS=${SEEDS:-0 1 2 3 4}
CONTEXT=${CONTEXT:-512}
STARTS=${STARTS:-rtn gptq gptq-train-scales}
[ "$MODEL" = runs/stories260K-hf ] && tools/prepare_stories260K.sh >/dev/null
OUT=runs/block-ap-init/$(basename "$MODEL")
mkdir -p "$OUT"
start_args() {
  case $1 in
    rtn) ;;
    gptq) echo --init gptq ;;
    gptq-train-scales) echo --init gptq --gptq-train-scales ;;
    *) echo "bench_block_ap_init: unknown start '$1' (rtn, gptq, gptq-train-scales)" >&2; exit 2 ;;
  esac
}
echo "| bits | start | ppl per seed ($SEEDS) | mean | std |"
echo "|---:|---|---|---:|---:|"
for b in $BITS; do
  tools/uniform_plan.py "$MODEL" "$b" 32 "$OUT/plan-w$b.json"
  for st in $STARTS; do
    ppls=()
    for s in $SEEDS; do
      o="$OUT/w$b-$st-s$s"
      # shellcheck disable=SC2046
      "$MPQAT" train "$MODEL" --plan "$OUT/plan-w$b.json" --calib "$MODEL/calib.txt" --samples 128 --seqlen 256 \
        --recipe "$RECIPE" --no-sgra --seed "$s" $(start_args "$st") --out "$o" --force > "$o.log" 2>&1 ||
        { tail -3 "$o.log" >&2; exit 1; }
      ppls+=("$("$MPQAT" eval "$o" --ppl "$MODEL/heldout.txt" --context "$CONTEXT" --json 2>/dev/null |
                python3 -c "import json,sys; print(json.load(sys.stdin)['ppl'])")")
    done
    python3 - "$b" "$st" "${ppls[@]}" <<'PY'
import statistics as st, sys
b, start, v = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3:]]
sd = st.stdev(v) if len(v) > 1 else 0.0
print(f"| {b} | {start} | {' '.join(f'{x:.3f}' for x in v)} | {st.mean(v):.3f} | {sd:.3f} |")
PY
  done
done
