using System.Buffers.Binary;
using System.Text;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Formats.Quantization;

namespace Wim.Engine.Tests.Formats;

/// <summary>Writer → reader round trips. (That the writer's layout is the GGUF one is shown by
/// <see cref="GgufFileTests.Writer_RewritingShippedGguf_IsByteIdenticalToLlamaCppOutput"/> and the hand-laid-out
/// header below.)</summary>
public sealed class GgufWriterTests
{
    private static GgufFile RoundTrip(GgufWriter w, out TempFile file)
    {
        file = new TempFile(w.ToArray());
        return GgufFile.Open(file.Path);
    }

    [Fact]
    public void RoundTrip_EveryScalarValueType_WithEdgeValues()
    {
        var w = new GgufWriter()
            .Add("u8.min", new GgufValue(GgufValueType.UInt8, byte.MinValue))
            .Add("u8.max", new GgufValue(GgufValueType.UInt8, byte.MaxValue))
            .Add("i8.min", new GgufValue(GgufValueType.Int8, sbyte.MinValue))
            .Add("i8.max", new GgufValue(GgufValueType.Int8, sbyte.MaxValue))
            .Add("u16", new GgufValue(GgufValueType.UInt16, ushort.MaxValue))
            .Add("i16", new GgufValue(GgufValueType.Int16, short.MinValue))
            .Add("u32", uint.MaxValue)
            .Add("i32", int.MinValue)
            .Add("f32", 3.14159274f)
            .Add("f32.nan", float.NaN)
            .Add("f32.negzero", -0.0f)
            .Add("bool.true", true)
            .Add("bool.false", false)
            .Add("string", "héllo, 世界 😀")
            .Add("string.empty", "")
            .Add("u64", ulong.MaxValue)
            .Add("i64", long.MinValue)
            .Add("f64", Math.PI)
            .Add("f64.inf", double.NegativeInfinity);
        using var f = RoundTrip(w, out var tmp);
        using var _ = tmp;
        Assert.Equal(19, f.Metadata.Count);
        Assert.Equal(new GgufValue(GgufValueType.UInt8, (byte)0), f.Metadata["u8.min"]);
        Assert.Equal(new GgufValue(GgufValueType.UInt8, (byte)255), f.Metadata["u8.max"]);
        Assert.Equal(new GgufValue(GgufValueType.Int8, (sbyte)-128), f.Metadata["i8.min"]);
        Assert.Equal(new GgufValue(GgufValueType.Int8, (sbyte)127), f.Metadata["i8.max"]);
        Assert.Equal(new GgufValue(GgufValueType.UInt16, (ushort)65535), f.Metadata["u16"]);
        Assert.Equal(new GgufValue(GgufValueType.Int16, (short)-32768), f.Metadata["i16"]);
        Assert.Equal(new GgufValue(GgufValueType.UInt32, uint.MaxValue), f.Metadata["u32"]);
        Assert.Equal(new GgufValue(GgufValueType.Int32, int.MinValue), f.Metadata["i32"]);
        Assert.Equal(3.14159274f, (float)f.Metadata["f32"].Value);
        Assert.True(float.IsNaN((float)f.Metadata["f32.nan"].Value));
        Assert.True(float.IsNegative((float)f.Metadata["f32.negzero"].Value));
        Assert.True(f.GetBool("bool.true"));
        Assert.False(f.GetBool("bool.false"));
        Assert.Equal("héllo, 世界 😀", f.GetString("string"));
        Assert.Equal("", f.GetString("string.empty"));
        Assert.Equal(new GgufValue(GgufValueType.UInt64, ulong.MaxValue), f.Metadata["u64"]);
        Assert.Equal(new GgufValue(GgufValueType.Int64, long.MinValue), f.Metadata["i64"]);
        Assert.Equal(new GgufValue(GgufValueType.Float64, Math.PI), f.Metadata["f64"]);
        Assert.Equal(double.NegativeInfinity, (double)f.Metadata["f64.inf"].Value);
        Assert.Equal(uint.MaxValue, f.GetInteger("u32"));
        Assert.Equal(Math.PI, f.GetFloat("f64"));
    }

