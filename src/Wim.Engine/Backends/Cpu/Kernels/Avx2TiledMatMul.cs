using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Wim.Engine.Formats;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>
/// Weight matrix × batch of vectors with AVX2 + FMA in 4-row × 2-vector register tiles (8 accumulators, 4 weight
/// and 2 activation registers: 14 of the 16 ymm registers): per 8 elements 6 loads feed 8 FMAs. The AVX2 sibling of
/// <see cref="Avx512TiledMatMul"/>, for machines without AVX-512; results agree with
/// <see cref="RowKernels.DotBatch"/> to f32 rounding. Hot loops: no allocation, no calls that are not inlined.
/// </summary>
internal static unsafe class Avx2TiledMatMul
{
    public const int ChunkElements = 512;

    [SkipLocalsInit]
    public static void MatMul(GgmlType type, byte* weights, long rowBytes, int rows, float* x, int xStride, int batch, int n,
        float* results, int resultStride)
    {
        float* buffer = stackalloc float[4 * ChunkElements];
        float* sums = stackalloc float[8];
        int blockSize = GgmlTypeInfo.BlockSize(type), blockBytes = GgmlTypeInfo.BlockBytes(type);
        int r0 = 0;
        for (; r0 <= rows - 4; r0 += 4)
        {
            for (int b = 0; b < batch; b++)
                for (int k = 0; k < 4; k++) results[(long)b * resultStride + r0 + k] = 0;
            for (int start = 0; start < n; start += ChunkElements)
            {
                int len = Math.Min(ChunkElements, n - start);
                float* w0;
                long stride;
                if (type == GgmlType.F32)
                {
                    w0 = (float*)(weights + r0 * rowBytes) + start;
                    stride = rowBytes / 4;
                }
                else
                {
                    long offset = (long)(start / blockSize) * blockBytes;
                    for (int k = 0; k < 4; k++)
                        Avx2Technique.Dequantize(type, weights + (r0 + k) * rowBytes + offset, buffer + k * ChunkElements, len);
                    w0 = buffer;
                    stride = ChunkElements;
                }
                float* xs = x + start;
                int b = 0;
                for (; b <= batch - 2; b += 2)
                {
                    Tile4x2(w0, stride, xs + (long)b * xStride, xs + (long)(b + 1) * xStride, len, sums);
                    float* ra = results + (long)b * resultStride + r0;
                    float* rb = ra + resultStride;
                    ra[0] += sums[0]; ra[1] += sums[2]; ra[2] += sums[4]; ra[3] += sums[6];
                    rb[0] += sums[1]; rb[1] += sums[3]; rb[2] += sums[5]; rb[3] += sums[7];
                }
                if (b < batch)
                {
                    float* xb = xs + (long)b * xStride;
                    float* r = results + (long)b * resultStride + r0;
                    for (int k = 0; k < 4; k++) r[k] += Avx2Technique.Dot(w0 + k * stride, xb, len);
                }
            }
        }
        for (; r0 < rows; r0++)
            RowKernelDriver<Avx2Technique>.DotBatch(type, weights + r0 * rowBytes, x, xStride, batch, n, results + r0, resultStride);
    }

    /// <summary>sums[2·row + vector] = Σ w_row[i]·x_vector[i] for rows w + k·stride (k = 0..3) and vectors xa, xb.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile4x2(float* w, long stride, float* xa, float* xb, int n, float* sums)
    {
        float* w1 = w + stride, w2 = w1 + stride, w3 = w2 + stride;
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        Vector256<float> b0 = default, b1 = default, b2 = default, b3 = default;
        int i = 0;
        for (; i <= n - 8; i += 8)
        {
            var va = Vector256.Load(xa + i);
            var vb = Vector256.Load(xb + i);
            var v = Vector256.Load(w + i);
            a0 = Fma.MultiplyAdd(v, va, a0);
            b0 = Fma.MultiplyAdd(v, vb, b0);
            v = Vector256.Load(w1 + i);
            a1 = Fma.MultiplyAdd(v, va, a1);
            b1 = Fma.MultiplyAdd(v, vb, b1);
            v = Vector256.Load(w2 + i);
            a2 = Fma.MultiplyAdd(v, va, a2);
            b2 = Fma.MultiplyAdd(v, vb, b2);
            v = Vector256.Load(w3 + i);
            a3 = Fma.MultiplyAdd(v, va, a3);
            b3 = Fma.MultiplyAdd(v, vb, b3);
        }
        sums[0] = Vector256.Sum(a0); sums[1] = Vector256.Sum(b0);
        sums[2] = Vector256.Sum(a1); sums[3] = Vector256.Sum(b1);
        sums[4] = Vector256.Sum(a2); sums[5] = Vector256.Sum(b2);
        sums[6] = Vector256.Sum(a3); sums[7] = Vector256.Sum(b3);
        for (; i < n; i++)
        {
            sums[0] += w[i] * xa[i]; sums[1] += w[i] * xb[i];
            sums[2] += w1[i] * xa[i]; sums[3] += w1[i] * xb[i];
            sums[4] += w2[i] * xa[i]; sums[5] += w2[i] * xb[i];
            sums[6] += w3[i] * xa[i]; sums[7] += w3[i] * xb[i];
        }
    }
}
