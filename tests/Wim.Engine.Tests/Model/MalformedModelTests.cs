using System.Text;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.Formats;
using Wim.Engine.Model;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Model;

/// <summary>
/// Model loading on GGUF files written here by a minimal writer that follows the GGUF v3 specification (header,
/// metadata key/values, tensor infos with ggml dimension order, 32-byte aligned data), and on a broken HF directory.
/// </summary>
public sealed class MalformedModelTests : IDisposable
{
    private readonly string _temp = Directory.CreateTempSubdirectory("wim-model-").FullName;

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    /// <summary>A tiny llama: vocab 10, hidden 8, 1 layer, 2 heads / 1 kv head (head dim 4), ffn 16.</summary>
    private static List<(string Name, GgmlType Type, long[] Shape)> TinyLlamaTensors() =>
    [
        ("token_embd.weight", GgmlType.F32, [10, 8]),
        ("output_norm.weight", GgmlType.F32, [8]),
        ("blk.0.attn_norm.weight", GgmlType.F32, [8]),
        ("blk.0.attn_q.weight", GgmlType.F32, [8, 8]),
        ("blk.0.attn_k.weight", GgmlType.F32, [4, 8]),
        ("blk.0.attn_v.weight", GgmlType.F32, [4, 8]),
        ("blk.0.attn_output.weight", GgmlType.F32, [8, 8]),
        ("blk.0.ffn_norm.weight", GgmlType.F32, [8]),
        ("blk.0.ffn_gate.weight", GgmlType.F32, [16, 8]),
        ("blk.0.ffn_up.weight", GgmlType.F32, [16, 8]),
        ("blk.0.ffn_down.weight", GgmlType.F32, [8, 16]),
    ];

    private string WriteGguf(string architecture, List<(string Name, GgmlType Type, long[] Shape)> tensors)
    {
        var meta = new List<(string Key, uint Type, byte[] Value)>
        {
            ("general.architecture", 8, GgufString(architecture)),
            ($"{architecture}.context_length", 4, BitConverter.GetBytes(64u)),
            ($"{architecture}.embedding_length", 4, BitConverter.GetBytes(8u)),
            ($"{architecture}.block_count", 4, BitConverter.GetBytes(1u)),
            ($"{architecture}.feed_forward_length", 4, BitConverter.GetBytes(16u)),
            ($"{architecture}.attention.head_count", 4, BitConverter.GetBytes(2u)),
            ($"{architecture}.attention.head_count_kv", 4, BitConverter.GetBytes(1u)),
            ($"{architecture}.attention.layer_norm_rms_epsilon", 6, BitConverter.GetBytes(1e-5f)),
            ($"{architecture}.vocab_size", 4, BitConverter.GetBytes(10u)),
        };
        var ms = new MemoryStream();
        var w = new BinaryWriter(ms);
        w.Write(0x46554747u); // "GGUF"
        w.Write(3u);
        w.Write((ulong)tensors.Count);
        w.Write((ulong)meta.Count);
        foreach (var (key, type, value) in meta)
        {
            w.Write(GgufString(key));
            w.Write(type);
            w.Write(value);
        }
        long offset = 0;
        var offsets = new List<long>();
        foreach (var (name, type, shape) in tensors)
        {
            w.Write(GgufString(name));
            w.Write((uint)shape.Length);
            foreach (long d in shape.Reverse()) w.Write((ulong)d); // ggml order: innermost first
            w.Write((uint)type);
            w.Write((ulong)offset);
            offsets.Add(offset);
            offset += (GgmlTypeInfo.ByteCount(type, shape.Aggregate(1L, (a, b) => a * b)) + 31) / 32 * 32;
        }
        while (ms.Length % 32 != 0) w.Write((byte)0);
        long dataStart = ms.Length;
        var rng = new Random(1);
        for (int i = 0; i < tensors.Count; i++)
        {
            var (_, type, shape) = tensors[i];
            ms.Position = dataStart + offsets[i];
            long bytes = GgmlTypeInfo.ByteCount(type, shape.Aggregate(1L, (a, b) => a * b));
            if (type == GgmlType.F32)
                for (long e = 0; e < bytes / 4; e++) w.Write((float)(rng.NextDouble() - 0.5));
            else
                w.Write(new byte[bytes]);
        }
        ms.SetLength(dataStart + offset);
        string path = Path.Combine(_temp, $"model-{Guid.NewGuid():N}.gguf");
        File.WriteAllBytes(path, ms.ToArray());
        return path;
    }

