#!/usr/bin/env bash
# How the stylize pipeline's mirror margin changes what users get: for margins 0/8/16/32 at
# 128², 256² and 512², `impasto evaluate` of the stylize pipeline's output (statistics over
# the picture, the margin cropped) on held-out photos: perceptual loss (content, style,
# total, the model's own weights) and the border step (mean brightness step of the outer
# ring, in standard deviations; the photos' own is printed beside it). Prints a Markdown
# table. 512² uses the first 20 photos to bound the time.
#   scripts/margin_sweep.sh [STYLE] [SHARED]      (default great_wave, ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
style=${1:-great_wave}
shared=${2:-../shared}
cargo build --release -q
bin=target/release/impasto
sub=target/margin-sweep-val20
mkdir -p "$sub"
ls "$shared/data/photos/val" | head -20 | while read -r f; do cp -n "$shared/data/photos/val/$f" "$sub/"; done
echo "| size | margin | content | style | total | border step (photos) |"
echo "|---|---|---|---|---|---|"
for size in 128 256 512; do
  photos="$shared/data/photos/val"; [ "$size" = 512 ] && photos="$sub"
  for m in 0 8 16 32; do
    $bin evaluate --model "$style" --style "$shared/data/styles/$style.jpg" --photos "$photos" \
      --vgg "$shared/weights/vgg16_caffe_relu4_3.safetensors" --image-size "$size" --margin "$m" --json \
    | python3 -c '
import json, sys
j = json.loads(sys.stdin.read()); p = j["pipeline"]
print("| %s² | %d | %.4g | %.4g | %.4g | %.3f (%.3f) |" % (sys.argv[1], j["margin"], p["content"], p["style_loss"], p["total"], j["border_artifact"], j["border_artifact_photos"]))
' "$size"
  done
done
