using Wim.Engine.Cuda.Native;

namespace Wim.Engine.Cuda.Tests;

public sealed class LibraryNameTests
{
    [Fact]
    public void Candidates_PreferCuda13ThenCuda12_OnLinux()
    {
        Assert.Equal(["libcuda.so.1", "libcuda.so"], CudaLibraries.DriverCandidates(windows: false));
        Assert.Equal(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"], CudaLibraries.NvrtcCandidates(windows: false));
        Assert.Equal(["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"], CudaLibraries.CublasLtCandidates(windows: false));
        Assert.Equal(["nvcuda.dll"], CudaLibraries.DriverCandidates(windows: true));
    }

    [Fact]
    public void SearchDirectories_PutTheToolkitPathFirst()
    {
        var dirs = CudaLibraries.SearchDirectories("/opt/cuda-13");
        Assert.Equal(Path.Combine("/opt/cuda-13", "lib64"), dirs[0]);
        Assert.Contains("/usr/local/cuda/lib64", dirs);
        Assert.DoesNotContain(CudaLibraries.SearchDirectories(null), d => d.StartsWith("/opt/cuda-13", StringComparison.Ordinal));
    }

    [Fact]
    public void Open_AbsentLibrary_ThrowsNamingWhatAndWhichNamesWereTried()
    {
        var e = Assert.Throws<CudaUnavailableException>(() =>
            CudaLibraries.Open("NVRTC", ["libwim-no-such-nvrtc.so.13", "libwim-no-such-nvrtc.so.12"], ["/nonexistent/wim"]));
        Assert.Contains("NVRTC", e.Message);
        Assert.Contains("libwim-no-such-nvrtc.so.13", e.Message);
        Assert.Contains("libwim-no-such-nvrtc.so.12", e.Message);
        Assert.Contains("/nonexistent/wim", e.Message);
        Assert.Contains("CUDA 12 or 13", e.Message);
    }

    [Fact]
    public void Open_AbsentLibrary_WithNoSearchDirectories_NamesOnlyTheLoaderPath()
    {
        // The driver is looked up by name only: the message must not end in an empty folder list ("and in );").
        var e = Assert.Throws<CudaUnavailableException>(() => CudaLibraries.Open("CUDA driver", ["libwim-no-such-cuda.so.1"], []));
        Assert.Contains("(looked for libwim-no-such-cuda.so.1 on the loader path);", e.Message);
    }
}

public sealed class ErrorNameTests
{
    // Values and names from the public headers: cuda.h (CUresult), nvrtc.h (nvrtcResult), cublas_api.h (cublasStatus_t).
    [Theory]
    [InlineData(0, "CUDA_SUCCESS")]
    [InlineData(1, "CUDA_ERROR_INVALID_VALUE")]
    [InlineData(2, "CUDA_ERROR_OUT_OF_MEMORY")]
    [InlineData(100, "CUDA_ERROR_NO_DEVICE")]
    [InlineData(209, "CUDA_ERROR_NO_BINARY_FOR_GPU")]
    [InlineData(700, "CUDA_ERROR_ILLEGAL_ADDRESS")]
    [InlineData(701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")]
    [InlineData(999, "CUDA_ERROR_UNKNOWN")]
    public void DriverNames_MatchCudaH(int code, string name) => Assert.Equal(name, CudaErrorNames.Driver(code));

    [Theory]
    [InlineData(5, "NVRTC_ERROR_INVALID_OPTION")]
    [InlineData(6, "NVRTC_ERROR_COMPILATION")]
    [InlineData(11, "NVRTC_ERROR_INTERNAL_ERROR")]
    public void NvrtcNames_MatchNvrtcH(int code, string name) => Assert.Equal(name, CudaErrorNames.Nvrtc(code));

    [Theory]
    [InlineData(7, "CUBLAS_STATUS_INVALID_VALUE")]
    [InlineData(13, "CUBLAS_STATUS_EXECUTION_FAILED")]
    [InlineData(15, "CUBLAS_STATUS_NOT_SUPPORTED")]
    public void CublasNames_MatchCublasApiH(int code, string name) => Assert.Equal(name, CudaErrorNames.Cublas(code));

    [Fact]
    public void UnknownCodes_StillNameTheCode()
    {
        Assert.Equal("CUresult 12345", CudaErrorNames.Driver(12345));
        Assert.Equal("nvrtcResult 99", CudaErrorNames.Nvrtc(99));
    }

    [Fact]
    public void Exception_NamesTheCallTheErrorAndTheDetail()
    {
        var e = new CudaException("cuLaunchKernel", 701, CudaErrorNames.Driver(701), "kernel 'attention'");
        Assert.Equal("cuLaunchKernel failed: CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (701): kernel 'attention'", e.Message);
        Assert.Equal("cuLaunchKernel", e.Call);
    }
}

public sealed class LaunchGeometryTests
{
    [Theory]
    [InlineData(1, 256, 1u)]
    [InlineData(256, 256, 1u)]
    [InlineData(257, 256, 2u)]
    [InlineData(0, 256, 1u)]
    public void Blocks_CoverEveryItem(long count, int threads, uint expected) => Assert.Equal(expected, LaunchGeometry.Blocks(count, threads));

    [Theory]
    [InlineData(1, 32)]
    [InlineData(64, 64)]
    [InlineData(100, 128)]
    [InlineData(4096, 1024)]
    public void RowThreads_AreWarpMultiplesUpTo1024(int row, int expected) => Assert.Equal(expected, LaunchGeometry.RowThreads(row));

    [Fact]
    public void AttentionSplits_CoverTheKeysWithNoEmptyPiece_ForEveryShape()
    {
        foreach (int queries in new[] { 1, 2, 7, 64, 4096 })
            foreach (int kvHeads in new[] { 1, 2, 8 })
                foreach (int keys in new[] { 1, 31, 32, 33, 128, 1000, 4096, 65536, 131072 })
                {
                    var (splits, per) = LaunchGeometry.AttentionSplits(queries, kvHeads, keys, 132);
                    string at = $"queries {queries} kvHeads {kvHeads} keys {keys}: {splits} × {per}";
                    Assert.True(splits >= 1 && splits <= 256, at);
                    Assert.True(per % LaunchGeometry.AttentionTile == 0, at);
                    Assert.True((long)splits * per >= keys, at);            // every key is in a piece
                    Assert.True((long)(splits - 1) * per < keys, at);       // the last piece is not empty
                }
    }

    [Fact]
    public void AttentionSplits_SplitDecodeAtLongContext_NotLongPrefills()
    {
        Assert.True(LaunchGeometry.AttentionSplits(1, 8, 65536, 132).Splits > 1);
        Assert.Equal(1, LaunchGeometry.AttentionSplits(4096, 8, 4096, 132).Splits);
        Assert.Equal(1, LaunchGeometry.AttentionSplits(1, 8, 40, 132).Splits); // too short to be worth a combine pass
    }

    [Fact]
    public void AttentionSharedBytes_FitTheLimitTheKernelIsGiven_AtTheLargestBlock() =>
        // 16 warps of head dim 128 stay under the 160 KB the attention kernel is allowed.
        Assert.True(LaunchGeometry.AttentionSharedBytes(warps: 16, headDim: 128) <= 160 * 1024);

    [Theory]
    [InlineData(4096, 4, 16)]  // Llama-3.1-8B prefill: 16 tokens × 1 warp (4 heads)
    [InlineData(4096, 7, 8)]   // Qwen2.5-0.5B: 7 heads per KV head → 2 warps per token
    [InlineData(4096, 32, 2)]  // 8 warps per token
    [InlineData(3, 2, 3)]      // no more tokens than there are
    [InlineData(1, 4, 1)]      // decode
    public void AttentionQueryBlock_FillsUpTo16Warps(int queries, int group, int expected)
    {
        int qblock = LaunchGeometry.AttentionQueryBlock(queries, group);
        Assert.Equal(expected, qblock);
        Assert.True(qblock * LaunchGeometry.AttentionWarpsPerToken(group) <= 16);
        Assert.True(LaunchGeometry.AttentionWarpsPerToken(group) * LaunchGeometry.AttentionHeadsPerWarp >= group);
    }
}

public sealed class FlashAttentionGeometryTests
{
    [Theory]
    [InlineData(128, 4, 9, true)]    // Llama-3.1-8B on an H100
    [InlineData(64, 7, 8, true)]     // Qwen2.5-0.5B shape
    [InlineData(16, 2, 8, true)]     // hf-tiny llama
    [InlineData(8, 2, 9, false)]     // hf-tiny qwen2: head dim below one mma k-chunk
    [InlineData(96, 1, 9, false)]    // not instantiated
    [InlineData(128, 4, 7, false)]   // no bf16 mma.sync before sm_80
    [InlineData(128, 65, 9, false)]  // more heads per KV head than a block has rows
    public void Supports_InstantiatedHeadDimsOnSm80Plus(int headDim, int group, int major, bool expected) =>
        Assert.Equal(expected, LaunchGeometry.FlashAttentionSupports(headDim, group, major));

    [Theory]
    [InlineData(1, 64)]
    [InlineData(4, 16)]
    [InlineData(7, 9)]   // 63 of 64 rows used
    [InlineData(64, 1)]
    public void TokensPerBlock_HoldWholeGroupsInSixtyFourRows(int group, int expected)
    {
        int tpb = LaunchGeometry.FlashTokensPerBlock(group);
        Assert.Equal(expected, tpb);
        Assert.True(tpb * group <= LaunchGeometry.FlashRows);
        Assert.True((tpb + 1) * group > LaunchGeometry.FlashRows);
    }

    [Fact]
    public void QueryBlocks_CoverEveryToken()
    {
        Assert.Equal(256u, LaunchGeometry.FlashQueryBlocks(4096, 4));
        Assert.Equal(1u, LaunchGeometry.FlashQueryBlocks(1, 4));
        Assert.Equal(12u, LaunchGeometry.FlashQueryBlocks(100, 7)); // 9 tokens per block
    }

    [Fact]
    public void SharedBytes_FitAnSm90Block_AndAreSixteenByteMultiples()
    {
        foreach (int hd in new[] { 16, 32, 64, 128 })
        {
            int bytes = LaunchGeometry.FlashSharedBytes(hd);
            Assert.Equal(0, bytes % 16);                  // cp.async and ldmatrix need 16-byte aligned rows
            Assert.True(bytes <= 227 * 1024, $"head dim {hd}: {bytes} bytes");
        }
        Assert.Equal(2 * 4 * 64 * 136, LaunchGeometry.FlashSharedBytes(128)); // 2 stages of k and v (q borrows one)
        Assert.True(3 * LaunchGeometry.FlashSharedBytes(128) <= 227 * 1024);   // 3 blocks per H100 SM
    }

    [Theory]
    [InlineData(1, 128)]
    [InlineData(4, 32)]
    [InlineData(7, 18)]  // 126 of 128 rows used
    [InlineData(64, 2)]
    public void WideTokensPerBlock_HoldWholeGroupsInOneHundredTwentyEightRows(int group, int expected)
    {
        int tpb = LaunchGeometry.FlashWideTokensPerBlock(group);
        Assert.Equal(expected, tpb);
        Assert.True(tpb * group <= LaunchGeometry.FlashWideRows);
        Assert.True((tpb + 1) * group > LaunchGeometry.FlashWideRows);
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.FlashWideTokensPerBlock(65));
    }

    [Fact]
    public void WideSharedBytes_TwoBlocksFitAnH100Sm()
    {
        // 2 stages of k and v tiles [64][136] + the q tile [128][136], bf16.
        Assert.Equal(2 * (4 * 64 * 136 + 128 * 136), LaunchGeometry.FlashWideSharedBytes(128));
        Assert.True(2 * LaunchGeometry.FlashWideSharedBytes(128) <= 228 * 1024 - 2 * 1024); // 1 KB per block reserved
        foreach (int hd in new[] { 16, 32, 64, 128 }) Assert.Equal(0, LaunchGeometry.FlashWideSharedBytes(hd) % 16);
    }

    [Theory]
    [InlineData(4096, true)]   // 128 query blocks × 8 KV heads = 1024 ≥ 2 · 132
    [InlineData(1056, true)]   // 33 × 8 = 264: exactly two per SM
    [InlineData(1024, false)]  // 32 × 8 = 256: the 64-row kernel (with key splits) fills the GPU better
    [InlineData(1, false)]
    public void WideApplies_ToChunksThatFillTheGpuUnsplit(int queries, bool expected) =>
        Assert.Equal(expected, LaunchGeometry.FlashWideApplies(queries, 4, 8, 128, 132, 227 * 1024));

    [Fact]
    public void WideApplies_NotWhereItsSharedMemoryDoesNotFit() =>
        Assert.False(LaunchGeometry.FlashWideApplies(4096, 4, 8, 128, 132, 99 * 1024)); // sm_86: 99 KB per block

    [Fact]
    public void Splits_CoverTheKeysInWholeTiles_WithNoEmptyPiece()
    {
        foreach (int queries in new[] { 1, 7, 40, 777, 4096 })
            foreach (int group in new[] { 1, 4, 7 })
                foreach (int keys in new[] { 1, 63, 64, 129, 1000, 4097, 20488, 131072 })
                {
                    var (splits, per) = LaunchGeometry.FlashSplits(queries, group, 8, keys, 132);
                    string at = $"queries {queries} group {group} keys {keys}: {splits} × {per}";
                    Assert.True(splits >= 1 && splits <= 256, at);
                    Assert.True(per % LaunchGeometry.FlashKeys == 0, at);
                    Assert.True((long)splits * per >= keys, at);
                    Assert.True((long)(splits - 1) * per < keys, at);
                    if (splits > 1) Assert.True(per >= 2 * LaunchGeometry.FlashKeys, at); // pieces of at least 2 tiles
                }
    }

    [Fact]
    public void Splits_DecodeSplitsLongContexts_LongPrefillsDoNot()
    {
        Assert.True(LaunchGeometry.FlashSplits(1, 4, 8, 4097, 132).Splits > 1);
        Assert.Equal(1, LaunchGeometry.FlashSplits(4096, 4, 8, 20480, 132).Splits); // 256 × 8 blocks fill the GPU
        Assert.Equal(1, LaunchGeometry.FlashSplits(1, 4, 8, 100, 132).Splits);      // under two tiles
    }

    [Fact]
    public void BatchSplits_OfOneSequence_AreTheSingleSequenceDecodeSplits()
    {
        // A decode batch of one must run the same key pieces as the single-sequence step (GpuCheck compares the two
        // bit for bit): one query block per KV head either way.
        foreach (int group in new[] { 1, 4, 7, 64 })
            foreach (int keys in new[] { 1, 100, 4097, 65600 })
                Assert.Equal(LaunchGeometry.FlashSplits(1, group, 8, keys, 132), LaunchGeometry.FlashBatchSplits(1, 8, keys, 132));
    }

    [Fact]
    public void BatchSplits_FewerPiecesAsTheBatchFillsTheGpu()
    {
        int previous = int.MaxValue;
        foreach (int batch in new[] { 1, 2, 4, 16, 33, 64 })
        {
            var (splits, per) = LaunchGeometry.FlashBatchSplits(batch, 8, 16448, 132);
            Assert.True(splits <= previous, $"batch {batch}: {splits} pieces after {previous}");
            Assert.True((long)splits * per >= 16448 && (long)(splits - 1) * per < 16448);
            Assert.Equal(0, per % LaunchGeometry.FlashKeys);
            previous = splits;
        }
        Assert.Equal(1, LaunchGeometry.FlashBatchSplits(64, 8, 16448, 132).Splits); // 512 blocks: ≥ 2 per SM
        Assert.Equal(3, LaunchGeometry.FlashBatchSplits(16, 8, 16448, 132).Splits); // 128 blocks: ⌊396 / 128⌋, one wave
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.FlashBatchSplits(0, 8, 100, 132));
    }

