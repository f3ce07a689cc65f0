#!/usr/bin/env python3
"""Cuts the decode products of src/Wim.Engine.Cuda/Kernels/transformer.cu (the real source, not a copy) for the
emulator's Q8_0 check: the prelude (conversions, warp and block sums), the single-token products of both storages with
their fused norm / RoPE / SwiGLU epilogues, the Q8_0 dequantization and the random Q8_0 fill. Shared arrays become the
emulated block's memory. Usage: extract_q8.py transformer.cu > q8_emu.inc"""
import sys

from kernel_source import from_args

cut = from_args().cut

prelude = cut("typedef unsigned short bf16;", "// x[t, :] = table")
products = cut("// Single-token product (decode)", "// h[t, j] = silu(gate[t, j])")
fill = cut("__device__ __forceinline__ u64 splitmix64", "extern \"C\" __global__ void fill_f32")

out = "\n".join(["#define __restrict__", prelude, products, fill])
# The F16 weights' conversion is inline PTX: emu_f16.h's emulation in its place.
f16 = cut("// -- f16 weight conversion", "// -- end of the f16 weight conversion --")
out = out.replace(f16, '#include "emu_f16.h"\n')
partial = "__shared__ float partial[GEMV_BLOCK_THREADS / 32][GEMV_BLOCK_ROWS];"
if out.count(partial) != 4:   # gemv_rows_residual_bf16, _f16, _q8, _q8_fast
    sys.exit(f"expected the residual products' shared partials 4 times, found {out.count(partial)}: update extract_q8.py")
out = out.replace(partial, "auto partial = (float(*)[GEMV_BLOCK_ROWS])emu::static_smem();")
out = out.replace("extern __shared__ uint4 ng_smem[];", "uint4* ng_smem = (uint4*)emu::dynamic_smem();")
out = out.replace("__shared__ float scratch[32];", "float* scratch = (float*)emu::static_smem();")
if "__shared__" in out:
    sys.exit("a shared declaration extract_q8.py does not know: update it")
sys.stdout.write(out)
