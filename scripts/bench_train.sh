#!/usr/bin/env bash
# One training step (batch 4, 256² or SIZE², VGG16 loss, backward, Adam), impasto next to
# PyTorch (float32) on the CPU, same network and loss, 2 threads each, in the same run; with
# peak RSS and the CPU's model and vector flags.
#   scripts/bench_train.sh [RUNS] [SIZE]
# ISA=avx2 measures AVX2 code on a machine with AVX-512: impasto built without its AVX-512
# GEMM kernels (no `avx512` feature) and with its own AVX-512 kernels off
# (IMPASTO_NO_AVX512), PyTorch capped at AVX2 (ATen, oneDNN and MKL).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
SIZE="${2:-256}"
THREADS="${THREADS:-2}"
ISA="${ISA:-native}"
VGG="${IMPASTO_VGG:-${IMPASTO_SHARED:-../shared}/weights/vgg16_caffe_relu4_3.safetensors}"
case "$ISA" in
  native)
    cargo build --release -q
    BIN=target/release/impasto ;;
  avx2)
    cargo build --release -q --no-default-features --features cli,serve,hub,video,gpu --target-dir target/avx2
    BIN=target/avx2/release/impasto
    export IMPASTO_NO_AVX512=1 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ;;
  *) echo "ISA must be native or avx2, not $ISA" >&2; exit 2 ;;
esac
VENV="$(scripts/bench-venv.sh >/dev/null; echo target/bench-venv)"
# PyTorch from the ordinary package registry (PyPI): the default wheel runs on the CPU, and
# a machine that reaches only the registries can install it (download.pytorch.org may be
# out of reach).
"$VENV/bin/python" -c 'import torch' 2>/dev/null || "$VENV/bin/python" -m pip install -q --disable-pip-version-check torch
rss() { grep "Maximum resident" "$1" | awk '{printf "%.2f GB", $6/1e6}'; }
/usr/bin/time -v "$BIN" bench --train --threads "$THREADS" --vgg "$VGG" --sizes "$SIZE" --batch 4 --runs "$RUNS" --json > /tmp/impasto_train.json 2> /tmp/impasto_train.time
/usr/bin/time -v "$BIN" bench --train --exact --threads "$THREADS" --vgg "$VGG" --sizes "$SIZE" --batch 4 --runs "$RUNS" --json > /tmp/impasto_exact.json 2> /tmp/impasto_exact.time
/usr/bin/time -v "$VENV/bin/python" scripts/bench_train.py --vgg "$VGG" --size "$SIZE" --runs "$RUNS" --threads "$THREADS" > /tmp/torch_train.json 2> /tmp/torch_train.time
grep -m1 'model name' /proc/cpuinfo || true
echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|fma|amx)' | tr '\n' ' ')"
echo "training step, batch 4 at ${SIZE}², $THREADS threads, median of $RUNS, code paths: $ISA"
python3 - "$(rss /tmp/impasto_train.time)" "$(rss /tmp/impasto_exact.time)" "$(rss /tmp/torch_train.time)" <<'PY'
import json, sys
a = json.load(open("/tmp/impasto_train.json")); p = json.load(open("/tmp/impasto_exact.json"))
b = json.load(open("/tmp/torch_train.json"))
print("| engine | ms/step (median) | img/s | peak RSS |")
print("|---|---|---|---|")
print(f"| impasto | {a['median_ms']:.0f} | {a['img_per_s']:.2f} | {sys.argv[1]} |")
print(f"| impasto --exact | {p['median_ms']:.0f} | {p['img_per_s']:.2f} | {sys.argv[2]} |")
print(f"| {b['engine']} | {b['median_ms']:.0f} | {b['img_per_s']:.2f} | {sys.argv[3]} |")
print(f"\nimpasto / pytorch time: {a['median_ms']/b['median_ms']:.2f}× (--exact: {p['median_ms']/b['median_ms']:.2f}×)")
PY
