#!/usr/bin/env bash
# Flicker of the teacher, its live twin, and live twins distilled with / without the
# noise-stability term, on a still photo with per-frame sensor-like noise (36 frames,
# 320x240): mean absolute frame-to-frame change on the 0..255 scale (examples/flicker.rs).
#
#   scripts/flicker.sh STYLE [MODEL_FILE ...]
#
# STYLE is a built-in with a live twin (e.g. great_wave); extra model files (e.g. a live
# model distilled with --stability-weight 0) get rows of their own. Needs ffmpeg and
# ../shared/data/content/tubingen.jpg. Prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
style=${1:?usage: scripts/flicker.sh STYLE [MODEL_FILE ...]}
shift
photo=../shared/data/content/tubingen.jpg
[ -f "$photo" ] || { echo "needs $photo" >&2; exit 2; }
cargo build --release -q --bin impasto --example flicker
bin=target/release/impasto
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ffmpeg -v error -loop 1 -i "$photo" -frames:v 36 -r 12 \
  -vf "scale=320:240:force_original_aspect_ratio=increase,crop=320:240,noise=alls=8:allf=t,format=yuv420p" \
  "$tmp/still.mp4"
change() { target/release/examples/flicker "$1" | sed 's/.*change //'; }
echo "| model | stylized | stylized --smooth |"
echo "|---|---|---|"
echo "| (input clip) | $(change "$tmp/still.mp4") | |"
row() {
  local label=$1
  shift
  "$bin" video "$tmp/still.mp4" -o "$tmp/a.mp4" "$@" 2>/dev/null
  "$bin" video "$tmp/still.mp4" -o "$tmp/b.mp4" --smooth "$@" 2>/dev/null
  echo "| $label | $(change "$tmp/a.mp4") | $(change "$tmp/b.mp4") |"
}
row "$style (teacher)" --style "$style"
row "${style}_live (compact + stability)" --style "$style" --live
for m in "$@"; do
  row "$(basename "$m")" --style "$m"
done
