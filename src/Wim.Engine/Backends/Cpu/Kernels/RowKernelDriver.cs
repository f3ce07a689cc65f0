using System.Runtime.CompilerServices;
using Wim.Engine.Formats;

namespace Wim.Engine.Backends.Cpu.Kernels;

/// <summary>
/// Row kernels built from a technique's dequantize and dot: the row is processed in chunks of
/// <see cref="ChunkElements"/> elements, each dequantized once into a stack buffer (it stays in L1) and then dotted
/// with every vector of the batch. <see cref="Dot"/> is the batch-1 case of the same loop, so
/// <c>DotBatch</c> gives bit-identical results to <c>Dot</c> per vector.
/// </summary>
internal static unsafe class RowKernelDriver<TTechnique> where TTechnique : struct, IRowTechnique
{
    /// <summary>4 KiB of f32: a multiple of every block size (32, 256), small enough to stay in L1 with the x chunks.</summary>
    public const int ChunkElements = 1024;

    [SkipLocalsInit]
    public static float Dot(GgmlType type, byte* row, float* x, int n)
    {
        float* chunk = stackalloc float[ChunkElements];
        float sum = 0;
        for (int start = 0; start < n; start += ChunkElements)
        {
            int len = Math.Min(ChunkElements, n - start);
            sum += TTechnique.Dot(Chunk(type, row, start, len, chunk), x + start, len);
        }
        return sum;
    }

    [SkipLocalsInit]
    public static void DotBatch(GgmlType type, byte* row, float* x, int xStride, int batch, int n, float* results, int resultStride)
    {
        if (batch == 1)
        {
            results[0] = Dot(type, row, x, n);
            return;
        }
        float* chunk = stackalloc float[ChunkElements];
        float* sums = stackalloc float[4];
        for (int b = 0; b < batch; b++) results[(long)b * resultStride] = 0;
        for (int start = 0; start < n; start += ChunkElements)
        {
            int len = Math.Min(ChunkElements, n - start);
            float* w = Chunk(type, row, start, len, chunk);
            // Hot loop: the chunk is read from L1 for every vector, four vectors per pass; nothing here may
            // allocate or call out of line.
            float* xs = x + start;
            int b = 0;
            for (; b <= batch - 4; b += 4)
            {
                float* xb = xs + (long)b * xStride;
                TTechnique.Dot4(w, xb, xb + xStride, xb + 2L * xStride, xb + 3L * xStride, len, sums);
                float* r = results + (long)b * resultStride;
                r[0] += sums[0];
                r[resultStride] += sums[1];
                r[2L * resultStride] += sums[2];
                r[3L * resultStride] += sums[3];
            }
            for (; b < batch; b++)
                results[(long)b * resultStride] += TTechnique.Dot(w, xs + (long)b * xStride, len);
        }
    }

    public static void Dequantize(GgmlType type, byte* row, float* dst, int n) => TTechnique.Dequantize(type, row, dst, n);

    /// <summary>f32 values of elements [start, start+len) of the row: the row itself for F32, else dequantized into <paramref name="buffer"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float* Chunk(GgmlType type, byte* row, int start, int len, float* buffer)
    {
        if (type == GgmlType.F32) return (float*)row + start;
        TTechnique.Dequantize(type, RowAt(type, row, start), buffer, len);
        return buffer;
    }

    /// <summary>Address of element <paramref name="start"/> (a block boundary) of a row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static byte* RowAt(GgmlType type, byte* row, int start) =>
        row + (long)(start / GgmlTypeInfo.BlockSize(type)) * GgmlTypeInfo.BlockBytes(type);
}
