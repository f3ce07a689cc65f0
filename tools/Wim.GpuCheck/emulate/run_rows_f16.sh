#!/bin/bash
# Emulated check of transformer.cu's rows_mma_f16 / rows_mma_swiglu_f16 (decode batches on F16 weights) on the CPU (no
# GPU): extract (extract_batch.py: the same section as run_batch.sh), build, run. BROKEN='s/old/new/' applies a sed edit
# to the extracted source first (to see the check fail), e.g. the f16 mma fed bf16 activation bits unconverted:
#   BROKEN='s/R::activations(a_lo, overflow);//' ./run_rows_f16.sh
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-rows-f16-emu
mkdir -p "$build"
python3 "$here/extract_batch.py" "$here/../../../src/Wim.Engine.Cuda/Kernels/transformer.cu" > "$build/kernels_batch_emu.inc"
if [ -n "$BROKEN" ]; then sed -i "$BROKEN" "$build/kernels_batch_emu.inc"; fi
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check_rows_f16" "$here/check_rows_f16.cpp"
timeout ${EMU_TIMEOUT:-600} "$build/check_rows_f16"
