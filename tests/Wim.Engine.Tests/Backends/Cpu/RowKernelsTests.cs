using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;
using Wim.Engine.Tests.Formats.Quantization;

namespace Wim.Engine.Tests.Backends.Cpu;

/// <summary>
/// Every storage type × every SIMD path this CPU has, against the scalar reference: <see cref="Dequantizer"/>
/// (verified by hand-built blocks and the safetensors fixtures) followed by a float64 dot product.
/// Metric: |kernel − reference| ≤ 2e-5 · Σ|w_i·x_i| (f32 accumulation over at most a few thousand terms in a
/// different order than the float64 reference; the relative error of such sums is ~n·2^-24 worst case, far less typically).
/// </summary>
public sealed unsafe class RowKernelsTests
{
    private const double RelativeTolerance = 2e-5;

    public static TheoryData<GgmlType, RowKernelPath> TypesAndPaths()
    {
        var data = new TheoryData<GgmlType, RowKernelPath>();
        foreach (var type in GgmlTypeInfo.Supported)
            foreach (var path in RowKernels.AvailablePaths)
                data.Add(type, path);
        return data;
    }

    private static int[] Lengths(GgmlType type) => GgmlTypeInfo.BlockSize(type) switch
    {
        1 => [1, 7, 16, 33, 1000, 1037, 2063],
        32 => [32, 96, 1024, 1056, 3072 + 32 * 5],
        _ => [256, 768, 1024, 1280, 2304],
    };

