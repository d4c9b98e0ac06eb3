#!/usr/bin/env bash
# The whole `mpqat run` pipeline at a given scale, on a random Hugging Face Llama folder (sharded
# safetensors of at most 2 GB + model.safetensors.index.json + tokenizer), with the stage peaks:
#   tiny  8 layers, hidden 512 / FFN 1376, 8 heads / 4 KV, vocab 4096 (kjv tokenizer; no shared data)
#   1b    TinyLlama-1.1B: 22 layers, 2048 / 5632, 32 heads / 4 KV, vocab 32000 (Llama-2 tokenizer)
#   7b    Llama-2-7B: 32 layers, 4096 / 11008, 32 heads, vocab 32000 (13.5 GB in fp16)
# Pipeline: FP perplexity on a few windows (streamed when the model passes model.memory_limit) ->
# Fisher sensitivity on 4 x 128 tokens -> QBO under a byte budget (the 7B recipe's 2.5 GB, scaled
# to the shape) -> Block-AP, 1 epoch of 2 steps per block -> E2E-QP, 2 steps of 128 tokens ->
# sharded checkpoint -> reload -> perplexity. Then the sensitivity and Block-AP peaks at 1/4, 1/2
# and all of the shape's layers.
# Random weights measure memory, speed and I/O, not quality.
#   tools/bench_scale.sh {tiny|1b|7b}      WORK=runs/bench_scale (needs ~3x the fp16 size on disk)
# Prints the tables (markdown) and ends with
#   scale <shape>: ok peak_rss_mib=N peak_anon_mib=N predicted_bytes=N written_bytes=N seconds=N
set -euo pipefail
cd "$(dirname "$0")/.."
shape=${1:-tiny}
MPQAT=${MPQAT:-build/mpqat}
WORK=${WORK:-runs/bench_scale}/$shape
SHARED=${MPQAT_SHARED_DIR:-../shared}
case "$shape" in
  tiny) layers=8; tok=checkpoints/kjv-llama; calib=checkpoints/kjv-llama/calib.txt; text=checkpoints/kjv-llama/heldout.txt ;;
  1b) layers=22; tok=$SHARED/data/tokenizers/llama2; calib=$SHARED/data/text/wikitext2/valid.txt; text=$SHARED/data/text/wikitext2/test.txt ;;
  7b) layers=32; tok=$SHARED/data/tokenizers/llama2; calib=$SHARED/data/text/wikitext2/valid.txt; text=$SHARED/data/text/wikitext2/test.txt ;;
  *) echo "bench_scale.sh: unknown shape '$shape' (accepted: tiny, 1b, 7b)" >&2; exit 2 ;;
esac
for f in "$tok" "$calib" "$text"; do
  [ -e "$f" ] || { echo "bench_scale.sh: '$f' is missing (the 1b / 7b shapes need ../shared/data or MPQAT_SHARED_DIR)" >&2; exit 2; }
done
[ -x "$MPQAT" ] || { echo "bench_scale.sh: $MPQAT not built (run tools/setup.sh)" >&2; exit 2; }
mkdir -p "$WORK"
head -c 2000 "$text" > "$WORK/eval.txt"   # a few windows of 128 tokens

# recipe FILE MODEL FP16_BYTES: the benchmark recipe for MODEL
recipe() {
  local file=$1 model=$2 fp16=$3
  python3 - "$file" "$model" "$calib" "$WORK/eval.txt" "$fp16" <<'PY'
import sys
f, model, calib, text, fp16 = sys.argv[1:]
import json
c = json.load(open(model + "/config.json"))
h, f_, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
linear = 2 * L * (2 * h * h + 2 * h * kv + 3 * h * f_)  # fp16 bytes of the block linears
# The Llama-2-7B recipe's 2.5 GB: the 16-bit tensors (embeddings, norms, head) as they are, the
# linears at the share of their fp16 bytes that 7B gets (2.5 GB - 0.26 GB of 13.22 GB: ~2.7 bits).
budget = int((float(fp16) - linear) + linear * (2.5e9 - 0.2622e9) / 13.216e9)
open(f, "w").write(f"""model:
  path: {model}
data:
  calibration:
    path: {calib}
    samples: 4
    seqlen: 128
  validation_samples: 1
sensitivity:
  metrics: [fisher]
allocation:
  method: qbo
  budget:
    bytes: '{budget}'
  bits: [2, 3, 4, 8]
  group_sizes: [128]
  sgra:
    enabled: false
training:
  method: block-ap
  epochs: 1
  batch_size: 2
  e2e:
    enabled: true
    samples: 2
    seqlen: 128
evaluation:
  perplexity: [{text}]
  context: 128
output:
  shard_size: 2GB
  report_formats: [json, txt]
""")
PY
}

