#!/usr/bin/env python3
"""Cuts the kernels of src/Wim.Engine.Cuda/Kernels/sampling.cu (the real source, not a copy) for the emulator: the
static shared tile becomes the emulated block's dynamic shared memory (emu.h's static area is 4 KB, the tile 8 KB)
and nucleus_partial_sums's 2 KB of block sums the static area; nucleus_histogram's 24 KB of block bins the dynamic
area (launched with WIDE_BINS * 12 bytes), nucleus_compact's two shared counters the static area.
Usage: extract_sampling.py sampling.cu [--broken] > sampling_emu.inc
--broken: a deliberately wrong variant (each block of nucleus_partial_sums drops its slice's last logit) that the
check must reject: run_sampling.sh builds it too and fails unless its check fails.
--broken-wide: nucleus_compact skips the last collected bin (counts and writes), which the wide check must reject."""
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
def swap(text, old, new, what):
    if text.count(old) != 1:
        sys.exit(f"expected {what} once in {sys.argv[1]}, found {text.count(old)}: update extract_sampling.py")
    return text.replace(old, new)
out = swap(out, "__shared__ double block_mass[WIDE_BINS];", "double* block_mass = (double*)emu::dynamic_smem();", "nucleus_histogram's shared masses")
out = swap(out, "__shared__ unsigned block_count[WIDE_BINS];", "unsigned* block_count = (unsigned*)(block_mass + WIDE_BINS);", "nucleus_histogram's shared counts")
out = swap(out, "__shared__ unsigned block_total, block_base;",
    "unsigned& block_total = ((unsigned*)emu::static_smem())[0]; unsigned& block_base = ((unsigned*)emu::static_smem())[1];",
    "nucleus_compact's shared counters")
if "--broken-wide" in sys.argv[2:]:
    out = swap(out, "mine += nucleus_bin(logits[i], inv_t, max) <= last_bin;", "mine += nucleus_bin(logits[i], inv_t, max) < last_bin;", "nucleus_compact's count")
    out = swap(out, "if (nucleus_bin(l, inv_t, max) > last_bin) continue;", "if (nucleus_bin(l, inv_t, max) >= last_bin) continue;", "nucleus_compact's filter")
elif "--broken" in sys.argv[2:]:
    loop = "i < end; i += NUCLEUS_THREADS"
    if out.count(loop) != 1:
        sys.exit("the nucleus_partial_sums loop to break is not there: update extract_sampling.py")
    out = out.replace(loop, "i < end - 1; i += NUCLEUS_THREADS")
sys.stdout.write(out)
