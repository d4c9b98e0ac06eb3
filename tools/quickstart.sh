#!/usr/bin/env bash
# The README's first command runs this after tools/setup.sh: the newest working part of the
# pipeline on the bundled data. It grows as the pipeline lands (issue M7 makes it
# `mpqat run recipes/quickstart.yaml`).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mpqat=build/mpqat
shared=${MPQAT_SHARED_DIR:-$root/../shared}

"$mpqat" --help
echo
echo "== the stories260K recipe, fully resolved (mpqat run --dry-run)"
"$mpqat" run recipes/stories260K.yaml --dry-run | head -40
if [ -f "$shared/data/models/stories260K/stories260K.bin" ] && "$mpqat" convert --help >/dev/null 2>&1 \
   && ! "$mpqat" convert llama2c --help 2>&1 | grep -q "not implemented"; then
  echo
  echo "== convert stories260K (llama2.c) to a Hugging Face folder, then generate greedily"
  "$mpqat" convert llama2c "$shared/data/models/stories260K/stories260K.bin" \
      --tokenizer "$shared/data/models/stories260K/tok512.bin" --out runs/stories260K-hf --force
  "$mpqat" eval runs/stories260K-hf --generate "" --max-new-tokens 120 --greedy
  echo
  echo "== its perplexity on TinyStories (context 512)"
  "$mpqat" eval runs/stories260K-hf --ppl "$shared/data/text/tinystories/validation_part1.txt" \
      --context 512 --json
fi
