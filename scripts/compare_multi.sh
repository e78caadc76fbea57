#!/usr/bin/env bash
# A model of several styles against the single-style models of the same paintings, style by
# style: `impasto evaluate` on the 50 held-out photos (256² crops), each model scored with
# its own recorded loss weights (a style of the multi-style model with the weight it was
# trained at, `--mix NAME`). Prints a Markdown table with the multi / single ratio of the
# total, the decision rule for shipping the built-ins as one network (every style within 5%).
#   scripts/compare_multi.sh MULTI.safetensors [STYLE=SINGLE ...]
#   (default: the built-in styles, i.e. the rows of the shipped network `builtins`)
#   SHARED=../shared (the photos, the paintings and VGG16)
set -euo pipefail
cd "$(dirname "$0")/.."
multi=${1:?usage: scripts/compare_multi.sh MULTI.safetensors [STYLE=SINGLE ...]}
shift
shared=${SHARED:-../shared}
pairs=("$@")
[ ${#pairs[@]} -gt 0 ] || pairs=(composition_vii=composition_vii great_wave=great_wave
  starry_night=starry_night the_scream=the_scream udnie=udnie)
cargo build --release -q
bin=target/release/impasto
eval_one() { # MODEL STYLE [--mix NAME]
  "$bin" evaluate --model "$1" --style "$shared/data/styles/$2.jpg" \
    --photos "$shared/data/photos/val" --vgg "$shared/weights/vgg16_caffe_relu4_3.safetensors" \
    --json "${@:3}"
}
echo "| style | style weight | single: content / style / total | multi: content / style / total | multi / single (total) |"
echo "|---|---|---|---|---|"
for pair in "${pairs[@]}"; do
  style=${pair%%=*}; single=${pair#*=}
  s=$(eval_one "$single" "$style")
  m=$(eval_one "$multi" "$style" --mix "$style")
  python3 - "$style" "$s" "$m" <<'PY'
import json, sys
name, s, m = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
f = lambda j: "%s / %s / %s" % tuple(f"{j[k]:,.0f}" for k in ("content", "style_loss", "total"))
w = (s["loss_config"]["style_weight"], m["loss_config"]["style_weight"])
ratio = m["total"] / s["total"]
print(f"| {name} | {w[0]:g} (multi {w[1]:g}) | {f(s)} | {f(m)} | **{ratio:.3f}**{'' if ratio <= 1.05 else ' (over 5%)'} |")
PY
done
