#!/usr/bin/env bash
# The GPU check for a machine with a GPU but no cargo and no network (a lent NVIDIA box):
#
#   scripts/device_check.sh prepare     # here: build, strip, gather into target/device-kit/
#   scripts/device_check.sh run         # there: from the checkout, with target/device-kit/
#
# `prepare` puts in target/device-kit/ (git-ignored; carry that folder with the checkout)
# the stripped release binary, the test binary that holds the conformance check, and
# libvulkan.so.1 (the loader; the GPU's own driver, e.g. NVIDIA's ICD, is on that machine).
# `run` lists the adapters, runs the wgpu conformance and whole-network checks against the
# reference and CPU backends and the one-readback-per-training-step count, then the
# benchmarks (inference 1080p and 4K, live frames, a training step at batch 4 × 256² when
# VGG16 weights are given with IMPASTO_VGG), and
# prints one JSON object. It says plainly when there is no Vulkan adapter. On a slow adapter
# narrow the sizes: DEVICE_CHECK_SIZES=64 DEVICE_CHECK_FRAMES=64x48 scripts/device_check.sh run
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=target/device-kit
case "${1:-run}" in
prepare)
  cargo build --release --bin impasto
  cargo test --release --lib --no-run 2>&1 | tee /tmp/impasto-test-build.log
  lib=$(grep -o 'target/release/deps/impasto-[0-9a-f]*' /tmp/impasto-test-build.log | head -1)
  mkdir -p "$KIT"
  cp target/release/impasto "$KIT/impasto"
  cp "$lib" "$KIT/impasto-lib-tests"
  strip "$KIT/impasto" "$KIT/impasto-lib-tests"
  loader=$(ldconfig -p | awk '/libvulkan.so.1 / { print $NF; exit }')
  [ -n "$loader" ] && cp -L "$loader" "$KIT/libvulkan.so.1"
  du -sh "$KIT"
  ;;
run)
  export LD_LIBRARY_PATH="$PWD/$KIT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
  bin="$KIT/impasto"
  out=$(mktemp -d)
  "$bin" devices --json >"$out/devices.json" 2>"$out/devices.err" || true
  # A container may have NVIDIA's driver without its Vulkan manifest: point the loader at it.
  if ! grep -q '"name"' "$out/devices.json"; then
    nv=$(ldconfig -p 2>/dev/null | awk '/libGLX_nvidia.so.0 / { print $NF; exit }')
    if [ -n "$nv" ]; then
      printf '{"file_format_version": "1.0.0", "ICD": {"library_path": "%s", "api_version": "1.3.0"}}\n' "$nv" >"$out/nvidia_icd.json"
      export VK_ICD_FILENAMES="$out/nvidia_icd.json"
      "$bin" devices --json >"$out/devices.json" 2>"$out/devices.err" || true
    fi
  fi
  if ! grep -q '"name"' "$out/devices.json"; then
    echo "{\"ok\": false, \"why\": \"no Vulkan adapter on this machine\", \"devices\": $(cat "$out/devices.json" 2>/dev/null || echo null), \"stderr\": $(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))' <"$out/devices.err")}"
    exit 0
  fi
  conf=pass
  IMPASTO_STRICT_TESTS=1 "$KIT/impasto-lib-tests" --test-threads 1 wgpu a_gpu_training_step >"$out/conf.log" 2>&1 || conf=fail
  # Sizes may be narrowed for a slow adapter (lavapipe): DEVICE_CHECK_SIZES=64 etc.
  sizes=${DEVICE_CHECK_SIZES:-1024,2048}
  frame_sizes=${DEVICE_CHECK_FRAMES:-640x480,1280x720}
  bench=$("$bin" bench --device gpu --sizes "$sizes" --runs 5 --json 2>"$out/bench.err" | paste -sd, -)
  frames=$("$bin" bench --device gpu --frames "$frame_sizes" --runs 10 --json 2>/dev/null | paste -sd, -)
  cpu=$("$bin" bench --device cpu --sizes "${sizes%%,*}" --runs 3 --json 2>/dev/null | paste -sd, -)
  train=null
  if [ -n "${IMPASTO_VGG:-}" ]; then
    train="[$("$bin" bench --device gpu --train --sizes 256 --batch 4 --runs 5 --json 2>/dev/null | paste -sd, -)]"
  fi
  # JSON text travels through files, not through the Python source.
  echo "[$bench]" >"$out/bench.json"
  echo "[$frames]" >"$out/frames.json"
  echo "[$cpu]" >"$out/cpu.json"
  echo "$train" >"$out/train.json"
  python3 - "$out" <<PY
import json, sys
out = sys.argv[1]
print(json.dumps({
    "ok": "$conf" == "pass",
    "devices": json.load(open(f"{out}/devices.json")),
    "conformance": "$conf",
    "conformance_tail": open(f"{out}/conf.log").read()[-3000:],
    "bench_gpu": json.load(open(f"{out}/bench.json")),
    "bench_gpu_stderr": open(f"{out}/bench.err").read()[-2000:],
    "frames_gpu": json.load(open(f"{out}/frames.json")),
    "bench_cpu": json.load(open(f"{out}/cpu.json")),
    "train_gpu": json.load(open(f"{out}/train.json")),
}, indent=1))
PY
  ;;
*)
  echo "usage: scripts/device_check.sh prepare|run" >&2
  exit 2
  ;;
esac
