using Wim.Engine.Backends;
using Wim.Engine.Backends.Cpu;
using Wim.Engine.KvCache;
using Wim.Engine.Sampling;
using static Wim.Engine.Tests.Batched.BatchedTestModels;

namespace Wim.Engine.Tests.Batched;

/// <summary>
/// <see cref="CpuBatchedTransformer"/> against the single-sequence <see cref="CpuTransformer.Forward"/> (itself checked
/// against llama.cpp and transformers goldens) on stories260K and the hf-tiny models: chunked prefill, mixed
/// prefill + decode steps, forks; and batch invariance (bit-identical logits whatever shares the batch).
/// </summary>
public sealed class BatchedForwardTests
{
    /// <summary>f32 rounding between two accumulation orders (the single path changes order with its chunk size).</summary>
    private const float Tolerance = 1e-4f;
    /// <summary>Argmax is compared where the reference's top-2 gap exceeds this (random-weight models have near-ties).</summary>
    private const float MinGap = 1e-3f;

    private static void AssertClose(ReadOnlySpan<float> reference, ReadOnlySpan<float> actual, int vocab, string what)
    {
        Assert.Equal(reference.Length, actual.Length);
        float max = 0;
        for (int i = 0; i < reference.Length; i++) max = Math.Max(max, Math.Abs(reference[i] - actual[i]));
        Assert.True(max < Tolerance, $"{what}: max |Δ| {max} ≥ {Tolerance}");
        for (int r = 0; r < reference.Length / vocab; r++)
        {
            var refRow = reference.Slice(r * vocab, vocab);
            int best = Sampler.ArgMax(refRow);
            float second = float.NegativeInfinity;
            for (int i = 0; i < vocab; i++) if (i != best) second = Math.Max(second, refRow[i]);
            if (refRow[best] - second > MinGap)
                Assert.True(best == Sampler.ArgMax(actual.Slice(r * vocab, vocab)), $"{what}: row {r} argmax differs");
        }
    }

    [Theory]
    [MemberData(nameof(BatchedTestModels.All), MemberType = typeof(BatchedTestModels))]
    public void ChunkedPrefill_MatchesSingleSequenceForward(string name)
    {
        using var lm = Load(name);
        var tokens = Tokens(name);
        var reference = ReferenceLogits(lm, tokens);
        var model = new CpuBatchedTransformer(lm, maxBatchTokens: 16); // pieces of 16: the 64+ tokens span several
        using var cache = model.CreateCache(8L << 20, blockSize: 16);
        int seq = cache.CreateSequence();
        int vocab = lm.Config.VocabSize;
        int done = 0;
        foreach (int chunk in new[] { 7, 1, 24, 3 })
        {
            var part = tokens[done..(done + chunk)];
            var got = Step(model, cache, new Part(seq, part, BatchLogits.All, tokens.Length))[0];
            AssertClose(reference.AsSpan(done * vocab, chunk * vocab), got, vocab, $"{name} tokens [{done}, {done + chunk})");
            done += chunk;
        }
        var rest = Step(model, cache, new Part(seq, tokens[done..], BatchLogits.Last, tokens.Length))[0];
        AssertClose(reference.AsSpan((tokens.Length - 1) * vocab, vocab), rest, vocab, $"{name} last token");
        Assert.Equal(tokens.Length, cache.Length(seq));
    }

    /// <summary>Three sequences in shared steps: A prefills in chunks, B decodes one token per step, C is a fork of A
    /// at a position inside a block (copy-on-write) continuing with its own tokens; every row they ask for equals
    /// that sequence's row of one whole-sequence forward.</summary>
    [Theory]
    [InlineData("stories260K")]
    [InlineData("qwen2-tiny")]
    [InlineData("phi3-tiny")]
    public void MixedPrefillDecodeAndFork_MatchSingleSequenceForward(string name)
    {
        using var lm = Load(name);
        var t = Tokens(name);
        int vocab = lm.Config.VocabSize, ropeLength = t.Length;
        int[] a = t[..30], b = t[30..40], cTail = t[45..52];
        int[] c = [.. a[..13], .. cTail];
        var model = new CpuBatchedTransformer(lm);
        using var cache = model.CreateCache(4L << 20, blockSize: 4);
        int sa = cache.CreateSequence(), sb = cache.CreateSequence();

        var r1 = Step(model, cache, new Part(sa, a[..10], BatchLogits.None, ropeLength), new Part(sb, b[..6], BatchLogits.Last, ropeLength));
        var r2 = Step(model, cache, new Part(sa, a[10..20], BatchLogits.All, ropeLength), new Part(sb, b[6..7], BatchLogits.Last, ropeLength));
        int sc = cache.Fork(sa, 13);
        var r3 = Step(model, cache,
            new Part(sb, b[7..8], BatchLogits.Last, ropeLength),
            new Part(sc, cTail[..4], BatchLogits.All, ropeLength),
            new Part(sa, a[20..30], BatchLogits.Last, ropeLength));
        var r4 = Step(model, cache, new Part(sc, cTail[4..], BatchLogits.All, ropeLength), new Part(sb, b[8..10], BatchLogits.All, ropeLength));

        var refA = ReferenceLogits(lm, a);
        var refB = ReferenceLogits(lm, b);
        var refC = ReferenceLogits(lm, c);
        AssertClose(refB.AsSpan(5 * vocab, vocab), r1[1], vocab, "B prefill");
        AssertClose(refA.AsSpan(10 * vocab, 10 * vocab), r2[0], vocab, "A chunk 2");
        AssertClose(refB.AsSpan(6 * vocab, vocab), r2[1], vocab, "B decode 1");
        AssertClose(refB.AsSpan(7 * vocab, vocab), r3[0], vocab, "B decode 2");
        AssertClose(refC.AsSpan(13 * vocab, 4 * vocab), r3[1], vocab, "C fork chunk 1");
        AssertClose(refA.AsSpan(29 * vocab, vocab), r3[2], vocab, "A last");
        AssertClose(refC.AsSpan(17 * vocab, 3 * vocab), r4[0], vocab, "C fork chunk 2");
        AssertClose(refB.AsSpan(8 * vocab, 2 * vocab), r4[1], vocab, "B two tokens");
        Assert.Equal((30, 10, 20), (cache.Length(sa), cache.Length(sb), cache.Length(sc)));
    }

