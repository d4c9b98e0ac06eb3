#!/usr/bin/env bash
# The README's first command runs this after tools/setup.sh: the newest working part of the
# pipeline on the bundled data (issue M7 turns it into `mpqat run recipes/quickstart.yaml`).
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
