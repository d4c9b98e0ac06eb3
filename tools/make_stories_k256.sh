#!/usr/bin/env bash
# A small Llama whose every linear has rows of a multiple of 256 weights, the super-block of
# llama.cpp's K-quant types (Q2_K ... Q6_K), which stories260K (rows of 64) and the bundled
# kjv-llama (128, 384) cannot use. mpqat trains it itself (`mpqat fit lm`) on stories260K's
# calibration text with stories260K's tokenizer; heldout.txt stays unseen. For the GGUF
# K-quant figures of docs/gguf.md (tools/bench_gguf_kquants.sh); never committed.
#
#   tools/make_stories_k256.sh          # writes runs/stories-k256 (about 15 minutes on 1 thread)
# Environment: MPQAT (default build/mpqat), OUT (runs/stories-k256), STEPS (500), THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
MPQAT=${MPQAT:-build/mpqat}
OUT=${OUT:-runs/stories-k256}
STEPS=${STEPS:-500}
THREADS=${THREADS:-1}
[ -f "$OUT/model.safetensors" ] && { echo "$OUT exists"; exit 0; }
tools/prepare_stories260K.sh >/dev/null
S=runs/stories260K-hf
work=$(mktemp -d runs/.stories-k256.XXXXXX)
trap 'rm -rf "$work"' EXIT
cat > "$work/config.json" <<JSON
{
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
  "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 64,
  "vocab_size": 512, "max_position_embeddings": 256, "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0, "tie_word_embeddings": true, "hidden_act": "silu",
  "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32"
}
JSON
nice -n 10 "$MPQAT" fit lm --config "$work/config.json" --tokenizer "$S" --text "$S/calib.txt" \
  --valid "$S/heldout.txt" --out "$work/model" --steps "$STEPS" --batch-size 16 --seqlen 256 --lr 3e-3 \
  --min-lr-ratio 0.1 --warmup 40 --weight-decay 0.1 --grad-clip 1.0 --seed 0 --threads "$THREADS" \
  --log-every 50 --dtype f16 --summary "$work/summary.json"
cp "$S/calib.txt" "$S/heldout.txt" "$work/model/"
mv "$work/model" "$OUT"
"$MPQAT" eval "$OUT" --ppl "$OUT/heldout.txt" --context 256