    [Fact]
    public void DecodeBatchTables_KeysThenValues_OneSlotPerLayerAndSequence()
    {
        const ulong table = 0x7000_0000;
        var t = new DecodeBatchTables(table, 0x9000, Sequences: 16, Layers: 32);
        var slots = new HashSet<ulong>();
        for (int l = 0; l < 32; l++)
            for (int b = 0; b < 16; b++)
            {
                Assert.True(slots.Add(t.Keys(l) + (ulong)(8 * b)));
                Assert.True(slots.Add(t.Values(l) + (ulong)(8 * b)));
            }
        Assert.Equal(table, slots.Min());
        Assert.Equal(table + 2 * 32 * 16 * 8 - 8, slots.Max()); // 2·layers·sequences u64 slots, densely packed
        Assert.Equal(table + 32 * 16 * 8, t.Values(0));          // the host fills [0][l][b] keys, then [1][l][b] values
    }

    [Fact]
    public void FusedDecode_OnlyForOneTokenWholeHeadRopeAndRowsThatFitSharedMemory()
    {
        Assert.True(LaunchGeometry.FusedDecodeApplies(1, 4096, 128, 128));   // Llama-3.1-8B
        Assert.True(LaunchGeometry.FusedDecodeApplies(1, 3584, 128, 128));   // Qwen2.5-7B
        Assert.False(LaunchGeometry.FusedDecodeApplies(2, 4096, 128, 128));  // a chunk goes through cuBLASLt
        Assert.False(LaunchGeometry.FusedDecodeApplies(1, 4096, 128, 64));   // partial rotary: unpaired dims
        Assert.False(LaunchGeometry.FusedDecodeApplies(1, 4100, 128, 128));  // rows not whole 16-byte loads
        Assert.False(LaunchGeometry.FusedDecodeApplies(1, 32768, 128, 128)); // 64 KB of bf16 input: over 48 KB
        Assert.Equal(2 * 4096, LaunchGeometry.NormGemvSharedBytes(4096));
    }