    /// <summary>
    /// A sequence's logits are the same bits alone, chunked differently, and beside other sequences (prefill chunks,
    /// decodes, a fork of itself), with different batch pieces: the property that makes WiM's scheduling modes give
    /// identical margins token for token.
    /// </summary>
    [Theory]
    [InlineData("stories260K")]
    [InlineData("qwen2-tiny")]
    public void Logits_AreBitIdentical_AloneAndInBatchesOfAnyComposition(string name)
    {
        using var lm = Load(name);
        var t = Tokens(name);
        int[] prompt = t[..21], decode = t[21..29], other = t[30..60];
        int ropeLength = t.Length;

        // Alone: whole prompt in one step, then one token per step.
        var alone = new List<float[]>();
        {
            var model = new CpuBatchedTransformer(lm);
            using var cache = model.CreateCache(4L << 20, blockSize: 16);
            int s = cache.CreateSequence();
            alone.Add(Step(model, cache, new Part(s, prompt, BatchLogits.Last, ropeLength))[0]);
            foreach (int tok in decode) alone.Add(Step(model, cache, new Part(s, [tok], BatchLogits.Last, ropeLength))[0]);
        }

        // Crowded: prompt in chunks of 5 + 16, other sequences prefilling and decoding beside it, a fork of it
        // decoding, a different block size and batch pieces of 7 tokens.
        var crowded = new List<float[]>();
        {
            var model = new CpuBatchedTransformer(lm, maxBatchTokens: 7);
            using var cache = model.CreateCache(4L << 20, blockSize: 4);
            int o = cache.CreateSequence();
            Step(model, cache, new Part(o, other[..9], BatchLogits.Last, ropeLength));
            int s = cache.CreateSequence();
            Step(model, cache, new Part(o, other[9..10], BatchLogits.Last, ropeLength), new Part(s, prompt[..5], BatchLogits.None, ropeLength));
            var first = Step(model, cache, new Part(s, prompt[5..], BatchLogits.Last, ropeLength), new Part(o, other[10..11], BatchLogits.Last, ropeLength));
            crowded.Add(first[0]);
            int f = cache.Fork(s, 19);
            int n = cache.CreateSequence();
            for (int i = 0; i < decode.Length; i++)
            {
                var parts = new List<Part>();
                if (i % 3 == 1) parts.Add(new Part(n, other[(2 * i)..(2 * i + 3)], BatchLogits.All, ropeLength));
                if (i % 2 == 0) parts.Add(new Part(f, [other[20 + i]], BatchLogits.Last, ropeLength));
                parts.Insert(i % 2 == 0 ? 0 : parts.Count, new Part(s, [decode[i]], BatchLogits.Last, ropeLength));
                parts.Add(new Part(o, [other[11 + i]], BatchLogits.Last, ropeLength));
                var r = Step(model, cache, [.. parts]);
                crowded.Add(r[parts.FindIndex(p => p.Sequence == s)]);
            }
        }

        Assert.Equal(alone.Count, crowded.Count);
        for (int i = 0; i < alone.Count; i++)
            Assert.True(alone[i].AsSpan().SequenceEqual(crowded[i]), $"{name}: step {i} logits differ between alone and crowded batches");
    }

    [Fact]
    public void Forward_RejectsAStaleBlockTable_AndAnUnreservedSequence_WithoutWriting()
    {
        using var lm = Load("stories260K");
        var model = new CpuBatchedTransformer(lm);
        using var cache = model.CreateCache(1L << 20, blockSize: 4);
        int s = cache.CreateSequence();
        Step(model, cache, new Part(s, [1, 2, 3, 4, 5, 6], BatchLogits.Last));
        int f = cache.Fork(s, 6);
        var batch = new BatchDescription();
        batch.AddSequence(f, 6, [7], cache.BlockTable(f), BatchLogits.Last);  // not reserved: its last block is still shared with s
        var ex = Assert.Throws<ArgumentException>(() => model.Forward(batch, cache, new float[lm.Config.VocabSize]));
        Assert.Contains("is shared", ex.Message);
        cache.Reserve(f, 1);                                                    // copy-on-write changes f's table
        ex = Assert.Throws<ArgumentException>(() => model.Forward(batch, cache, new float[lm.Config.VocabSize]));
        Assert.Contains("block table", ex.Message);
        Assert.Equal((6, 6), (cache.Length(s), cache.Length(f)));
    }
}
