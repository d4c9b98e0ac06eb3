#!/usr/bin/env bash
# Does a sensitivity metric predict the real damage? On stories260K, quantize ONE module at a
# time (RTN, probe bits, group 32), measure the real perplexity increase on held-out text, and
# print each metric's Spearman rank correlation with it. This is how to choose a metric.
#   tools/sensitivity_check.sh [OUT_DIR] [PROBE_BITS]     (defaults: runs/sens-check, 3)
# Calibration: first 250 kB of the TinyStories validation file; evaluation: the rest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mpqat=build/mpqat
data=${MPQAT_SHARED_DIR:-$root/../shared}/data
out=${1:-runs/sens-check}
bits=${2:-3}
mkdir -p "$out/plans"
src=$data/text/tinystories/validation_part1.txt
head -c 250000 "$src" > "$out/calib.txt"
tail -c +250001 "$src" > "$out/eval.txt"
"$mpqat" convert llama2c "$data/models/stories260K/stories260K.bin" \
  --tokenizer "$data/models/stories260K/tok512.bin" --out "$out/fp" --force >/dev/null
"$mpqat" sensitivity "$out/fp" --calib "$out/calib.txt" --samples 64 --seqlen 256 \
  --metrics fisher,cka,cka-debiased,pwcca,svcca,pwcca+cka --bits "$bits" --group-sizes 32 \
  --probe-bits "$bits" --out "$out/sens.json" --quiet >/dev/null
ppl() { "$mpqat" eval "$1" --ppl "$out/eval.txt" --context 512 --batch-size 8 --json |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["ppl"])'; }
fp=$(ppl "$out/fp")
: > "$out/damage.tsv"
for name in $(python3 -c "import json; print(' '.join(json.load(open('$out/sens.json'))['modules']))"); do
  echo "{\"modules\": {\"$name\": {\"bits\": $bits, \"group_size\": 32}}}" > "$out/plans/$name.json"
  "$mpqat" quantize "$out/fp" --plan "$out/plans/$name.json" --method rtn --out "$out/q" --force >/dev/null
  printf "%s\t%s\n" "$name" "$(ppl "$out/q")" >> "$out/damage.tsv"
done
python3 - "$out/sens.json" "$out/damage.tsv" "$fp" "$bits" <<'PY'
import json, sys
sens = json.load(open(sys.argv[1]))["modules"]
damage = {n: float(p) - float(sys.argv[3]) for n, p in (l.split("\t") for l in open(sys.argv[2]))}
names = sorted(damage)
def ranks(v):  # average ranks for ties
    order = sorted(range(len(v)), key=lambda i: v[i]); r = [0.0] * len(v); i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]: j += 1
        for k in range(i, j + 1): r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r
def spearman(a, b):
    ra, rb = ranks(a), ranks(b); n = len(a); ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5; vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)
d = [damage[n] for n in names]
print(f"FP ppl {float(sys.argv[3]):.4f}; {len(names)} modules, each alone at {sys.argv[4]}-bit g32 (RTN)")
print(f"real ppl increase: min {min(d):.4f}, median {sorted(d)[len(d)//2]:.4f}, max {max(d):.4f}")
print("| metric | Spearman rho vs real ppl increase |")
print("|---|---|")
for m in sens[names[0]]["metrics"]:
    print(f"| {m} | {spearman([sens[n]['metrics'][m] for n in names], d):.3f} |")
top = sorted(names, key=lambda n: -damage[n])[:5]
print("most damaging alone: " + ", ".join(f"{n} (+{damage[n]:.3f})" for n in top))
PY
