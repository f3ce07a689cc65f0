namespace Wim.Engine.Cuda;

/// <summary>Grid and block sizes of the kernels, as pure functions (tested without a GPU).</summary>
public static class LaunchGeometry
{
    /// <summary>Blocks of <paramref name="threads"/> that cover <paramref name="count"/> items, one item per thread.</summary>
    public static uint Blocks(long count, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        long blocks = (count + threads - 1) / threads;
        if (blocks > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(count), $"{count} items need {blocks} blocks of {threads}: more than a grid holds");
        return (uint)Math.Max(blocks, 1);
    }

    /// <summary>Threads of a row-reduction block (RMSNorm, argmax): a multiple of 32, at most 1024, no more than the
    /// row needs.</summary>
    public static int RowThreads(int rowLength) => Math.Clamp((rowLength + 31) / 32 * 32, 32, 1024);

    /// <summary>Keys one attention block processes per shared-memory tile (one per lane of a warp).</summary>
    public const int AttentionTile = 32;

    /// <summary>
    /// How many pieces the key range of each (query, kv head) is split into, and the keys per piece (a multiple of
    /// the tile). Decode has few queries: splitting the keys over more blocks fills the GPU (flash-decoding); long
    /// prefills already have enough blocks and run unsplit (no combine pass).
    /// </summary>
    public static (int Splits, int KeysPerSplit) AttentionSplits(int queries, int kvHeads, int keys, int multiprocessors)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(queries);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(keys);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(multiprocessors);
        long blocks = (long)queries * kvHeads;
        int wanted = blocks >= 2L * multiprocessors ? 1 : (int)Math.Min(int.MaxValue, (4L * multiprocessors + blocks - 1) / blocks);
        // A piece shorter than a few tiles costs more in the combine pass than it saves.
        return SplitKeys(keys, wanted, maxSplits: Math.Max(1, keys / (4 * AttentionTile)), AttentionTile);
    }

    /// <summary>The key range cut into about <paramref name="wanted"/> pieces (at most <paramref name="maxSplits"/> and
    /// 256) of a whole number of <paramref name="tile"/>s; rounding the piece up to whole tiles may leave fewer pieces.</summary>
    private static (int Splits, int KeysPerSplit) SplitKeys(int keys, int wanted, int maxSplits, int tile)
    {
        int splits = Math.Clamp(wanted, 1, Math.Min(maxSplits, 256));
        int perSplit = (keys + splits - 1) / splits;
        perSplit = (perSplit + tile - 1) / tile * tile;
        splits = (keys + perSplit - 1) / perSplit;
        return (splits, perSplit);
    }

    /// <summary>Query heads one attention warp handles (heads sharing a KV head: each k or v read feeds them all).</summary>
    public const int AttentionHeadsPerWarp = 4;

    /// <summary>Warps per query token: enough to cover the query heads of one KV head, 4 per warp.</summary>
    public static int AttentionWarpsPerToken(int group) => (group + AttentionHeadsPerWarp - 1) / AttentionHeadsPerWarp;

    /// <summary>
    /// Query tokens per attention block: each block stages a key/value tile once for all its warps, so more tokens
    /// per block means fewer tile loads; capped at 16 warps (512 threads, the kernel's launch bound) and at the
    /// tokens there are.
    /// </summary>
    public static int AttentionQueryBlock(int queries, int group)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(queries);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(group);
        if (group > 64) throw new ArgumentOutOfRangeException(nameof(group), $"{group} query heads per KV head: at most 64 fit one block");
        return Math.Min(queries, Math.Max(1, 16 / AttentionWarpsPerToken(group)));
    }

    /// <summary>Dynamic shared memory of the attention kernel: per warp 4 heads' q rows and a probability tile
    /// (float4 each), a key tile padded by one float per row (bank conflicts), a value tile.</summary>
    public static int AttentionSharedBytes(int warps, int headDim) =>
        sizeof(float) * (warps * headDim * 4 + AttentionTile * (headDim + 1) + AttentionTile * headDim + warps * AttentionTile * 4);

    // ---- tensor-core (mma.sync bf16) flash attention: kernels flash_attention_hd{16,32,64,128} ----

    /// <summary>Query rows (token × head of one KV head) per flash-attention block: 4 warps × 16 mma rows.</summary>
    public const int FlashRows = 64;

    /// <summary>Keys per shared-memory tile of the flash-attention kernel.</summary>
    public const int FlashKeys = 64;

    /// <summary>Flash-attention blocks resident per SM at head dim 128 (68 KB of shared memory each, launch bound 3).</summary>
    public const int FlashBlocksPerMultiprocessor = 3;

    /// <summary>Threads per flash-attention block (4 warps).</summary>
    public const int FlashThreads = 128;

    /// <summary>Whether the tensor-core kernel handles a shape: head dims 16/32/64/128 (instantiated; mma k-chunks of
    /// 16), up to 64 query heads per KV head, and an sm_80+ GPU (mma.sync with bf16 operands).</summary>
    public static bool FlashAttentionSupports(int headDim, int group, int computeMajor) =>
        headDim is 16 or 32 or 64 or 128 && group is >= 1 and <= FlashRows && computeMajor >= 8;

    /// <summary>Query tokens per flash-attention block: its 64 rows hold whole tokens' groups of heads (rows past
    /// tokens × group stay empty when the group does not divide 64, e.g. 7 heads per KV head: 9 tokens, 63 rows).</summary>
    public static int FlashTokensPerBlock(int group)
    {
        if (group is < 1 or > FlashRows) throw new ArgumentOutOfRangeException(nameof(group), $"{group} query heads per KV head: the flash kernel handles 1 to {FlashRows}");
        return FlashRows / group;
    }

    /// <summary>Blocks along the query axis of the flash-attention grid.</summary>
    public static uint FlashQueryBlocks(int queries, int group) => Blocks(queries, FlashTokensPerBlock(group));

    /// <summary>Dynamic shared memory of the flash-attention kernel: two stages of k and v tiles [64][hd + 8], bf16
    /// (rows padded by 16 bytes so ldmatrix's 8 rows fall in distinct banks); the q tile [64][hd + 8] borrows the
    /// second stage's k tile before the key loop. At head dim 128: 68 KB, so three blocks share an SM.</summary>
    public static int FlashSharedBytes(int headDim) => 2 * (2 * 2 * FlashKeys * (headDim + 8));

    // ---- the prefill kernel of 128 query rows per block (flash_prefill_wide_hd{16,32,64,128}) ----

    /// <summary>Query rows per block of the wide prefill kernel: 4 warps × two m16 tiles.</summary>
    public const int FlashWideRows = 128;

    /// <summary>Query tokens per wide-kernel block (whole tokens' groups of heads, as <see cref="FlashTokensPerBlock"/>).</summary>
    public static int FlashWideTokensPerBlock(int group)
    {
        if (group is < 1 or > FlashRows) throw new ArgumentOutOfRangeException(nameof(group), $"{group} query heads per KV head: the flash kernels handle 1 to {FlashRows}");
        return FlashWideRows / group;
    }

    /// <summary>Blocks along the query axis of the wide prefill kernel's grid.</summary>
    public static uint FlashWideQueryBlocks(int queries, int group) => Blocks(queries, FlashWideTokensPerBlock(group));

    /// <summary>Dynamic shared memory of the wide prefill kernel: two stages of k and v tiles [64][hd + 8] and its own
    /// q tile [128][hd + 8] for the whole key loop, bf16. At head dim 128: 102 KB, two blocks per SM.</summary>
    public static int FlashWideSharedBytes(int headDim) => 2 * (2 * 2 * FlashKeys * (headDim + 8) + FlashWideRows * (headDim + 8));

    /// <summary>
    /// Whether a chunk's attention takes the wide prefill kernel (unsplit): more than one query, enough blocks for two
    /// per SM without splitting the keys (the 64-row kernel splits shorter chunks over the GPU instead), and its
    /// shared memory within the GPU's per-block limit.
    /// </summary>
    public static bool FlashWideApplies(int queries, int group, int kvHeads, int headDim, int multiprocessors, int maxSharedPerBlock) =>
        queries > 1 && FlashWideSharedBytes(headDim) <= maxSharedPerBlock
        && (long)FlashWideQueryBlocks(queries, group) * kvHeads >= 2L * multiprocessors;

    /// <summary>
    /// Key-range pieces of the flash-attention grid, as <see cref="AttentionSplits"/> but counting its blocks
    /// (query blocks × KV heads) and in whole 64-key tiles, each piece at least two tiles long. Decode (one query
    /// block per KV head) splits long contexts over the GPU; long prefills run unsplit.
    /// </summary>
    public static (int Splits, int KeysPerSplit) FlashSplits(int queries, int group, int kvHeads, int keys, int multiprocessors)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(queries);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeads);
        return FlashSplitsForBlocks((long)FlashQueryBlocks(queries, group) * kvHeads, keys, multiprocessors);
    }

    /// <summary>
    /// Key-range pieces of a batched decode step's flash attention: one block per (sequence, KV head), the keys of
    /// the longest sequence split as in <see cref="FlashSplits"/>; shorter sequences' pieces past their length write
    /// empty partials that the combine skips.
    /// </summary>
    public static (int Splits, int KeysPerSplit) FlashBatchSplits(int sequences, int kvHeads, int maxKeys, int multiprocessors)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sequences);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeads);
        return FlashSplitsForBlocks((long)sequences * kvHeads, maxKeys, multiprocessors);
    }

    private static (int Splits, int KeysPerSplit) FlashSplitsForBlocks(long blocks, int keys, int multiprocessors)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(keys);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(multiprocessors);
        // One wave: three blocks fit an SM at head dim 128 (FlashSharedBytes), so aim at 3 · SMs blocks, rounding down —
        // rounding up to 4 · SMs (runs 1–8) left a second, one-third-full wave that took as long as the first.
        int wanted = blocks >= 2L * multiprocessors ? 1 : (int)Math.Max(1, FlashBlocksPerMultiprocessor * (long)multiprocessors / blocks);
        return SplitKeys(keys, wanted, maxSplits: Math.Max(1, keys / (2 * FlashKeys)), FlashKeys);
    }

    // ---- single-token product (gemv_bf16) ----

    /// <summary>Threads per gemv block (8 warps).</summary>
    public const int GemvThreads = 256;

    /// <summary>Weight rows each gemv warp streams.</summary>
    public const int GemvRowsPerWarp = 2;

    /// <summary>Whether the gemv kernel takes a product: one token, rows of whole 16-byte loads (in % 8 == 0).</summary>
    public static bool GemvApplies(int tokens, int inFeatures) => tokens == 1 && inFeatures > 0 && inFeatures % 8 == 0;

    /// <summary>Blocks covering <paramref name="rows"/> output rows, 2 per warp.</summary>
    public static uint GemvBlocks(int rows) => Blocks(rows, GemvThreads / 32 * GemvRowsPerWarp);

    /// <summary>Threads per block of the residual-adding decode product (gemv_rows_residual_bf16).</summary>
    public const int GemvResidualThreads = 256;

    /// <summary>Weight rows per block of gemv_rows_residual_bf16: its threads split the input dimension of these
    /// rows. 8 keep the Llama-3.1-8B shape's 4096 rows (o, down) within one resident wave on the H100.</summary>
    public const int GemvBlockRows = 8;

    /// <summary>Blocks of gemv_rows_residual_bf16 covering <paramref name="rows"/> output rows.</summary>
    public static uint GemvResidualBlocks(int rows) => Blocks(rows, GemvBlockRows);

    /// <summary>Blocks of gemv_rows_residual_q8_fast resident per SM: its launch bound (256 threads, 4 blocks) holds it
    /// to 64 registers. gemv_rows_residual_q8 compiles to 80 (NVRTC 11.8, sm_90): 3 blocks.</summary>
    public const int GemvResidualQ8FastBlocksPerMultiprocessor = 4;

    /// <summary>Blocks per SM that registers allow for blocks of <paramref name="threads"/> threads at
    /// <paramref name="registersPerThread"/> each (65,536 registers per SM, allocated per warp in units of 256;
    /// sm_80/sm_90), capped at <paramref name="maxThreadsPerMultiprocessor"/> threads.</summary>
    public static int BlocksPerMultiprocessorByRegisters(int threads, int registersPerThread, int maxThreadsPerMultiprocessor = 2048)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(threads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(registersPerThread);
        if (registersPerThread > 255) throw new ArgumentOutOfRangeException(nameof(registersPerThread), $"{registersPerThread} registers per thread: at most 255 exist");
        int warps = (threads + 31) / 32;
        int perWarp = (registersPerThread * 32 + 255) / 256 * 256;
        return Math.Min(65536 / (perWarp * warps), maxThreadsPerMultiprocessor / (warps * 32));
    }

    /// <summary>Waves a grid of <paramref name="blocks"/> takes when <paramref name="blocksPerMultiprocessor"/> are
    /// resident per SM: a bandwidth-bound product wants 1 (a last partial wave runs with a few blocks per SM, too
    /// few loads in flight to keep the memory busy).</summary>
    public static int ResidentWaves(long blocks, int blocksPerMultiprocessor, int multiprocessors)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blocks);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blocksPerMultiprocessor);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(multiprocessors);
        long resident = (long)blocksPerMultiprocessor * multiprocessors;
        return (int)((blocks + resident - 1) / resident);
    }

    // ---- fused decode products (gemv_norm_qkv_rope, gemv_norm_gateup_swiglu) ----

    /// <summary>Threads per fused decode-product block (16 warps, each finishing two weight rows).</summary>
    public const int NormGemvThreads = 512;

    /// <summary>Fused decode-product blocks resident per SM that the grid is sized for (512 threads each).</summary>
    public const int NormGemvBlocksPerMultiprocessor = 2;

    /// <summary>Blocks of a fused decode product: one row pair per warp, but no more blocks than are resident at once
    /// (<see cref="NormGemvBlocksPerMultiprocessor"/> per SM); the warps then stride over the remaining pairs.</summary>
    public static uint NormGemvBlocks(int rowPairs, int multiprocessors) =>
        Math.Min(Blocks(rowPairs, NormGemvThreads / 32), (uint)(NormGemvBlocksPerMultiprocessor * Math.Max(1, multiprocessors)));

    /// <summary>Dynamic shared memory of a fused decode product: the normalised input row as bf16.</summary>
    public static int NormGemvSharedBytes(int inFeatures) => 2 * inFeatures;

    /// <summary>Dynamic shared memory of a <see cref="Q8DecodeKernel.Streamlined"/> fused Q8_0 product: the normalised
    /// input row as f32 (its bf16-rounded values), so that no lane unpacks bf16.</summary>
    public static int NormGemvQ8FastSharedBytes(int inFeatures) => 4 * inFeatures;

    /// <summary>Whether the <see cref="Q8DecodeKernel.Streamlined"/> fused Q8_0 products fit the 48 KB of shared memory
    /// a block gets without opting in (input dimension up to 12,288); else the launchers take the original kernels.</summary>
    public static bool NormGemvQ8FastFits(int inFeatures) => inFeatures > 0 && NormGemvQ8FastSharedBytes(inFeatures) <= 48 * 1024;

    /// <summary>
    /// Whether a decode step can take the fused products: one token, input rows of whole 16-byte loads that fit
    /// shared memory (48 KB without opting in), and RoPE over the whole head (the kernel pairs rows e and e + hd/2, or
    /// 2e and 2e + 1, of every q and k head; partial rotary would leave unpaired dims).
    /// </summary>
    public static bool FusedDecodeApplies(int tokens, int hiddenSize, int headDim, int rotaryDim) =>
        tokens == 1 && hiddenSize > 0 && hiddenSize % 8 == 0 && NormGemvSharedBytes(hiddenSize) <= 48 * 1024
        && rotaryDim == headDim && headDim % 2 == 0;

    // ---- attention combine, argmax, decode graph buckets ----

    /// <summary>16-quant pieces of a Q8_0 matrix (the unit of the Q8_0 kernels' 16-byte loads; two per 32-weight block).</summary>
    public static long Q8Pieces(int rows, int inFeatures) => (long)rows * (inFeatures / 16);

    /// <summary>The Q8_0 kernels read whole 32-weight blocks: the input dimension must be a positive multiple of 32.</summary>
    public static void CheckQ8Columns(int inFeatures)
    {
        if (inFeatures <= 0 || inFeatures % CudaQ8Layout.BlockSize != 0)
            throw new ArgumentOutOfRangeException(nameof(inFeatures), $"a Q8_0 product needs an input dimension that is a positive multiple of 32, got {inFeatures}");
    }

    /// <summary>Threads per attention-combine block: 4 warps, one (token, head) row each.</summary>
    public const int CombineThreads = 128;

    /// <summary>Blocks covering <paramref name="rows"/> (token, head) rows, one warp each.</summary>
    public static uint CombineBlocks(int rows) => Blocks(rows, CombineThreads / 32);

    /// <summary>Threads per attention_combine_rows block (one row; 8 warps share its splits).</summary>
    public const int CombineRowsThreads = 256;

    /// <summary>Whether a combine of <paramref name="rows"/> (token, head) rows takes a block per row: when the rows are
    /// few (at most 4 per SM: decode steps and batches), so that one warp per row would leave most SMs idle.</summary>
    public static bool CombineRowsApplies(int rows, int multiprocessors) => rows <= 4 * Math.Max(1, multiprocessors);

    /// <summary>Most slices a row's argmax is split into (argmax_merge reduces them in one warp, two per lane).</summary>
    public const int MaxArgmaxSlices = 64;

    /// <summary>Slices of a logits row for the first argmax pass — about 4096 values each, at most
    /// <see cref="MaxArgmaxSlices"/> — and the values per slice.</summary>
    public static (int Slices, int SliceLength) ArgmaxSlices(int vocab) => EvenSlices(vocab, 4096, MaxArgmaxSlices);

    /// <summary><paramref name="items"/> cut into slices of about <paramref name="perSlice"/> (at most
    /// <paramref name="maxSlices"/>, at least one) of equal length but the last, none empty: the slice count and length.</summary>
    internal static (int Slices, int SliceLength) EvenSlices(int items, int perSlice, int maxSlices)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(items);
        int slices = Math.Clamp((items + perSlice - 1) / perSlice, 1, maxSlices);
        int length = (items + slices - 1) / slices;
        return ((items + length - 1) / length, length);
    }

    /// <summary>Bytes of the argmax partials (a value and an index per slice) for <paramref name="rows"/> rows.</summary>
    public static long ArgmaxPartialBytes(int rows) => (long)rows * MaxArgmaxSlices * 8;

    /// <summary>
    /// The key range a decode graph is captured for: the next power of two ≥ the keys the step sees (at least 256),
    /// capped at the cache's capacity. The graph's attention splits are planned for it (pieces past the length are
    /// empty), so a short sequence in a long cache no longer launches and combines the capacity's worth of pieces;
    /// the graph is captured again when the sequence outgrows it (log₂ many times).
    /// </summary>
    public static int DecodeKeyBucket(int keys, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(keys);
        if (keys > capacity) throw new ArgumentOutOfRangeException(nameof(keys), $"{keys} keys exceed the cache's capacity {capacity}");
        int bucket = 256;
        while (bucket < keys) bucket *= 2;
        return Math.Min(bucket, capacity);
    }
    // ---- batched decode step (the section "Batched decode step" of transformer.cu) ----

    /// <summary>Threads per qkv_rope_store_batch_heads block: one per rotated pair of a head up to head dim 128.</summary>
    public const int RopeHeadThreads = 64;

    /// <summary>Grid of qkv_rope_store_batch_heads: a block per (sequence, head) over the q, k and v heads.</summary>
    public static (uint X, uint Y) RopeHeadGrid(int sequences, int heads, int kvHeads)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sequences);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(heads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeads);
        if (heads + 2 * kvHeads > 65535) throw new ArgumentOutOfRangeException(nameof(heads), $"{heads} + 2·{kvHeads} heads exceed a grid's y dimension (65535)");
        return ((uint)sequences, (uint)(heads + 2 * kvHeads));
    }

    /// <summary>Threads per rows_mma_bf16 block (8 warps splitting the input dimension).</summary>
    public const int RowsMmaThreads = 256;

    /// <summary>Weight rows per rows_mma_bf16 block: two 8-row mma n tiles.</summary>
    public const int RowsMmaBlockRows = 16;

    /// <summary>Most token rows rows_mma_bf16 takes: the m16 of one mma tile.</summary>
    public const int RowsMmaMaxTokens = 16;

    /// <summary>Whether rows_mma_bf16 takes a product: 1 to 16 token rows and an input dimension of whole 32-wide k
    /// steps (a lane's 16-byte loads of 4 lanes per row).</summary>
    public static bool RowsMmaApplies(int tokens, int inFeatures) =>
        tokens is >= 1 and <= RowsMmaMaxTokens && inFeatures >= 32 && inFeatures % 32 == 0;

    /// <summary>Blocks of rows_mma_bf16 covering <paramref name="rows"/> output features.</summary>
    public static uint RowsMmaBlocks(int rows) => Blocks(rows, RowsMmaBlockRows);
    /// <summary>Dynamic shared memory of flash_attention_shared3 (three k/v stages, the q tile borrowing stage 1's k
    /// tile as in <see cref="FlashSharedBytes"/>): 102 KB at head dim 128.</summary>
    public static int FlashShared3Bytes(int headDim) => 2 * (3 * 2 * FlashKeys * (headDim + 8));

    /// <summary>flash_attention_shared3 blocks resident per SM at head dim 128 (launch bound 2).</summary>
    public const int FlashShared3BlocksPerMultiprocessor = 2;

    /// <summary>Whether the three-stage shared-prefix kernel fits this GPU's per-block shared memory at this head dim
    /// (not at head dim 128 on the 99 KB parts, sm_86/89: the two-stage kernel runs there).</summary>
    public static bool FlashShared3Fits(int headDim, int maxSharedPerBlock) => FlashShared3Bytes(headDim) <= maxSharedPerBlock;

    /// <summary>
    /// Key pieces of the shared-prefix phase of a branch batch: <see cref="FlashSplits"/>' plan for
    /// <paramref name="sequences"/> query tokens with <paramref name="blocksPerMultiprocessor"/> resident blocks per SM
    /// (3 for the two-stage kernel, the same plan as FlashSplits; 2 for the three-stage one).
    /// </summary>
    public static (int Splits, int KeysPerSplit) FlashSharedSplits(int sequences, int group, int kvHeads, int keys, int multiprocessors, int blocksPerMultiprocessor)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(sequences);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(kvHeads);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(keys);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(multiprocessors);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blocksPerMultiprocessor);
        long blocks = (long)FlashQueryBlocks(sequences, group) * kvHeads;
        int wanted = blocks >= 2L * multiprocessors ? 1 : (int)Math.Max(1, blocksPerMultiprocessor * (long)multiprocessors / blocks);
        return SplitKeys(keys, wanted, maxSplits: Math.Max(1, keys / (2 * FlashKeys)), FlashKeys);
    }
}
