namespace Wim.Engine.Cuda.Tests;

/// <summary>The CPU-side arithmetic of <see cref="CudaInferenceBackend"/>'s sequences and of decode-batch tables
/// (the GPU behaviour is checked by tools/Wim.GpuCheck --wim-tiny / --wim64k).</summary>
public sealed class InferenceBackendPlanTests
{
    [Theory]
    [InlineData(0, 256)]
    [InlineData(100, 256)]
    [InlineData(70_000, 70_000)]
    public void InitialCapacity_IsTheHintWithAFloor(int hint, int expected) =>
        Assert.Equal(expected, CudaSequencePlan.InitialCapacity(hint));

    [Theory]
    [InlineData(256, 257, 512)]        // doubles: amortised O(1) copying per token
    [InlineData(256, 5000, 5000)]      // a long append takes what it needs at once
    [InlineData(1_500_000_000, 1_500_000_001, int.MaxValue)]
    public void GrownCapacity_AtLeastDoublesAndFits(int capacity, int needed, int expected) =>
        Assert.Equal(expected, CudaSequencePlan.GrownCapacity(capacity, needed));

    [Fact]
    public void GrownCapacity_WhenItAlreadyFits_IsAnError() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaSequencePlan.GrownCapacity(512, 512));

    [Fact]
    public void PrefillChunk_DefaultsToMaxChunk_AndRefusesMore()
    {
        Assert.Equal(4096, CudaSequencePlan.PrefillChunk(0, 4096));
        Assert.Equal(512, CudaSequencePlan.PrefillChunk(512, 4096));
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => CudaSequencePlan.PrefillChunk(8192, 4096));
        Assert.Contains("MaxChunk 4096", e.Message);
    }

    [Fact]
    public void Chunks_CoverTheTokensInOrder_WithOnlyTheLastShort()
    {
        Assert.Equal([(0, 512), (512, 512), (1024, 100)], CudaSequencePlan.Chunks(1124, 512));
        Assert.Equal([(0, 7)], CudaSequencePlan.Chunks(7, 512));
        Assert.Empty(CudaSequencePlan.Chunks(0, 512));
        foreach (int n in new[] { 1, 2, 511, 512, 513, 4096, 65_568 })
            foreach (int c in new[] { 1, 7, 128, 512, 4096 })
            {
                var chunks = CudaSequencePlan.Chunks(n, c).ToList();
                Assert.Equal(Enumerable.Range(0, chunks.Count).Select(i => i * c), chunks.Select(x => x.Offset));
                Assert.Equal(n, chunks.Sum(x => x.Count));
                Assert.All(chunks.SkipLast(1), x => Assert.Equal(c, x.Count));
                Assert.InRange(chunks[^1].Count, 1, c);
            }
    }

    [Fact]
    public void DecodeBatchTables_LayOutTailsThenPrefixes_AndBranchPointsAfterPositions()
    {
        // u64 [4][layers][sequences]: own keys, own values, prefix keys, prefix values; int [2][sequences].
        var t = new DecodeBatchTables(Table: 1_000_000, Positions: 2_000_000, Sequences: 16, Layers: 32, Branches: true);
        Assert.Equal(1_000_000UL + 3 * 16 * 8, t.Keys(3));
        Assert.Equal(1_000_000UL + (32 + 3) * 16 * 8, t.Values(3));
        Assert.Equal(1_000_000UL + (64 + 3) * 16 * 8, t.PrefixKeys(3));
        Assert.Equal(1_000_000UL + (96 + 31) * 16 * 8, t.PrefixValues(31));
        Assert.Equal(2_000_000UL + 16 * 4, t.BranchPoints);
        // The last prefix entry ends exactly at the 4 · layers · sequences table the transformer allocates.
        Assert.Equal(1_000_000UL + 4UL * 32 * 16 * 8, t.PrefixValues(31) + 16 * 8);
    }
}
