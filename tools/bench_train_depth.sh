#!/usr/bin/env bash
# Peak memory of `mpqat train` (Block-AP) against model depth: random Llama models of 2, 8 and 32
# blocks (hidden 512, MLP 1376, 8 heads; made with `mpqat fit lm --steps 1`), a uniform 4-bit
# g128 plan, 16 calibration sequences of 128 tokens, 1 epoch. Peak RSS from /usr/bin/time; the
# fp32 size of the whole model is printed beside it for comparison.
#   tools/bench_train_depth.sh [DEPTHS...]      (default: 2 8 32)
set -euo pipefail
cd "$(dirname "$0")/.."
MPQAT=${MPQAT:-build/mpqat}
OUT=${OUT:-runs/bench_depth}
mkdir -p "$OUT"
depths=("$@"); [ ${#depths[@]} -gt 0 ] || depths=(2 8 32)
printf "| blocks | parameters | fp32 model MiB | train peak RSS MiB | train seconds |\n|---:|---:|---:|---:|---:|\n"
for L in "${depths[@]}"; do
  d="$OUT/L$L"
  cat > "$OUT/config_L$L.json" <<JSON
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512, "intermediate_size": 1376,
 "num_hidden_layers": $L, "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 4096,
 "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}
JSON
  [ -f "$d/config.json" ] || "$MPQAT" fit lm --config "$OUT/config_L$L.json" --tokenizer checkpoints/kjv-llama/tokenizer.model \
      --text checkpoints/kjv-llama/calib.txt --steps 1 --batch-size 1 --seqlen 64 --log-every 0 --out "$d" --force > /dev/null
  tools/uniform_plan.py "$d" 4 128 "$OUT/plan_L$L.json"
  params=$(( L * (4*512*512 + 3*512*1376) + 4096*512 ))
  start=$(date +%s.%N)
  kb=$( { /usr/bin/time -f "%M" "$MPQAT" train "$d" --plan "$OUT/plan_L$L.json" --calib checkpoints/kjv-llama/calib.txt \
          --samples 16 --seqlen 128 --epochs 1 --batch-size 4 --out "$OUT/q_L$L" --force > /dev/null 2>"$OUT/time_L$L.txt"; } 2>&1; tail -1 "$OUT/time_L$L.txt")
  secs=$(python3 -c "import time,sys; print(f'{time.time()-float(sys.argv[1]):.1f}')" "$start")
  python3 -c "import sys; L, p, kb, s = sys.argv[1:]; print(f'| {L} | {p} | {int(p)*4/1048576:.0f} | {int(kb)/1024:.0f} | {s} |')" "$L" "$params" "$kb" "$secs"
done
