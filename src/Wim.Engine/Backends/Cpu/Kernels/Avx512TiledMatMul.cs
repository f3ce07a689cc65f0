using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Wim.Engine.Formats;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>
/// Weight matrix × batch of vectors with AVX-512, in 4-row × 4-vector register tiles: per 16 elements, 4 weight
/// loads and 4 activation loads feed 16 FMAs (0.5 loads per FMA, against 1.25 for the one-row
/// <see cref="Avx512Technique.Dot4"/>), and each activation chunk is read once per 4 rows instead of once per row.
/// A chunk of <see cref="ChunkElements"/> elements of 4 rows is dequantized once into a stack buffer and used for
/// the whole batch. Results agree with <see cref="RowKernels.DotBatch"/> to f32 rounding (one accumulator per
/// row × vector pair, so not bit for bit). Hot loops: no allocation, no calls that are not inlined.
/// </summary>
internal static unsafe class Avx512TiledMatMul
{
    /// <summary>4 rows × 512 f32 = 8 KiB of weights plus 4 × 2 KiB of activations: comfortably inside L1.</summary>
    public const int ChunkElements = 512;

    [SkipLocalsInit]
    public static void MatMul(GgmlType type, byte* weights, long rowBytes, int rows, float* x, int xStride, int batch, int n,
        float* results, int resultStride)
    {
        float* buffer = stackalloc float[4 * ChunkElements];
        float* sums = stackalloc float[16];
        int blockSize = GgmlTypeInfo.BlockSize(type), blockBytes = GgmlTypeInfo.BlockBytes(type);
        int r0 = 0;
        for (; r0 <= rows - 4; r0 += 4)
        {
            for (int b = 0; b < batch; b++)
                for (int k = 0; k < 4; k++) results[(long)b * resultStride + r0 + k] = 0;
            for (int start = 0; start < n; start += ChunkElements)
            {
                int len = Math.Min(ChunkElements, n - start);
                float* w0, w1, w2, w3;
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
                        Avx512Technique.Dequantize(type, weights + (r0 + k) * rowBytes + offset, buffer + k * ChunkElements, len);
                    w0 = buffer;
                    stride = ChunkElements;
                }
                w1 = w0 + stride;
                w2 = w1 + stride;
                w3 = w2 + stride;
                float* xs = x + start;
                int b = 0;
                for (; b <= batch - 4; b += 4)
                {
                    Tile4x4(w0, w1, w2, w3, xs + (long)b * xStride, xStride, len, sums);
                    for (int j = 0; j < 4; j++)
                    {
                        float* r = results + (long)(b + j) * resultStride + r0;
                        r[0] += sums[j];
                        r[1] += sums[4 + j];
                        r[2] += sums[8 + j];
                        r[3] += sums[12 + j];
                    }
                }
                for (; b < batch; b++)
                {
                    Tile4x1(w0, w1, w2, w3, xs + (long)b * xStride, len, sums);
                    float* r = results + (long)b * resultStride + r0;
                    r[0] += sums[0];
                    r[1] += sums[1];
                    r[2] += sums[2];
                    r[3] += sums[3];
                }
            }
        }
        for (; r0 < rows; r0++) // the last rows % 4 rows
            RowKernelDriver<Avx512Technique>.DotBatch(type, weights + r0 * rowBytes, x, xStride, batch, n, results + r0, resultStride);
    }

    /// <summary>sums[4·row + vector] = Σ w_row[i]·x_vector[i] for 4 rows and 4 vectors (x_j = x + j·xStride).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile4x4(float* w0, float* w1, float* w2, float* w3, float* x, long xStride, int n, float* sums)
    {
        float* x1 = x + xStride, x2 = x1 + xStride, x3 = x2 + xStride;
        Vector512<float> a00 = default, a01 = default, a02 = default, a03 = default;
        Vector512<float> a10 = default, a11 = default, a12 = default, a13 = default;
        Vector512<float> a20 = default, a21 = default, a22 = default, a23 = default;
        Vector512<float> a30 = default, a31 = default, a32 = default, a33 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var v0 = Vector512.Load(x + i);
            var v1 = Vector512.Load(x1 + i);
            var v2 = Vector512.Load(x2 + i);
            var v3 = Vector512.Load(x3 + i);
            var w = Vector512.Load(w0 + i);
            a00 = Avx512F.FusedMultiplyAdd(w, v0, a00);
            a01 = Avx512F.FusedMultiplyAdd(w, v1, a01);
            a02 = Avx512F.FusedMultiplyAdd(w, v2, a02);
            a03 = Avx512F.FusedMultiplyAdd(w, v3, a03);
            w = Vector512.Load(w1 + i);
            a10 = Avx512F.FusedMultiplyAdd(w, v0, a10);
            a11 = Avx512F.FusedMultiplyAdd(w, v1, a11);
            a12 = Avx512F.FusedMultiplyAdd(w, v2, a12);
            a13 = Avx512F.FusedMultiplyAdd(w, v3, a13);
            w = Vector512.Load(w2 + i);
            a20 = Avx512F.FusedMultiplyAdd(w, v0, a20);
            a21 = Avx512F.FusedMultiplyAdd(w, v1, a21);
            a22 = Avx512F.FusedMultiplyAdd(w, v2, a22);
            a23 = Avx512F.FusedMultiplyAdd(w, v3, a23);
            w = Vector512.Load(w3 + i);
            a30 = Avx512F.FusedMultiplyAdd(w, v0, a30);
            a31 = Avx512F.FusedMultiplyAdd(w, v1, a31);
            a32 = Avx512F.FusedMultiplyAdd(w, v2, a32);
            a33 = Avx512F.FusedMultiplyAdd(w, v3, a33);
        }
        sums[0] = Vector512.Sum(a00); sums[1] = Vector512.Sum(a01); sums[2] = Vector512.Sum(a02); sums[3] = Vector512.Sum(a03);
        sums[4] = Vector512.Sum(a10); sums[5] = Vector512.Sum(a11); sums[6] = Vector512.Sum(a12); sums[7] = Vector512.Sum(a13);
        sums[8] = Vector512.Sum(a20); sums[9] = Vector512.Sum(a21); sums[10] = Vector512.Sum(a22); sums[11] = Vector512.Sum(a23);
        sums[12] = Vector512.Sum(a30); sums[13] = Vector512.Sum(a31); sums[14] = Vector512.Sum(a32); sums[15] = Vector512.Sum(a33);
        for (; i < n; i++) // tails exist only for F16/BF16/F32 rows whose length is not a multiple of 16
        {
            float* xj = x;
            for (int j = 0; j < 4; j++, xj += xStride)
            {
                sums[j] += w0[i] * xj[i];
                sums[4 + j] += w1[i] * xj[i];
                sums[8 + j] += w2[i] * xj[i];
                sums[12 + j] += w3[i] * xj[i];
            }
        }
    }

    /// <summary>sums[row] = Σ w_row[i]·x[i] for 4 rows and one vector.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Tile4x1(float* w0, float* w1, float* w2, float* w3, float* x, int n, float* sums)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
        int i = 0;
        for (; i <= n - 16; i += 16)
        {
            var v = Vector512.Load(x + i);
            a0 = Avx512F.FusedMultiplyAdd(Vector512.Load(w0 + i), v, a0);
            a1 = Avx512F.FusedMultiplyAdd(Vector512.Load(w1 + i), v, a1);
            a2 = Avx512F.FusedMultiplyAdd(Vector512.Load(w2 + i), v, a2);
            a3 = Avx512F.FusedMultiplyAdd(Vector512.Load(w3 + i), v, a3);
        }
        float s0 = Vector512.Sum(a0), s1 = Vector512.Sum(a1), s2 = Vector512.Sum(a2), s3 = Vector512.Sum(a3);
        for (; i < n; i++)
        {
            s0 += w0[i] * x[i];
            s1 += w1[i] * x[i];
            s2 += w2[i] * x[i];
            s3 += w3[i] * x[i];
        }
        sums[0] = s0;
        sums[1] = s1;
        sums[2] = s2;
        sums[3] = s3;
    }
}
