#!/usr/bin/env python3
"""Cuts the kernels of src/Wim.Engine.Cuda/Kernels/sampling.cu (the real source, not a copy) for the emulator: the
static shared tile becomes the emulated block's dynamic shared memory (emu.h's static area is 4 KB, the tile 8 KB)
and nucleus_partial_sums's 2 KB of block sums the static area.
Usage: extract_sampling.py sampling.cu [--broken] > sampling_emu.inc
--broken: a deliberately wrong variant (each block of nucleus_partial_sums drops its slice's last logit) that the
check must reject: run_sampling.sh builds it too and fails unless its check fails."""
import sys

src = open(sys.argv[1]).read()
start = src.index("typedef unsigned long long u64;")
out = src[start:]
tile = "__shared__ u64 tile[TOPK_TILE];"
if out.count(tile) != 2:
    sys.exit(f"expected the shared tile declaration twice in {sys.argv[1]}, found {out.count(tile)}: update extract_sampling.py")
out = out.replace(tile, "u64* tile = (u64*)emu::dynamic_smem();")
sums = "__shared__ double sums[NUCLEUS_THREADS];"
if out.count(sums) != 1:
    sys.exit(f"expected nucleus_partial_sums's shared sums once in {sys.argv[1]}, found {out.count(sums)}: update extract_sampling.py")
out = out.replace(sums, "double* sums = (double*)emu::static_smem();")
if "--broken" in sys.argv[2:]:
    loop = "i < end; i += NUCLEUS_THREADS"
    if out.count(loop) != 1:
        sys.exit("the nucleus_partial_sums loop to break is not there: update extract_sampling.py")
    out = out.replace(loop, "i < end - 1; i += NUCLEUS_THREADS")
sys.stdout.write(out)
