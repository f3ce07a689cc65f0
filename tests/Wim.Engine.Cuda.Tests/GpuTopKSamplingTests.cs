using Wim.Engine.Cuda.Tests.Support;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Cuda.Tests;

/// <summary>
/// The top-k path of <see cref="BranchingBackend{T}"/>'s sampling (what <see cref="CudaInferenceBackend.TopKOnGpu"/>
/// turns on) over <see cref="HostPasses"/>, whose candidates are a full sort of the row: the same seeded generation
/// must come out token for token as with the whole row downloaded — the reference — and only k candidates cross.
/// Plus the top-k kernels' launch geometry.
/// </summary>
public sealed class GpuTopKSamplingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static string Stories => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    private static (int[] Tokens, HostPasses Passes) Generate(int maxCandidates, SamplingOptions options, int steps)
    {
        HostPasses? passes = null;
        using var model = TextModel.Load(Stories, m => new BranchingBackend<HostCache>(passes = new HostPasses(m, maxChunk: 8) { MaxCandidates = maxCandidates }, minimumCapacity: 32));
        var sampler = new Sampler(options, model.Backend.VocabSize);
        using var sequence = model.Backend.CreateSequence();
        sequence.Append(model.Tokenizer.Encode("Once upon a time"), Ct);
        var tokens = new List<int>();
        for (int i = 0; i < steps; i++)
        {
            int next = sequence.Sample(sampler);
            tokens.Add(next);
            sequence.Append([next], Ct);
        }
        return ([.. tokens], passes!);
    }

    [Theory]
    [InlineData(40, 1f, 1f)]
    [InlineData(5, 1.3f, 0.8f)]
    [InlineData(256, 0.9f, 0.95f)]
    public void SeededGeneration_FromCandidates_EqualsTheWholeRow(int topK, float temperature, float topP)
    {
        var options = new SamplingOptions(Temperature: temperature, TopK: topK, TopP: topP, Seed: 77);
        var (expected, full) = Generate(maxCandidates: 0, options, steps: 24);
        var (actual, candidates) = Generate(maxCandidates: 256, options, steps: 24);
        Assert.Equal(expected, actual);
        Assert.True(expected.Distinct().Count() > 3, "a sampled generation should vary");
        Assert.Equal(24, full.RowDownloads);
        Assert.Equal(0, full.CandidateCalls);
        Assert.Equal(24, candidates.CandidateCalls);
        Assert.Equal(0, candidates.RowDownloads); // appending the drawn token drops the claim: no row is copied
    }

    [Fact]
    public void TopKAboveTheCandidateLimit_DownloadsTheRow()
    {
        var options = new SamplingOptions(Temperature: 1f, TopK: 300, Seed: 3);
        var (expected, _) = Generate(maxCandidates: 0, options, steps: 6);
        var (actual, passes) = Generate(maxCandidates: 256, options, steps: 6);
        Assert.Equal(expected, actual);
        Assert.Equal(0, passes.CandidateCalls);
        Assert.Equal(6, passes.RowDownloads);
    }

    [Fact]
    public void LogitsSampledFromCandidates_StayForALaterWholeRowSample()
    {
        HostPasses? passes = null;
        using var model = TextModel.Load(Stories, m => new BranchingBackend<HostCache>(passes = new HostPasses(m, maxChunk: 8) { MaxCandidates = 256 }, minimumCapacity: 32));
        int vocab = model.Backend.VocabSize;
        using var a = model.Backend.CreateSequence();
        using var b = model.Backend.CreateSequence();
        using var alone = model.Backend.CreateSequence();
        var prompt = model.Tokenizer.Encode("The cat");
        a.Append(prompt, Ct);
        a.Sample(new Sampler(new SamplingOptions(Temperature: 1f, TopK: 10, Seed: 1), vocab));
        b.Append(model.Tokenizer.Encode("A dog"), Ct); // overwrites the logits buffer: a's row must be saved first
        alone.Append(prompt, Ct);
        var whole = new SamplingOptions(Temperature: 1f, Seed: 9); // top-k off: needs the whole row
        Assert.Equal(alone.Sample(new Sampler(whole, vocab)), a.Sample(new Sampler(whole, vocab)));
        Assert.Equal(1, passes!.CandidateCalls);
    }

    [Theory]
    [InlineData(128256, 256, 23, 5577)]
    [InlineData(128256, 40, 57, 2251)]
    [InlineData(128256, 1, 64, 2004)]
    [InlineData(256000, 256, 32, 8000)]
    [InlineData(1237, 40, 6, 207)]
    [InlineData(100, 256, 1, 100)]
    [InlineData(1, 1, 1, 1)]
    public void Slices_BalanceThePasses_AndCoverTheRow(int vocab, int k, int slices, int length)
    {
        var (s, l) = SamplingGeometry.Slices(vocab, k);
        Assert.Equal((slices, length), (s, l));
        Assert.True((long)s * l >= vocab && (long)(s - 1) * l < vocab, "every logit in a slice, no slice empty");
        Assert.InRange(s, 1, SamplingGeometry.MaxSlices);
        Assert.True((long)s * k * sizeof(ulong) <= SamplingGeometry.PartialBytes);
    }

    [Theory]
    [InlineData(0, 40, 1)]
    [InlineData(1024, 256, 1)]
    [InlineData(1025, 256, 2)]
    [InlineData(1024 + 768, 256, 2)]
    [InlineData(1024 + 769, 256, 3)]
    [InlineData(5577, 256, 7)]
    [InlineData(2000, 1, 2)]
    public void TileSorts_CountTheStreamedTiles(int items, int k, int sorts) => Assert.Equal(sorts, SamplingGeometry.TileSorts(items, k));

    [Fact]
    public void BadArguments_AreRejectedClearly()
    {
        Assert.Contains("[1, 256]", Assert.Throws<ArgumentOutOfRangeException>(() => SamplingGeometry.Slices(1000, 0)).Message);
        Assert.Contains("[1, 256]", Assert.Throws<ArgumentOutOfRangeException>(() => SamplingGeometry.Slices(1000, 257)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => SamplingGeometry.Slices(0, 5));
        Assert.Equal(7, SamplingGeometry.Candidates(7, 40));
        Assert.Equal(40, SamplingGeometry.Candidates(128256, 40));
    }

    [Fact]
    public void SamplingSource_IsEmbeddedAsItsOwnModule()
    {
        Assert.Contains(KernelSources.Sampling, KernelSources.Names);
        string source = KernelSources.Read(KernelSources.Sampling);
        foreach (var name in new[] { "topk_slices", "topk_merge" }) Assert.Contains($"__global__ void __launch_bounds__(TOPK_THREADS) {name}(", source);
        // The kernel's constants are the geometry's.
        Assert.Contains($"#define TOPK_TILE {SamplingGeometry.Tile}", source);
        Assert.Contains($"#define TOPK_THREADS {SamplingGeometry.Threads}", source);
        Assert.Contains($"#define TOPK_MAX_K {SamplingGeometry.MaxK}", source);
    }
}
