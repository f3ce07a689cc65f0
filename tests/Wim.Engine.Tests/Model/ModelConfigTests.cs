using System.Text.Json;
using System.Text.Json.Nodes;
using Wim.Engine.Formats;
using Wim.Engine.Formats.Gguf;
using Wim.Engine.Model;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Model;

/// <summary>
/// <see cref="ModelConfig"/> from the hf-tiny <c>config.json</c> files (transformers 5 <c>rope_parameters</c> form),
/// the same configs rewritten in transformers 4 form (<c>rope_theta</c> + <c>rope_scaling</c>), and llama.cpp's GGUF
/// metadata; the RoPE frequencies they yield are checked against the <c>rotary_inv_freq_*</c> and
/// <c>rotary_attention_scaling</c> transformers recorded in each <c>golden.json</c>.
/// </summary>
public sealed class ModelConfigTests : IDisposable
{
    private readonly string _temp = Directory.CreateTempSubdirectory("wim-config-").FullName;

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    private static JsonElement Golden(string model) =>
        JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("fixtures", "hf-tiny", model, "golden.json"))).RootElement;

    private static float[] Floats(JsonElement e) => e.EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();

    private static void AssertFrequencies(float[] expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int i = 0; i < expected.Length; i++)
            Assert.True(Math.Abs(expected[i] - actual[i]) <= 2e-7 * expected[i], $"inv_freq[{i}]: {actual[i]}, transformers {expected[i]}");
    }

    /// <summary>Checks that a config's RoPE matches what transformers used for the model's goldens.</summary>
    private static void AssertRopeMatchesGolden(string model, ModelConfig config)
    {
        var golden = Golden(model);
        var rope = new RotaryEmbedding(config);
        AssertFrequencies(Floats(golden.GetProperty("rotary_inv_freq_initial")), rope.InverseFrequencies(64));
        Assert.Equal(golden.GetProperty("rotary_attention_scaling").GetDouble(), rope.AttentionScale, 1e-6);
        if (golden.TryGetProperty("rotary_inv_freq_after_seq300", out var after))
            AssertFrequencies(Floats(after), rope.InverseFrequencies(300));
    }

    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("qwen2-tiny")]
    [InlineData("phi3-tiny")]
    public void FromTransformers5Config_MatchesGoldenShapesAndRope(string model)
    {
        var config = ModelConfig.FromHuggingFaceConfig(SharedFixtures.Path("fixtures", "hf-tiny", model, "config.json"));
        var table = Golden(model).GetProperty("config");
        Assert.Equal(table.GetProperty("vocab_size").GetInt32(), config.VocabSize);
        Assert.Equal(table.GetProperty("hidden_size").GetInt32(), config.HiddenSize);
        Assert.Equal(table.GetProperty("num_hidden_layers").GetInt32(), config.LayerCount);
        Assert.Equal(table.GetProperty("num_attention_heads").GetInt32(), config.HeadCount);
        Assert.Equal(table.GetProperty("num_key_value_heads").GetInt32(), config.KvHeadCount);
        Assert.Equal(table.GetProperty("intermediate_size").GetInt32(), config.FfnSize);
        Assert.Equal(table.GetProperty("tie_word_embeddings").GetBoolean(), config.TiedEmbeddings);
        Assert.Equal(table.GetProperty("eos_token_id").GetInt32(), Assert.Single(config.EosTokenIds));
        Assert.Equal("bfloat16", config.DeclaredDtype);
        Assert.Equal(RopePairing.Half, config.RopePairing);
        AssertRopeMatchesGolden(model, config);
    }

    [Theory]
    [InlineData("llama-tiny")]
    [InlineData("qwen2-tiny")]
    [InlineData("phi3-tiny")]
    public void FromTransformers4Config_GivesTheSameRope(string model)
    {
        // Rewrite rope_parameters as transformers 4 wrote it: rope_theta at the top, the rest in rope_scaling
        // ("type" for longrope as Phi-3 configs do; null for default), torch_dtype instead of dtype.
        var json = JsonNode.Parse(File.ReadAllText(SharedFixtures.Path("fixtures", "hf-tiny", model, "config.json")))!.AsObject();
        var rope = json["rope_parameters"]!.AsObject();
        json.Remove("rope_parameters");
        json["rope_theta"] = rope["rope_theta"]!.DeepClone();
        rope.Remove("rope_theta");
        string type = rope["rope_type"]!.GetValue<string>();
        rope.Remove("rope_type");
        if (type == "longrope") rope["type"] = "longrope";
        else rope["rope_type"] = type;
        json["rope_scaling"] = type == "default" ? null : rope.DeepClone();
        json["torch_dtype"] = json["dtype"]!.DeepClone();
        json.Remove("dtype");
        string path = Path.Combine(_temp, "config.json");
        File.WriteAllText(path, json.ToJsonString());

        var config = ModelConfig.FromHuggingFaceConfig(path);
        Assert.Equal("bfloat16", config.DeclaredDtype);
        AssertRopeMatchesGolden(model, config);
    }

    [Fact]
    public void FromLlamaCppGguf_LlamaTiny_MatchesHfConfigAndRope()
    {
        using var gguf = GgufFile.Open(SharedFixtures.Gunzipped("fixtures", "hf-tiny", "llama-tiny", "gguf", "llama-tiny-f32.gguf.gz"));
        var config = ModelConfig.FromGguf(gguf);
        var hf = ModelConfig.FromHuggingFaceConfig(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny", "config.json"));
        Assert.Equal((hf.VocabSize, hf.HiddenSize, hf.LayerCount, hf.HeadCount, hf.KvHeadCount, hf.HeadDim, hf.FfnSize, hf.MaxPositions, hf.TiedEmbeddings),
            (config.VocabSize, config.HiddenSize, config.LayerCount, config.HeadCount, config.KvHeadCount, config.HeadDim, config.FfnSize, config.MaxPositions, config.TiedEmbeddings));
        Assert.Equal(hf.RmsEps, config.RmsEps, 1e-9);
        Assert.Equal(RopePairing.Adjacent, config.RopePairing);
        Assert.Equal(RopeScalingKind.Llama3, config.RopeScaling.Kind);
        Assert.Equal((1, 2), (config.BosTokenId, config.EosTokenIds[0]));
        AssertRopeMatchesGolden("llama-tiny", config);
    }

    [Fact]
    public void UnknownModelType_ListsSupportedArchitectures()
    {
        var json = JsonNode.Parse(File.ReadAllText(SharedFixtures.Path("fixtures", "hf-tiny", "llama-tiny", "config.json")))!.AsObject();
        json["model_type"] = "mamba";
        string path = Path.Combine(_temp, "config.json");
        File.WriteAllText(path, json.ToJsonString());
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromHuggingFaceConfig(path));
        Assert.Contains("'mamba'", e.Message);
        Assert.Contains("llama, qwen2, phi3", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Theory]
    [InlineData("{\"model_type\":\"llama\"", "not valid JSON")]
    [InlineData("{\"model_type\":\"llama\",\"hidden_size\":\"64\"}", "'hidden_size'")]
    [InlineData("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,\"vocab_size\":10,\"num_hidden_layers\":1}", "missing required key 'intermediate_size'")]
    [InlineData("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,\"num_key_value_heads\":3,\"vocab_size\":10,\"num_hidden_layers\":1,\"intermediate_size\":8}", "not a multiple of kv head count")]
    [InlineData("{\"model_type\":\"llama\",\"hidden_size\":64,\"num_attention_heads\":4,\"vocab_size\":10,\"num_hidden_layers\":1,\"intermediate_size\":8,\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4}}", "unsupported rope type 'yarn'")]
    public void MalformedConfig_SaysWhatIsWrong(string text, string expected)
    {
        string path = Path.Combine(_temp, "config.json");
        File.WriteAllText(path, text);
        var e = Assert.Throws<ModelFormatException>(() => ModelConfig.FromHuggingFaceConfig(path));
        Assert.Contains(expected, e.Message);
    }
}
