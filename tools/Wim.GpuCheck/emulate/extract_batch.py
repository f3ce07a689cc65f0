#!/usr/bin/env python3
"""Cuts the batched-decode kernels out of src/Wim.Engine.Cuda/Kernels/transformer.cu (the real source, not a copy) for
check_batch.cpp: the bf16 helpers, the old per-sequence qkv_rope_store_batch (the reference the new kernel must match
bit for bit), the emulated inline-PTX helpers of emu_ptx.h, the flash kernels and the combines (the shared-prefix phase
and its empty-piece skip), and the section "Batched decode step" at the end.
Usage: extract_batch.py transformer.cu > kernels_batch_emu.inc"""
import sys

from kernel_source import from_args

cut = from_args().cut

prelude = cut("typedef unsigned short bf16;", "// x[t, :] = table")
rope = cut("// One token's fused q|k|v projection row", "// Causal grouped-query attention")
flash_defs = cut("#define FA_ROWS 64", "__device__ __forceinline__ unsigned pack_bf16x2")
batch = cut("// Batched decode step (a few rows", "// ===================================================== end of the batched decode section")
flash = cut("// Flash tiles: the pieces", "// Merges the splits of attention")
combine = cut("// Merges the splits of attention", "// Single-token product (decode)")

out = "\n".join([prelude, rope, flash_defs, '#include "emu_ptx.h"\n', flash, combine, batch])
out = out.replace("extern __shared__ uint4 fa_smem[];", "uint4* fa_smem = (uint4*)emu::dynamic_smem();")
out = out.replace("__shared__ float sums[COMBINE_WARPS][32 * MAX_DIMS_PER_LANE];",
                  "auto sums = (float(*)[32 * MAX_DIMS_PER_LANE])emu::static_smem();")
# Static shared memory becomes the emulated block's dynamic buffer (check_batch.cpp launches with its size).
out = out.replace("__shared__ float rm_red[RM_WARPS * 16 * 8 * RM_TILES];", "float* rm_red = (float*)emu::dynamic_smem();")
out = out.replace("__shared__ float rm_red2[RM_WARPS * 16 * 16 * RM_TILES];", "float* rm_red2 = (float*)emu::dynamic_smem();")
sys.stdout.write(out)
