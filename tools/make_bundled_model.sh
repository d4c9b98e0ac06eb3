#!/usr/bin/env bash
# Remakes the bundled default model, checkpoints/kjv-llama/: a small Llama (GQA) that mpqat
# trains itself (`mpqat fit lm`) on the King James Bible, a public-domain English text that
# Debian ships (package bible-kjv-text, read with `bible` from bible-kjv; both installed by
# tools/setup.sh). About 10 minutes on 2 cores. See docs/bundled-model.md.
#
#   tools/make_bundled_model.sh            # writes checkpoints/kjv-llama/
# Environment (all optional):
#   MPQAT        the mpqat binary (default: build/mpqat)
#   OUT          output folder (default: checkpoints/kjv-llama)
#   STEPS        optimizer steps (default 600: 600 x 16 x 256 = 2.5M tokens, ~2.4 passes)
#   THREADS      LibTorch threads (default 2)
#   VOCAB        SentencePiece vocabulary size (default 4096)
#   HOLDOUT_PCT  share of the text held out at its end, in percent (default 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

MPQAT=${MPQAT:-$root/build/mpqat}
OUT=${OUT:-checkpoints/kjv-llama}
STEPS=${STEPS:-600}
THREADS=${THREADS:-2}
VOCAB=${VOCAB:-4096}
HOLDOUT_PCT=${HOLDOUT_PCT:-2}
SEED=${SEED:-0}

die() { echo "make_bundled_model: $*" >&2; exit 2; }
[ -x "$MPQAT" ] || die "no mpqat binary at '$MPQAT' (build it with tools/setup.sh, or set MPQAT=...)"
"$MPQAT" fit lm --help >/dev/null 2>&1 || die "'$MPQAT' has no 'fit' command (rebuild it)"
command -v bible >/dev/null || die "'bible' not found: apt-get install bible-kjv (it brings bible-kjv-text)"
command -v spm_train >/dev/null || die "'spm_train' not found: apt-get install sentencepiece"
kjv_pkg=$(dpkg-query -W -f='${Package} ${Version}' bible-kjv-text 2>/dev/null || echo "bible-kjv-text")

# Work inside the output's parent folder so the final swap is a rename on one file system.
mkdir -p "$(dirname "$OUT")"
work=$(mktemp -d "$(dirname "$OUT")/.$(basename "$OUT").work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# 1. The text: every verse of Genesis 1:1 .. Revelation 22:21, one verse per line without its
#    number, each chapter under a "Book N" heading line between blank lines.
bible -l100000 gen1:1-rev22:21 | sed -E 's/^  [0-9]+ //' | sed '1{/^$/d}' > "$work/kjv.txt"
total=$(wc -c < "$work/kjv.txt")
[ "$total" -gt 4000000 ] || die "the KJV text from 'bible' is only $total bytes (expected ~4.1 MB)"

# 2. Split: the held-out text is the end of the book, from the first chapter heading after
#    (100 - HOLDOUT_PCT)% of the bytes.
cut=$(( total * (100 - HOLDOUT_PCT) / 100 ))
awk -v cut="$cut" -v tr="$work/train.txt" -v va="$work/heldout.txt" '
  { if (!held && bytes >= cut && prev == "" && $0 ~ /[0-9]+$/) held = 1
    bytes += length($0) + 1; prev = $0
    print > (held ? va : tr) }' "$work/kjv.txt"
[ -s "$work/heldout.txt" ] || die "could not split off the held-out text"
heldout_bytes=$(wc -c < "$work/heldout.txt")
[ "$heldout_bytes" -lt 200000 ] || die "held-out text is $heldout_bytes bytes (keep it under 200 KB: lower HOLDOUT_PCT)"
heldout_from=$(head -1 "$work/heldout.txt")

# 3. Tokenizer: SentencePiece BPE on the training text only, Llama-2 style (identity
#    normalization, byte fallback so that newlines and any byte have a token, split digits).
spm_train --input="$work/train.txt" --model_prefix="$work/sp" --vocab_size="$VOCAB" --model_type=bpe \
  --normalization_rule_name=identity --remove_extra_whitespaces=false --byte_fallback=true \
  --split_digits=true --character_coverage=1.0 --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1 \
  --num_threads=1 --minloglevel=2 >/dev/null 2>&1 || die "spm_train failed"

# 4. The model: Llama with grouped-query attention (4 query heads share 2 key/value heads),
#    tied embeddings, context 256.
cat > "$work/config.json" <<EOF
{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": 128,
  "intermediate_size": 384,
  "num_hidden_layers": 4,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 32,
  "vocab_size": $VOCAB,
  "max_position_embeddings": 256,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "tie_word_embeddings": true,
  "hidden_act": "silu",
  "bos_token_id": 1,
  "eos_token_id": 2,
  "torch_dtype": "float32"
}
EOF

# 5. Train. nice: the machine may be shared.
echo "[bundled] training $STEPS steps on $(wc -c < "$work/train.txt") bytes with $THREADS thread(s)"
start=$(date +%s)
nice -n 10 "$MPQAT" fit lm --config "$work/config.json" --tokenizer "$work/sp.model" \
  --text "$work/train.txt" --valid "$work/heldout.txt" --out "$work/model" \
  --steps "$STEPS" --batch-size 16 --seqlen 256 --lr 3e-3 --min-lr-ratio 0.1 --warmup 40 \
  --weight-decay 0.1 --grad-clip 1.0 --seed "$SEED" --threads "$THREADS" --log-every 25 \
  --dtype f16 --log "$work/train_log.jsonl" --summary "$work/summary.json"
seconds=$(( $(date +%s) - start ))

# 6. Measure the saved fp16 model exactly as a user would.
cp "$work/heldout.txt" "$work/model/heldout.txt"
ppl_json=$("$MPQAT" eval "$work/model" --ppl "$work/model/heldout.txt" --json)
sample=$("$MPQAT" eval "$work/model" --generate "And God said" --greedy --max-new-tokens 48 2>/dev/null || true)

read -r params train_tokens valid_tokens steps fit_seconds threads final_loss < <(python3 - "$work/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(s["parameters"], s["train_tokens"], s["valid_tokens"], s["steps"], round(s["seconds"]), s["threads"],
      round(s.get("final_train_loss", float("nan")), 3))
PY
)
read -r ppl nll tokens < <(python3 -c 'import json,sys; j=json.loads(sys.argv[1]); print(round(j["ppl"],2), round(j["nll"],4), j["tokens"])' "$ppl_json")
st_bytes=$(wc -c < "$work/model/model.safetensors")
st_mib=$(python3 -c "print(round($st_bytes/1048576, 2))")

