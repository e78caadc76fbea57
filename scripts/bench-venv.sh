#!/usr/bin/env bash
# Creates the Python virtual environment used ONLY by side-by-side benchmarks and
# cross-checks (onnxruntime, numpy). impasto itself never needs Python.
set -euo pipefail
VENV="${IMPASTO_BENCH_VENV:-$(dirname "$0")/../target/bench-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check onnxruntime numpy safetensors pillow
echo "$VENV"
