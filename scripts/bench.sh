#!/usr/bin/env bash
# Inference speed, impasto next to onnxruntime, same network, same weights, same machine,
# same run, 2 threads each; alternating per size so that both see the same machine state.
#   scripts/bench.sh [SIZES] [RUNS]        e.g. scripts/bench.sh 256,512,1024 5
# The weights are ../shared/golden/transformer_weights.safetensors (pytorch/examples
# TransformerNet layout); set IMPASTO_BENCH_MODEL to use another johnson model file.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES="${1:-256,512,1024}"
RUNS="${2:-5}"
THREADS="${THREADS:-2}"
MODEL="${IMPASTO_BENCH_MODEL:-${IMPASTO_SHARED:-../shared}/golden/transformer_weights.safetensors}"
cargo build --release -q
VENV="$(scripts/bench-venv.sh >/dev/null; echo target/bench-venv)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check onnx >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); threads: $THREADS; runs: $RUNS (median)"
echo
echo "| size | impasto ms | onnxruntime ms | impasto / onnxruntime |"
echo "|---|---|---|---|"
for s in ${SIZES//,/ }; do
  ours=$(target/release/impasto bench --threads "$THREADS" --model "$MODEL" --sizes "$s" --runs "$RUNS" --json | python3 -c 'import sys,json; print(json.loads(sys.stdin.readline())["median_ms"])')
  theirs=$(OMP_NUM_THREADS=$THREADS "$VENV/bin/python" scripts/bench_ort.py --model "$MODEL" --sizes "$s" --runs "$RUNS" --threads "$THREADS" | python3 -c 'import sys,json; print(json.loads(sys.stdin.readline())["median_ms"])')
  python3 -c "print(f'| {$s}² | {$ours:.0f} | {$theirs:.0f} | {$ours/$theirs:.2f}× |')"
done
