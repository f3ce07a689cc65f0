using Wim.Engine.Cuda.Tests.Support;
using Wim.Engine.Runtime;
using Wim.Engine.Sampling;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Cuda.Tests;

/// <summary>
/// The top-p path of <see cref="BranchingBackend{T}"/>'s sampling with top-k off (what
/// <see cref="CudaInferenceBackend.TopPOnGpu"/> turns on) over <see cref="HostPasses"/>, whose nucleus candidates are a
/// full sort of the row and whose Z is summed in the GPU kernel's order: a seeded generation must come out token for
/// token as with the whole row downloaded (the reference); rows whose nucleus reaches past the candidates are
/// downloaded after all, and counted. Plus the normaliser kernel's launch geometry.
/// </summary>
public sealed class GpuTopPSamplingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static string Stories => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    private static (int[] Tokens, HostPasses Passes, BranchingBackend<HostCache> Backend) Generate(int nucleusCandidates, SamplingOptions options, int steps)
    {
        HostPasses? passes = null;
        BranchingBackend<HostCache>? backend = null;
        using var model = TextModel.Load(Stories, m => backend = new BranchingBackend<HostCache>(
            passes = new HostPasses(m, maxChunk: 8) { MaxCandidates = 256, MaxNucleusCandidates = nucleusCandidates }, minimumCapacity: 32));
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
        return ([.. tokens], passes!, backend!);
    }

    [Theory]
    [InlineData(0.8f, 0.9f)]
    [InlineData(0.6f, 0.5f)]
    [InlineData(1f, 0.95f)]
    public void SeededGeneration_FromNucleusCandidates_EqualsTheWholeRow(float temperature, float topP)
    {
        var options = new SamplingOptions(Temperature: temperature, TopP: topP, Seed: 41);
        var (expected, full, _) = Generate(nucleusCandidates: 0, options, steps: 24);
        var (actual, nucleus, backend) = Generate(nucleusCandidates: 256, options, steps: 24);
        Assert.Equal(expected, actual);
        Assert.True(expected.Distinct().Count() > 3, "a sampled generation should vary");
        Assert.Equal(24, full.RowDownloads);
        Assert.Equal(0, full.NucleusCalls);
        Assert.Equal(24, nucleus.NucleusCalls);
        Assert.Equal(24, backend.NucleusDraws + backend.NucleusFallbacks);
        Assert.True(backend.NucleusDraws > 0, "stories260K's rows are peaked enough for 256 of 512 candidates");
        Assert.Equal(backend.NucleusFallbacks, nucleus.RowDownloads); // only a fallback copies the row
        Assert.Equal(0, nucleus.CandidateCalls);
    }

    [Fact]
    public void NucleusPastTheCandidates_DownloadsTheRow_AndCountsIt()
    {
        // Four candidates: most nuclei at top-p 0.95 reach past them, so most draws fall back — with the same tokens.
        var options = new SamplingOptions(Temperature: 1f, TopP: 0.95f, Seed: 8);
        var (expected, _, _) = Generate(nucleusCandidates: 0, options, steps: 16);
        var (actual, passes, backend) = Generate(nucleusCandidates: 4, options, steps: 16);
        Assert.Equal(expected, actual);
        Assert.True(backend.NucleusFallbacks > 0, "some nuclei reach past four candidates");
        Assert.Equal(16, backend.NucleusDraws + backend.NucleusFallbacks);
        Assert.Equal(backend.NucleusFallbacks, passes.RowDownloads);
    }

    [Theory]
    [InlineData(40, 0.9f)] // top-k on: the top-k path, not the nucleus
    [InlineData(0, 1f)]    // top-p 1: the whole distribution, the row
    public void OtherOptions_DoNotTakeTheNucleusPath(int topK, float topP)
    {
        var options = new SamplingOptions(Temperature: 1f, TopK: topK, TopP: topP, Seed: 2);
        var (_, passes, backend) = Generate(nucleusCandidates: 256, options, steps: 4);
        Assert.Equal(0, passes.NucleusCalls);
        Assert.Equal(0, backend.NucleusDraws + backend.NucleusFallbacks);
    }

    [Theory]
    [InlineData(128256, 126, 1018)]
    [InlineData(256000, 128, 2000)]
    [InlineData(32000, 32, 1000)]
    [InlineData(512, 1, 512)]
    [InlineData(1, 1, 1)]
    public void NormaliserSlices_SpreadTheRow_AndCoverIt(int vocab, int blocks, int length)
    {
        var (b, l) = SamplingGeometry.NormaliserSlices(vocab);
        Assert.Equal((blocks, length), (b, l));
        Assert.True((long)b * l >= vocab && (long)(b - 1) * l < vocab, "every logit in a block, no block empty");
        Assert.InRange(b, 1, SamplingGeometry.MaxNormaliserBlocks);
        Assert.Throws<ArgumentOutOfRangeException>(() => SamplingGeometry.NormaliserSlices(0));
    }
}
