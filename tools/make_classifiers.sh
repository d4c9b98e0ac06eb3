#!/usr/bin/env bash
# Trains the two small sentiment classifiers of the seeds' workflow with mpqat's own training
# code (`mpqat fit classifier`), on SST-2 from ../shared/data/classification/sst2:
#   checkpoints/sst2-bert-tiny/   BertForSequenceClassification + a WordPiece vocab.txt built here
#   checkpoints/sst2-opt-tiny/    OPTForSequenceClassification + a SentencePiece BPE tokenizer.model
# Training data: alps_train.tsv (60,614 labelled SST-2 phrases); progress is validated on
# alps_dev.tsv; the accuracy stated in each folder's README.md is measured afterwards on the
# official GLUE SST-2 dev set (glue_sst2_dev.tsv, 872 sentences, never seen in training) with
# `mpqat eval DIR --classify`. About 4 minutes each on 1 thread. See docs/classifiers.md.
#
#   tools/make_classifiers.sh            # both
#   tools/make_classifiers.sh bert       # one of them: bert | opt
# Environment (all optional):
#   MPQAT     the mpqat binary (default: build/mpqat)
#   DATA      the SST-2 folder (default: $MPQAT_SHARED_DIR/classification/sst2, else
#             ../shared/data/classification/sst2)
#   OUT_DIR   where the two folders go (default: checkpoints)
#   THREADS   LibTorch threads (default 1; the run is niced: nice -n 10)
#   EPOCHS    passes over the training file (default 1: 1,895 steps of 32)
#   STEPS     optimizer steps instead (default 0: from EPOCHS)
#   SEED      initialisation and data order (default 0)
#   BERT_VOCAB  WordPiece vocabulary size (default 6000)
#   OPT_VOCAB   SentencePiece vocabulary size (default 4000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

MPQAT=${MPQAT:-$root/build/mpqat}
shared=${MPQAT_SHARED_DIR:-$root/../shared/data}
DATA=${DATA:-$shared/classification/sst2}
OUT_DIR=${OUT_DIR:-checkpoints}
THREADS=${THREADS:-1}
EPOCHS=${EPOCHS:-1}
STEPS=${STEPS:-0}
SEED=${SEED:-0}
BERT_VOCAB=${BERT_VOCAB:-6000}
OPT_VOCAB=${OPT_VOCAB:-4000}
BATCH=${BATCH:-32}
LR=${LR:-1e-3}
which=${1:-all}

die() { echo "make_classifiers: $*" >&2; exit 2; }
case "$which" in all|bert|opt) ;; *) die "unknown model '$which' (accepted: bert, opt, or nothing for both)" ;; esac
[ -x "$MPQAT" ] || die "no mpqat binary at '$MPQAT' (build it with tools/setup.sh, or set MPQAT=...)"
"$MPQAT" fit classifier --help >/dev/null 2>&1 || die "'$MPQAT' has no 'fit classifier' command (rebuild it)"
command -v python3 >/dev/null || die "'python3' not found (it builds the WordPiece vocabulary)"
TRAIN=$DATA/alps_train.tsv
VALID=$DATA/alps_dev.tsv
TEST=$DATA/glue_sst2_dev.tsv
for f in "$TRAIN" "$VALID" "$TEST"; do [ -s "$f" ] || die "missing '$f' (set DATA=... to the sst2 folder)"; done
mkdir -p "$OUT_DIR"
# Work folders live inside OUT_DIR (so the final swap is a rename) and go on any exit.
works=()
trap 'for w in "${works[@]}"; do rm -rf "$w"; done' EXIT

export OMP_NUM_THREADS=$THREADS
run() { nice -n 10 "$@"; }

