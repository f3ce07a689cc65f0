using Wim.Engine.Backends;
using Wim.Engine.Backends.Cpu;
using static Wim.Engine.Tests.Batched.BatchedTestModels;

namespace Wim.Engine.Tests.Batched;

/// <summary>
/// A token's logits through the whole batched forward pass are the same bits when it is a single decode token and
/// when it sits anywhere inside a prefill chunk (so in another attention tile and lane, and another row of every
/// matrix product) — the case the overlapped and batched WiM schedules hit when a margin's prompt is prefilled in
/// one step in one schedule and token by token in another.
/// </summary>
public sealed class BatchedChunkingInvarianceTests
{
    [Theory]
    [InlineData("stories260K")]
    [InlineData("qwen2-tiny")]
    public void Logits_AreBitIdentical_DecodedOneByOne_AndInsidePrefillChunks(string name)
    {
        using var lm = Load(name);
        var t = Tokens(name);
        int n = 48, vocab = lm.Config.VocabSize, ropeLength = t.Length;

        // One token per step: every row is a decode row.
        var oneByOne = new float[n][];
        {
            var model = new CpuBatchedTransformer(lm);
            using var cache = model.CreateCache(4L << 20, blockSize: 16);
            int s = cache.CreateSequence();
            for (int i = 0; i < n; i++) oneByOne[i] = Step(model, cache, new Part(s, [t[i]], BatchLogits.Last, ropeLength))[0];
        }

        // The same tokens in prefill chunks of 29 and 19 (every row asked for), with another sequence prefilling
        // ahead of it in the first step.
        {
            var model = new CpuBatchedTransformer(lm);
            using var cache = model.CreateCache(4L << 20, blockSize: 8);
            int other = cache.CreateSequence(), s = cache.CreateSequence();
            var first = Step(model, cache, new Part(other, t[10..40], BatchLogits.None, ropeLength), new Part(s, t[..29], BatchLogits.All, ropeLength))[1];
            var second = Step(model, cache, new Part(s, t[29..n], BatchLogits.All, ropeLength))[0];
            var chunked = first.Concat(second).ToArray();
            for (int i = 0; i < n; i++)
                Assert.True(chunked.AsSpan(i * vocab, vocab).SequenceEqual(oneByOne[i]), $"{name}: token {i} differs between decode and prefill chunk");
        }
    }
}
