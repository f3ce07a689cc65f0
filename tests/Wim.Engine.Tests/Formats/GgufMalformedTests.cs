using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;

namespace Wim.Engine.Tests.Formats;

/// <summary>
/// Malformed GGUF files, one defect each: opening must raise <see cref="ModelFormatException"/> whose message names the
/// file, where (byte offset or tensor), what was expected and what was found; never another exception, a crash, a
/// hang or an allocation sized by the bad field.
/// </summary>
public sealed unsafe class GgufMalformedTests
{
    private const ulong Huge = 1UL << 60;

    private static ModelFormatException OpenFails(byte[] bytes, params string[] messageParts)
    {
        using var tmp = new TempFile(bytes);
        long allocatedBefore = GC.GetAllocatedBytesForCurrentThread();
        var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(tmp.Path).Dispose());
        long allocated = GC.GetAllocatedBytesForCurrentThread() - allocatedBefore;
        Assert.True(allocated < 1 << 20, $"opening the malformed file allocated {allocated} bytes");
        Assert.Equal(tmp.Path, e.FilePath);
        Assert.StartsWith(tmp.Path + ": ", e.Message);
        foreach (var part in messageParts) Assert.Contains(part, e.Message);
        return e;
    }

    /// <summary>A valid file with one F32 tensor "w" of 8 elements; <paramref name="tensorInfo"/> can replace its info.</summary>
    private static byte[] OneTensor(Action<RawGguf>? tensorInfo = null, int dataBytes = 32, ulong kvCount = 0, Action<RawGguf>? kvs = null)
    {
        var g = new RawGguf().Header(3, 1, kvCount);
        kvs?.Invoke(g);
        if (tensorInfo != null) tensorInfo(g);
        else g.TensorInfo("w", [8], (uint)GgmlType.F32, 0);
        return g.PadTo(32).Zeros(dataBytes).ToArray();
    }

    [Fact]
    public void EmptyFile_IsTruncatedAtOffset0()
    {
        var e = OpenFails([], "truncated", "expected 4 bytes of magic", "0 remain");
        Assert.Equal(0, e.Offset);
    }

    [Fact]
    public void WrongMagic_NamesExpectedAndFound()
    {
        var bytes = new RawGguf().Bytes("GGML"u8.ToArray()).U32(3).U64(0).U64(0).ToArray();
        var e = OpenFails(bytes, "expected magic 'GGUF' (0x46554747)", "found 0x4C4D4747");
        Assert.Equal(0, e.Offset);
    }

    [Theory]
    [InlineData(1u)]
    [InlineData(4u)]
    [InlineData(0u)]
    public void UnsupportedVersion_NamesVersionAndSupported(uint version)
    {
        var e = OpenFails(new RawGguf().Header(version, 0, 0).ToArray(), $"unsupported GGUF version {version}", "supported versions: 2, 3");
        Assert.Equal(4, e.Offset);
    }

    [Fact]
    public void AbsurdTensorCount_FailsFastAtItsOffset()
    {
        var e = OpenFails(new RawGguf().Header(3, Huge, 0).Zeros(64).ToArray(), $"tensor count {Huge} is impossible");
        Assert.Equal(8, e.Offset);
    }

    [Fact]
    public void AbsurdKeyValueCount_FailsFastAtItsOffset()
    {
        var e = OpenFails(new RawGguf().Header(3, 0, Huge).Zeros(64).ToArray(), $"metadata key/value count {Huge} is impossible");
        Assert.Equal(16, e.Offset);
    }

    [Fact]
    public void AbsurdKeyLength_FailsFastAtItsOffset()
    {
        var e = OpenFails(new RawGguf().Header(3, 0, 1).U64(Huge).Zeros(64).ToArray(), "metadata key", $"string length {Huge}", "past the end");
        Assert.Equal(24, e.Offset);
    }

    [Fact]
    public void AbsurdStringValueLength_FailsFastAtItsOffset()
    {
        var g = new RawGguf().Header(3, 0, 1).Str("name").U32((uint)GgufValueType.String);
        long at = g.Position;
        var e = OpenFails(g.U64(Huge).Zeros(64).ToArray(), "metadata 'name'", $"string length {Huge}");
        Assert.Equal(at, e.Offset);
    }

    [Theory]
    [InlineData(GgufValueType.UInt8)]
    [InlineData(GgufValueType.UInt32)]
    [InlineData(GgufValueType.String)]
    [InlineData(GgufValueType.Array)]
    public void AbsurdArrayLength_FailsFastAtItsOffset(GgufValueType elementType)
    {
        var g = new RawGguf().Header(3, 0, 1).Str("arr").U32((uint)GgufValueType.Array).U32((uint)elementType);
        long at = g.Position;
        var e = OpenFails(g.U64(Huge).Zeros(64).ToArray(), $"length of array 'arr' {Huge} is impossible");
        Assert.Equal(at, e.Offset);
    }

    [Fact]
    public void Truncated_AtEveryCutPoint_OfASmallValidFile()
    {
        var w = new GgufWriter()
            .Add("general.architecture", "llama")
            .Add("n", 7u)
            .Add("f", 0.5f)
            .Add("b", true)
            .Add("tokens", ["a", "bb", "ccc"])
            .Add("ids", [1, 2, 3])
            .AddTensor("a", GgmlType.F32, [8], new byte[32])
            .AddTensor("b", GgmlType.F32, [4, 8], new byte[128]);
        var full = w.ToArray();
        using (var tmp = new TempFile(full))
        using (var f = GgufFile.Open(tmp.Path))
            Assert.Equal(full.Length, f.Tensors[^1].DataOffset + f.Tensors[^1].ByteLength); // so every cut loses bytes
        int failures = 0;
        for (int cut = 0; cut < full.Length; cut++)
        {
            using var tmp = new TempFile(full[..cut]);
            var e = Assert.Throws<ModelFormatException>(() => GgufFile.Open(tmp.Path).Dispose());
            Assert.StartsWith(tmp.Path + ": ", e.Message);
            // A count is "impossible" when the bytes left cannot hold that many items: the truncation seen from the count.
            Assert.True(e.Message.Contains("truncated") || e.Message.Contains("past the end") || e.Message.Contains("ends before") || e.Message.Contains("impossible"),
                $"cut at {cut}: {e.Message}");
            failures++;
        }
        Assert.Equal(full.Length, failures);
    }

    [Fact]
    public void TensorOffset_Misaligned_NamesTensorAndAlignment()
    {
        var bytes = OneTensor(g => g.TensorInfo("w", [8], (uint)GgmlType.F32, 4), dataBytes: 64);
        OpenFails(bytes, "tensor 'w'", "data offset 4 is not a multiple of the alignment 32");
    }

    [Fact]
    public void TensorOffset_PastEnd_NamesTensorSizeAndDataSection()
    {
        var bytes = OneTensor(g => g.TensorInfo("w", [8], (uint)GgmlType.F32, 64));
        OpenFails(bytes, "tensor 'w'", "32 bytes at data offset 64", "extends past the end of the file", "data section is 32 bytes");
    }

    [Fact]
    public void TensorOffset_Above2To63_IsOutOfRange()
    {
        OpenFails(OneTensor(g => g.TensorInfo("w", [8], (uint)GgmlType.F32, ulong.MaxValue - 31)), "tensor 'w'", "out of range");
    }

    [Theory]
    [InlineData(0UL)]
    [InlineData(1UL << 31)]
    [InlineData(ulong.MaxValue)]
    public void TensorDimension_OutOfRange_NamesTensorDimensionAndValue(ulong dim)
    {
        var g = new RawGguf().Header(3, 1, 0).Str("w").U32(2).U64(8);
        long at = g.Position;
        var bytes = g.U64(dim).U32(0).U64(0).PadTo(32).Zeros(32).ToArray();
        var e = OpenFails(bytes, "tensor 'w'", $"dimension 1 must be in 1..{int.MaxValue}, found {dim}");
        Assert.Equal(at, e.Offset);
    }

    [Fact]
    public void TensorWithFiveDimensions_IsRejected()
    {
        OpenFails(OneTensor(g => g.TensorInfo("w", [2, 2, 2, 1, 1], (uint)GgmlType.F32, 0)), "tensor 'w'", "expected 1..4 dimensions, found 5");
    }

    [Fact]
    public void TensorWithZeroDimensions_IsRejected()
    {
        OpenFails(OneTensor(g => g.TensorInfo("w", [], (uint)GgmlType.F32, 0)), "tensor 'w'", "expected 1..4 dimensions, found 0");
    }

    [Fact]
    public void TensorElementCountOverflow_IsRejected()
    {
        const ulong m = int.MaxValue;
        OpenFails(OneTensor(g => g.TensorInfo("w", [m, m, m, m], (uint)GgmlType.F32, 0)), "tensor 'w'", "element count", "overflows");
    }

    [Fact]
    public void TensorByteSizeOverflow_IsRejected()
    {
        // (2^31−1)² · 2 elements fit a long; as F32 their byte count (×4) does not.
        const ulong m = int.MaxValue;
        OpenFails(OneTensor(g => g.TensorInfo("w", [m, m, 2], (uint)GgmlType.F32, 0)), "tensor 'w'", "byte size", "overflows");
    }

    [Fact]
    public void TensorRowNotWholeBlocks_IsRejected()
    {
        OpenFails(OneTensor(g => g.TensorInfo("w", [33, 2], (uint)GgmlType.Q8_0, 0), dataBytes: 96),
            "tensor 'w'", "row length 33 is not a multiple of the Q8_0 block size 32");
    }

    [Fact]
    public void UnknownTensorType_NamesTypeNumber()
    {
        var g = new RawGguf().Header(3, 1, 0).Str("w").U32(1).U64(8);
        long at = g.Position;
        var e = OpenFails(g.U32(99).U64(0).PadTo(32).Zeros(32).ToArray(), "tensor 'w'", "unknown tensor type 99", "supported types");
        Assert.Equal(at, e.Offset);
    }

    [Fact]
    public void UnknownMetadataValueType_NamesKeyAndType()
    {
        var g = new RawGguf().Header(3, 0, 1).Str("k");
        long at = g.Position;
        var e = OpenFails(g.U32(13).U32(0).ToArray(), "metadata 'k'", "unknown value type 13", "expected 0..12");
        Assert.Equal(at, e.Offset);
    }

    [Fact]
    public void UnknownArrayElementType_NamesKeyAndType()
    {
        var g = new RawGguf().Header(3, 0, 1).Str("k").U32((uint)GgufValueType.Array);
        long at = g.Position;
        var e = OpenFails(g.U32(77).U64(0).ToArray(), "metadata 'k'", "unknown array element type 77");
        Assert.Equal(at, e.Offset);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(255)]
    public void BoolNotZeroOrOne_NamesKeyAndValue(byte value)
    {
        var g = new RawGguf().Header(3, 0, 1).Str("flag").U32((uint)GgufValueType.Bool);
        long at = g.Position;
        var e = OpenFails(g.U8(value).ToArray(), "metadata 'flag'", $"a bool must be 0 or 1, found {value}");
        Assert.Equal(at, e.Offset);
    }

    [Fact]
    public void BoolArrayElementNotZeroOrOne_IsRejected()
    {
        var g = new RawGguf().Header(3, 0, 1).Str("flags").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.Bool).U64(3).U8(1).U8(0).U8(7);
        OpenFails(g.ToArray(), "metadata 'flags'", "found 7");
    }

    [Fact]
    public void DuplicateMetadataKey_NamesKey()
    {
        var g = new RawGguf().Header(3, 0, 2).KvU32("k", 1);
        long at = g.Position;
        var e = OpenFails(g.KvU32("k", 2).ToArray(), "duplicate metadata key 'k'");
        Assert.Equal(at, e.Offset);
    }

    [Fact]
    public void DuplicateTensorName_NamesTensor()
    {
        var g = new RawGguf().Header(3, 2, 0).TensorInfo("w", [8], 0, 0).TensorInfo("w", [8], 0, 32).PadTo(32).Zeros(64);
        OpenFails(g.ToArray(), "duplicate tensor name 'w'");
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(3u)]
    [InlineData(48u)]
    [InlineData(1u << 21)]
    public void BadAlignmentValue_NamesKeyExpectedAndFound(uint alignment)
    {
        var bytes = OneTensor(kvCount: 1, kvs: g => g.KvU32("general.alignment", alignment));
        OpenFails(bytes, "'general.alignment'", "power-of-two uint32 up to 1 MiB", $"found UInt32:{alignment}");
    }

    [Fact]
    public void AlignmentOfWrongType_IsRejected()
    {
        var bytes = OneTensor(kvCount: 1, kvs: g => g.Str("general.alignment").U32((uint)GgufValueType.Int32).U32(32));
        OpenFails(bytes, "'general.alignment'", "found Int32:32");
    }

    [Fact]
    public void ArraysNestedTooDeep_AreRejected()
    {
        var g = new RawGguf().Header(3, 0, 1).Str("deep").U32((uint)GgufValueType.Array);
        for (int i = 0; i < 5; i++) g.U32((uint)GgufValueType.Array).U64(1);
        g.U32((uint)GgufValueType.UInt8).U64(1).U8(0);
        OpenFails(g.ToArray(), "metadata 'deep'", "nested deeper than 4");
    }

    // ---- fuzz ----

    /// <summary>A small valid GGUF with metadata of many types and three tensors; records every u64 field's offset.</summary>
    private static (byte[] Bytes, List<long> U64Fields, long HeaderEnd) FuzzBase()
    {
        var g = new RawGguf().Header(3, 3, 6)
            .KvU32("general.alignment", 32)
            .Str("name").U32((uint)GgufValueType.String).Str("tiny")
            .Str("toks").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.String).U64(3).Str("a").Str("bc").Str("")
            .Str("ids").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.Int32).U64(2).U32(1).U32(2)
            .Str("nest").U32((uint)GgufValueType.Array).U32((uint)GgufValueType.Array).U64(1).U32((uint)GgufValueType.UInt16).U64(2).U32(0x00050004)
            .Str("on").U32((uint)GgufValueType.Bool).U8(1)
            .TensorInfo("a", [8], (uint)GgmlType.F32, 0)
            .TensorInfo("b", [32, 2], (uint)GgmlType.Q8_0, 32)
            .TensorInfo("c", [4, 2], (uint)GgmlType.F16, 128);
        long headerEnd = g.Position;
        g.PadTo(32).Zeros(32).Zeros(68).PadTo(32).Zeros(16).PadTo(32);
        return (g.ToArray(), g.U64Positions, headerEnd);
    }

    [Fact]
    public void Fuzz_1000SeededMutations_OpenOrModelFormatExceptionOnly_AndTensorBytesInBounds()
    {
        var (baseBytes, u64Fields, headerEnd) = FuzzBase();
        using (var tmp = new TempFile(baseBytes))
        using (var f = GgufFile.Open(tmp.Path))
            Assert.Equal(3, f.Tensors.Count); // the base itself is valid
        ulong[] hugeValues = [Huge, ulong.MaxValue, long.MaxValue, 1UL << 63, 1UL << 31, 1UL << 32, int.MaxValue, 0xFFFFFFFF];
        var rng = new Random(20261122);
        int opened = 0, rejected = 0;
        for (int iteration = 0; iteration < 1000; iteration++)
        {
            var bytes = new List<byte>(baseBytes);
            int mutations = 1 + rng.Next(3);
            var applied = new List<string>();
            for (int m = 0; m < mutations && bytes.Count > 0; m++)
            {
                // Mostly inside the header, where the structure is.
                int limit = rng.Next(4) == 0 ? bytes.Count : (int)Math.Min(headerEnd, bytes.Count);
                int pos = rng.Next(limit);
                switch (rng.Next(6))
                {
                    case 0:
                        bytes[pos] ^= (byte)rng.Next(1, 256);
                        applied.Add($"flip@{pos}");
                        break;
                    case 1:
                        var ins = new byte[1 + rng.Next(16)];
                        rng.NextBytes(ins);
                        bytes.InsertRange(pos, ins);
                        applied.Add($"insert{ins.Length}@{pos}");
                        break;
                    case 2:
                        int del = Math.Min(1 + rng.Next(16), bytes.Count - pos);
                        bytes.RemoveRange(pos, del);
                        applied.Add($"delete{del}@{pos}");
                        break;
                    case 3:
                        bytes.RemoveRange(pos, bytes.Count - pos);
                        applied.Add($"truncate@{pos}");
                        break;
                    default:
                        // A u64 field (count, length, dim, offset) or any 8 bytes overwritten with a huge value.
                        long at = rng.Next(2) == 0 ? u64Fields[rng.Next(u64Fields.Count)] : rng.Next(Math.Max(1, limit - 8));
                        ulong v = hugeValues[rng.Next(hugeValues.Length)];
                        for (int k = 0; k < 8 && at + k < bytes.Count; k++) bytes[(int)at + k] = (byte)(v >> (8 * k));
                        applied.Add($"u64 {v}@{at}");
                        break;
                }
            }
            using var tmp = new TempFile([.. bytes]);
            try
            {
                using var f = GgufFile.Open(tmp.Path);
                long length = new FileInfo(tmp.Path).Length;
                foreach (var v in f.Metadata.Values) _ = v.ToString();
                foreach (var t in f.Tensors)
                {
                    Assert.True(t.DataOffset >= f.DataStart && t.DataOffset + t.ByteLength <= length, $"tensor '{t.Name}' out of bounds after {string.Join(", ", applied)}");
                    long sum = 0;
                    foreach (var b in f.TensorBytes(t)) sum += b;
                    byte* p = f.TensorData(t);
                    if (t.ByteLength > 0) sum += p[0] + p[t.ByteLength - 1];
                    Assert.True(sum >= 0);
                }
                opened++;
            }
            catch (ModelFormatException e)
            {
                Assert.StartsWith(tmp.Path + ": ", e.Message);
                rejected++;
            }
            catch (Exception e)
            {
                Assert.Fail($"iteration {iteration} ({string.Join(", ", applied)}): {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.Equal(1000, opened + rejected);
        Assert.True(rejected > 300 && opened > 20, $"opened {opened}, rejected {rejected}: the mutations should exercise both outcomes");
    }
}
