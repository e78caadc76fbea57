#!/usr/bin/env bash
# `impasto export` checked against onnxruntime, both architectures: johnson (the golden
# TransformerNet weights) and seed (the imported ml5 udnie model). Relative error < 1e-3.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED="${IMPASTO_SHARED:-../shared}"
cargo build --release -q --bin impasto --example forward
VENV="$(scripts/bench-venv.sh >/dev/null; echo target/bench-venv)"
T="$(mktemp -d)"
trap 'rm -rf "$T"' EXIT
B=target/release/impasto
cp "$SHARED/golden/transformer_weights.safetensors" "$T/johnson.safetensors"
$B import "$SHARED/models/ml5-fast-style-transfer/onnx/udnie.onnx" -o "$T/seed.safetensors" 2>/dev/null
"$VENV/bin/python" - "$T/in.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import save_file
save_file({"input": (np.random.default_rng(0).random((1, 3, 96, 132)) * 255).astype(np.float32)}, sys.argv[1])
PY
for arch in johnson seed; do
  $B export "$T/$arch.safetensors" -o "$T/$arch.onnx" 2>/dev/null
  target/release/examples/forward "$T/$arch.safetensors" "$T/in.safetensors" "$T/$arch.out.safetensors"
  "$VENV/bin/python" scripts/check_export.py "$T/$arch.onnx" "$T/in.safetensors" "$T/$arch.out.safetensors"
done
