#!/usr/bin/env bash
# The Python package's tests: a venv under target/, the extension built with maturin
# (release, abi3), then pytest. Needs python3 (with venv) and the PyPI index.
#   scripts/python_tests.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/py-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check maturin numpy pytest pillow onnxruntime safetensors
# Ray Data for impasto.ray's test (about 35 s the first time); without it that test skips.
"$VENV/bin/pip" install -q --disable-pip-version-check "ray[data]" \
  || echo "WARNING: could not install ray; the Ray test will print SKIPPED"
VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH" maturin develop --release -q -m python/Cargo.toml
"$VENV/bin/python" -m pytest -q -rs -W ignore::DeprecationWarning python/tests "$@"