# The WordPiece vocabulary for BERT, built from the training sentences only: BERT's
# pre-tokenization (lowercase, split on whitespace, every ASCII punctuation character its own
# word), then [PAD] [UNK] [CLS] [SEP] [MASK], every character seen (alone and as ##c), the most
# frequent whole words, and, for the words left out, their most frequent prefixes and ##suffixes
# (2-6 characters), so that greedy longest-match covers every training word without [UNK].
make_wordpiece_vocab() {  # train.tsv vocab_size out.txt
  python3 - "$1" "$2" "$3" <<'PY'
import collections, string, sys
path, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
punct = set(string.punctuation)
def words(text):
    cur = []
    for ch in text.lower():
        if ch.isspace():
            if cur: yield "".join(cur); cur = []
        elif ch in punct:
            if cur: yield "".join(cur); cur = []
            yield ch
        else:
            cur.append(ch)
    if cur: yield "".join(cur)
freq = collections.Counter()
with open(path, encoding="utf-8") as f:
    header = f.readline().rstrip("\n").split("\t")
    col = header.index("sentence")
    for line in f:
        fields = line.rstrip("\n").split("\t")
        if len(fields) > col: freq.update(words(fields[col]))
vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
seen = set(vocab)
def add(tok):
    if tok not in seen and len(vocab) < size:
        seen.add(tok); vocab.append(tok)
chars = sorted({c for w in freq for c in w})
for c in chars: add(c)
for c in chars: add("##" + c)
ranked = [w for w, _ in freq.most_common()]
n_words = int((size - len(vocab)) * 0.8)  # 80% whole words, the rest subword pieces
for w in ranked[:n_words]: add(w)
pieces = collections.Counter()
for w in ranked[n_words:]:
    c = freq[w]
    for k in range(2, min(6, len(w) - 1) + 1):
        pieces[w[:k]] += c
        pieces["##" + w[-k:]] += c
for p, _ in pieces.most_common():
    if len(vocab) >= size: break
    add(p)
with open(out, "w", encoding="utf-8") as f:
    f.write("\n".join(vocab) + "\n")
print(f"vocab.txt: {len(vocab)} tokens ({len(chars)} characters, {min(n_words, len(ranked))} of {len(ranked)} words)")
PY
}

# Accuracy of a folder on the GLUE dev set, as `mpqat eval --classify --json` reports it.
glue_eval() {  # dir out.json
  run "$MPQAT" eval "$1" --classify "$TEST" --batch-size 32 --device cpu --json > "$2"
}

# Trains one classifier: name config.json tokenizer_file out_dir description
train_one() {
  local name=$1 cfg=$2 tok=$3 out=$4 what=$5 tokdesc=$6
  local work=$7
  local t0 t1
  t0=$(date +%s)
  run "$MPQAT" fit classifier --config "$cfg" --tokenizer "$tok" --train "$TRAIN" --valid "$VALID" \
    --out "$work/model" --epochs "$EPOCHS" --steps "$STEPS" --batch-size "$BATCH" --lr "$LR" --warmup 100 \
    --schedule cosine --seed "$SEED" --threads "$THREADS" --dtype f16 --log-every 200 \
    --summary "$work/summary.json"
  t1=$(date +%s)
  glue_eval "$work/model" "$work/glue.json"
  python3 - "$work" "$name" "$what" "$tokdesc" "$((t1 - t0))" "$TRAIN" "$VALID" "$TEST" "$out" "$EPOCHS" "$BATCH" "$LR" "$SEED" "$THREADS" <<'PY'
import json, os, sys
work, name, what, tokdesc, secs, train, valid, test, out, epochs, batch, lr, seed, threads = sys.argv[1:]
s = json.load(open(os.path.join(work, "summary.json")))
g = json.load(open(os.path.join(work, "glue.json")))
c = g.get("classification", g)
if isinstance(c, dict) and "accuracy" not in c and len(c) == 1:
    c = next(iter(c.values()))
size = os.path.getsize(os.path.join(work, "model", "model.safetensors"))
cfg = json.load(open(os.path.join(work, "model", "config.json")))
ev = s.get("evals", [])
valid_acc = ev[-1]["accuracy"] if ev else float("nan")
rows = [
    ("architecture", f"{cfg['architectures'][0]}: {what}"),
    ("parameters", str(s["parameters"])),
    ("weights", f"model.safetensors, float16, {size} bytes ({size / 2**20:.2f} MiB)"),
    ("tokenizer", tokdesc),
    ("training data", f"{os.path.basename(train)}: {s['train_examples']} labelled SST-2 phrases (label 0 negative, 1 positive)"),
    ("training", f"{s['steps']} steps x {batch} examples ({int(s['steps']) * int(batch) / int(s['train_examples']):.2f} epochs; AdamW, lr {lr}, warmup 100, cosine to 0.1 x lr, weight decay 0.01, seed {seed}), {float(s['seconds']):.0f} s on {threads} thread(s) ({secs} s in all)"),
    ("validation (alps_dev.tsv)", f"accuracy {valid_acc:.4f} on {s['valid_examples']} phrases, at the end of training"),
    ("GLUE SST-2 dev accuracy", f"**{c['accuracy']:.4f}** ({c.get('n', '?')} sentences; precision {c['precision']:.4f}, recall {c['recall']:.4f}, F1 {c['f1']:.4f}; the fp16 weights)"),
]
lines = [f"# {name}: a small SST-2 sentiment classifier trained by mpqat", "",
         "Trained from scratch by mpqat's own training code (`mpqat fit classifier`), so that the seeds'",
         "classification workflow (sensitivity, clustering, quantization, evaluation) has a real",
         "trained classifier to work on without downloading anything.", "",
         "| | |", "|---|---|"]
lines += [f"| {k} | {v} |" for k, v in rows]
lines += ["", "Measure it:", "", "```",
          f"mpqat eval {out} --classify ../shared/data/classification/sst2/glue_sst2_dev.tsv", "```", "",
          "## How it was made",
          "`tools/make_classifiers.sh` (see docs/classifiers.md): the tokenizer is built from the",
          "training file alone; `mpqat fit classifier` trains the model from a random initialisation",
          "and writes this folder; `mpqat eval --classify` scores it on the GLUE dev set. Rerunning the",
          "script remakes it (the numbers vary slightly with the thread count).", "",
          "## License",
          "SST-2 (Socher et al. 2013, via GLUE) as copied in forest-snow/alps (MIT / GLUE terms); the",
          "tokenizer and weights were derived from its training split alone by mpqat.", ""]
open(os.path.join(work, "model", "README.md"), "w").write("\n".join(lines))
print(f"{name}: GLUE SST-2 dev accuracy {c['accuracy']:.4f}, {s['parameters']} parameters, {size} bytes, {float(s['seconds']):.0f} s training")
PY
  # Swap the new folder into place (rename within one file system).
  rm -rf "$out.old"
  [ -e "$out" ] && mv "$out" "$out.old"
  mv "$work/model" "$out"
  rm -rf "$out.old"
}

