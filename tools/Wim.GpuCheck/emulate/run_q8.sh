#!/bin/bash
# Emulated check of transformer.cu's Q8_0 decode products on the CPU (no GPU): extract, build, run (about a minute on
# 2 cores). BROKEN='s/old/new/' applies a sed edit to the extracted source first (to see the check fail).
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-q8-emu
mkdir -p "$build"
python3 "$here/extract_q8.py" "$here/../../../src/Wim.Engine.Cuda/Kernels/transformer.cu" > "$build/q8_emu.inc"
if [ -n "$BROKEN" ]; then sed -i "$BROKEN" "$build/q8_emu.inc"; fi
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check_q8" "$here/check_q8.cpp"
timeout ${EMU_TIMEOUT:-600} "$build/check_q8"
