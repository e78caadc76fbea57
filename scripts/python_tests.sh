#!/usr/bin/env bash
# The Python package's tests: a venv under target/, the extension built with maturin
# (release, abi3), then pytest. Needs python3 (with venv) and the PyPI index.
#   scripts/python_tests.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/py-venv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check maturin numpy pytest pillow
VIRTUAL_ENV="$PWD/$VENV" PATH="$PWD/$VENV/bin:$PATH" maturin develop --release -q -m python/Cargo.toml
"$VENV/bin/python" -m pytest -q python/tests "$@"
