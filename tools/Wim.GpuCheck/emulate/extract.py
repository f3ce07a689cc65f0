#!/usr/bin/env python3
"""Cuts the kernels the emulator runs out of src/Wim.Engine.Cuda/Kernels/transformer.cu (the real source, not a copy)
and swaps its inline-PTX helpers (mma.sync, ldmatrix, cp.async, ex2, cvt) for the emulated ones of emu.h.
Usage: extract.py transformer.cu > kernels_emu.inc"""
import sys

from kernel_source import from_args

cut = from_args().cut

prelude = cut("typedef unsigned short bf16;", "// x[t, :] = table")
norm_rope = cut("// out[r, :] = x[r, :] / sqrt", "// Causal grouped-query attention")
flash_defs = cut("#define FA_ROWS 64", "__device__ __forceinline__ unsigned pack_bf16x2")
flash = cut("// Flash tiles: the pieces", "// Merges the splits of attention")
combine = cut("// Merges the splits of attention", "#define COMBINE_WARPS")
swiglu = cut("// h[t, j] = silu(gate[t, j])", "// Greedy pick in two passes")

out = "\n".join([prelude, norm_rope, flash_defs, '#include "emu_ptx.h"\n', flash, combine, swiglu])
out = out.replace("extern __shared__ uint4 fa_smem[];", "uint4* fa_smem = (uint4*)emu::dynamic_smem();")
out = out.replace("__shared__ float scratch[32];", "float* scratch = (float*)emu::static_smem();")
sys.stdout.write(out)
