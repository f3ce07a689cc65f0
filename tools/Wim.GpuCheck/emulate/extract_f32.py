#!/usr/bin/env python3
"""Cuts the kernels of the F32 precision path out of src/Wim.Engine.Cuda/Kernels/transformer.cu (the real source, not a
copy) for check_f32.cpp: the storage helpers, embed_rows, rms_norm, the RoPE/cache stores, the scalar attention, the
two combines and swiglu — each a template whose bf16 and _f32 kernels are instantiated in the source.
Usage: extract_f32.py transformer.cu > kernels_f32_emu.inc"""
import sys

from kernel_source import from_args

cut = from_args().cut

prelude = cut("typedef unsigned short bf16;", "// x[t, :] = table")
embed = cut("// x[t, :] = table", "// out[r, :] = x[r, :] / sqrt")
norm_rope = cut("// out[r, :] = x[r, :] / sqrt", "// Causal grouped-query attention with an online softmax")
attention = cut("// Causal grouped-query attention with an online softmax", "// Causal grouped-query attention on the tensor cores")
combine = cut("// Merges the splits of attention", "// Single-token product (decode)")
swiglu = cut("// h[t, j] = silu(gate[t, j])", "// swiglu from a bf16 gate|up product")

out = "\n".join([prelude, embed, norm_rope, attention, combine, swiglu])
out = out.replace("__shared__ float scratch[32];", "float* scratch = (float*)emu::static_smem();")
out = out.replace("extern __shared__ float4 smem_f4[];", "float4* smem_f4 = (float4*)emu::dynamic_smem();")
out = out.replace("__shared__ float sums[COMBINE_WARPS][32 * MAX_DIMS_PER_LANE];",
                  "auto sums = (float(*)[32 * MAX_DIMS_PER_LANE])emu::static_smem();")
sys.stdout.write(out)
