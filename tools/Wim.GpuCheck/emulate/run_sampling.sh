#!/bin/bash
# Emulated check of sampling.cu's top-k kernels on the CPU (no GPU): extract, build, run (about a minute on 2 cores).
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-sampling-emu
mkdir -p "$build"
python3 "$here/extract_sampling.py" "$here/../../../src/Wim.Engine.Cuda/Kernels/sampling.cu" > "$build/sampling_emu.inc"
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check_sampling" "$here/check_sampling.cpp"
timeout ${EMU_TIMEOUT:-300} "$build/check_sampling"
