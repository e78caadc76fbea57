#!/usr/bin/env bash
# Built-in styles against ml5's models of the same paintings: `impasto evaluate` on the 50
# held-out photos (256² crops), each scored against the same style image with the same loss
# (Caffe VGG16, content weight 1, style weight 1 so the style column is the raw Gram distance),
# plus the artifact measures. Prints a Markdown table.
#   scripts/compare_ml5.sh [SHARED]     (default ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared}
cargo build --release -q
bin=target/release/impasto
mkdir -p target/ml5
echo "| painting | model | content loss | style loss (Gram) | grid artifact | border step |"
echo "|---|---|---|---|---|---|"
for pair in udnie:udnie great_wave:wave the_scream:scream; do
  style=${pair%%:*}; ml5=${pair##*:}
  m=target/ml5/ml5-$ml5.safetensors
  [ -f "$m" ] || $bin import "$shared/models/ml5-fast-style-transfer/onnx/$ml5.onnx" -o "$m" 2>/dev/null
  for model in "$style" "$m"; do
    $bin evaluate --model "$model" --style "$shared/data/styles/$style.jpg" \
      --photos "$shared/data/photos/val" --vgg "$shared/weights/vgg16_caffe_relu4_3.safetensors" \
      --style-weight 1 --content-weight 1 --json
  done
done | python3 -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    name = "impasto (built-in)" if "/" not in j["model"] else j["model"].rsplit("/", 1)[1].split(".")[0]
    style = j["style"].rsplit("/", 1)[1].split(".")[0]
    row = (style, name, j["content"], j["style_unweighted"], j["grid_artifact"], j["grid_artifact_photos"], j["border_artifact"], j["border_artifact_photos"])
    print("| %s | %s | %.3g | %.3g | %.0f (photos %.1f) | %.3f (photos %.3f) |" % row)
'
