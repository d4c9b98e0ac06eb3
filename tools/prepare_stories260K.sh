#!/usr/bin/env bash
# Converts llama2.c's stories260K (from ../shared/data or a given folder) into a Hugging Face
# folder and splits the TinyStories validation text into a calibration part (first 90%) and a
# held-out part (the rest, never calibrated on), as recipes/stories260K.yaml expects.
#   tools/prepare_stories260K.sh [SHARED_DATA_DIR] [OUT_DIR]
# defaults: ../shared/data and runs/stories260K-hf
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-${MPQAT_SHARED_DIR:-../shared}/data}
OUT=${2:-runs/stories260K-hf}
MPQAT=${MPQAT:-build/mpqat}
m="$DATA/models/stories260K"
text="$DATA/text/tinystories/validation_part1.txt"
for f in "$m/stories260K.bin" "$m/tok512.bin" "$text"; do
  [ -f "$f" ] || { echo "prepare_stories260K: '$f' not found (give the shared data folder as the first argument)" >&2; exit 2; }
done
if [ ! -f "$OUT/config.json" ]; then
  "$MPQAT" convert llama2c "$m/stories260K.bin" --tokenizer "$m/tok512.bin" --out "$OUT"
fi
# Split at a story boundary (blank line) near 90%.
python3 - "$text" "$OUT" <<'PY'
import sys, os
text = open(sys.argv[1], encoding="utf-8").read()
cut = text.rfind("\n\n", 0, len(text) * 9 // 10)
out = sys.argv[2]
for name, part in (("calib.txt", text[:cut]), ("heldout.txt", text[cut:].lstrip("\n"))):
    tmp = os.path.join(out, name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(part)
    os.replace(tmp, os.path.join(out, name))
print(f"{out}: calib.txt {cut} chars, heldout.txt {len(text) - cut} chars")
PY
