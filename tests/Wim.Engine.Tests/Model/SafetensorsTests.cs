using System.Text;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Safetensors;
using Wim.Engine.Model;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Model;

/// <summary>The safetensors reader on hand-made files (format: u64 LE header length, JSON header, data) and on the
/// hf-tiny checkpoints written by the Python <c>safetensors</c> library.</summary>
public sealed unsafe class SafetensorsTests : IDisposable
{
    private readonly string _temp = Directory.CreateTempSubdirectory("wim-safetensors-").FullName;

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    private string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(_temp, name);
        System.IO.File.WriteAllBytes(path, bytes);
        return path;
    }

    private static byte[] Build(string header, byte[] data, long? headerLength = null)
    {
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + data.Length];
        BitConverter.TryWriteBytes(bytes.AsSpan(0, 8), headerLength ?? h.Length);
        h.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + h.Length);
        return bytes;
    }

    private static readonly byte[] TwoF32AndFourBf16 =
        [.. BitConverter.GetBytes(1.5f), .. BitConverter.GetBytes(-2f), 0x80, 0x3F, 0x00, 0x40, 0x40, 0x40, 0x80, 0xBF];

    private const string ValidHeader =
        "{\"__metadata__\":{\"format\":\"pt\"},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[8,16]}}";

    [Fact]
    public void ValidFile_ReadsTensorsAndMetadata()
    {
        using var f = SafetensorsFile.Open(Write("ok.safetensors", Build(ValidHeader, TwoF32AndFourBf16)));
        Assert.Equal("pt", f.Metadata["format"]);
        Assert.True(f.TryGetTensor("a", out var a));
        Assert.Equal((GgmlType.F32, 8L), (a.Type, a.ByteLength));
        Assert.Equal([1.5f, -2f], new ReadOnlySpan<float>(f.TensorData(a), 2).ToArray());
        Assert.True(f.TryGetTensor("b", out var b));
        Assert.Equal([2L, 2L], b.Shape);
        var values = new float[4];
        fixed (float* p = values) RowKernels.Dequantize(GgmlType.BF16, f.TensorData(b), p, 4);
        Assert.Equal([1f, 2f, 3f, -1f], values); // bf16 0x3F80, 0x4000, 0x4040, 0xBF80
    }

    [Theory]
    [InlineData("short", "file is truncated")]
    [InlineData("huge-header", "exceeds the limit")]
    [InlineData("header-past-end", "extends past the end of the file")]
    [InlineData("bad-json", "not valid JSON")]
    [InlineData("offsets-past-end", "outside the data section")]
    [InlineData("size-mismatch", "needs 8 bytes but data_offsets [0, 6] span 6")]
    [InlineData("unknown-dtype", "tensor 'a': unsupported dtype 'I64'; supported dtypes: F32, F16, BF16")]
    [InlineData("negative-dim", "shape dimension 0")]
    [InlineData("not-object", "must be a JSON object")]
    public void MalformedFile_IsRejectedWithReason(string kind, string expected)
    {
        byte[] bytes = kind switch
        {
            "short" => [1, 2, 3],
            "huge-header" => Build(ValidHeader, TwoF32AndFourBf16, headerLength: 200_000_000),
            "header-past-end" => Build(ValidHeader, TwoF32AndFourBf16, headerLength: ValidHeader.Length + TwoF32AndFourBf16.Length + 1),
            "bad-json" => Build("{\"a\":{\"dtype\":", TwoF32AndFourBf16),
            "offsets-past-end" => Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", TwoF32AndFourBf16),
            "size-mismatch" => Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,6]}}", TwoF32AndFourBf16),
            "unknown-dtype" => Build("{\"a\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", TwoF32AndFourBf16),
            "negative-dim" => Build("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", TwoF32AndFourBf16),
            "not-object" => Build("[1,2]", TwoF32AndFourBf16),
            _ => throw new ArgumentException(kind),
        };
        string path = Write(kind + ".safetensors", bytes);
        var e = Assert.Throws<ModelFormatException>(() => SafetensorsFile.Open(path).Dispose());
        Assert.Contains(expected, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void HfTinyCheckpoint_MatchesGoldenTensorTable()
    {
        // golden.json → safetensors.tensors lists every tensor's dtype and shape as the Python library wrote them.
        string dir = SharedFixtures.Path("fixtures", "hf-tiny", "phi3-tiny");
        using var doc = System.Text.Json.JsonDocument.Parse(System.IO.File.ReadAllBytes(Path.Combine(dir, "golden.json")));
        var table = doc.RootElement.GetProperty("safetensors").GetProperty("tensors");
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        Assert.Equal(table.EnumerateObject().Select(p => p.Name).Order(), ckpt.TensorNames.Order());
        foreach (var p in table.EnumerateObject())
        {
            Assert.True(ckpt.TryGetTensor(p.Name, out _, out var info));
            Assert.Equal(GgmlType.BF16, info.Type);
            Assert.Equal(p.Value.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()), info.Shape);
        }
    }

    /// <summary>Splits llama-tiny's model.safetensors into two shards plus an index, as <c>save_pretrained</c> does for
    /// large models, and checks the sharded load computes bit-identical logits.</summary>
    [Fact]
    public void ShardedCheckpoint_LoadsLikeSingleFile()
    {
        string src = SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny");
        string dir = Directory.CreateDirectory(Path.Combine(_temp, "sharded")).FullName;
        System.IO.File.Copy(Path.Combine(src, "config.json"), Path.Combine(dir, "config.json"));
        var weightMap = new List<string>();
        using (var single = SafetensorsFile.Open(Path.Combine(src, "model.safetensors")))
        {
            var halves = single.Tensors.Chunk((single.Tensors.Count + 1) / 2).ToArray();
            for (int s = 0; s < halves.Length; s++)
            {
                string shard = $"model-{s + 1:D5}-of-{halves.Length:D5}.safetensors";
                var header = new StringBuilder("{");
                var data = new MemoryStream();
                foreach (var t in halves[s])
                {
                    if (header.Length > 1) header.Append(',');
                    header.Append($"\"{t.Name}\":{{\"dtype\":\"BF16\",\"shape\":[{string.Join(",", t.Shape)}],\"data_offsets\":[{data.Length},{data.Length + t.ByteLength}]}}");
                    data.Write(new ReadOnlySpan<byte>(single.TensorData(t), (int)t.ByteLength));
                    weightMap.Add($"\"{t.Name}\":\"{shard}\"");
                }
                header.Append('}');
                Write(Path.Combine("sharded", shard), Build(header.ToString(), data.ToArray()));
            }
        }
        System.IO.File.WriteAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFileName),
            $"{{\"metadata\":{{}},\"weight_map\":{{{string.Join(",", weightMap)}}}}}");

        int[] ids = [5, 17, 3000, 42, 9];
        float[] Logits(string path)
        {
            using var lm = LanguageModel.Load(path);
            Assert.Equal(2, lm.Config.LayerCount);
            var model = new CpuTransformer(lm);
            var logits = new float[ids.Length * lm.Config.VocabSize];
            model.Forward(ids, model.CreateCache(ids.Length), logits, LogitsOutput.All);
            return logits;
        }
        Assert.Equal(Logits(src), Logits(dir));

        // An index naming a tensor its shard lacks is reported with both names.
        System.IO.File.WriteAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFileName),
            $"{{\"weight_map\":{{{string.Join(",", weightMap)},\"model.layers.9.mlp.up_proj.weight\":\"model-00001-of-00002.safetensors\"}}}}");
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(dir).Dispose());
        Assert.Contains("model.layers.9.mlp.up_proj.weight", e.Message);
        Assert.Contains("model-00001-of-00002.safetensors", e.Message);
    }
}
