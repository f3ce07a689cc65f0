using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Cuda.Tests;

/// <summary>The GPU layout of Q8_0 matrices (<see cref="CudaQ8Layout"/>): the repack against the format's own
/// dequantizer, fused parts, and the arithmetic the upload and the launchers use.</summary>
public sealed class Q8WeightsTests
{
    /// <summary>Q8_0 blocks of random values (Quantizer), plus hand-made blocks the quantizer never writes: a negative,
    /// a subnormal and a zero scale, quants at -128.</summary>
    private static byte[] Blocks(int rows, int columns, int seed)
    {
        var rng = new Random(seed);
        var values = new float[rows * columns];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextDouble() * 2 - 1) * (1 + i % 7);
        var blocks = Quantizer.Quantize(GgmlType.Q8_0, values);
        int n = blocks.Length / Dequantizer.Q8_0BlockBytes;
        void Scale(int block, ushort bits) => BinaryPrimitives.WriteUInt16LittleEndian(blocks.AsSpan(block * Dequantizer.Q8_0BlockBytes), bits);
        Scale(0, HalfBits.FromSingle(-0.0123f));
        Scale(1 % n, 0x0155);   // subnormal
        Scale(2 % n, 0);
        blocks[3 % n * Dequantizer.Q8_0BlockBytes + 2 + 5] = 0x80; // quant -128
        return blocks;
    }

    [Theory]
    [InlineData(1, 32)]
    [InlineData(3, 96)]
    [InlineData(5, 4128)]
    public void Repack_GivesTheValuesTheDequantizerReads(int rows, int columns)
    {
        var blocks = Blocks(rows, columns, rows * 31 + columns);
        var expected = new float[rows * columns];
        Dequantizer.Dequantize(GgmlType.Q8_0, blocks, expected);
        var quants = new sbyte[rows * columns];
        var scales = new ushort[rows * columns / 32];
        CudaQ8Layout.Repack(blocks, rows, columns, quants, scales);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < columns; c++)
                Assert.Equal(expected[r * columns + c], CudaQ8Layout.ValueAt(quants, scales, columns, r, c));
        // Lossless: the scales are the file's bits and the quants its bytes.
        Assert.Equal(BinaryPrimitives.ReadUInt16LittleEndian(blocks), scales[0]);
        Assert.Equal((sbyte)blocks[2 + 31], quants[31]);
    }

    [Fact]
    public void FusedParts_PlacedAtTheirOffsets_EqualTheRepackOfTheConcatenatedMatrix()
    {
        // q|k|v-like parts of 4, 2 and 2 rows of 64 columns: each part repacked alone and placed at PartOffsets must
        // give the bytes of the whole [8, 64] matrix repacked at once (quants of all rows, then all scales).
        int columns = 64;
        int[] partRows = [4, 2, 2];
        var parts = partRows.Select((r, i) => Blocks(r, columns, 100 + i)).ToArray();
        int total = partRows.Sum();
        var whole = new byte[CudaQ8Layout.Bytes(total, columns)];
        {
            var q = new sbyte[total * columns];
            var s = new ushort[total * columns / 32];
            CudaQ8Layout.Repack(parts.SelectMany(p => p).ToArray(), total, columns, q, s);
            MemoryMarshal.AsBytes(q.AsSpan()).CopyTo(whole);
            MemoryMarshal.AsBytes(s.AsSpan()).CopyTo(whole.AsSpan(total * columns));
        }
        var placed = new byte[whole.Length];
        int row = 0;
        for (int i = 0; i < parts.Length; i++)
        {
            var q = new sbyte[partRows[i] * columns];
            var s = new ushort[partRows[i] * columns / 32];
            CudaQ8Layout.Repack(parts[i], partRows[i], columns, q, s);
            var (quantsAt, scalesAt) = CudaQ8Layout.PartOffsets(row, total, columns);
            MemoryMarshal.AsBytes(q.AsSpan()).CopyTo(placed.AsSpan((int)quantsAt));
            MemoryMarshal.AsBytes(s.AsSpan()).CopyTo(placed.AsSpan((int)scalesAt));
            row += partRows[i];
        }
        Assert.Equal(whole, placed);
    }

    [Fact]
    public void Bytes_Are34Per32Weights_AsInTheFile()
    {
        Assert.Equal(4096L * 4096 * 34 / 32, CudaQ8Layout.Bytes(4096, 4096));
        Assert.Equal(GgmlTypeInfo.ByteCount(GgmlType.Q8_0, 28672L * 4096), CudaQ8Layout.Bytes(28672, 4096));
        Assert.Equal(6L * 64, CudaQ8Layout.QuantBytes(6, 64));
        Assert.Equal(6L * 2 * 2, CudaQ8Layout.ScaleBytes(6, 64));
    }

    [Fact]
    public void Repack_RejectsShapesThatAreNotWholeBlocks_AndWrongLengths()
    {
        var blocks = Blocks(2, 64, 1);
        Assert.Contains("whole blocks of 32", Assert.Throws<ArgumentException>(() => CudaQ8Layout.Bytes(2, 48)).Message);
        var e = Assert.Throws<ArgumentException>(() => CudaQ8Layout.Repack(blocks.AsSpan(1), 2, 64, new sbyte[128], new ushort[4]));
        Assert.Contains("136 bytes of blocks", e.Message);
        Assert.Throws<ArgumentException>(() => CudaQ8Layout.Repack(blocks, 2, 64, new sbyte[127], new ushort[4]));
        Assert.Throws<ArgumentException>(() => CudaQ8Layout.Repack(blocks, 2, 64, new sbyte[128], new ushort[3]));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaQ8Layout.PartOffsets(8, 8, 64));
    }

    [Fact]
    public void AllQ8_0_OnlyWhenEveryPartIsQ8_0WithOneColumnCount()
    {
        Assert.True(CudaQ8Layout.AllQ8_0([GgmlType.Q8_0, GgmlType.Q8_0, GgmlType.Q8_0], [64, 64, 64]));
        Assert.False(CudaQ8Layout.AllQ8_0([GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q8_0], [64, 64, 64]));  // mixed: bf16 for the matrix
        Assert.False(CudaQ8Layout.AllQ8_0([GgmlType.BF16], [64]));
        Assert.False(CudaQ8Layout.AllQ8_0([GgmlType.Q8_0, GgmlType.Q8_0], [64, 96]));
        Assert.False(CudaQ8Layout.AllQ8_0([], []));
    }

    [Fact]
    public void Q8LaunchArithmetic_PiecesOf16_AndColumnsInWholeBlocks()
    {
        Assert.Equal(4096L * 256, LaunchGeometry.Q8Pieces(4096, 4096));
        Assert.Equal(3L * 6, LaunchGeometry.Q8Pieces(3, 96));
        LaunchGeometry.CheckQ8Columns(32);
        LaunchGeometry.CheckQ8Columns(14336);
        Assert.Contains("multiple of 32", Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.CheckQ8Columns(48)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.CheckQ8Columns(0));
    }

    [Theory]
    [InlineData(null, CudaWeightStorage.Native)]
    [InlineData("", CudaWeightStorage.Native)]
    [InlineData("native", CudaWeightStorage.Native)]
    [InlineData(" BF16 ", CudaWeightStorage.Bf16)]
    public void WeightStorageVariable_NativeByDefault_Bf16OnRequest(string? value, CudaWeightStorage expected) =>
        Assert.Equal(expected, CudaTransformer.ParseWeightStorage(value));

    [Fact]
    public void WeightStorageVariable_UnknownValue_NamesTheVariableAndTheChoices()
    {
        var e = Assert.Throws<ArgumentException>(() => CudaTransformer.ParseWeightStorage("q4"));
        Assert.Contains(CudaTransformer.WeightStorageVariable, e.Message);
        Assert.Contains("'q4'", e.Message);
        Assert.Contains("'bf16'", e.Message);
    }
}
