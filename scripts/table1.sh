#!/usr/bin/env bash
# The paper's Table 1 on this machine: the perceptual loss a trained impasto model reaches in
# one forward pass, next to Gatys-style optimisation (`impasto optimize`, same loss, same VGG)
# after 100, 300 and 500 iterations, with times. Content images are centre-cropped to 256².
#   scripts/table1.sh MODEL STYLE [CONTENT_IMAGES...]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="$1"; STYLE="$2"; shift 2
SHARED="${IMPASTO_SHARED:-../shared}"
IMAGES=("$@")
[ ${#IMAGES[@]} -gt 0 ] || IMAGES=("$SHARED/data/content/chicago.jpg" "$SHARED/data/content/tubingen.jpg" "$SHARED/data/content/golden_gate.jpg")
cargo build --release -q
VENV="$(scripts/bench-venv.sh >/dev/null; echo target/bench-venv)"
export IMPASTO_VGG="${IMPASTO_VGG:-$SHARED/weights/vgg16_caffe_relu4_3.safetensors}"
B=target/release/impasto
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
# The model's recorded loss weights, so that both sides minimise the same loss.
read -r CW SW TW < <($B info "$MODEL" | python3 -c 'import sys,json; l=json.load(sys.stdin)["impasto.loss"]; print(l["content_weight"], l["style_weight"], l["tv_weight"])')
echo "loss weights (from the model): content $CW, style $SW, tv $TW"
echo
echo "| image | impasto model (1 pass) | optimize 100 it | optimize 300 it | optimize 500 it |"
echo "|---|---|---|---|---|"
for img in "${IMAGES[@]}"; do
  name="$(basename "$img" .jpg)"
  mkdir -p "$T/$name"
  "$VENV/bin/python" -c "
from PIL import Image; import sys
im = Image.open(sys.argv[1]).convert('RGB'); w, h = im.size; s = min(w, h)
im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((256, 256), Image.LANCZOS)
im.save(sys.argv[2])" "$img" "$T/$name/c.png"
  t0=$(date +%s.%N)
  $B stylize "$T/$name/c.png" -m "$MODEL" -o "$T/$name.model.png" 2>/dev/null
  t1=$(date +%s.%N)
  model=$($B evaluate --model "$MODEL" --style "$STYLE" --photos "$T/$name" --image-size 256 --json | python3 -c 'import sys,json; print(json.load(sys.stdin)["total"])')
  $B optimize --content "$T/$name/c.png" --style "$STYLE" -o "$T/$name.opt.png" --iters 500 --max-size 256 --content-weight "$CW" --style-weight "$SW" --tv-weight "$TW" --json > "$T/$name.opt.jsonl" 2>/dev/null
  python3 - "$name" "$model" "$(python3 -c "print($t1 - $t0)")" "$T/$name.opt.jsonl" <<'PY'
import json, sys
name, model, secs, log = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
rows = [json.loads(l) for l in open(log)]
at = {}
for r in rows:
    if "loss" in r: at[r["iter"]] = (r["loss"]["total"], r["seconds"])
    if "final" in r: at[r["iter"]] = (r["final"]["total"], r["seconds"])
cell = lambda i: f"{at[i][0]:.3e} ({at[i][1]:.0f} s)" if i in at else "–"
print(f"| {name} | {model:.3e} ({secs:.2f} s incl. start-up) | {cell(100)} | {cell(300)} | {cell(500)} |")
PY
done
