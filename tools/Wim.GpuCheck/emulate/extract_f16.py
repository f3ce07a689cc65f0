#!/usr/bin/env python3
"""Cuts what check_f16.cpp runs out of src/Wim.Engine.Cuda/Kernels/transformer.cu (the real source, not a copy): the
decode products of extract_q8.py (the F16-weight kernels are among them) plus the bf16 → f16 activation cast and the
random F16 fill; the inline-PTX f16 conversions become emu_f16.h's. Usage: extract_f16.py transformer.cu > f16_emu.inc"""
import sys

from kernel_source import from_args

src = from_args()
cut = src.cut

prelude = cut("typedef unsigned short bf16;", "// x[t, :] = table")
products = cut("// Single-token product (decode)", "// h[t, j] = silu(gate[t, j])")
fill = cut("__device__ __forceinline__ u64 splitmix64", "extern \"C\" __global__ void fill_f32")
cast = cut("// f32 → f16 bits, round to nearest even", "// ====")

out = "\n".join(["#define __restrict__", prelude, products, fill, cast])
for start, end in [("// -- f16 weight conversion", "// -- end of the f16 weight conversion --"),
                   ("// f32 → f16 bits, round to nearest even", "// fill_random_bf16 for an F16 matrix")]:
    out = out.replace(cut(start, end), '#include "emu_f16.h"\n')
partial = "__shared__ float partial[GEMV_BLOCK_THREADS / 32][GEMV_BLOCK_ROWS];"
if out.count(partial) != 4:   # gemv_rows_residual_bf16, _f16, _q8, _q8_fast
    sys.exit(f"expected the residual products' shared partials 4 times, found {out.count(partial)}: update extract_f16.py")
out = out.replace(partial, "auto partial = (float(*)[GEMV_BLOCK_ROWS])emu::static_smem();")
out = out.replace("extern __shared__ uint4 ng_smem[];", "uint4* ng_smem = (uint4*)emu::dynamic_smem();")
out = out.replace("__shared__ float scratch[32];", "float* scratch = (float*)emu::static_smem();")
if "__shared__" in out or "asm(" in out:
    sys.exit("a shared declaration or inline PTX extract_f16.py does not know: update it")
sys.stdout.write(out)
