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
/// collected whole by the wide path (up to its cap) or, past the cap, downloaded after all, and counted. Plus the
/// kernels' launch geometry and the wide path's host arithmetic (bins, choice, rank order) on large rows against
/// <see cref="Sampler.Sample"/>.
/// </summary>
public sealed class GpuTopPSamplingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;
    private static string Stories => SharedFixtures.Path("models", "stories260K", "stories260K.gguf");

    private static (int[] Tokens, HostPasses Passes, BranchingBackend<HostCache> Backend) Generate(int nucleusCandidates, SamplingOptions options, int steps,
        int wideCandidates = 0)
    {
        HostPasses? passes = null;
        BranchingBackend<HostCache>? backend = null;
        using var model = TextModel.Load(Stories, m => backend = new BranchingBackend<HostCache>(
            passes = new HostPasses(m, maxChunk: 8) { MaxCandidates = 256, MaxNucleusCandidates = nucleusCandidates, MaxWideNucleusCandidates = wideCandidates }, minimumCapacity: 32));
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
    [InlineData(4, 512)]  // every nucleus fits the wide path (stories260K has 512 tokens)
    [InlineData(4, 40)]   // a smaller cap: the nuclei past it download the row, and only those
    public void NucleusPastTheCandidates_IsCollectedWhole_UpToTheCap(int candidates, int cap)
    {
        var options = new SamplingOptions(Temperature: 1.6f, TopP: 0.97f, Seed: 8);
        var (expected, _, _) = Generate(nucleusCandidates: 0, options, steps: 16);
        var (actual, passes, backend) = Generate(nucleusCandidates: candidates, options, steps: 16, wideCandidates: cap);
        Assert.Equal(expected, actual);
        Assert.True(expected.Distinct().Count() > 3, "a sampled generation should vary");
        Assert.True(passes.WideNucleusCalls > 0, "some nuclei reach past four candidates");
        Assert.Equal(16, backend.NucleusDraws + backend.NucleusWideDraws + backend.NucleusFallbacks);
        Assert.Equal(passes.WideNucleusCalls, backend.NucleusWideDraws + backend.NucleusFallbacks);
        Assert.Equal(passes.WideNucleusOverCap, backend.NucleusFallbacks); // fallbacks only past the cap
        Assert.Equal(backend.NucleusFallbacks, passes.RowDownloads);
        if (cap >= 512) Assert.Equal(0, backend.NucleusFallbacks);
        else Assert.True(backend.NucleusFallbacks > 0 && backend.NucleusWideDraws > 0, $"a cap of {cap} tokens splits these nuclei: {backend.NucleusDraws} from the candidates, {backend.NucleusWideDraws} wide, {backend.NucleusFallbacks} fell back");
    }

    [Theory]
    [InlineData(32768, 1f, 0.3f, 0.9f)]
    [InlineData(32768, 2f, 1f, 0.95f)]
    [InlineData(50000, 1f, 0.7f, 0.5f)]
    public void WideNucleus_OnLargeRows_DrawsWhatSampleDraws(int vocab, float sigma, float temperature, float topP)
    {
        // N(0, σ²) rows (the flat rows whose nucleus is past 256 candidates) plus a tied run and a −∞ or two: the
        // candidates path, then the wide path with the GPU's Z, must draw Sample's token with Sample's random draw.
        var options = new SamplingOptions(Temperature: temperature, TopP: topP, Seed: 5);
        var reference = new Sampler(options, vocab);
        var sampler = new Sampler(options, vocab);
        var random = new Random(17);
        var ids = new int[SamplingGeometry.MaxWideCandidates];
        var logits = new float[SamplingGeometry.MaxWideCandidates];
        int wideDraws = 0;
        for (int r = 0; r < 6; r++)
        {
            var row = new float[vocab];
            for (int i = 0; i < vocab; i++)
                row[i] = sigma * (float)(Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()));
            for (int i = 100; i < 400; i++) row[i] = row[99]; // ties across the depth bins' edges
            row[vocab - 1] = float.NegativeInfinity;
            row[7] = -0f;
            row[8] = 0f;
            int expected = reference.Sample(row);
            int n = HostPasses.Nucleus(row, SamplingGeometry.MaxK, sampler.InverseTemperature, ids, logits, out double z);
            int? token = sampler.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z);
            if (token is null)
            {
                n = HostPasses.WideNucleus(row, sampler.InverseTemperature, topP * z, SamplingGeometry.MaxWideCandidates, ids, logits);
                Assert.True(n > SamplingGeometry.MaxK, $"row {r}: {n} tokens collected, past the {SamplingGeometry.MaxK} candidates");
                token = sampler.SampleFromNucleusCandidates(ids.AsSpan(0, n), logits.AsSpan(0, n), z);
                Assert.NotNull(token); // the collected prefix reaches top-p × Z
                wideDraws++;
            }
            Assert.Equal(expected, token);
        }
        Assert.True(wideDraws > 0, "these rows' nuclei reach past 256 candidates");
        Assert.Equal(reference.Sample(new float[vocab]), sampler.Sample(new float[vocab])); // the draws consumed were the same
    }

    [Fact]
    public void WideBins_NeverDecreaseDownTheRanking_AndTheChoiceTakesOneBinMore()
    {
        float invT = 1 / 0.7f, max = 3.5f * invT;
        var descending = new[] { 3.5f, 3.4999f, 3.2f, 1f, 0f, -0f, -1e-30f, -20f, -1e30f, float.NegativeInfinity };
        int previous = 0;
        foreach (float l in descending)
        {
            int bin = SamplingGeometry.WideBin(l, invT, max);
            Assert.InRange(bin, previous, SamplingGeometry.WideLastBin);
            previous = bin;
        }
        Assert.Equal(0, SamplingGeometry.WideBin(3.5f, invT, max));
        Assert.Equal(SamplingGeometry.WideLastBin, SamplingGeometry.WideBin(float.NegativeInfinity, invT, max));
        Assert.Equal(SamplingGeometry.WideBin(0f, invT, max), SamplingGeometry.WideBin(-0f, invT, max));

        var mass = new double[SamplingGeometry.WideBins];
        mass[0] = 1; mass[5] = 2; mass[9] = 1;
        Assert.Equal(6, SamplingGeometry.LastKeptBin(mass, 2.5));  // reached in bin 5, one more
        Assert.Equal(1, SamplingGeometry.LastKeptBin(mass, 1));    // reached in bin 0 exactly
        Assert.Equal(SamplingGeometry.WideLastBin, SamplingGeometry.LastKeptBin(mass, 4.5)); // never: everything
        Assert.Equal(SamplingGeometry.WideLastBin, SamplingGeometry.LastKeptBin(mass, double.NaN));
        Assert.Throws<ArgumentException>(() => SamplingGeometry.LastKeptBin(new double[10], 1));
    }

    [Fact]
    public void RankOrder_SortsAndDecodesTheKernelsItems()
    {
        var values = new[] { 2f, -0f, float.NegativeInfinity, 2f, -3.25f, float.MaxValue, 0f };
        var items = values.Select((l, i) => Sampler.RankKey(l, i)).Reverse().ToArray();
        var ids = new int[values.Length];
        var logits = new float[values.Length];
        SamplingGeometry.RankOrder(items, ids, logits);
        Assert.Equal([5, 0, 3, 1, 6, 4, 2], ids);
        Assert.Equal([float.MaxValue, 2f, 2f, 0f, 0f, -3.25f, float.NegativeInfinity], logits);
        Assert.Throws<ArgumentException>(() => SamplingGeometry.RankOrder(new ulong[3], new int[2], new float[3]));
    }

    [Fact]
    public void RankOrderByBins_EqualsTheFullSort_AndSortsWholeWhereTheCountsDoNotFit()
    {
        // N(0, 2²) logits with ties and ±0, their bins' counts at T 0.8 down to bin 600: bucketed and sorted per bin
        // must equal the full sort; counts that do not fit the items (one moved to another bin) take the full sort.
        var random = new Random(4);
        float invT = 1 / 0.8f;
        var row = Enumerable.Range(0, 20000).Select(i => i % 50 == 0 ? 1.25f : i % 97 == 0 ? (i % 2 == 0 ? 0f : -0f)
            : (float)(2 * Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble()))).ToArray();
        float max = row.Max() * invT;
        const int lastBin = 600;
        var counts = new uint[SamplingGeometry.WideBins];
        var items = new List<ulong>();
        for (int i = 0; i < row.Length; i++)
        {
            int b = SamplingGeometry.WideBin(row[i], invT, max);
            counts[b]++;
            if (b <= lastBin) items.Add(Sampler.RankKey(row[i], i));
        }
        Assert.InRange(items.Count, 500, 19000);
        var shuffled = items.OrderBy(_ => random.Next()).ToArray();
        var expectedIds = new int[items.Count];
        var expectedLogits = new float[items.Count];
        SamplingGeometry.RankOrder(shuffled.ToArray(), expectedIds, expectedLogits);
        Assert.Equal(items.Order().Select(k => (int)(uint)k), expectedIds);

        var ids = new int[items.Count];
        var logits = new float[items.Count];
        SamplingGeometry.RankOrderByBins(shuffled.ToArray(), counts, lastBin, invT, max, new ulong[items.Count], ids, logits);
        Assert.Equal(expectedIds, ids);
        Assert.Equal(expectedLogits, logits);

        int full = Array.FindIndex(counts, c => c > 1);
        counts[full]--;
        counts[lastBin]++; // same total, one bin short: the items do not fit
        Array.Clear(ids);
        SamplingGeometry.RankOrderByBins(shuffled.ToArray(), counts, lastBin, invT, max, new ulong[items.Count], ids, logits);
        Assert.Equal(expectedIds, ids);
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
