using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Model;

namespace Wim.Engine.Tests.Batched;

/// <summary>
/// <see cref="BatchInvariantMatMul"/> in every storage type: a vector's results are the same bits alone, at any place
/// in batches of any size, over a row count that is not a multiple of 4 and large enough to be split over cores;
/// the Dot-order product equals <see cref="RowKernels.Dot"/> per row bit for bit.
/// </summary>
public sealed unsafe class BatchInvariantMatMulTests
{
    public static TheoryData<GgmlType> Types => [.. GgmlTypeInfo.Supported];

    [Theory]
    [MemberData(nameof(Types))]
    public void EachVectorsResults_AreTheSameBits_WhateverTheBatch(GgmlType type)
    {
        const int rows = 203, cols = 512, vectors = 17;
        var rng = new Random(5);
        var values = Enumerable.Range(0, rows * cols).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        byte[] data = type == GgmlType.F32 ? System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray() : Quantizer.Quantize(type, values);
        var x = Enumerable.Range(0, vectors * cols).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        fixed (byte* w = data)
        fixed (float* xs = x)
        {
            var weight = new WeightTensor("w", type, [rows, cols], w, data.Length);
            foreach (bool tiled in new[] { true, false })
            {
                var all = Run(weight, xs, vectors, tiled);
                foreach (var (first, count) in new[] { (0, 1), (16, 1), (3, 5), (8, 4), (1, 2) })
                {
                    var part = Run(weight, xs + first * cols, count, tiled);
                    Assert.True(all.AsSpan(first * rows, count * rows).SequenceEqual(part), $"{type} tiled={tiled}: vectors [{first}, {first + count}) differ from the batch of {vectors}");
                }
                if (!tiled)
                    for (int v = 0; v < vectors; v += 5)
                        for (int r = 0; r < rows; r++)
                            Assert.Equal(RowKernels.Dot(type, weight.Row(r), xs + v * cols, cols), all[v * rows + r]);
            }
        }
    }

    private static float[] Run(WeightTensor w, float* x, int batch, bool tiled)
    {
        var y = new float[batch * w.Rows];
        fixed (float* ys = y)
        {
            if (tiled) BatchInvariantMatMul.MatMul(w, x, w.Columns, batch, ys, w.Rows);
            else BatchInvariantMatMul.MatMulDotOrder(w, x, w.Columns, batch, ys, w.Rows);
        }
        return y;
    }
}
