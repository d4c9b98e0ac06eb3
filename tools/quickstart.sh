#!/usr/bin/env bash
# The README's first command runs this after tools/setup.sh: the whole pipeline on the bundled
# model (checkpoints/kjv-llama, in the repository; no download, no shared data needed):
#   FP eval -> Fisher sensitivity -> QBO bits under a 3-average-bit budget -> Block-AP (SGRA)
#   -> packed checkpoint -> reload -> eval -> runs/quickstart/report.{txt,json,html}
# A few minutes at most on 2 CPU cores (about 15 s on the build machine).
set -euo pipefail
cd "$(dirname "$0")/.."
mpqat=${MPQAT:-build/mpqat}
"$mpqat" --version
"$mpqat" run recipes/quickstart.yaml "$@"
python3 - <<'PY' 2>/dev/null || true
import json
r = json.load(open("runs/quickstart/report.json"))
b = r.get("budget", {})
print(f"\nquick start: held-out ppl {r['fp']['ppl']:.2f} (fp16, {r['fp']['bytes']} bytes) -> "
      f"{r['quantized']['ppl']:.2f} ({r['quantized']['bytes']} bytes, {r['quantized']['avg_bits']:.2f} avg bits); "
      f"budget {'met' if b.get('met') else 'NOT met'}")
PY