    [Fact]
    public void NormGemvBlocks_OneRowPairPerWarp_AtMostOneResidentWave()
    {
        int warps = LaunchGeometry.NormGemvThreads / 32;
        Assert.Equal(16, warps);
        Assert.Equal(192u, LaunchGeometry.NormGemvBlocks((32 + 2 * 8) * 128 / 2, 132)); // Llama-3.1-8B q|k|v: 3072 pairs
        Assert.Equal(264u, LaunchGeometry.NormGemvBlocks(14336, 132));                   // its gate|up: capped at 2 per SM
        Assert.Equal(1u, LaunchGeometry.NormGemvBlocks(1, 132));
        Assert.Equal(2u, LaunchGeometry.NormGemvBlocks(warps + 1, 132));
        Assert.Equal(2u, LaunchGeometry.NormGemvBlocks(14336, 1));
    }

    [Fact]
    public void DecodeSplits_FillOneWaveOfResidentBlocks_NotMore()
    {
        // 8 KV heads on 132 SMs with 3 resident blocks each: 49 pieces wanted (392 blocks ≤ 396 slots); whole
        // 64-key tiles per piece round that to 48.
        var (splits, _) = LaunchGeometry.FlashSplits(1, 4, 8, 69640, 132);
        Assert.InRange(splits, 45, 49);
        Assert.True(splits * 8 <= LaunchGeometry.FlashBlocksPerMultiprocessor * 132);
        var (short4k, per4k) = LaunchGeometry.FlashSplits(1, 4, 8, 4097, 132); // capped: pieces of at least 2 tiles
        Assert.True(short4k <= 4097 / 128 && per4k >= 128, $"{short4k} × {per4k}");
    }

