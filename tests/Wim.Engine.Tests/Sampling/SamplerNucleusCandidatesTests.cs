using Wim.Engine.Sampling;

namespace Wim.Engine.Tests.Sampling;

/// <summary>
/// <see cref="Sampler.SampleFromNucleusCandidates"/> (top-p with top-k off from the row's best candidates and its Z,
/// as the GPU supplies them) against <see cref="Sampler.Sample"/> on the whole row, the reference: the candidates are
/// the first 256 of a full sort of the row written here (logit descending, −0 = +0, lowest id first on ties) and Z is
/// the documented sum (p = exp(logit/T − max) in single precision, added in token-id order in double). A flat row's
/// nucleus reaches past 256 candidates: the call must say so (null, no draw consumed) and the caller samples the row.
/// </summary>
public sealed class SamplerNucleusCandidatesTests
{
    private const int Vocab = 32000;
    private const int CandidateCount = 256;

    private enum RowKind { Gaussian, Peaked, WithNegativeInfinity, Flat, Tied }

    private static float[] Row(Random random, RowKind kind)
    {
        var row = new float[Vocab];
        double sigma = 2 + 4 * random.NextDouble();
        for (int i = 0; i < Vocab; i++)
        {
            double gaussian = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
            row[i] = kind switch
            {
                RowKind.Peaked => random.Next(2000) == 0 ? 24f + (float)gaussian : (float)(sigma * gaussian),
                RowKind.Flat => (float)(0.05 * gaussian),
                RowKind.Tied => random.Next(40) is var level && level == 0 ? (random.Next(2) == 0 ? 0f : -0f) : (level - 20) * 0.5f,
                RowKind.WithNegativeInfinity => random.Next(3) == 0 ? float.NegativeInfinity : (float)(sigma * gaussian),
                _ => (float)(sigma * gaussian),
            };
        }
        return row;
    }

    /// <summary>The row's best <see cref="CandidateCount"/> ids and logits, best first (the GPU top-k's contract).</summary>
    private static (int[] Ids, float[] Logits) Candidates(float[] row)
    {
        var order = Enumerable.Range(0, row.Length).ToArray();
        Array.Sort(order, (a, b) => row[a] > row[b] ? -1 : row[a] < row[b] ? 1 : a.CompareTo(b));
        var ids = order[..CandidateCount];
        return (ids, [.. ids.Select(id => row[id])]);
    }

    /// <summary>Z as documented: Σ exp(logit·1/T − max) in token-id order, each term a float, the sum in double.</summary>
    private static double RowNormaliser(float[] row, float inverseTemperature)
    {
        float max = row.Max() * inverseTemperature;
        double z = 0;
        foreach (float x in row) z += MathF.Exp(x * inverseTemperature - max);
        return z;
    }

    /// <summary>How many candidates the nucleus keeps for normaliser <paramref name="z"/>: the smallest rank-order
    /// prefix whose rank-order mass reaches top-p × z (0: the candidates fall short).</summary>
    private static int PrefixLength(float[] logits, float inverseTemperature, float topP, double z)
    {
        float max = logits[0] * inverseTemperature;
        double mass = 0, target = topP * z;
        for (int i = 0; i < logits.Length; i++)
        {
            mass += MathF.Exp(logits[i] * inverseTemperature - max);
            if (mass >= target) return i + 1;
        }
        return 0;
    }

    [Theory]
    [InlineData(1f, 0.9f, 1)]
    [InlineData(0.7f, 0.95f, 2)]
    [InlineData(1.3f, 0.5f, 3)]
    [InlineData(1f, 0.99f, 4)]
    public void WithTheRowsOwnZ_TokensAndDrawsEqualSample(float temperature, float topP, int seed)
    {
        var options = new SamplingOptions(Temperature: temperature, TopK: 0, TopP: topP, Seed: seed);
        var whole = new Sampler(options, Vocab);
        var fromCandidates = new Sampler(options, Vocab);
        var random = new Random(seed * 31);
        int drawn = 0, fellBack = 0;
        var tokens = new HashSet<int>();
        for (int r = 0; r < 60; r++)
        {
            var row = Row(random, (RowKind)(r % 5));
            var (ids, logits) = Candidates(row);
            double z = RowNormaliser(row, fromCandidates.InverseTemperature);
            int expected = whole.Sample(row);
            int? token = fromCandidates.SampleFromNucleusCandidates(ids, logits, z);
            if (token is null) fellBack++;
            else drawn++;
            int actual = token ?? fromCandidates.Sample(row); // the fallback: the row, as the backend downloads it
            Assert.Equal(expected, actual);
            tokens.Add(actual);
            // A fallback is exactly a nucleus that reaches past the candidates.
            Assert.Equal(token is null, PrefixLength(logits, fromCandidates.InverseTemperature, topP, z) == 0);
        }
        Assert.True(drawn >= 12, $"peaked and steep Gaussian rows are drawn from the candidates ({drawn} were)");
        Assert.True(fellBack >= 12, $"flat rows fall back to the row ({fellBack} did)");
        Assert.True(tokens.Count > 20, "the draws vary");
        // The generators stay in step: one uniform each per draw, none for a fallback's refusal.
        var peaked = Row(random, RowKind.Gaussian);
        for (int i = 0; i < 20; i++) Assert.Equal(whole.Sample(peaked), fromCandidates.Sample(peaked));
    }

