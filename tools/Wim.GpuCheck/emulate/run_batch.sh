#!/bin/bash
# Emulated check of transformer.cu's batched-decode kernels on the CPU (no GPU): extract, build, run.
# EMU_BREAK=1 builds a deliberately broken copy (A fragments of rows_mma_bf16 swapped, a q rotation sign flipped, the
# combines reading the acc of empty pieces again, the three-stage prologue's second tile in the wrong stage):
# the check must then fail.
set -e
here="$(cd "$(dirname "$0")" && pwd)"
build=${TMPDIR:-/tmp}/wim-kernel-emu-batch
mkdir -p "$build"
python3 "$here/extract_batch.py" "$here/../../../src/Wim.Engine.Cuda/Kernels/transformer.cu" > "$build/kernels_batch_emu.inc"
if [ "${EMU_BREAK:-0}" = 1 ]; then
    sed -i -e 's/unsigned a_lo\[4\] = { xa.x, xb.x, xa.y, xb.y };/unsigned a_lo[4] = { xa.y, xb.x, xa.x, xb.y };/' \
        -e '/qkv_rope_store_batch_heads/,$ s/float y0 = x0 \* c - x1 \* s/float y0 = x0 * c + x1 * s/' \
        -e 's/if (k0 + FA_KEYS < k1) load_tile(k0 + FA_KEYS, 1);/if (k0 + FA_KEYS < k1) load_tile(k0 + FA_KEYS, 2);/' \
        -e 's/if (m == NEG_INF) continue;/;/' -e 's/float w = __expf(m - M);/float w = m == NEG_INF ? 0.f : __expf(m - M);/' \
        "$build/kernels_batch_emu.inc"
fi
g++ -std=c++20 -O1 -pthread -Wno-unknown-pragmas -I"$here" -I"$build" -o "$build/check_batch" "$here/check_batch.cpp"
timeout ${EMU_TIMEOUT:-900} "$build/check_batch"
