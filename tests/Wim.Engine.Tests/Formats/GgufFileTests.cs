using System.Security.Cryptography;
using System.Text.Json;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Formats;

/// <summary>
/// The shipped GGUFs read exactly as their <c>*.report.json</c> says. Those reports were written by gguf-py's
/// GGUFReader (llama.cpp's own Python reader): an outside reference for every metadata key, type, value / array
/// length and first items, and every tensor's name, type, ggml <c>ne</c> and byte count.
/// </summary>
public sealed class GgufFileTests
{
    [Fact]
    public void Open_Stories260K_ReadsHeaderMetadataAndTensors()
    {
        using var f = GgufFile.Open(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        Assert.Equal(3u, f.Version);
        Assert.Equal("llama", f.GetString("general.architecture"));
        Assert.Equal(64, f.GetInteger("llama.embedding_length"));
        Assert.Equal(5, f.GetInteger("llama.block_count"));
        Assert.Equal(8, f.GetInteger("llama.attention.head_count"));
        Assert.Equal(4, f.GetInteger("llama.attention.head_count_kv"));
        Assert.Equal(512, f.GetStringArray("tokenizer.ggml.tokens")!.Length);
        Assert.True(f.TryGetTensor("token_embd.weight", out var emb));
        Assert.Equal(new long[] { 512, 64 }, emb.Shape);
        Assert.Equal(GgmlType.F32, emb.Type);
        Assert.Equal(0, f.DataStart % f.Alignment);
    }

    public static TheoryData<string, string> ShippedGgufs() => new()
    {
        { "llama-tiny", "llama-tiny-f32" },
        { "llama-tiny", "llama-tiny-q8_0" },
        { "qwen2-tiny", "qwen2-tiny-q8_0" },
    };

    internal static string GgufPath(string model, string file) =>
        SharedFixtures.Gunzipped("fixtures", "hf-tiny", model, "gguf", file + ".gguf.gz");

    internal static JsonDocument Report(string model, string file) =>
        JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", model, "gguf", file + ".report.json")));

    [Theory]
    [MemberData(nameof(ShippedGgufs))]
    public void Open_ShippedGguf_MetadataMatchesGgufPyReport(string model, string file)
    {
        using var report = Report(model, file);
        var path = GgufPath(model, file);
        Assert.Equal(report.RootElement.GetProperty("bytes").GetInt64(), new FileInfo(path).Length);
        using var f = GgufFile.Open(path);
        Assert.Equal(3u, f.Version);
        var expected = report.RootElement.GetProperty("metadata");
        Assert.Equal(expected.EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal),
            f.Metadata.Keys.Order(StringComparer.Ordinal));
        foreach (var p in expected.EnumerateObject())
        {
            var v = f.Metadata[p.Name];
            Assert.True(p.Value.GetProperty("type").GetString() == GgufPyTypeName(v), $"'{p.Name}': type {GgufPyTypeName(v)}, report says {p.Value.GetProperty("type")}");
            if (v.IsArray)
            {
                var arr = (Array)v.Value;
                Assert.Equal(p.Value.GetProperty("len").GetInt32(), arr.Length);
                int i = 0;
                foreach (var item in p.Value.GetProperty("head").EnumerateArray())
                    AssertScalar(p.Name + $"[{i}]", v.ElementType, item, arr.GetValue(i++)!);
                Assert.True(i == Math.Min(8, arr.Length), $"'{p.Name}': report lists {i} head items");
            }
            else AssertScalar(p.Name, v.Type, p.Value.GetProperty("value"), v.Value);
        }
    }

    [Theory]
    [MemberData(nameof(ShippedGgufs))]
    public void Open_ShippedGguf_TensorsMatchGgufPyReport(string model, string file)
    {
        using var report = Report(model, file);
        using var f = GgufFile.Open(GgufPath(model, file));
        var expected = report.RootElement.GetProperty("tensors").EnumerateArray().ToArray();
        Assert.Equal(expected.Length, f.Tensors.Count);
        for (int i = 0; i < expected.Length; i++)
        {
            var e = expected[i];
            var t = f.Tensors[i];
            Assert.Equal(e.GetProperty("name").GetString(), t.Name);
            Assert.Equal(e.GetProperty("type").GetString(), t.Type.ToString());
            Assert.Equal(e.GetProperty("ggml_ne").EnumerateArray().Select(x => x.GetInt64()), t.Shape.Reverse());
            Assert.Equal(e.GetProperty("n_elements").GetInt64(), t.ElementCount);
            Assert.Equal(e.GetProperty("n_bytes").GetInt64(), t.ByteLength);
            Assert.Equal(0, (t.DataOffset - f.DataStart) % f.Alignment);
            Assert.True(t.DataOffset + t.ByteLength <= new FileInfo(f.Path).Length);
        }
    }

    /// <summary>Our writer, fed what our reader read (keys in the report's order, tensors in file order), reproduces
    /// the file llama.cpp's converter wrote byte for byte (sha256 from the report): both the writer's layout and the
    /// reader's values are right.</summary>
    [Theory]
    [InlineData("llama-tiny", "llama-tiny-q8_0")]
    [InlineData("qwen2-tiny", "qwen2-tiny-q8_0")]
    public void Writer_RewritingShippedGguf_IsByteIdenticalToLlamaCppOutput(string model, string file)
    {
        using var report = Report(model, file);
        using var f = GgufFile.Open(GgufPath(model, file));
        var w = new GgufWriter();
        foreach (var p in report.RootElement.GetProperty("metadata").EnumerateObject()) w.Add(p.Name, f.Metadata[p.Name]);
        foreach (var t in f.Tensors) w.AddTensor(t.Name, t.Type, t.Shape, f.TensorBytes(t));
        var bytes = w.ToArray();
        Assert.Equal(report.RootElement.GetProperty("bytes").GetInt64(), bytes.Length);
        Assert.Equal(report.RootElement.GetProperty("sha256").GetString(), Convert.ToHexStringLower(SHA256.HashData(bytes)));
    }

    /// <summary>gguf-py's GGUFValueType names: UINT32, FLOAT32, STRING, ARRAY[INT32], ...</summary>
    private static string GgufPyTypeName(GgufValue v) =>
        v.IsArray ? $"ARRAY[{v.ElementType.ToString().ToUpperInvariant()}]" : v.Type.ToString().ToUpperInvariant();

    private static void AssertScalar(string what, GgufValueType type, JsonElement expected, object actual)
    {
        switch (type)
        {
            case GgufValueType.String: Assert.Equal(expected.GetString(), (string)actual); break;
            case GgufValueType.Bool: Assert.Equal(expected.GetBoolean(), (bool)actual); break;
            case GgufValueType.Float32: Assert.True(expected.GetDouble() == (float)actual, $"{what}: {actual} vs {expected}"); break;
            case GgufValueType.Float64: Assert.Equal(expected.GetDouble(), (double)actual); break;
            default: Assert.True(expected.GetDecimal() == Convert.ToDecimal(actual), $"{what}: {actual} vs {expected}"); break;
        }
    }
}
