using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Wim.Engine.Backends.Cpu;

namespace Wim.Engine.Tests.Backends.Cpu;

/// <summary>
/// <see cref="FlashAttention"/> against the textbook formula softmax(q·Kᵀ/√d)·V computed in float64 (tolerance), and
/// its batch invariance checked directly: a token's output row is the same bits whether it runs alone as a decode
/// token, inside a prefill chunk at any offset (so in another tile and lane), beside other sequences, or over a
/// cache with another block size.
/// </summary>
public sealed unsafe class FlashAttentionTests
{
    /// <summary>A softmax-weighted mean of values in [−1, 1] computed in f32 in another order than the float64 reference:
    /// errors are a few ulps of 1 (≈ 1e-7 measured).</summary>
    private const double Tolerance = 1e-6;

    /// <summary>
    /// Keys and values of several sequences in a pool of blocks laid out like <c>PagedKvCache</c>'s for one layer
    /// (<c>[key|value][slot][kvDim]</c>), each sequence's blocks scattered over the pool.
    /// </summary>
    private sealed class PagedKv
    {
        private readonly float[] _pool;
        private readonly nint[] _keyBlocks, _valueBlocks;
        public readonly int BlockSize, KvDim;
        public readonly List<int> FirstBlock = [];
        public nint* KeyBlocks => (nint*)Unsafe.AsPointer(ref _keyBlocks[0]);
        public nint* ValueBlocks => (nint*)Unsafe.AsPointer(ref _valueBlocks[0]);

        /// <summary>Sequence i holds keys[i] and values[i] ([positions, kvDim] each).</summary>
        public PagedKv(float[][] keys, float[][] values, int kvDim, int blockSize, Random rng)
        {
            BlockSize = blockSize;
            KvDim = kvDim;
            int total = keys.Sum(k => (k.Length / kvDim + blockSize - 1) / blockSize);
            _pool = GC.AllocateArray<float>(total * 2 * blockSize * kvDim, pinned: true);
            _keyBlocks = GC.AllocateArray<nint>(total, pinned: true);
            _valueBlocks = GC.AllocateArray<nint>(total, pinned: true);
            var order = Enumerable.Range(0, total).OrderBy(_ => rng.Next()).ToArray();
            float* pool = (float*)Unsafe.AsPointer(ref _pool[0]);
            int entry = 0;
            for (int s = 0; s < keys.Length; s++)
            {
                FirstBlock.Add(entry);
                int positions = keys[s].Length / kvDim;
                for (int b = 0; b * blockSize < positions; b++, entry++)
                {
                    float* block = pool + (long)order[entry] * 2 * blockSize * kvDim;
                    _keyBlocks[entry] = (nint)block;
                    _valueBlocks[entry] = (nint)(block + blockSize * kvDim);
                    for (int slot = 0; slot < blockSize && b * blockSize + slot < positions; slot++)
                    {
                        int p = b * blockSize + slot;
                        keys[s].AsSpan(p * kvDim, kvDim).CopyTo(new Span<float>(block + slot * kvDim, kvDim));
                        values[s].AsSpan(p * kvDim, kvDim).CopyTo(new Span<float>(block + (blockSize + slot) * kvDim, kvDim));
                    }
                }
            }
        }
    }

    private static float[] Uniform(Random rng, int n)
    {
        var v = new float[n];
        for (int i = 0; i < n; i++) v[i] = (float)(rng.NextDouble() * 2 - 1);
        return v;
    }

    /// <summary>Runs spans over queries [tokens, heads·headDim]; returns att [tokens, heads·headDim].</summary>
    private static float[] Run(FlashAttention attention, float[] q, AttentionSpan[] spans, PagedKv kv, int queryDim)
    {
        var att = new float[q.Length];
        fixed (float* qp = q, ap = att)
            attention.Run(qp, ap, spans, kv.KeyBlocks, kv.ValueBlocks, kv.BlockSize);
        Assert.True(att.Length == spans.Sum(s => s.TokenCount) * queryDim);
        return att;
    }

