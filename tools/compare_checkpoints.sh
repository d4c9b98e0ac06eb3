#!/usr/bin/env bash
# Byte-identity check between two mpqat binaries (e.g. before and after a refactoring): RTN and
# Block-AP checkpoints of one fixed plan on stories260K, sha256 of each model.safetensors.
#   tools/compare_checkpoints.sh OLD_MPQAT NEW_MPQAT [PLAN.json]
# Without PLAN a QBO plan at the bytes of uniform 3-bit g32 is written with NEW_MPQAT. The
# validation share is given explicitly (--val-fraction 0.25): the default has changed before.
set -euo pipefail
cd "$(dirname "$0")/.."
old=$1 new=$2 plan=${3:-}
tools/prepare_stories260K.sh >/dev/null
M=runs/stories260K-hf
work=runs/compare-checkpoints
mkdir -p "$work"
if [ -z "$plan" ]; then
  plan=$work/plan.json
  "$new" sensitivity $M --calib $M/calib.txt --out $work/sens.json >/dev/null 2>&1
  "$new" allocate --model $M --sensitivity $work/sens.json --method qbo --group-sizes 32 --budget bytes=196808 \
    --out "$plan" >/dev/null
fi
run() {  # binary tag
  rm -rf "$work/$2"
  "$1" quantize $M --plan "$plan" --method rtn --out "$work/$2/rtn" >"$work/$2.rtn.log" 2>&1
  "$1" train $M --plan "$plan" --calib $M/calib.txt --samples 32 --seqlen 128 --epochs 1 --batch-size 4 \
    --val-fraction 0.25 --out "$work/$2/bap" >"$work/$2.bap.log" 2>&1
}
run "$old" old
run "$new" new
status=0
printf "%-10s %-64s %-64s %s\n" checkpoint old new same
for k in rtn bap; do
  a=$(sha256sum "$work/old/$k/model.safetensors" | cut -d' ' -f1)
  b=$(sha256sum "$work/new/$k/model.safetensors" | cut -d' ' -f1)
  same=yes; [ "$a" = "$b" ] || { same=NO; status=1; }
  printf "%-10s %-64s %-64s %s\n" "$k" "$a" "$b" "$same"
done
exit $status