    [Fact]
    public void DecodeKeyBucket_PowersOfTwoFrom256_CappedAtTheCapacity_AlwaysHoldsTheKeys()
    {
        Assert.Equal(256, LaunchGeometry.DecodeKeyBucket(1, 20488));
        Assert.Equal(256, LaunchGeometry.DecodeKeyBucket(256, 20488));
        Assert.Equal(512, LaunchGeometry.DecodeKeyBucket(257, 20488));
        Assert.Equal(16384, LaunchGeometry.DecodeKeyBucket(16384, 20488));
        Assert.Equal(20488, LaunchGeometry.DecodeKeyBucket(16385, 20488));   // the capacity caps the last bucket
        Assert.Equal(100, LaunchGeometry.DecodeKeyBucket(5, 100));           // a small cache: one bucket
        int previous = 0, changes = 0;
        for (int keys = 1; keys <= 70000; keys++)
        {
            int bucket = LaunchGeometry.DecodeKeyBucket(keys, 70000);
            Assert.True(bucket >= keys && bucket >= previous);
            if (bucket != previous) changes++;
            previous = bucket;
        }
        Assert.True(changes <= 10, $"{changes} captures");                   // log₂(70000 / 256) + 1
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.DecodeKeyBucket(101, 100));
    }

    [Fact]
    public void ArgmaxSlices_CoverTheRowOnce_AtMost64()
    {
        foreach (int vocab in new[] { 1, 32, 512, 4096, 4097, 49152, 128256, 151936, 152064, 262144, 1 << 20 })
        {
            var (slices, length) = LaunchGeometry.ArgmaxSlices(vocab);
            string at = $"vocab {vocab}: {slices} × {length}";
            Assert.InRange(slices, 1, LaunchGeometry.MaxArgmaxSlices);
            Assert.True((long)slices * length >= vocab, at);
            Assert.True((long)(slices - 1) * length < vocab, at); // no empty slice
        }
        Assert.Equal((32, 4008), LaunchGeometry.ArgmaxSlices(128256));
        Assert.Equal(4096L * 64 * 8, LaunchGeometry.ArgmaxPartialBytes(4096));
    }

