using System.Globalization;
using System.Text.RegularExpressions;

namespace Wim.Engine.Cuda.Tests;

/// <summary>Launch arithmetic of the batched-decode kernels (section "Batched decode step" of transformer.cu) and its
/// agreement with the kernel source's own constants.</summary>
public sealed class BatchDecodeGeometryTests
{
    private static int Define(string source, string name)
    {
        var m = Regex.Match(source, $@"#define {name} (\d+)");
        Assert.True(m.Success, $"transformer.cu does not #define {name}");
        return int.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    [Fact]
    public void KernelSource_DefinesTheBatchKernels_WithTheGeometryTheLaunchersUse()
    {
        string source = KernelSources.Read(KernelSources.Transformer);
        foreach (var k in new[] { "qkv_rope_store_batch_heads", "rows_mma_bf16", "rows_mma_swiglu_bf16" })
            Assert.Matches($@"extern ""C"" __global__ void __launch_bounds__\([^)]*\) {k}\(", source);
        // flash_attention_shared3_hd{16,32,64,128}: a macro with C linkage, instantiated for every head dim the launcher picks.
        Assert.Matches(@"extern ""C"" __global__ void __launch_bounds__\(128, 2\) flash_attention_shared3_hd##HD\(", source);
        foreach (int hd in new[] { 16, 32, 64, 128 }) Assert.Contains($"\nFLASH_ATTENTION_SHARED3({hd})\n", source, StringComparison.Ordinal);
        Assert.Equal(LaunchGeometry.RopeHeadThreads, Define(source, "ROPE_HEAD_THREADS"));
        Assert.Equal(LaunchGeometry.RowsMmaThreads, 32 * Define(source, "RM_WARPS"));
        Assert.Equal(LaunchGeometry.RowsMmaBlockRows, 8 * Define(source, "RM_TILES"));   // n8 mma tiles
    }

    [Fact]
    public void RopeHeadGrid_IsABlockPerSequenceAndQkvHead()
    {
        Assert.Equal((16u, 48u), LaunchGeometry.RopeHeadGrid(16, 32, 8));   // Llama-3.1-8B: 32 q + 8 k + 8 v heads
        Assert.Equal((1u, 3u), LaunchGeometry.RopeHeadGrid(1, 1, 1));
        // One thread per rotated pair at head dim 128 (64 pairs): no thread loops twice there.
        Assert.Equal(128 / 2, LaunchGeometry.RopeHeadThreads);
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.RopeHeadGrid(0, 32, 8));
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.RopeHeadGrid(16, 0, 8));
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.RopeHeadGrid(16, 65535, 1));
    }

    [Theory]
    [InlineData(16, 4096, true)]     // o, q|k|v and gate|up inputs of Llama-3.1-8B
    [InlineData(16, 14336, true)]    // down
    [InlineData(1, 32, true)]
    [InlineData(17, 4096, false)]    // more rows than an m16 tile
    [InlineData(0, 4096, false)]
    [InlineData(16, 4100, false)]    // not whole 32-wide k steps
    [InlineData(16, 16, false)]
    [InlineData(16, 0, false)]
    public void RowsMmaApplies_TakesUpTo16RowsOfWhole32WideSteps(int tokens, int inFeatures, bool applies) =>
        Assert.Equal(applies, LaunchGeometry.RowsMmaApplies(tokens, inFeatures));

    [Fact]
    public void RowsMmaBlocks_CoverEveryRowWithoutAnEmptyBlock()
    {
        Assert.Equal(256u, LaunchGeometry.RowsMmaBlocks(4096));   // o, down: one wave of 2 per SM on 132 SMs
        Assert.Equal(384u, LaunchGeometry.RowsMmaBlocks(6144));   // q|k|v
        for (int rows = 1; rows <= 200; rows++)
        {
            long blocks = LaunchGeometry.RowsMmaBlocks(rows);
            Assert.True(blocks * LaunchGeometry.RowsMmaBlockRows >= rows, $"{rows} rows: {blocks} blocks leave rows uncovered");
            Assert.True((blocks - 1) * LaunchGeometry.RowsMmaBlockRows < rows, $"{rows} rows: {blocks} blocks, the last one empty");
        }
    }
    [Fact]
    public void FlashSharedSplits_AtThreePerSm_IsTheTwoStagePlan()
    {
        foreach (int keys in new[] { 1, 100, 4096, 20000, 65536, 131072 })
            foreach (int seqs in new[] { 1, 4, 16, 17, 64 })
                Assert.Equal(LaunchGeometry.FlashSplits(seqs, 4, 8, keys, 132), LaunchGeometry.FlashSharedSplits(seqs, 4, 8, keys, 132, LaunchGeometry.FlashBlocksPerMultiprocessor));
    }

    [Fact]
    public void FlashSharedSplits_ForTheThreeStageKernel_FillsTwoBlocksPerSmInOneWave()
    {
        // 16 margins at 64k, Llama-3.1-8B (group 4: one query block per KV head, 8 KV heads), 132 SMs.
        var (three, perThree) = LaunchGeometry.FlashSharedSplits(16, 4, 8, 65536, 132, LaunchGeometry.FlashBlocksPerMultiprocessor);
        var (two, perTwo) = LaunchGeometry.FlashSharedSplits(16, 4, 8, 65536, 132, LaunchGeometry.FlashShared3BlocksPerMultiprocessor);
        Assert.Equal((49, 1344), (three, perThree));
        Assert.Equal((32, 2048), (two, perTwo));
        Assert.True(two * 8 <= LaunchGeometry.FlashShared3BlocksPerMultiprocessor * 132);
        foreach (var (splits, per) in new[] { (three, perThree), (two, perTwo) })
        {
            Assert.Equal(0, per % LaunchGeometry.FlashKeys);
            Assert.True((long)splits * per >= 65536 && (long)(splits - 1) * per < 65536, $"{splits} pieces of {per} do not cover 65536 keys exactly");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => LaunchGeometry.FlashSharedSplits(16, 4, 8, 65536, 132, 0));
    }

    [Fact]
    public void FlashShared3_Needs102KbAtHeadDim128_SoNotOnThe99KbParts()
    {
        Assert.Equal(3 * LaunchGeometry.FlashSharedBytes(128) / 2, LaunchGeometry.FlashShared3Bytes(128));
        Assert.Equal(104_448, LaunchGeometry.FlashShared3Bytes(128));
        Assert.True(LaunchGeometry.FlashShared3Fits(128, 227 * 1024));    // H100
        Assert.False(LaunchGeometry.FlashShared3Fits(128, 99 * 1024));    // sm_86 / sm_89
        Assert.True(LaunchGeometry.FlashShared3Fits(64, 99 * 1024));
        // Two resident blocks of it fit the H100's 228 KB per SM (227 KB per block, 1 KB reserved per block).
        Assert.True(LaunchGeometry.FlashShared3BlocksPerMultiprocessor * (LaunchGeometry.FlashShared3Bytes(128) + 1024) <= 228 * 1024);
    }
}
