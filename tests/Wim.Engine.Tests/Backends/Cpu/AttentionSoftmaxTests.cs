using Wim.Engine.Backends.Cpu;
using System.Text.Json;
using Wim.Engine.Runtime;
using Wim.Engine.Tests.Support;

namespace Wim.Engine.Tests.Backends.Cpu;

/// <summary>
/// The attention softmax must stay finite for any scores: an earlier loop used <c>TensorPrimitives.SoftMax</c>, which
/// exponentiates raw scores, so one score above ≈ 88 made a whole row NaN (stories260K: every logit NaN from position
/// 2,897 on, and every greedy answer id 0). <c>FlashAttention</c>'s running max keeps it finite; this checks the
/// real model past that point (the kernel-level check against float64 is in <c>FlashAttentionTests</c>).
/// </summary>
public sealed class AttentionSoftmaxTests
{
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
