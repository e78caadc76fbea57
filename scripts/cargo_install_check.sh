#!/usr/bin/env bash
# `cargo install impasto` from the packaged crate: package it (crates.io refuses .crate files
# over 10 MB), install that package into a temporary root, and stylize the shipped photo with
# a built-in style using the installed binary. Reuses target/ for the dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo package --allow-dirty --no-verify -q
CRATE=$(ls -t target/package/impasto-*.crate | head -1)
SIZE=$(stat -c %s "$CRATE")
echo "packaged $CRATE: $SIZE bytes (crates.io limit 10485760)"
[ "$SIZE" -lt 10485760 ] || { echo "the crate is over crates.io's 10 MB limit"; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
tar -xzf "$CRATE" -C "$TMP"
CARGO_TARGET_DIR="$PWD/target" cargo install --quiet --path "$TMP"/impasto-* --root "$TMP/root"
"$TMP/root/bin/impasto" styles | head -5
"$TMP/root/bin/impasto" stylize assets/coffee.jpg --style great_wave -o "$TMP/coffee.jpg"
test -s "$TMP/coffee.jpg" && echo "cargo install: the installed binary stylized assets/coffee.jpg"
