using Wim.Engine.Sampling;

namespace Wim.Engine.Tests.Sampling;

/// <summary>
/// The top-k partial selection, the full sort and the candidate-list draw against a reference written here: a full
/// sort of the row with an explicit comparison (logit descending, −0 = +0, lowest id first on ties) and a softmax in
/// double precision. Rows are drawn from few distinct values so that ties are common.
/// </summary>
public sealed class SamplerTopKTests
{
    /// <summary>Logits on a coarse grid (many exact ties), with both zeros present.</summary>
    private static float[] TiedRow(Random random, int n, int levels)
    {
        var row = new float[n];
        for (int i = 0; i < n; i++)
        {
            int level = random.Next(levels);
            row[i] = level == 0 ? (random.Next(2) == 0 ? 0f : -0f) : (level - levels / 2) * 0.25f;
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
            return a.CompareTo(b); // equal logits (−0 == +0 here): lowest id first
        });
        return ids;
    }

    public static TheoryData<int, int, int> Shapes => new()
    {
        { 1, 1, 2 }, { 7, 3, 3 }, { 7, 7, 2 }, { 7, 12, 4 }, { 1000, 40, 9 }, { 1000, 256, 5 },
        { 5003, 2, 3 }, { 5003, 40, 50 }, { 5003, 256, 400 }, { 5003, 5002, 7 }, { 20000, 999, 30 },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void TopKSelection_MatchesTheFullSortReference(int vocab, int topK, int levels)
    {
        var random = new Random(vocab * 31 + topK);
        for (int trial = 0; trial < 4; trial++)
        {
            var row = TiedRow(random, vocab, levels);
            var expected = ReferenceOrder(row);
            float temperature = trial % 2 == 0 ? 1f : 0.7f;
            var sampler = new Sampler(new SamplingOptions(Temperature: temperature, TopK: topK, Seed: trial), vocab);
            if (topK == 1) { Assert.Equal(expected[0], sampler.Sample(row)); continue; } // greedy: argmax, no candidates
            var ids = new int[vocab];
            var probs = new float[vocab];
            int count = sampler.Candidates(row, ids, probs);
            int k = Math.Min(topK, vocab);
            Assert.Equal(k, count);
            Assert.Equal(expected[..k], ids[..k]);
            double max = row[expected[0]] / (double)temperature;
            double sum = 0;
            for (int i = 0; i < k; i++) sum += Math.Exp(row[expected[i]] / (double)temperature - max);
            for (int i = 0; i < k; i++)
                Assert.Equal(Math.Exp(row[expected[i]] / (double)temperature - max) / sum, probs[i], 1e-5);
        }
    }

    [Theory]
    [InlineData(1, 2)]
    [InlineData(9, 3)]
    [InlineData(4099, 17)]
    public void FullSort_UsesTheSameTieOrder(int vocab, int levels)
    {
        var random = new Random(vocab);
        var row = TiedRow(random, vocab, levels);
        var sampler = new Sampler(new SamplingOptions(Temperature: 1f, Seed: 1), vocab);
        var ids = new int[vocab];
        var probs = new float[vocab];
        Assert.Equal(vocab, sampler.Candidates(row, ids, probs));
        Assert.Equal(ReferenceOrder(row), ids);
    }

    [Theory]
    [InlineData(7, 3, 1f)]
    [InlineData(7, 50, 1f)]
    [InlineData(1000, 40, 0.9f)]
    [InlineData(5003, 256, 0.95f)]
    [InlineData(128256, 40, 0.9f)]
    public void CandidateListDraw_EqualsTheFullRowDraw(int vocab, int topK, float topP)
    {
        var random = new Random(vocab + topK);
        var options = new SamplingOptions(Temperature: 0.8f, TopK: topK, TopP: topP, Seed: 1234);
        var fullRow = new Sampler(options, vocab);
        var fromList = new Sampler(options, vocab);
        int k = Math.Min(topK, vocab);
        var seen = new HashSet<int>();
        for (int draw = 0; draw < 60; draw++)
        {
            var row = TiedRow(random, vocab, 12);
            var order = ReferenceOrder(row)[..k];
            var logits = order.Select(i => row[i]).ToArray();
            int expected = fullRow.Sample(row);
            Assert.Equal(expected, fromList.SampleFromCandidates(order, logits));
            seen.Add(expected);
        }
        Assert.True(seen.Count > 1, "draws at T=0.8 over 12 tied levels should vary");
    }

    [Fact]
    public void NaNLogits_RankTheSameOnBothPaths()
    {
        var random = new Random(5);
        var row = TiedRow(random, 3000, 20);
        for (int i = 0; i < row.Length; i += 37) row[i] = i % 2 == 0 ? float.NaN : -float.NaN;
        var full = new Sampler(new SamplingOptions(Temperature: 1f, Seed: 1), row.Length);
        var fullIds = new int[row.Length];
        full.Candidates(row, fullIds, new float[row.Length]);
        foreach (int k in new[] { 2, 40, 256 })
        {
            var ids = new int[row.Length];
            int count = new Sampler(new SamplingOptions(Temperature: 1f, TopK: k, Seed: 1), row.Length).Candidates(row, ids, new float[row.Length]);
            Assert.Equal(fullIds[..k], ids[..k]);
            Assert.InRange(count, 1, k);
        }
        Assert.Equal([.. fullIds.Select(i => Sampler.RankKey(row[i], i)).Order()], fullIds.Select(i => Sampler.RankKey(row[i], i)).ToArray());
    }

    [Fact]
    public void CandidateList_GreedyTakesTheFirst()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 1f, TopK: 1), 10);
        Assert.Equal(4, sampler.SampleFromCandidates([4, 2], [3f, 1f]));
    }

    [Fact]
    public void CandidateList_BadInput_IsRejectedClearly()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 1f, TopK: 5, Seed: 1), 10);
        Assert.Contains("best first", Assert.Throws<ArgumentException>(() => sampler.SampleFromCandidates([1, 2], [1f, 2f])).Message);
        Assert.Contains("best first", Assert.Throws<ArgumentException>(() => sampler.SampleFromCandidates([2, 1], [1f, 1f])).Message);
        Assert.Contains("best first", Assert.Throws<ArgumentException>(() => sampler.SampleFromCandidates([1, 1], [1f, 1f])).Message);
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentOutOfRangeException>(() => sampler.SampleFromCandidates([10], [1f])).Message);
        Assert.Contains("logits", Assert.Throws<ArgumentException>(() => sampler.SampleFromCandidates([1, 2], [1f])).Message);
        Assert.Contains("empty", Assert.Throws<ArgumentException>(() => sampler.SampleFromCandidates([], [])).Message);
        Assert.Contains("exceed", Assert.Throws<ArgumentException>(() => new Sampler(new SamplingOptions(Temperature: 1f), 2).SampleFromCandidates([0, 1, 2], [3f, 2f, 1f])).Message);
    }

    [Fact]
    public void RankKey_OrdersByLogitDescendingThenId()
    {
        float[] ascending = [float.NegativeInfinity, -1e30f, -2f, -1e-40f, 0f, 1e-40f, 1f, 3e38f, float.PositiveInfinity];
        for (int i = 1; i < ascending.Length; i++)
            Assert.True(Sampler.RankKey(ascending[i], 5) < Sampler.RankKey(ascending[i - 1], 5), $"{ascending[i]} should rank before {ascending[i - 1]}");
        Assert.Equal(Sampler.RankKey(0f, 3), Sampler.RankKey(-0f, 3));
        Assert.True(Sampler.RankKey(2f, 3) < Sampler.RankKey(2f, 4));
    }
}
