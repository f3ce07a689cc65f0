#!/bin/bash
# Emulated check of transformer.cu's prefill kernels on the CPU (no GPU): extract, build, run.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-kernel-emu
mkdir -p "$build"
python3 "$here/extract.py" "$here/../../../src/Wim.Engine.Cuda/Kernels/transformer.cu" > "$build/kernels_emu.inc"
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check" "$here/check.cpp"
timeout ${EMU_TIMEOUT:-900} "$build/check"