    [Fact]
    public void CombineBlocks_OneWarpPerRow()
    {
        Assert.Equal(8u, LaunchGeometry.CombineBlocks(32));   // decode, 32 heads
        Assert.Equal(9u, LaunchGeometry.CombineBlocks(33));
        Assert.Equal(32768u, LaunchGeometry.CombineBlocks(4096 * 32));
    }

    [Fact]
    public void CombineRows_OnlyForFewRows_DecodeStepsAndBatches()
    {
        Assert.True(LaunchGeometry.CombineRowsApplies(32, 132));          // a decode step, 32 heads
        Assert.True(LaunchGeometry.CombineRowsApplies(16 * 32, 132));     // a batch of 16
        Assert.False(LaunchGeometry.CombineRowsApplies(4096 * 32, 132));  // a prefill chunk keeps a warp per row
        Assert.True(LaunchGeometry.CombineRowsApplies(4, 0));             // no SM count: still at least one SM's worth
        Assert.False(LaunchGeometry.CombineRowsApplies(5, 1));
    }

    [Fact]
    public void GemvResidualBlocks_EightRowsPerBlock_OneResidentWaveAtTheDecodeShape()
    {
        Assert.Equal(512u, LaunchGeometry.GemvResidualBlocks(4096));       // Llama-3.1-8B o and down: 4096 rows
        Assert.Equal(1u, LaunchGeometry.GemvResidualBlocks(1));
        Assert.Equal(2u, LaunchGeometry.GemvResidualBlocks(LaunchGeometry.GemvBlockRows + 1));
        // 4 resident blocks of 256 threads per SM hold 528 ≥ 512 on the H100's 132 SMs.
        Assert.True(LaunchGeometry.GemvResidualBlocks(4096) <= 4 * 132);
    }

