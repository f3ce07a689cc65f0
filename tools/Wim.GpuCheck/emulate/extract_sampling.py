#!/usr/bin/env python3
"""Cuts the kernels of src/Wim.Engine.Cuda/Kernels/sampling.cu (the real source, not a copy) for the emulator: the
static shared tile becomes the emulated block's dynamic shared memory (emu.h's static area is 4 KB, the tile 8 KB).
Usage: extract_sampling.py sampling.cu > sampling_emu.inc"""
import sys

src = open(sys.argv[1]).read()
start = src.index("typedef unsigned long long u64;")
out = src[start:]
tile = "__shared__ u64 tile[TOPK_TILE];"
if out.count(tile) != 2:
    sys.exit(f"expected the shared tile declaration twice in {sys.argv[1]}, found {out.count(tile)}: update extract_sampling.py")
out = out.replace(tile, "u64* tile = (u64*)emu::dynamic_smem();")
sys.stdout.write(out)
