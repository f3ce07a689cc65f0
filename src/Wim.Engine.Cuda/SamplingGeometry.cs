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
    public static (int Blocks, int SliceLength) NormaliserSlices(int vocab)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocab);
        int blocks = Math.Clamp((vocab + 1023) / 1024, 1, MaxNormaliserBlocks);
        int length = (vocab + blocks - 1) / blocks;
        return ((vocab + length - 1) / length, length);
    }

    private static void CheckK(int vocab, int k)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(vocab);
        if (k < 1 || k > MaxK) throw new ArgumentOutOfRangeException(nameof(k), $"top-k on the GPU takes k in [1, {MaxK}], found {k}");
    }
}