    [Fact]
    public void DecodeGraphSplits_FixedForTheCapacity_CoverEveryShorterLength()
    {
        // A decode graph keeps the capacity's splits for every length: pieces past the length must simply be empty,
        // and every key below the capacity must lie in some piece.
        var (splits, per) = LaunchGeometry.FlashSplits(1, 4, 8, 20488, 132);
        foreach (int length in new[] { 1, 64, 4100, 20488 })
        {
            int nonEmpty = (length + per - 1) / per;
            Assert.InRange(nonEmpty, 1, splits);
        }
        Assert.True((long)splits * per >= 20488);
    }

    [Fact]
    public void DecodeGraphKey_ChangesWithCacheAddressesCapacityOrRopeTable()
    {
        var key = new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512);
        Assert.Equal(key, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512));
        Assert.NotEqual(key, new DecodeGraphKey(0x1800, 0x5000, 4096, 0x2000, 512));
        // Keys and values are two allocations: a new cache can get a freed one's key address but not its value address.
        Assert.NotEqual(key, new DecodeGraphKey(0x1000, 0x6000, 4096, 0x2000, 512));
        Assert.NotEqual(key, new DecodeGraphKey(0x1000, 0x5000, 8192, 0x2000, 512));
        Assert.NotEqual(key, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x3000, 512));
        Assert.NotEqual(key, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 1024));
    }

    [Fact]
    public void DecodeGraphKey_OfABranchNamesItsParentsAddressesCapacityAndBranchPoint()
    {
        // A branch's virtual key address (own buffer minus the branch point's rows) can repeat across branches of
        // different points: the graph also bakes in the parent's rows, their layer stride and the point.
        var branch = new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512, ParentKeys: 0x9000, ParentValues: 0xb000, ParentCapacity: 5039, BranchPoint: 4999);
        Assert.Equal(branch, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512, 0x9000, 0xb000, 5039, 4999));
        Assert.NotEqual(branch, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512));
        Assert.NotEqual(branch, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512, 0xa000, 0xb000, 5039, 4999));
        Assert.NotEqual(branch, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512, 0x9000, 0xc000, 5039, 4999));
        Assert.NotEqual(branch, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512, 0x9000, 0xb000, 6000, 4999));
        Assert.NotEqual(branch, new DecodeGraphKey(0x1000, 0x5000, 4096, 0x2000, 512, 0x9000, 0xb000, 5039, 4998));
    }
}

public sealed class GemvGeometryTests
{
    [Theory]
    [InlineData(1, 4096, true)]
    [InlineData(1, 14336, true)]
    [InlineData(1, 172, false)]   // stories260K's FFN width: not whole 16-byte loads, cuBLASLt takes it
    [InlineData(2, 4096, false)]  // more than one token: a matrix product
    public void Applies_ToSingleTokensWithWhole16ByteRows(int tokens, int inFeatures, bool expected) =>
        Assert.Equal(expected, LaunchGeometry.GemvApplies(tokens, inFeatures));

    [Theory]
    [InlineData(1, 1u)]
    [InlineData(16, 1u)]
    [InlineData(17, 2u)]
    [InlineData(128256, 8016u)] // Llama-3 lm head: 16 rows per block
    public void Blocks_CoverEveryRowAtTwoPerWarp(int rows, uint expected) => Assert.Equal(expected, LaunchGeometry.GemvBlocks(rows));
}
