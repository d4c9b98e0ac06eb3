#!/usr/bin/env bash
# The README's first command runs this after tools/setup.sh: the working part of the pipeline
# on the bundled data (issue M7 turns it into `mpqat run recipes/quickstart.yaml`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mpqat=build/mpqat
shared=${MPQAT_SHARED_DIR:-$root/../shared}
data=$shared/data
mkdir -p runs

"$mpqat" --version
echo "== the stories260K recipe, validated and fully resolved: runs/stories260K.resolved.yaml"
"$mpqat" run recipes/stories260K.yaml --dry-run > runs/stories260K.resolved.yaml
if [ ! -f "$data/models/stories260K/stories260K.bin" ]; then
  echo "no $data/models/stories260K: set MPQAT_SHARED_DIR to the shared data folder for the rest" >&2
  exit 0
fi
echo "== convert stories260K (llama2.c) to a Hugging Face folder: runs/stories260K-hf"
"$mpqat" convert llama2c "$data/models/stories260K/stories260K.bin" \
    --tokenizer "$data/models/stories260K/tok512.bin" --out runs/stories260K-hf --force
echo "== greedy generation from BOS"
"$mpqat" eval runs/stories260K-hf --generate "" --max-new-tokens 120 --greedy
echo
echo "== perplexity on TinyStories (context 512) and zero-shot PIQA / ARC-Easy (first 200 items)"
"$mpqat" eval runs/stories260K-hf --ppl "$data/text/tinystories/validation_part1.txt" \
    --context 512 --batch-size 8 --tasks piqa,arc_easy --task-dir "$data/tasks" --limit 200 \
    --json --report runs/stories260K-eval
echo "report: runs/stories260K-eval.txt"
echo
echo "== the pipeline as far as it is built: Fisher sensitivity -> QBO bit plan under a budget"
echo "   -> packed RTN checkpoint -> reload and evaluate (QAT lands with issue M6)"
head -c 250000 "$data/text/tinystories/validation_part1.txt" > runs/calib.txt
tail -c +250001 "$data/text/tinystories/validation_part1.txt" > runs/heldout.txt
"$mpqat" sensitivity runs/stories260K-hf --calib runs/calib.txt --samples 64 --seqlen 256 \
    --metrics fisher --bits 2,3,4,5,6,8 --group-sizes 32 --out runs/stories260K-sens.json --quiet
"$mpqat" allocate --model runs/stories260K-hf --sensitivity runs/stories260K-sens.json \
    --budget avg_bits=4.5 --bits 2,3,4,5,6,8 --group-sizes 32 --out runs/stories260K-plan.json
"$mpqat" quantize runs/stories260K-hf --plan runs/stories260K-plan.json --method rtn \
    --out runs/stories260K-q --force
"$mpqat" inspect runs/stories260K-q | tail -3
for m in stories260K-hf stories260K-q; do
  printf "%-16s held-out TinyStories " "$m"
  "$mpqat" eval "runs/$m" --ppl runs/heldout.txt --context 512 --batch-size 8 --json
done
