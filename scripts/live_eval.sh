#!/usr/bin/env bash
# Each built-in style next to its live twin: `impasto evaluate` on the 50 held-out photos
# (256² centre crops, the teacher's recorded loss weights for both), as a markdown table.
#
#   scripts/live_eval.sh [STYLE ...]      (default: every built-in with a twin)
#
# Needs ../shared (photos, paintings, VGG16). Takes a few minutes per model on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${IMPASTO_SHARED:-../shared}
cargo build --release -q --bin impasto
bin=target/release/impasto
styles=("$@")
if [ ${#styles[@]} -eq 0 ]; then
  # The styles, not the networks that hold several of them (`builtins`).
  names=$("$bin" styles | grep -v ' in one network' | awk '{print $1}')
  mapfile -t styles < <(grep -v '_live$' <<<"$names" | while read -r s; do
    grep -qx "${s}_live" <<<"$names" && echo "$s"; done)
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for s in "${styles[@]}"; do
  for m in "$s" "${s}_live"; do
    "$bin" evaluate --model "$m" --style "$shared/data/styles/$s.jpg" --photos "$shared/data/photos/val" \
      --vgg "$shared/weights/vgg16_caffe_relu4_3.safetensors" --json > "$tmp/$m.json"
  done
done
python3 - "$tmp" "${styles[@]}" <<'PY'
import json, sys
d, styles = sys.argv[1], sys.argv[2:]
print("| style | content: teacher | twin | twin/teacher | style: teacher | twin | twin/teacher | grid: teacher / twin |")
print("|---|---|---|---|---|---|---|---|")
for s in styles:
    t = json.load(open(f"{d}/{s}.json")); l = json.load(open(f"{d}/{s}_live.json"))
    print(f"| {s} | {t['content']:.3g} | {l['content']:.3g} | {l['content']/t['content']:.2f} | "
          f"{t['style_loss']:.3g} | {l['style_loss']:.3g} | {l['style_loss']/t['style_loss']:.2f} | "
          f"{t['grid_artifact']:.0f} / {l['grid_artifact']:.0f} |")
PY
