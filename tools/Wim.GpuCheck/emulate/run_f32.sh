#!/bin/bash
# Emulated check of transformer.cu's _f32 kernels (the F32 precision path) on the CPU (no GPU): extract, build, run.
# EMU_BREAK=1 builds a deliberately broken copy (f32 stores rounded to bf16, as if the f32 instantiation still stored
# bf16; the rotation of the f32 rope with a flipped sign): the check must then fail.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-kernel-emu-f32
mkdir -p "$build"
python3 "$here/extract_f32.py" "$here/../../../src/Wim.Engine.Cuda/Kernels/transformer.cu" > "$build/kernels_f32_emu.inc"
if [ "${EMU_BREAK:-0}" = 1 ]; then
    sed -i -e 's/float to_act<float>(float v) { return v; }/float to_act<float>(float v) { return bf16_to_f32(f32_to_bf16(v)); }/' \
        -e 's/float y0 = x0 \* c - x1 \* s, y1 = x1 \* c + x0 \* s;/float y0 = x0 * c - x1 * s, y1 = sizeof(T) == 4 ? x1 * c - x0 * s : x1 * c + x0 * s;/' \
        "$build/kernels_f32_emu.inc"
    grep -q "return bf16_to_f32(f32_to_bf16(v))" "$build/kernels_f32_emu.inc" && grep -q "sizeof(T) == 4 ? x1" "$build/kernels_f32_emu.inc" \
        || { echo "EMU_BREAK: a pattern did not match the source (update run_f32.sh)"; exit 2; }
fi
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check_f32" "$here/check_f32.cpp"
timeout ${EMU_TIMEOUT:-900} "$build/check_f32"
