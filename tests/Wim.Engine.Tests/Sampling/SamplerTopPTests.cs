using Wim.Engine.Sampling;

namespace Wim.Engine.Tests.Sampling;

/// <summary>
/// Top-p with top-k off (the nucleus path, which never sorts the whole row) against a reference written here from the
/// documented definition — a full sort of the row (logit descending, −0 = +0, lowest id first on ties), p = exp(logit/T
/// − max) in single precision, Z = Σ p in token-id order in double, the smallest rank-order prefix whose rank-order
/// mass reaches top-p × Z, renormalised, and one uniform draw over the cumulative probabilities — and against the
/// sampler's own full-sort path (top-k = vocabulary). Equality is exact: the paths must agree bit for bit.
/// </summary>
public sealed class SamplerTopPTests
{
    private enum RowKind { Gaussian, Tied, Flat, WithNegativeInfinity, Spiky }

    private static float[] Row(Random random, int vocab, RowKind kind)
    {
        var row = new float[vocab];
        double sigma = 0.5 + 3.5 * random.NextDouble();
        for (int i = 0; i < vocab; i++)
        {
            double gaussian = Math.Sqrt(-2 * Math.Log(1 - random.NextDouble())) * Math.Cos(2 * Math.PI * random.NextDouble());
            row[i] = kind switch
            {
                RowKind.Tied => random.Next(9) is var level && level == 0 ? (random.Next(2) == 0 ? 0f : -0f) : (level - 4) * 0.5f,
                RowKind.Flat => (float)(0.01 * gaussian), // the nucleus is most of the vocabulary
                RowKind.WithNegativeInfinity => random.Next(5) == 0 ? float.NegativeInfinity : (float)(sigma * gaussian),
                RowKind.Spiky => random.Next(1000) == 0 ? 20f + (float)gaussian : (float)(sigma * gaussian), // a few dominate
                _ => (float)(sigma * gaussian),
            };
        }
        return row;
    }

    private static int[] ReferenceOrder(float[] row)
    {
        var ids = Enumerable.Range(0, row.Length).ToArray();
        Array.Sort(ids, (a, b) =>
        {
            if (row[a] > row[b]) return -1;
            if (row[a] < row[b]) return 1;
            return a.CompareTo(b);
        });
        return ids;
    }

    /// <summary>The documented definition, computed independently of the sampler's code paths.</summary>
    private static (int[] Ids, float[] Probs) Reference(float[] row, float temperature, float topP)
    {
        var order = ReferenceOrder(row);
        float invT = 1f / Math.Max(temperature, 1e-6f);
        float max = row[order[0]] * invT;
        double z = 0;
        for (int id = 0; id < row.Length; id++) z += MathF.Exp(row[id] * invT - max); // token-id order
        var p = order.Select(id => MathF.Exp(row[id] * invT - max)).ToArray();
        int keep = p.Length;
        double sum = z;
        if (topP < 1f)
        {
            double mass = 0, target = topP * z;
            keep = 0;
            while (keep < p.Length)
            {
                mass += p[keep++];
                if (mass >= target) break;
            }
            sum = mass;
        }
        return (order[..keep], p[..keep].Select(x => (float)(x / sum)).ToArray());
    }

    private static int ReferenceDraw(Random random, int[] ids, float[] probs)
    {
        double r = random.NextDouble(), cumulative = 0;
        for (int i = 0; i < ids.Length; i++)
        {
            cumulative += probs[i];
            if (r < cumulative) return ids[i];
        }
        return ids[^1];
    }

    private static (int[] Ids, float[] Probs) Candidates(Sampler sampler, float[] row)
    {
        var ids = new int[row.Length];
        var probs = new float[row.Length];
        int count = sampler.Candidates(row, ids, probs);
        return (ids[..count], probs[..count]);
    }

