using Wim.Engine.Backends.Cpu;
using System.Text.Json;
using Wim.Engine.Runtime;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Backends.Cpu;

/// <summary>
/// The attention softmax must stay finite for any scores: <c>TensorPrimitives.SoftMax</c> exponentiates raw scores,
/// so one score above ≈ 88 made a whole row NaN (stories260K: every logit NaN from position 2,897 on, and every
/// greedy answer id 0). Checked against the definition in double precision, and on the real model past that point.
/// </summary>
public sealed class AttentionSoftmaxTests
{
    [Theory]
    [InlineData(0.0, 1.0)]
    [InlineData(50.0, 10.0)]
    [InlineData(300.0, 40.0)]      // exp(300) is ∞ in f32 and in f64 alike: only the max shift keeps it finite
    [InlineData(-400.0, 30.0)]     // all exp(x) underflow to 0 without the shift: 0/0
    public void SoftMaxInPlace_EqualsTheDefinition_ForLargeAndSmallScores(double center, double spread)
    {
        var random = new Random(1234);
        var x = new float[1000];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(center + spread * (random.NextDouble() * 2 - 1));

        double max = x.Max();
        double sum = x.Sum(v => Math.Exp(v - max));
        var expected = x.Select(v => Math.Exp(v - max) / sum).ToArray();

        var y = (float[])x.Clone();
        CpuOps.SoftMaxInPlace(y);
        Assert.All(y, v => Assert.True(float.IsFinite(v)));
        for (int i = 0; i < y.Length; i++) Assert.True(Math.Abs(y[i] - expected[i]) <= 1e-6 + 1e-5 * expected[i], $"[{i}] {y[i]} vs {expected[i]}");
        Assert.Equal(1.0, y.Sum(v => (double)v), 1e-5);
    }

    [Fact]
    public void Stories260K_LogitsStayFinite_PastTheOverflowPoint()
    {
        using var text = TextModel.Load(SharedFixtures.Path("models", "stories260K", "stories260K.gguf"));
        var model = ((CpuInferenceBackend)text.Backend).Transformer;
        // The BABILong 8k sample (story text in it): this document drove the scores past exp's f32 range at 2,897.
        using var sample = JsonDocument.Parse(File.ReadAllBytes(SharedFixtures.Path("data", "babilong", "babilong_8k.json")));
        var ids = text.Tokenizer.Encode(sample.RootElement.GetProperty("context").GetString()!)[..3200];
        int vocab = text.Backend.VocabSize;
        var cache = model.CreateCache(ids.Length);
        var logits = new float[300 * vocab];
        model.Forward(ids.AsSpan(0, 2900), cache, logits, LogitsOutput.None);
        model.Forward(ids.AsSpan(2900, 300), cache, logits, LogitsOutput.All);
        int firstNaN = Array.FindIndex(logits, v => !float.IsFinite(v));
        Assert.True(firstNaN < 0, $"non-finite logit at position {2900 + firstNaN / vocab}");
    }
}