# make_model DIR LAYERS -> prints the fp16 bytes
make_model() {
  local dir=$1 n=$2
  [ -f "$dir/config.json" ] || "$MPQAT" random-model "$dir" --shape "$shape" --layers "$n" --tokenizer-from "$tok" \
      --shard-size 2GB > /dev/null
  du -cb "$dir"/*.safetensors | tail -1 | cut -f1
}

start=$(date +%s)
model="$WORK/model"
fp16=$(make_model "$model" "$layers")
gen_s=$(( $(date +%s) - start ))
recipe "$WORK/recipe.yaml" "$model" "$fp16"
rm -rf "$WORK/run"
"$MPQAT" run "$WORK/recipe.yaml" output.dir="$WORK/run" > "$WORK/run.log" 2>&1 ||
  { tail -20 "$WORK/run.log" >&2; echo "scale $shape: FAILED (see $WORK/run.log)"; exit 1; }
total_s=$(( $(date +%s) - start ))

python3 - "$WORK/run/report.json" "$shape" "$fp16" "$gen_s" "$(ls "$model"/*.safetensors | wc -l)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); shape, fp16, gen_s, shards = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
print(f"### {shape}: random Llama, {fp16/1e9:.2f} GB fp16 in {shards} shard(s), written in {gen_s} s\n")
print("| stage | seconds | peak RSS MiB | peak anon MiB | peak file-backed MiB |\n|---|---:|---:|---:|---:|")
for s in r["stages"]:
    name = ("&nbsp;&nbsp;" + s["name"]) if "part_of" in s else s["name"]
    print(f"| {name} | {s['seconds']:.1f} | {s['peak_rss_mib']:.0f} | {s['peak_anon_mib']:.0f} | {s['peak_file_mib']:.0f} |")
a = r["allocation"]
print(f"\ncheckpoint bytes: predicted {a.get('predicted_bytes')} written {r['size']['file_bytes']};"
      f" FP eval streamed: {r['fp'].get('streamed')}; reload eval streamed: {r['quantized'].get('streamed')}")
print(f"perplexity (random weights, not quality): fp {r['fp'].get('ppl')}, quantized {r['quantized'].get('ppl')}\n")
PY

# Depth: the sensitivity and Block-AP peaks at 1/4, 1/2 and all of the layers.
echo "| layers | sensitivity peak anon MiB | sensitivity peak RSS MiB | Block-AP peak anon MiB | Block-AP peak RSS MiB | Block-AP seconds |"
echo "|---:|---:|---:|---:|---:|---:|"
for n in $(( layers / 4 )) $(( layers / 2 )) "$layers"; do
  if [ "$n" = "$layers" ]; then rep="$WORK/run/stage_report.json"; else
    d="$WORK/model_L$n"
    f=$(make_model "$d" "$n")
    recipe "$WORK/recipe_L$n.yaml" "$d" "$f"
    rm -rf "$WORK/run_L$n"
    "$MPQAT" run "$WORK/recipe_L$n.yaml" output.dir="$WORK/run_L$n" evaluation.fp_baseline=false \
        training.e2e.enabled=false output.stop_after=quantize > "$WORK/run_L$n.log" 2>&1 ||
      { tail -20 "$WORK/run_L$n.log" >&2; echo "scale $shape: FAILED at $n layers"; exit 1; }
    rep="$WORK/run_L$n/stage_report.json"
    rm -rf "$d"
  fi
  python3 - "$rep" "$n" <<'PY'
import json, sys
st = {s["name"]: s for s in json.load(open(sys.argv[1]))}
s, q = st["sensitivity"], st["block_ap"]
print(f"| {sys.argv[2]} | {s['peak_anon_mib']:.0f} | {s['peak_rss_mib']:.0f} | {q['peak_anon_mib']:.0f} | {q['peak_rss_mib']:.0f} | {q['seconds']:.1f} |")
PY
done

python3 - "$WORK/run/report.json" "$shape" "$total_s" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
rss = max(s["peak_rss_mib"] for s in r["stages"]); anon = max(s["peak_anon_mib"] for s in r["stages"])  # parts are inside their stage
print(f"\nscale {sys.argv[2]}: ok peak_rss_mib={rss:.0f} peak_anon_mib={anon:.0f} "
      f"predicted_bytes={r['allocation'].get('predicted_bytes')} written_bytes={r['size']['file_bytes']} seconds={sys.argv[3]}")
PY