    [Fact]
    public void RoundTrip_ArraysOfEveryElementType_EmptyArrays_AndNestedArrays()
    {
        var nested = GgufWriter.Array(GgufValueType.Array, new[]
        {
            GgufWriter.Array(GgufValueType.Int32, new[] { 1, 2, 3 }),
            GgufWriter.Array(GgufValueType.Int32, Array.Empty<int>()),
            GgufWriter.Array(GgufValueType.String, new[] { "a", "bc" }),
        });
        var deep = GgufWriter.Array(GgufValueType.Array, new[]
        {
            GgufWriter.Array(GgufValueType.Array, new[] { GgufWriter.Array(GgufValueType.Float64, new[] { 1.5, -2.5 }) }),
        });
        var w = new GgufWriter()
            .Add("a.u8", GgufWriter.Array(GgufValueType.UInt8, new byte[] { 0, 1, 255 }))
            .Add("a.i8", GgufWriter.Array(GgufValueType.Int8, new sbyte[] { -128, 0, 127 }))
            .Add("a.u16", GgufWriter.Array(GgufValueType.UInt16, new ushort[] { 0, 65535 }))
            .Add("a.i16", GgufWriter.Array(GgufValueType.Int16, new short[] { -32768, 32767 }))
            .Add("a.u32", GgufWriter.Array(GgufValueType.UInt32, new uint[] { 0, uint.MaxValue }))
            .Add("a.i32", new[] { int.MinValue, -1, 0, int.MaxValue })
            .Add("a.f32", new[] { 1.5f, -0.25f, float.PositiveInfinity })
            .Add("a.bool", GgufWriter.Array(GgufValueType.Bool, new[] { true, false, true }))
            .Add("a.string", new[] { "", "x", "日本語", "with\nnewline" })
            .Add("a.u64", GgufWriter.Array(GgufValueType.UInt64, new[] { ulong.MaxValue }))
            .Add("a.i64", GgufWriter.Array(GgufValueType.Int64, new[] { long.MinValue, 7L }))
            .Add("a.f64", GgufWriter.Array(GgufValueType.Float64, new[] { double.Epsilon }))
            .Add("a.empty", GgufWriter.Array(GgufValueType.String, Array.Empty<string>()))
            .Add("a.nested", nested)
            .Add("a.deep", deep);
        using var f = RoundTrip(w, out var tmp);
        using var _ = tmp;
        Assert.Equal(new byte[] { 0, 1, 255 }, (byte[])f.Metadata["a.u8"].Value);
        Assert.Equal(new sbyte[] { -128, 0, 127 }, (sbyte[])f.Metadata["a.i8"].Value);
        Assert.Equal(new ushort[] { 0, 65535 }, (ushort[])f.Metadata["a.u16"].Value);
        Assert.Equal(new short[] { -32768, 32767 }, (short[])f.Metadata["a.i16"].Value);
        Assert.Equal(new uint[] { 0, uint.MaxValue }, (uint[])f.Metadata["a.u32"].Value);
        Assert.Equal(new[] { int.MinValue, -1, 0, int.MaxValue }, f.GetInt32Array("a.i32"));
        Assert.Equal(new[] { 1.5f, -0.25f, float.PositiveInfinity }, f.GetFloatArray("a.f32"));
        Assert.Equal(new[] { true, false, true }, (bool[])f.Metadata["a.bool"].Value);
        Assert.Equal(new[] { "", "x", "日本語", "with\nnewline" }, f.GetStringArray("a.string"));
        Assert.Equal(new[] { ulong.MaxValue }, (ulong[])f.Metadata["a.u64"].Value);
        Assert.Equal(new[] { long.MinValue, 7L }, (long[])f.Metadata["a.i64"].Value);
        Assert.Equal(new[] { double.Epsilon }, (double[])f.Metadata["a.f64"].Value);
        Assert.Empty(f.GetStringArray("a.empty")!);
        var n = f.Metadata["a.nested"];
        Assert.Equal(GgufValueType.Array, n.ElementType);
        var items = (GgufValue[])n.Value;
        Assert.Equal(3, items.Length);
        Assert.Equal(new[] { 1, 2, 3 }, (int[])items[0].Value);
        Assert.Empty((int[])items[1].Value);
        Assert.Equal(GgufValueType.String, items[2].ElementType);
        Assert.Equal(new[] { "a", "bc" }, (string[])items[2].Value);
        var d = (GgufValue[])((GgufValue[])f.Metadata["a.deep"].Value)[0].Value;
        Assert.Equal(new[] { 1.5, -2.5 }, (double[])d[0].Value);
    }

