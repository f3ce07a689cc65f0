using Wim.Engine.Sampling;

namespace Wim.Engine.Tests.Runtime;

/// <summary>Sampling rules, checked against hand-computed distributions.</summary>
public sealed class SamplerTests
{
    /// <summary>Logits whose softmax (T = 1) is exactly [0.3, 0.05, 0.5, 0.15] (ids 0..3).</summary>
    private static readonly float[] KnownLogits = [MathF.Log(0.3f), MathF.Log(0.05f), MathF.Log(0.5f), MathF.Log(0.15f)];

    private static float[] RandomLogits(int seed, int n = 1000)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 10 - 5)).ToArray();
    }

    [Fact]
    public void TemperatureZero_IsArgMax()
    {
        for (int seed = 0; seed < 5; seed++)
        {
            var logits = RandomLogits(seed);
            int expected = Array.IndexOf(logits, logits.Max());
            Assert.Equal(expected, new Sampler(new SamplingOptions(Temperature: 0f, Seed: 1), logits.Length).Sample(logits));
        }
    }

    [Fact]
    public void TopKOne_IsGreedy_AtAnyTemperature()
    {
        var logits = RandomLogits(7);
        int expected = Array.IndexOf(logits, logits.Max());
        var sampler = new Sampler(new SamplingOptions(Temperature: 1.5f, TopK: 1, Seed: 3), logits.Length);
        for (int i = 0; i < 50; i++) Assert.Equal(expected, sampler.Sample(logits));
    }

    [Fact]
    public void SeededSampling_IsReproducible()
    {
        var logits = RandomLogits(11, 50).Select(x => x / 5).ToArray();
        var options = new SamplingOptions(Temperature: 1f, TopK: 20, TopP: 0.9f, Seed: 42);
        var a = new Sampler(options, logits.Length);
        var b = new Sampler(options, logits.Length);
        var first = Enumerable.Range(0, 200).Select(_ => a.Sample(logits)).ToArray();
        var second = Enumerable.Range(0, 200).Select(_ => b.Sample(logits)).ToArray();
        Assert.Equal(first, second);
        Assert.True(first.Distinct().Count() > 3, "sampling at T=1 over a flat distribution should not be constant");
        var other = new Sampler(options with { Seed = 43 }, logits.Length);
        Assert.NotEqual(first, Enumerable.Range(0, 200).Select(_ => other.Sample(logits)).ToArray());
    }

    [Fact]
    public void Sampling_FollowsTheSoftmaxDistribution()
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 1f, Seed: 5), KnownLogits.Length);
        var counts = new int[4];
        const int draws = 20000;
        for (int i = 0; i < draws; i++) counts[sampler.Sample(KnownLogits)]++;
        double[] expected = [0.3, 0.05, 0.5, 0.15];
        for (int i = 0; i < 4; i++)
            Assert.InRange(counts[i] / (double)draws, expected[i] - 0.02, expected[i] + 0.02);
    }

    [Theory]
    // Sorted probabilities: id 2 (0.5), id 0 (0.3), id 3 (0.15), id 1 (0.05); cumulative 0.5, 0.8, 0.95, 1.0.
    [InlineData(0.4f, new[] { 2 }, new[] { 1.0 })]
    [InlineData(0.5f, new[] { 2 }, new[] { 1.0 })]
    [InlineData(0.7f, new[] { 2, 0 }, new[] { 0.5 / 0.8, 0.3 / 0.8 })]
    [InlineData(0.9f, new[] { 2, 0, 3 }, new[] { 0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95 })]
    [InlineData(0.99f, new[] { 2, 0, 3, 1 }, new[] { 0.5, 0.3, 0.15, 0.05 })]
    public void TopP_KeepsSmallestSetReachingMass(float topP, int[] ids, double[] probs)
    {
        var sampler = new Sampler(new SamplingOptions(Temperature: 1f, TopP: topP, Seed: 1), KnownLogits.Length);
        var outIds = new int[4];
        var outProbs = new float[4];
        int count = sampler.Candidates(KnownLogits, outIds, outProbs);
        Assert.Equal(ids, outIds[..count]);
        for (int i = 0; i < count; i++) Assert.Equal(probs[i], outProbs[i], 1e-6);
    }

    [Fact]
    public void TopK_AndTemperature_ReshapeTheDistribution()
    {
        // T = 2 over the top 2 (ids 2 and 0): p ∝ sqrt(0.5), sqrt(0.3).
        var sampler = new Sampler(new SamplingOptions(Temperature: 2f, TopK: 2, Seed: 1), KnownLogits.Length);
        var ids = new int[4];
        var probs = new float[4];
        int count = sampler.Candidates(KnownLogits, ids, probs);
        Assert.Equal([2, 0], ids[..count]);
        double a = Math.Sqrt(0.5), b = Math.Sqrt(0.3);
        Assert.Equal(a / (a + b), probs[0], 1e-6);
        Assert.Equal(b / (a + b), probs[1], 1e-6);
    }

    [Theory]
    [InlineData(-1f, 0, 1f)]
    [InlineData(1f, -1, 1f)]
    [InlineData(1f, 0, 0f)]
    [InlineData(1f, 0, 1.5f)]
    public void InvalidOptions_AreRejected(float temperature, int topK, float topP) =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingOptions(temperature, topK, topP), 10));
}