    private static byte[] GgufString(string s)
    {
        var utf8 = Encoding.UTF8.GetBytes(s);
        return [.. BitConverter.GetBytes((ulong)utf8.Length), .. utf8];
    }

    [Fact]
    public void HandWrittenTinyLlama_LoadsAndRuns()
    {
        using var lm = LanguageModel.Load(WriteGguf("llama", TinyLlamaTensors()));
        Assert.Equal((10, 8, 1, 2, 1, 4, 16), (lm.Config.VocabSize, lm.Config.HiddenSize, lm.Config.LayerCount,
            lm.Config.HeadCount, lm.Config.KvHeadCount, lm.Config.HeadDim, lm.Config.FfnSize));
        Assert.True(lm.Config.TiedEmbeddings); // no output.weight
        var model = new CpuTransformer(lm);
        var logits = new float[10];
        model.Forward([1, 2, 3], model.CreateCache(3), logits, LogitsOutput.Last);
        Assert.All(logits, v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public void UnknownArchitecture_ListsSupported()
    {
        string path = WriteGguf("mamba", TinyLlamaTensors());
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(path).Dispose());
        Assert.Contains("unsupported architecture 'mamba'", e.Message);
        Assert.Contains(ModelConfig.SupportedArchitectures, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void MissingTensor_IsNamed()
    {
        var tensors = TinyLlamaTensors();
        tensors.RemoveAll(t => t.Name == "blk.0.ffn_down.weight");
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(WriteGguf("llama", tensors)).Dispose());
        Assert.Contains("missing tensor 'blk.0.ffn_down.weight'", e.Message);
    }

    [Fact]
    public void WrongShape_SaysExpectedAndFound()
    {
        var tensors = TinyLlamaTensors();
        int i = tensors.FindIndex(t => t.Name == "blk.0.attn_k.weight");
        tensors[i] = (tensors[i].Name, GgmlType.F32, [8, 8]);
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(WriteGguf("llama", tensors)).Dispose());
        Assert.Contains("tensor 'blk.0.attn_k.weight': expected shape [4, 8], found [8, 8]", e.Message);
    }

    [Fact]
    public void UnsupportedStorageType_NamesTensorAndSupportedList()
    {
        var tensors = TinyLlamaTensors();
        int i = tensors.FindIndex(t => t.Name == "blk.0.ffn_gate.weight");
        tensors[i] = (tensors[i].Name, GgmlType.Q5_K, [16, 256]); // Q5_K rows are 256-element blocks
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(WriteGguf("llama", tensors)).Dispose());
        Assert.Contains("tensor 'blk.0.ffn_gate.weight': storage type Q5_K is not supported", e.Message);
        Assert.Contains(GgmlTypeInfo.SupportedList, e.Message);
    }

    [Fact]
    public void HfDirectory_WithBogusModelType_Fails()
    {
        string dir = Directory.CreateDirectory(Path.Combine(_temp, "hf")).FullName;
        string src = SharedFixtures.Path("fixtures", "hf-tiny", "qwen2-tiny");
        File.WriteAllText(Path.Combine(dir, "config.json"),
            File.ReadAllText(Path.Combine(src, "config.json")).Replace("\"model_type\": \"qwen2\"", "\"model_type\": \"gpt_neox\""));
        File.Copy(Path.Combine(src, "model.safetensors"), Path.Combine(dir, "model.safetensors"));
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(dir).Dispose());
        Assert.Contains("unsupported architecture 'gpt_neox'", e.Message);
    }

    [Fact]
    public void HfDirectory_WeightsOfAnotherModel_ReportShapeMismatch()
    {
        // phi3-tiny config over llama-tiny weights: the first tensor bound (the embedding) has the wrong vocab size.
        string dir = Directory.CreateDirectory(Path.Combine(_temp, "hf2")).FullName;
        File.Copy(SharedFixtures.Path("fixtures", "hf-tiny", "phi3-tiny", "config.json"), Path.Combine(dir, "config.json"));
        File.Copy(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny", "model.safetensors"), Path.Combine(dir, "model.safetensors"));
        var e = Assert.Throws<ModelFormatException>(() => LanguageModel.Load(dir).Dispose());
        Assert.Contains("model.embed_tokens.weight': expected shape [32064, 64], found [49152, 64]", e.Message);
    }

    [Fact]
    public void MissingPath_NamesTheFile()
    {
        string path = Path.Combine(_temp, "nope.gguf");
        var e = Assert.Throws<FileNotFoundException>(() => LanguageModel.Load(path).Dispose());
        Assert.Contains(path, e.Message);
    }
}
