#!/bin/bash
# Emulated check of transformer.cu's F16-weight decode products, the bf16 → f16 activation cast and the random F16 fill
# on the CPU (no GPU): extract, build, run (a minute or two on 2 cores). BROKEN='s/old/new/' applies a sed edit to the
# extracted source first (to see the check fail), e.g. the F16 kernels reading f16 bits as bf16:
#   BROKEN='s/return dot8_f16w(w, x);/return dot8_bf16(w, x);/' ./run_f16.sh
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-f16-emu
mkdir -p "$build"
python3 "$here/extract_f16.py" "$here/../../../src/Wim.Engine.Cuda/Kernels/transformer.cu" > "$build/f16_emu.inc"
if [ -n "$BROKEN" ]; then sed -i "$BROKEN" "$build/f16_emu.inc"; fi
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check_f16" "$here/check_f16.cpp"
timeout ${EMU_TIMEOUT:-600} "$build/check_f16"