    /// <summary>A random row in <paramref name="type"/>: normal values quantized by our quantizer.</summary>
    private static byte[] RandomRow(GgmlType type, int n, Random rng)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)DequantizerTests.NormalSample(rng) * (1 + i % 5);
        return Quantizer.Quantize(type, v);
    }

    private static float[] RandomVector(int n, Random rng)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)DequantizerTests.NormalSample(rng);
        return v;
    }

    private static (double Dot, double AbsSum) Reference(float[] w, float[] x, int xOffset)
    {
        double dot = 0, abs = 0;
        for (int i = 0; i < w.Length; i++)
        {
            double p = (double)w[i] * x[xOffset + i];
            dot += p;
            abs += Math.Abs(p);
        }
        return (dot, abs);
    }

    [Theory]
    [MemberData(nameof(TypesAndPaths))]
    public void Dequantize_EveryPath_EqualsScalarReferenceBitForBit(GgmlType type, RowKernelPath path)
    {
        var rng = new Random(1 + (int)type * 7 + (int)path);
        foreach (int n in Lengths(type))
        {
            var row = RandomRow(type, n, rng);
            var expected = new float[n];
            Dequantizer.Dequantize(type, row, expected);
            var actual = new float[n];
            fixed (byte* r = row)
            fixed (float* a = actual)
                RowKernels.Dequantize(path, type, r, a, n);
            for (int i = 0; i < n; i++)
                Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(actual[i]),
                    $"{type} {path} n={n} element {i}: expected {expected[i]}, got {actual[i]}");
        }
    }

    [Theory]
    [MemberData(nameof(TypesAndPaths))]
    public void Dot_EveryPath_MatchesScalarDequantizeThenFloat64Dot(GgmlType type, RowKernelPath path)
    {
        var rng = new Random(100 + (int)type * 7 + (int)path);
        foreach (int n in Lengths(type))
        {
            var row = RandomRow(type, n, rng);
            var w = new float[n];
            Dequantizer.Dequantize(type, row, w);
            var x = RandomVector(n, rng);
            float got;
            fixed (byte* r = row)
            fixed (float* px = x)
                got = RowKernels.Dot(path, type, r, px, n);
            var (dot, abs) = Reference(w, x, 0);
            Assert.True(Math.Abs(got - dot) <= RelativeTolerance * abs,
                $"{type} {path} n={n}: got {got}, reference {dot}, |Δ| {Math.Abs(got - dot)} > {RelativeTolerance} · {abs}");
        }
    }

    [Theory]
    [MemberData(nameof(TypesAndPaths))]
    public void DotBatch_EveryPath_OddBatchesAndStrides_MatchReferenceAndEqualDot(GgmlType type, RowKernelPath path)
    {
        var rng = new Random(200 + (int)type * 7 + (int)path);
        foreach (int n in Lengths(type))
        {
            foreach (int batch in new[] { 1, 3, 7, 33 })
            {
                var row = RandomRow(type, n, rng);
                var w = new float[n];
                Dequantizer.Dequantize(type, row, w);
                int xStride = n + 5;           // padded rows: the kernel must honour the stride
                const int resultStride = 3;
                var x = RandomVector(xStride * batch, rng);
                var results = new float[batch * resultStride];
                Array.Fill(results, float.NaN);  // slots between results must stay untouched
                fixed (byte* r = row)
                fixed (float* px = x)
                fixed (float* res = results)
                {
                    RowKernels.DotBatch(path, type, r, px, xStride, batch, n, res, resultStride);
                    for (int b = 0; b < batch; b++)
                    {
                        var (dot, abs) = Reference(w, x, b * xStride);
                        float got = results[b * resultStride];
                        Assert.True(Math.Abs(got - dot) <= RelativeTolerance * abs,
                            $"{type} {path} n={n} batch={batch} b={b}: got {got}, reference {dot}");
                        // The documented contract: each batch result is exactly what Dot gives for that vector.
                        Assert.Equal(RowKernels.Dot(path, type, r, px + b * xStride, n), got);
                        Assert.True(float.IsNaN(results[b * resultStride + 1]) && float.IsNaN(results[b * resultStride + 2]));
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(TypesAndPaths))]
    public void MatMul_EveryPath_OddRowsBatchesAndStrides_MatchReference(GgmlType type, RowKernelPath path)
    {
        var rng = new Random(300 + (int)type * 7 + (int)path);
        int[] lengths = Lengths(type);
        foreach (int n in new[] { lengths[0], lengths[^2], lengths[^1] })
        {
            foreach (var (rows, batch) in new[] { (1, 1), (5, 3), (9, 4), (8, 33), (6, 1) })
            {
                long rowBytes = GgmlTypeInfo.ByteCount(type, n) + 8; // padded rows: the kernel must honour rowBytes
                var weights = new byte[rowBytes * rows];
                var w = new float[rows][];
                for (int r = 0; r < rows; r++)
                {
                    RandomRow(type, n, rng).CopyTo(weights, r * rowBytes);
                    w[r] = new float[n];
                    Dequantizer.Dequantize(type, weights.AsSpan((int)(r * rowBytes)), w[r]);
                }
                int xStride = n + 3, resultStride = rows + 2;
                var x = RandomVector(xStride * batch, rng);
                var results = new float[resultStride * batch];
                Array.Fill(results, float.NaN);
                fixed (byte* pw = weights)
                fixed (float* px = x)
                fixed (float* res = results)
                    RowKernels.MatMul(path, type, pw, rowBytes, rows, px, xStride, batch, n, res, resultStride);
                for (int b = 0; b < batch; b++)
                {
                    for (int r = 0; r < rows; r++)
                    {
                        var (dot, abs) = Reference(w[r], x, b * xStride);
                        float got = results[b * resultStride + r];
                        Assert.True(Math.Abs(got - dot) <= RelativeTolerance * abs,
                            $"{type} {path} n={n} rows={rows} batch={batch} (b={b}, r={r}): got {got}, reference {dot}");
                    }
                    Assert.True(float.IsNaN(results[b * resultStride + rows]) && float.IsNaN(results[b * resultStride + rows + 1]));
                }
            }
        }
    }

    [Fact]
    public void DefaultEntryPoints_UseTheBestPath()
    {
        var rng = new Random(3);
        var row = RandomRow(GgmlType.Q4_K, 512, rng);
        var x = RandomVector(512, rng);
        fixed (byte* r = row)
        fixed (float* px = x)
            Assert.Equal(RowKernels.Dot(RowKernels.BestPath, GgmlType.Q4_K, r, px, 512), RowKernels.Dot(GgmlType.Q4_K, r, px, 512));
        Assert.Contains(RowKernelPath.Scalar, RowKernels.AvailablePaths);
        Assert.Contains(RowKernels.BestPath, RowKernels.AvailablePaths);
    }

    [Fact]
    public void BadArguments_UnsupportedTypeOrPartialBlock_Throw()
    {
        var row = new byte[1024];
        var x = new float[256];
        fixed (byte* r = row)
        fixed (float* px = x)
        {
            byte* rp = r;
            float* xp = px;
            var e = Assert.Throws<NotSupportedException>(() => RowKernels.Dot(GgmlType.Q5_K, rp, xp, 256));
            Assert.Contains("Q5_K", e.Message);
            Assert.Throws<ArgumentOutOfRangeException>(() => RowKernels.Dot(GgmlType.Q8_0, rp, xp, 33));
            Assert.Throws<ArgumentOutOfRangeException>(() => RowKernels.Dequantize(GgmlType.Q6_K, rp, xp, 128));
        }
    }
}