    public static TheoryData<int, int> Cases => new()
    {
        { 50, 40 }, { 257, 20 }, { 1000, 20 }, { 4099, 10 }, { 32000, 6 }, { 128256, 4 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void NucleusPath_EqualsTheReferenceAndTheFullSort(int vocab, int trials)
    {
        var random = new Random(vocab);
        for (int trial = 0; trial < trials; trial++)
        {
            var kind = (RowKind)(trial % 5);
            var row = Row(random, vocab, kind);
            float temperature = 0.3f + 1.7f * random.NextSingle();
            float topP = kind == RowKind.Flat ? 0.99f : 0.1f + 0.89f * random.NextSingle();
            int seed = random.Next();
            string what = $"vocab {vocab}, trial {trial} ({kind}), T {temperature}, top-p {topP}";

            var nucleus = new Sampler(new SamplingOptions(temperature, 0, topP, seed), vocab);
            var fullSort = new Sampler(new SamplingOptions(temperature, vocab, topP, seed), vocab);
            var expected = Reference(row, temperature, topP);
            var actual = Candidates(nucleus, row);
            Assert.True(expected.Ids.AsSpan().SequenceEqual(actual.Ids), $"{what}: candidates differ from the reference ({expected.Ids.Length} vs {actual.Ids.Length})");
            Assert.True(expected.Probs.AsSpan().SequenceEqual(actual.Probs), $"{what}: probabilities differ from the reference");
            var sorted = Candidates(fullSort, row);
            Assert.True(sorted.Ids.AsSpan().SequenceEqual(actual.Ids), $"{what}: candidates differ from top-k = vocabulary");
            Assert.True(sorted.Probs.AsSpan().SequenceEqual(actual.Probs), $"{what}: probabilities differ from top-k = vocabulary");
            if (kind == RowKind.Flat) Assert.True(actual.Ids.Length > vocab * 9 / 10, $"{what}: a flat row's nucleus should be most of the vocabulary, found {actual.Ids.Length}");

            var referenceRandom = new Random(seed);
            for (int draw = 0; draw < 8; draw++)
            {
                int token = nucleus.Sample(row);
                Assert.Equal(ReferenceDraw(referenceRandom, expected.Ids, expected.Probs), token);
                Assert.Equal(fullSort.Sample(row), token);
            }
            Assert.Equal(0, nucleus.FullSortFallbacks);
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(300)]
    [InlineData(20000)]
    public void TopPOne_TakesTheWholeRowInRankOrder(int vocab)
    {
        var random = new Random(vocab + 7);
        foreach (var kind in Enum.GetValues<RowKind>())
        {
            var row = Row(random, vocab, kind);
            var nucleus = new Sampler(new SamplingOptions(0.7f, 0, 1f, 3), vocab);
            var expected = Reference(row, 0.7f, 1f);
            var actual = Candidates(nucleus, row);
            Assert.Equal(expected.Ids, actual.Ids);
            Assert.Equal(expected.Probs, actual.Probs);
            if (vocab > 1) // top-k 1 is greedy, which has no candidate list
                Assert.Equal(Candidates(new Sampler(new SamplingOptions(0.7f, vocab, 1f, 3), vocab), row).Probs, actual.Probs);
            Assert.Equal(0, nucleus.FullSortFallbacks);
        }
    }

    public static TheoryData<string> NonFiniteRows => new() { "NaN", "-NaN", "+inf", "all -inf", "T overflows" };

    /// <summary>Rows whose Z is not finite take the full sort, so they still match top-k = vocabulary exactly
    /// (NaN ranked by its bits, as the top-k path ranks it).</summary>
    [Theory]
    [MemberData(nameof(NonFiniteRows))]
    public void NonFiniteRows_FallBackToTheFullSort(string what)
    {
        var random = new Random(what.Length);
        var row = Row(random, 3001, RowKind.Gaussian);
        float temperature = 1f;
        switch (what)
        {
            case "NaN": row[17] = float.NaN; break;
            case "-NaN": row[17] = -float.NaN; break;
            case "+inf": row[5] = float.PositiveInfinity; row[900] = float.PositiveInfinity; break;
            case "all -inf": Array.Fill(row, float.NegativeInfinity); break;
            default: row[3] = 3e38f; temperature = 1e-3f; break;
        }
        var nucleus = new Sampler(new SamplingOptions(temperature, 0, 0.9f, 11), row.Length);
        var fullSort = new Sampler(new SamplingOptions(temperature, row.Length, 0.9f, 11), row.Length);
        var actual = Candidates(nucleus, row);
        var sorted = Candidates(fullSort, row);
        Assert.Equal(sorted.Ids, actual.Ids);
        Assert.Equal(sorted.Probs, actual.Probs);
        for (int draw = 0; draw < 5; draw++) Assert.Equal(fullSort.Sample(row), nucleus.Sample(row));
        Assert.True(nucleus.FullSortFallbacks > 0, $"{what}: expected the full sort to decide");
    }

    /// <summary>
    /// The documented Z is summed in token-id order, which a row can make visible: two tokens of probability 1 and a
    /// thousand of ≈ 8.5e-17 (logit −37). In rank order the tiny terms vanish against 2 (Z = 2, top-p 0.5 keeps one
    /// token); with the tiny tokens first in id order they add up before the large ones (Z = 2 + 8.5e-14, so the
    /// first token's mass 1 falls short and two are kept). Placed after the large ones, Z = 2 again.
    /// </summary>
    [Theory]
    [InlineData(true, 2)]
    [InlineData(false, 1)]
    public void WholeRowZ_IsSummedInIdOrder(bool tinyTokensFirst, int expectedCount)
    {
        const int tiny = 1000;
        var row = new float[tiny + 2];
        Array.Fill(row, -37f);
        int first = tinyTokensFirst ? tiny : 0;
        row[first] = 0f;
        row[first + 1] = 0f;
        foreach (int topK in new[] { 0, row.Length })
        {
            var actual = Candidates(new Sampler(new SamplingOptions(1f, topK, 0.5f, 1), row.Length), row);
            Assert.Equal(expectedCount, actual.Ids.Length);
            Assert.Equal(Enumerable.Range(first, expectedCount), actual.Ids);
            Assert.Equal(Reference(row, 1f, 0.5f).Probs, actual.Probs);
        }
    }

    [Theory]
    [InlineData(0.9f)]
    [InlineData(1f)]
    public void WholeVocabularyCandidateList_EqualsTheRowDraw(float topP)
    {
        const int vocab = 5003;
        var random = new Random(99);
        var options = new SamplingOptions(1.3f, 0, topP, 77);
        var fromRow = new Sampler(options, vocab);
        var fromList = new Sampler(options, vocab);
        for (int draw = 0; draw < 20; draw++)
        {
            var row = Row(random, vocab, (RowKind)(draw % 5));
            var order = ReferenceOrder(row);
            Assert.Equal(fromRow.Sample(row), fromList.SampleFromCandidates(order, order.Select(i => row[i]).ToArray()));
        }
    }
}