make_bert() {
  local out=$OUT_DIR/sst2-bert-tiny
  local work
  work=$(mktemp -d "$OUT_DIR/.sst2-bert-tiny.work.XXXXXX")
  works+=("$work")
  make_wordpiece_vocab "$TRAIN" "$BERT_VOCAB" "$work/vocab.txt"
  cat > "$work/tokenizer_config.json" <<'EOF'
{"do_lower_case": true, "unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
EOF
  cat > "$work/config.json" <<EOF
{
  "architectures": ["BertForSequenceClassification"],
  "model_type": "bert",
  "hidden_size": 128,
  "intermediate_size": 512,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "vocab_size": $BERT_VOCAB,
  "max_position_embeddings": 64,
  "type_vocab_size": 2,
  "layer_norm_eps": 1e-12,
  "hidden_act": "gelu",
  "pad_token_id": 0,
  "num_labels": 2
}
EOF
  train_one sst2-bert-tiny "$work/config.json" "$work/vocab.txt" "$out" \
    "2 layers, hidden 128, 4 heads, intermediate 512 (GELU), 64 positions, post-LN" \
    "vocab.txt: WordPiece, $BERT_VOCAB tokens built from the training file (lowercase)" "$work"
}

make_opt() {
  local out=$OUT_DIR/sst2-opt-tiny
  local work
  work=$(mktemp -d "$OUT_DIR/.sst2-opt-tiny.work.XXXXXX")
  works+=("$work")
  command -v spm_train >/dev/null || die "'spm_train' not found: apt-get install sentencepiece"
  tail -n +2 "$TRAIN" | cut -f1 > "$work/train.txt"
  # Llama-2-style BPE (identity normalization, byte fallback: what mpqat reads), with a pad piece.
  run spm_train --input="$work/train.txt" --model_prefix="$work/sp" --vocab_size="$OPT_VOCAB" --model_type=bpe \
    --normalization_rule_name=identity --remove_extra_whitespaces=false --byte_fallback=true \
    --split_digits=true --character_coverage=1.0 --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=3 \
    --num_threads=1 --minloglevel=2 >/dev/null 2>&1 || die "spm_train failed"
  mv "$work/sp.model" "$work/tokenizer.model"
  cat > "$work/config.json" <<EOF
{
  "architectures": ["OPTForSequenceClassification"],
  "model_type": "opt",
  "hidden_size": 128,
  "ffn_dim": 512,
  "num_hidden_layers": 2,
  "num_attention_heads": 4,
  "vocab_size": $OPT_VOCAB,
  "max_position_embeddings": 64,
  "word_embed_proj_dim": 128,
  "do_layer_norm_before": true,
  "activation_function": "relu",
  "bos_token_id": 1,
  "eos_token_id": 2,
  "pad_token_id": 3,
  "num_labels": 2
}
EOF
  train_one sst2-opt-tiny "$work/config.json" "$work/tokenizer.model" "$out" \
    "2 layers, hidden 128, 4 heads, FFN 512 (ReLU), 64 positions, pre-LN" \
    "tokenizer.model: SentencePiece BPE, $OPT_VOCAB pieces built from the training file (identity normalization, byte fallback; pad id 3)" "$work"
}

case "$which" in
  all) make_bert; make_opt ;;
  bert) make_bert ;;
  opt) make_opt ;;
esac