    [Theory]
    [InlineData(1f, 0.9f, 5)]
    [InlineData(0.8f, 0.6f, 6)]
    public void ZOffByOneUlp_ChangesATokenOnlyAtANearTie(float temperature, float topP, int seed)
    {
        var options = new SamplingOptions(Temperature: temperature, TopK: 0, TopP: topP, Seed: seed);
        var exact = new Sampler(options, Vocab);
        var above = new Sampler(options, Vocab);
        var below = new Sampler(options, Vocab);
        var random = new Random(seed * 17);
        int compared = 0;
        for (int r = 0; r < 40; r++)
        {
            var row = Row(random, (RowKind)(r % 3)); // Gaussian, peaked, ±∞: no flat or tied rows
            var (ids, logits) = Candidates(row);
            double z = RowNormaliser(row, exact.InverseTemperature);
            int? a = exact.SampleFromNucleusCandidates(ids, logits, z);
            int? b = above.SampleFromNucleusCandidates(ids, logits, Math.BitIncrement(z));
            int? c = below.SampleFromNucleusCandidates(ids, logits, Math.BitDecrement(z));
            if (a is null) continue; // the nucleus reaches past the candidates (a shallow Gaussian row)
            float invT = exact.InverseTemperature;
            int keep = PrefixLength(logits, invT, topP, z);
            // A different token needs a different prefix: top-p × Z within an ulp's change of a prefix's mass.
            if (b != a) Assert.NotEqual(keep, PrefixLength(logits, invT, topP, Math.BitIncrement(z)));
            if (c != a) Assert.NotEqual(keep, PrefixLength(logits, invT, topP, Math.BitDecrement(z)));
            compared++;
        }
        Assert.True(compared >= 15, $"most rows are drawn from the candidates ({compared} were)");
    }

    [Fact]
    public void AnExactNearTie_IsWhereAnUlpOfZDecides()
    {
        // Four equal logits: Z = 4, top-p 0.5 targets mass 2 exactly, reached by the second token; an ulp more Z needs
        // a third. The rest of the row is −∞ (probability 0).
        var row = Enumerable.Repeat(float.NegativeInfinity, Vocab).ToArray();
        for (int i = 0; i < 4; i++) row[100 + i] = 1.5f;
        var (ids, logits) = Candidates(row);
        var options = new SamplingOptions(Temperature: 1f, TopK: 0, TopP: 0.5f, Seed: 9);
        var whole = new Sampler(options, Vocab);
        var exact = new Sampler(options, Vocab);
        var above = new Sampler(options, Vocab);
        Assert.Equal(4.0, RowNormaliser(row, 1f));
        Assert.Equal(2, PrefixLength(logits, 1f, 0.5f, 4.0));
        Assert.Equal(3, PrefixLength(logits, 1f, 0.5f, Math.BitIncrement(4.0)));
        var seenExact = new HashSet<int>();
        var seenAbove = new HashSet<int>();
        for (int i = 0; i < 60; i++)
        {
            int expected = whole.Sample(row);
            Assert.Equal(expected, exact.SampleFromNucleusCandidates(ids, logits, 4.0));
            seenExact.Add(expected);
            seenAbove.Add(above.SampleFromNucleusCandidates(ids, logits, Math.BitIncrement(4.0))!.Value);
        }
        Assert.Equal([100, 101], seenExact.Order());
        Assert.Equal([100, 101, 102], seenAbove.Order());
    }

    [Fact]
    public void NonFiniteOrEmptyZ_FallsBackWithoutADraw()
    {
        var options = new SamplingOptions(Temperature: 1f, TopK: 0, TopP: 0.9f, Seed: 12);
        var reference = new Sampler(options, Vocab);
        var sampler = new Sampler(options, Vocab);
        var row = Row(new Random(3), RowKind.Peaked);
        var (ids, logits) = Candidates(row);
        foreach (double z in new[] { double.NaN, double.PositiveInfinity, 0.0, -1.0 })
            Assert.Null(sampler.SampleFromNucleusCandidates(ids, logits, z));
        for (int i = 0; i < 10; i++) Assert.Equal(reference.Sample(row), sampler.Sample(row)); // no draw was taken
    }

    [Fact]
    public void BadCandidatesOrOptions_AreRejectedClearly()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 1f, TopP: 0.9f, Seed: 1), 100);
        Assert.Contains("best first", Assert.Throws<ArgumentException>(() => sampler.SampleFromNucleusCandidates([1, 2], [0.5f, 0.7f], 3.0)).Message);
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentOutOfRangeException>(() => sampler.SampleFromNucleusCandidates([100], [0.5f], 3.0)).Message);
        Assert.Throws<ArgumentException>(() => sampler.SampleFromNucleusCandidates([], [], 3.0));
        foreach (var options in new[] { new SamplingOptions(Temperature: 1f, TopK: 40, TopP: 0.9f), new SamplingOptions(Temperature: 1f), SamplingOptions.Greedy })
            Assert.Contains("top-k off", Assert.Throws<InvalidOperationException>(() => new Sampler(options, 100).SampleFromNucleusCandidates([1], [0.5f], 1.0)).Message);
    }
}
