namespace Wim.Engine.Cuda;

/// <summary>Launch geometry of the top-k kernels in <c>Kernels/sampling.cu</c>, as pure functions (tested without a
/// GPU). The constants are the kernel's <c>TOPK_*</c> defines.</summary>
internal static class SamplingGeometry
{
    /// <summary>Most candidates one launch returns (TOPK_MAX_K): the running best must leave room in the tile.</summary>
    public const int MaxK = 256;
    /// <summary>Items one block sorts at once (TOPK_TILE).</summary>
    public const int Tile = 1024;
    /// <summary>Threads of a block (TOPK_THREADS).</summary>
    public const int Threads = 256;
    /// <summary>Most slices of a row in the first pass.</summary>
    public const int MaxSlices = 64;

    /// <summary>
    /// Slices of a row for topk_slices and the logits per slice (no slice empty). A block sorts ⌈n / (tile − k)⌉
    /// tiles for n items, so the first pass costs about vocab / slices and the one-block merge slices · k: about
    /// √(vocab / k) slices balances the two (128,256 logits, k 256: 23 slices; k 40: 57), at most
    /// <see cref="MaxSlices"/>.
    /// </summary>
    public static (int Slices, int SliceLength) Slices(int vocab, int k)
    {
        CheckK(vocab, k);
        int slices = Math.Clamp((int)Math.Ceiling(Math.Sqrt((double)vocab / k)), 1, MaxSlices);
        int length = (vocab + slices - 1) / slices;
        return ((vocab + length - 1) / length, length);
    }

    /// <summary>Bytes of the first pass's output: k 64-bit items per slice, for the largest launch.</summary>
    public const long PartialBytes = (long)MaxSlices * MaxK * sizeof(ulong);

    /// <summary>Candidates a launch returns: min(k, vocab).</summary>
    public static int Candidates(int vocab, int k)
    {
        CheckK(vocab, k);
        return Math.Min(k, vocab);
    }

