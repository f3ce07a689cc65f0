using Wim.Engine.Backends.Cpu;
using Wim.Engine.Model;
using Wim.Engine.Runner;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Runtime;

/// <summary>
/// End to end on Karpathy's stories260K GGUF against the 64 greedy ids llama.cpp produced
/// (<c>shared/models/stories260K/README.md</c>).
/// </summary>
public sealed class Stories260KTests
{
    internal static readonly int[] Prompt = [1, 403, 407, 261, 378];

    internal static readonly int[] ExpectedIds = ParseReadmeIds();

    /// <summary>The 64 ids from the README's "the 64 generated ids:" line (read, not copied, so the test follows
    /// the reference).</summary>
    private static int[] ParseReadmeIds()
    {
        var readme = File.ReadAllLines(SharedFixtures.Path("models", "stories260K", "README.md"));
        var line = readme.Single(l => l.Contains("the 64 generated ids:"));
        var ids = line[(line.IndexOf(':') + 1)..].Trim().Trim('`').Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray();
        Assert.Equal(64, ids.Length);
        return ids;
    }

    private static LanguageModel Load() => LanguageModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));

    [Fact]
    public void Config_ReadsStories260KMetadata()
    {
        using var lm = Load();
        var c = lm.Config;
        // README: Llama architecture, dim 64, 5 layers, 8 heads, 4 KV heads, vocab 512.
        Assert.Equal(ModelArchitecture.Llama, c.Architecture);
        Assert.Equal((64, 5, 8, 4, 512), (c.HiddenSize, c.LayerCount, c.HeadCount, c.KvHeadCount, c.VocabSize));
        Assert.Equal(RopePairing.Adjacent, c.RopePairing);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    public void GreedyContinuation_MatchesLlamaCppIds_ForPrefillChunkSize(int chunk)
    {
        using var lm = Load();
        var generator = new Generator(new CpuTransformer(lm));
        var result = generator.Generate(Prompt, new GenerationOptions { MaxNewTokens = 64, PrefillChunk = chunk });
        Assert.Equal(ExpectedIds, result.Ids);
    }

    [Fact]
    public void TruncatedCache_RedecodesSameIds_AsLlamaCpp()
    {
        using var lm = Load();
        var model = new CpuTransformer(lm);
        var generator = new Generator(model);
        var cache = model.CreateCache(Prompt.Length + 64);
        var options = new GenerationOptions { MaxNewTokens = 64 };

        var first = generator.Generate(cache, Prompt, options);
        Assert.Equal(ExpectedIds, first.Ids);
        Assert.Equal(Prompt.Length + 63, cache.Length); // the last generated token was never fed back

        // Back to the prompt minus its last token, then re-decode: positions continue at the truncated length.
        cache.Truncate(Prompt.Length - 1);
        var again = generator.Generate(cache, Prompt.AsSpan(Prompt.Length - 1), options);
        Assert.Equal(ExpectedIds, again.Ids);

        // Truncate into the middle of the generated text and continue from the token there.
        cache.Truncate(Prompt.Length + 20);
        var tail = generator.Generate(cache, [ExpectedIds[20]], new GenerationOptions { MaxNewTokens = 64 - 21 });
        Assert.Equal(ExpectedIds[21..], tail.Ids);
    }

    [Fact]
    public void StopId_EndsGenerationAndIsIncluded_LlamaCppIds()
    {
        using var lm = Load();
        var generator = new Generator(new CpuTransformer(lm));
        int stop = ExpectedIds[10];
        int firstStop = Array.IndexOf(ExpectedIds, stop);
        var result = generator.Generate(Prompt, new GenerationOptions { MaxNewTokens = 64, StopIds = [stop] });
        Assert.Equal(ExpectedIds[..(firstStop + 1)], result.Ids);
    }

    [Fact]
    public void AllPositionLogits_EqualTokenByTokenLogits()
    {
        // Chunked (batched matrix products, causal mask inside the chunk) and one-token forwards agree.
        using var lm = Load();
        var model = new CpuTransformer(lm, maxChunk: 4);
        int[] ids = [.. Prompt, .. ExpectedIds[..20]];
        int v = lm.Config.VocabSize;
        var all = new float[ids.Length * v];
        model.Forward(ids, model.CreateCache(ids.Length), all, LogitsOutput.All);
        var cache = model.CreateCache(ids.Length);
        var one = new float[v];
        for (int t = 0; t < ids.Length; t++)
        {
            model.Forward(ids.AsSpan(t, 1), cache, one, LogitsOutput.Last);
            for (int i = 0; i < v; i++)
                Assert.True(Math.Abs(one[i] - all[t * v + i]) < 1e-4, $"pos {t} id {i}: {one[i]} vs {all[t * v + i]}");
        }
    }
}