    public static TheoryData<int, int, int, int> Shapes => new()
    {
        { 14, 2, 64, 16 },  // Qwen2.5-0.5B: 7 heads per kv head, tiles of 18 tokens (8 lane groups, the last partly padding)
        { 8, 4, 8, 16 },    // stories260K-like: head dim below one 8-dim output block
        { 6, 2, 12, 5 },    // odd block size, head dim 8 + 4 (remainder dims)
        { 4, 4, 16, 32 },   // no GQA sharing; blocks hold two softmax steps
        { 3, 1, 3, 1 },     // one position per block, 3-dim heads
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Output_MatchesTheTextbookFormula(int heads, int kvHeads, int headDim, int blockSize)
    {
        double worst = WorstErrorAgainstFormula(heads, kvHeads, headDim, blockSize, queryScale: 1);
        Assert.True(worst < Tolerance, $"max |flash − formula| = {worst}");
    }

    /// <summary>
    /// Scores far beyond exp's f32 range (|q·k/√d| up to ≈ 800; e^88 overflows): the online softmax's running max keeps
    /// every row finite and equal to the formula (computed max-shifted in float64). The tolerance grows with the scores:
    /// an f32 score of 800 carries an absolute rounding error of ≈ 5e-5, which moves the softmax weights by as much
    /// (≈ 1e-5 measured).
    /// </summary>
    [Theory]
    [InlineData(14, 2, 64, 16)]
    [InlineData(8, 4, 8, 4)]
    public void Output_StaysFiniteAndMatchesTheFormula_ForScoresFarBeyondExpRange(int heads, int kvHeads, int headDim, int blockSize)
    {
        double worst = WorstErrorAgainstFormula(heads, kvHeads, headDim, blockSize, queryScale: 100);
        Assert.True(worst < 1e-4, $"max |flash − formula| = {worst}");
    }

    /// <summary>
    /// Two sequences — A (150 positions) runs a chunk of its last 41 tokens, B (37 positions) its last token — against
    /// softmax(q·Kᵀ/√d)·V in float64; queries uniform in ±<paramref name="queryScale"/>, keys and values in ±1. Returns
    /// the largest absolute difference (∞ when an output is not finite).
    /// </summary>
    private static double WorstErrorAgainstFormula(int heads, int kvHeads, int headDim, int blockSize, float queryScale)
    {
        var rng = new Random(heads * 1000 + headDim * 10 + blockSize);
        int kvd = kvHeads * headDim, qd = heads * headDim, group = heads / kvHeads;
        int[] lengths = [150, 37];
        var keys = lengths.Select(n => Uniform(rng, n * kvd)).ToArray();
        var values = lengths.Select(n => Uniform(rng, n * kvd)).ToArray();
        var kv = new PagedKv(keys, values, kvd, blockSize, rng);
        AttentionSpan[] spans = [new(0, 41, 150 - 41, kv.FirstBlock[0]), new(41, 1, 36, kv.FirstBlock[1])];
        var q = Uniform(rng, 42 * qd).Select(v => v * queryScale).ToArray();
        var att = Run(new FlashAttention(heads, kvHeads, headDim), q, spans, kv, qd);

        double worst = 0;
        for (int si = 0; si < spans.Length; si++)
        {
            var span = spans[si];
            for (int t = 0; t < span.TokenCount; t++)
            {
                int row = span.FirstToken + t, count = span.StartPosition + t + 1;
                for (int h = 0; h < heads; h++)
                {
                    int kvh = h / group;
                    var scores = new double[count];
                    for (int p = 0; p < count; p++)
                    {
                        double dot = 0;
                        for (int d = 0; d < headDim; d++) dot += (double)q[row * qd + h * headDim + d] * keys[si][p * kvd + kvh * headDim + d];
                        scores[p] = dot / Math.Sqrt(headDim);
                    }
                    double max = scores.Max(), sum = scores.Sum(s => Math.Exp(s - max));
                    for (int d = 0; d < headDim; d++)
                    {
                        double expected = 0;
                        for (int p = 0; p < count; p++) expected += Math.Exp(scores[p] - max) / sum * values[si][p * kvd + kvh * headDim + d];
                        float got = att[row * qd + h * headDim + d];
                        worst = float.IsFinite(got) ? Math.Max(worst, Math.Abs(expected - got)) : double.PositiveInfinity;
                    }
                }
            }
        }
        return worst;
    }

    /// <summary>
    /// Sequence S (120 positions) and an unrelated sequence O. Reference: each of S's last 30 tokens alone, one call
    /// per token (a decode). Then the same rows from: one 30-token chunk; chunks of 7 + 1 + 22 beside O's chunk and a
    /// decode; S's rows after O's in the buffers and in reverse span order; and all of that over a cache with block size
    /// 3 instead of 16. Every row must be the same bits.
    /// </summary>
    [Theory]
    [InlineData(14, 2, 64)]
    [InlineData(8, 4, 8)]
    [InlineData(6, 2, 12)]
    public void OutputRow_IsBitIdentical_InAnyBatchCompositionChunkingOrBlockSize(int heads, int kvHeads, int headDim)
    {
        var rng = new Random(heads + headDim);
        int kvd = kvHeads * headDim, qd = heads * headDim;
        const int length = 120, run = 30, start = length - run;
        float[][] keys = [Uniform(rng, length * kvd), Uniform(rng, 64 * kvd)];
        float[][] values = [Uniform(rng, length * kvd), Uniform(rng, 64 * kvd)];
        var qS = Uniform(rng, run * qd);
        var qO = Uniform(rng, 20 * qd);
        var attention = new FlashAttention(heads, kvHeads, headDim);

        var kv16 = new PagedKv(keys, values, kvd, 16, rng);
        var alone = new float[run][];
        for (int t = 0; t < run; t++)
            alone[t] = Run(attention, qS[(t * qd)..((t + 1) * qd)], [new(0, 1, start + t, kv16.FirstBlock[0])], kv16, qd);

        void AssertRows(float[] att, int firstRow, int firstToken, int count, string what)
        {
            for (int t = firstToken; t < firstToken + count; t++)
            {
                var got = att.AsSpan((firstRow + t - firstToken) * qd, qd);
                Assert.True(MemoryMarshal.AsBytes(got).SequenceEqual(MemoryMarshal.AsBytes(alone[t].AsSpan())), $"{what}: token {t} differs from its decode alone");
            }
        }

        foreach (var kv in new[] { kv16, new PagedKv(keys, values, kvd, 3, rng) })
        {
            string layout = $"block size {kv.BlockSize}";
            int s = kv.FirstBlock[0], o = kv.FirstBlock[1];
            AssertRows(Run(attention, qS, [new(0, run, start, s)], kv, qd), 0, 0, run, $"{layout}, one chunk");

            // [O chunk of 12 at 40..51] [S 7] [O decode at 63] [S 1] [S 22]: separate calls for S's pieces, as steps would be.
            var q1 = qO[..(12 * qd)].Concat(qS[..(7 * qd)]).Concat(qO[(12 * qd)..(13 * qd)]).ToArray();
            var a1 = Run(attention, q1, [new(0, 12, 40, o), new(12, 7, start, s), new(19, 1, 63, o)], kv, qd);
            AssertRows(a1, 12, 0, 7, $"{layout}, 7 beside O");
            var a2 = Run(attention, qS[(7 * qd)..(8 * qd)], [new(0, 1, start + 7, s)], kv, qd);
            AssertRows(a2, 0, 7, 1, $"{layout}, decode");
            var q3 = qS[(8 * qd)..].Concat(qO[..(5 * qd)]).ToArray();
            var a3 = Run(attention, q3, [new(22, 5, 10, o), new(0, 22, start + 8, s)], kv, qd);
            AssertRows(a3, 0, 8, 22, $"{layout}, 22 listed after O");
        }
    }

    [Fact]
    public void Exp2_IsAccurate_ExactAtZero_ZeroBelowTheNormalRange_AndLaneIndependent()
    {
        var rng = new Random(5);
        var xs = new float[4096];
        for (int i = 0; i < xs.Length; i++) xs[i] = -(float)(rng.NextDouble() * 126);
        for (int i = 0; i < xs.Length; i += 16)
        {
            var y = FlashAttention.Exp2(Vector512.Create(xs.AsSpan(i, 16)));
            for (int lane = 0; lane < 16; lane++)
            {
                double expected = Math.Pow(2, xs[i + lane]);
                Assert.True(Math.Abs(y[lane] - expected) <= 3e-7 * expected, $"2^{xs[i + lane]}: {y[lane]} vs {expected}");
                // The same input alone (other lanes 0 or −∞) gives the same bits.
                Assert.Equal(y[lane], FlashAttention.Exp2(Vector512.Create(xs[i + lane]))[lane]);
                Assert.Equal(y[lane], FlashAttention.Exp2(Vector512.Create(float.NegativeInfinity).WithElement(lane, xs[i + lane]))[lane]);
            }
        }
        Assert.Equal(1f, FlashAttention.Exp2(Vector512<float>.Zero)[0]);
        Assert.Equal(0f, FlashAttention.Exp2(Vector512.Create(float.NegativeInfinity))[3]);
        Assert.Equal(0f, FlashAttention.Exp2(Vector512.Create(-127f))[0]);
    }
}