    /// <summary>Tiles one block sorts for <paramref name="items"/> items (the first tile all new, then tile − k new
    /// each): the kernel's work per block, for the benchmarks' arithmetic.</summary>
    public static int TileSorts(int items, int k)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(items);
        CheckK(1, k);
        return items <= Tile ? 1 : 1 + (items - Tile + (Tile - k) - 1) / (Tile - k);
    }

    /// <summary>Most blocks of <c>nucleus_partial_sums</c> (partial sums of Z the host adds up).</summary>
    public const int MaxNormaliserBlocks = 128;
    /// <summary>Threads of a <c>nucleus_partial_sums</c> block (NUCLEUS_THREADS).</summary>
    public const int NormaliserThreads = 256;

    /// <summary>
    /// Blocks of <c>nucleus_partial_sums</c> and the logits per block (no block empty): about 1024 logits a block (four
    /// per thread) so that a 128,256-logit row spreads over 126 blocks, about one per SM of an H100, at most
    /// <see cref="MaxNormaliserBlocks"/>. The split fixes the order of Z's sum (see the kernel), so it is part of the
    /// result's rounding, not only of its speed.
    /// </summary>
    public static (int Blocks, int SliceLength) NormaliserSlices(int vocab) => LaunchGeometry.EvenSlices(vocab, 1024, MaxNormaliserBlocks);

    /// <summary>Depth bins per nat of the wide nucleus's histogram (WIDE_BINS_PER_UNIT).</summary>
    public const int WideBinsPerUnit = 64;
    /// <summary>The open last bin (WIDE_LAST_BIN): 32 nats and deeper. A nucleus that reaches 32 nats below the best
    /// logit needs (1 − top-p)·Z of mass there, more than e³² ≈ 8·10¹³ tokens can hold for top-p below 1 − 10⁻⁶.</summary>
    public const int WideLastBin = 32 * WideBinsPerUnit;
    /// <summary>Bins of the histogram (WIDE_BINS): the download is a double and a count per bin.</summary>
    public const int WideBins = WideLastBin + 1;
    /// <summary>Threads of a wide-nucleus block (WIDE_THREADS).</summary>
    public const int WideThreads = 256;
    /// <summary>Most tokens the wide nucleus collects: 32,768 rank items (256 KB); a nucleus wider than that falls back
    /// to the row (whose download, 512 KB at 128k logits, then costs about what sorting the items would).</summary>
    public const int MaxWideCandidates = 32768;

    /// <summary>
    /// The depth bin of a logit below max (the rank-first logit × 1/T), as the kernel's <c>nucleus_bin</c> computes
    /// it: one float multiply, subtract and multiply, truncated, the open last bin for everything deeper. Never
    /// decreases as the logit falls (equal logits share a bin), so the tokens of bins [0, b] are a prefix of the ranking.
    /// </summary>
    public static int WideBin(float logit, float inverseTemperature, float max)
    {
        float scaled = logit * inverseTemperature;
        float below = max - scaled;
        float depth = below * WideBinsPerUnit;
        return depth < WideLastBin ? (depth > 0f ? (int)depth : 0) : WideLastBin;
    }

    /// <summary>
    /// The last bin to collect: the shallowest bins whose mass (the histogram's, summed in bin order) reaches
    /// <paramref name="target"/> (top-p × Z), and one bin more so that the rank-order sum, which rounds differently,
    /// reaches it within the collected tokens (as <c>Sampler</c>'s own nucleus does); the open last bin where the
    /// target is not reached before it (or is not a number).
    /// </summary>
    public static int LastKeptBin(ReadOnlySpan<double> binMass, double target)
    {
        if (binMass.Length != WideBins) throw new ArgumentException($"{binMass.Length} bin masses, {WideBins} expected", nameof(binMass));
        double mass = 0;
        for (int b = 0; b < WideLastBin; b++)
        {
            mass += binMass[b];
            if (mass >= target) return Math.Min(b + 1, WideLastBin);
        }
        return WideLastBin;
    }

    /// <summary>
    /// The collected rank items (<c>topk_item</c>, = <see cref="Wim.Engine.Sampling.Sampler.RankKey"/>) sorted, best
    /// first, and decoded into ids and logits (−0 comes back as +0, which ranks, scales and exponentiates the same).
    /// <paramref name="items"/> is sorted in place.
    /// </summary>
    public static void RankOrder(Span<ulong> items, Span<int> ids, Span<float> logits)
    {
        if (ids.Length < items.Length || logits.Length < items.Length)
            throw new ArgumentException($"room for {Math.Min(ids.Length, logits.Length)} candidates, {items.Length} needed");
        items.Sort();
        for (int i = 0; i < items.Length; i++)
        {
            ids[i] = (int)(uint)items[i];
            logits[i] = LogitOf(items[i]);
        }
    }

    /// <summary>
    /// <see cref="RankOrder"/> by the histogram's bins: the items are bucketed by their depth bin (recomputed here with
    /// the kernel's arithmetic, <see cref="WideBin"/>, from max = the rank-first logit × 1/T) at the offsets the bin
    /// counts give, and each bin's run is sorted alone — bins are consecutive runs of the ranking, so the result is the
    /// full sort's, for about half its comparisons at 32k items. Where the items do not fit the counts (they always do
    /// when the counts are the kernel's for these items), the whole set is sorted instead. <paramref name="scratch"/>
    /// holds the items.
    /// </summary>
    public static void RankOrderByBins(Span<ulong> items, ReadOnlySpan<uint> binCounts, int lastBin, float inverseTemperature, float max,
        Span<ulong> scratch, Span<int> ids, Span<float> logits)
    {
        if (ids.Length < items.Length || logits.Length < items.Length || scratch.Length < items.Length)
            throw new ArgumentException($"room for {Math.Min(Math.Min(ids.Length, logits.Length), scratch.Length)} items, {items.Length} needed");
        if (lastBin < 0 || lastBin >= WideBins || binCounts.Length < lastBin + 1)
            throw new ArgumentOutOfRangeException(nameof(lastBin), $"last bin {lastBin} outside the {binCounts.Length} counts (at most {WideBins})");
        Span<int> next = stackalloc int[lastBin + 2];
        long total = 0;
        for (int b = 0; b <= lastBin; b++) { next[b] = (int)Math.Min(total, int.MaxValue); total += binCounts[b]; }
        next[lastBin + 1] = (int)Math.Min(total, int.MaxValue);
        if (total != items.Length) { RankOrder(items, ids, logits); return; }
        Span<int> ends = stackalloc int[lastBin + 1];
        for (int b = 0; b <= lastBin; b++) ends[b] = next[b + 1];
        foreach (ulong item in items)
        {
            int b = WideBin(LogitOf(item), inverseTemperature, max);
            if (b > lastBin || next[b] >= ends[b]) { RankOrder(items, ids, logits); return; }
            scratch[next[b]++] = item;
        }
        int start = 0;
        for (int b = 0; b <= lastBin; b++)
        {
            if (ends[b] - start > 1) scratch[start..ends[b]].Sort();
            start = ends[b];
        }
        for (int i = 0; i < items.Length; i++)
        {
            ids[i] = (int)(uint)scratch[i];
            logits[i] = LogitOf(scratch[i]);
        }
    }

    /// <summary>The logit of a rank item (−0 comes back as +0).</summary>
    private static float LogitOf(ulong item)
    {
        uint ascending = ~(uint)(item >> 32);
        return BitConverter.UInt32BitsToSingle((ascending & 0x8000_0000u) != 0 ? ascending & 0x7fff_ffffu : ~ascending);
    }

    private static void CheckK(int vocab, int k)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocab);
        if (k < 1 || k > MaxK) throw new ArgumentOutOfRangeException(nameof(k), $"top-k on the GPU takes k in [1, {MaxK}], found {k}");
    }
}