cat > "$work/model/README.md" <<EOF
# kjv-llama: mpqat's bundled default model

A small Llama-architecture causal language model that mpqat trained itself, from scratch, on
the King James Version of the Bible. It lets the quick start and the tests quantize a real
trained model without downloading anything.

| | |
|---|---|
| architecture | LlamaForCausalLM: 4 layers, hidden 128, MLP 384 (SwiGLU), 4 query heads sharing 2 key/value heads (GQA), RoPE, context 256, tied embeddings |
| parameters | $params |
| weights | model.safetensors, float16, $st_bytes bytes ($st_mib MiB) |
| tokenizer | tokenizer.model: SentencePiece BPE, $VOCAB pieces, byte fallback, identity normalization |
| training | $steps steps x 16 x 256 tokens (AdamW, lr 3e-3, cosine to 3e-4, warmup 40), ${fit_seconds} s on $threads thread(s) ($seconds s in all) |
| training text | $train_tokens tokens: Genesis 1:1 up to the held-out part |
| held-out text | heldout.txt ($heldout_bytes bytes, $tokens tokens scored): from "$heldout_from" to Revelation 22:21 |
| held-out perplexity | **$ppl** (NLL $nll per token, context 256, the fp16 weights) |

Measure it: \`mpqat eval $OUT --ppl $OUT/heldout.txt\`

Greedy sample (\`mpqat eval $OUT --generate "And God said" --greedy --max-new-tokens 48\`):

\`\`\`
$sample
\`\`\`

## How it was made
\`tools/make_bundled_model.sh\` (see docs/bundled-model.md): the text comes from the Debian
package $kjv_pkg (printed with \`bible\` from bible-kjv), one verse per line with chapter
headings; the last ~${HOLDOUT_PCT}% (from a chapter heading on) is held out; \`spm_train\` builds the
tokenizer from the training part; \`mpqat fit lm\` trains the model (seed $SEED) and writes this
folder. Rerunning the script remakes it (the numbers vary slightly with the thread count).

## License
The King James Version (1611) is in the public domain (Debian's copyright file for
bible-kjv-text: "The copyright for the King James Version text of the Bible is expired").
The tokenizer and weights were derived from that text alone by mpqat.
EOF

# 7. Swap the new folder into place.
mv "$work/model" "$work/new"
if [ -e "$OUT" ]; then mv "$OUT" "$work/old"; fi
mv "$work/new" "$OUT"
echo "[bundled] wrote $OUT: $params parameters, $st_bytes bytes, held-out ppl $ppl, ${seconds}s"