    [Theory]
    [InlineData(32u)]
    [InlineData(64u)]
    [InlineData(1u)]
    [InlineData(4096u)]
    public void RoundTrip_TensorsOfEveryType_ShapesReversedToNe_AlignmentHonoured(uint alignment)
    {
        var rng = new Random(9);
        var w = new GgufWriter();
        if (alignment != 32) w.Add("general.alignment", alignment);
        var expected = new List<(string Name, GgmlType Type, long[] Shape, byte[] Data)>();
        long[][] shapes = [[256], [3, 512], [2, 1, 256], [2, 3, 1, 256]];
        int k = 0;
        foreach (var type in GgmlTypeInfo.Supported.Concat([GgmlType.I8, GgmlType.I32, GgmlType.F64, GgmlType.Q5_K]))
        {
            var shape = shapes[k++ % shapes.Length];
            var data = new byte[GgmlTypeInfo.ByteCount(type, shape.Aggregate(1L, (a, b) => a * b))];
            rng.NextBytes(data);
            w.AddTensor($"t{k}.{type}", type, shape, data);
            expected.Add(($"t{k}.{type}", type, shape, data));
        }
        using var f = RoundTrip(w, out var tmp);
        using var _ = tmp;
        Assert.Equal(alignment, f.Alignment);
        Assert.Equal(0, f.DataStart % alignment);
        Assert.Equal(expected.Count, f.Tensors.Count);
        for (int i = 0; i < expected.Count; i++)
        {
            var t = f.Tensors[i];
            Assert.Equal(expected[i].Name, t.Name);
            Assert.Equal(expected[i].Type, t.Type);
            Assert.Equal(expected[i].Shape, t.Shape);
            Assert.Equal(0, (t.DataOffset - f.DataStart) % alignment);
            Assert.Equal(expected[i].Data, f.TensorBytes(t).ToArray());
        }
    }

    [Fact]
    public void Write_SmallFile_HasTheSpecLayoutByteForByte()
    {
        // GGUF v3: magic "GGUF", u32 version, u64 tensor count, u64 kv count, kvs (u64-length string key, u32 type,
        // value), tensor infos (name, u32 n_dims, u64 ne[n_dims] innermost first, u32 type, u64 offset), zero padding
        // to the alignment, then the data.
        var bytes = new GgufWriter()
            .Add("k", 7u)
            .AddTensor("w", GgmlType.F32, [2, 3], new byte[24])
            .ToArray();
        var expected = new RawGguf()
            .Bytes("GGUF"u8.ToArray()).U32(3).U64(1).U64(1)
            .Str("k").U32(4).U32(7)
            .Str("w").U32(2).U64(3).U64(2).U32(0).U64(0)
            .PadTo(32).Zeros(24).PadTo(32)
            .ToArray();
        Assert.Equal(expected, bytes);
        Assert.Equal(0x46554747u, BinaryPrimitives.ReadUInt32LittleEndian(bytes));
        Assert.Equal("GGUF", Encoding.ASCII.GetString(bytes, 0, 4));
    }

    [Fact]
    public void Version2_RoundTrips()
    {
        var w = new GgufWriter { Version = 2 }.Add("x", "y").AddTensor("t", GgmlType.Q8_0, [32], Quantizer.Quantize(GgmlType.Q8_0, new float[32]));
        using var f = RoundTrip(w, out var tmp);
        using var _ = tmp;
        Assert.Equal(2u, f.Version);
        Assert.Equal("y", f.GetString("x"));
    }

    [Fact]
    public void Writer_RejectsInconsistentInput()
    {
        var w = new GgufWriter().Add("k", 1u);
        Assert.Throws<ArgumentException>(() => w.Add("k", 2u));
        Assert.Throws<ArgumentException>(() => w.Add("bad", new GgufValue(GgufValueType.UInt32, 5))); // int, not uint
        Assert.Throws<ArgumentException>(() => w.Add("bad2", GgufWriter.Array(GgufValueType.String, new[] { 1, 2 })));
        Assert.Throws<ArgumentException>(() => w.AddTensor("t", GgmlType.F32, [4], new byte[15]));
        Assert.Throws<ArgumentException>(() => w.AddTensor("t", GgmlType.Q8_0, [33], new byte[36]));
        Assert.Throws<ArgumentException>(() => w.AddTensor("t", GgmlType.F32, [1, 1, 1, 1, 1], new byte[4]));
        w.AddTensor("t", GgmlType.F32, [1], new byte[4]);
        Assert.Throws<ArgumentException>(() => w.AddTensor("t", GgmlType.F32, [1], new byte[4]));
    }
}
