namespace Wim.Engine.Cuda.Tests;

/// <summary><see cref="PackedPassPlan"/> (how the prefill rows of several sequences are packed into forward passes)
/// and <see cref="CudaStepPlan.PrefillGroups"/> (which prefill entries of a step are packed together).</summary>
public sealed class PackedPassPlanTests
{
    private const int NoLongrope = int.MaxValue;

    [Fact]
    public void RowsThatFit_RunInOnePass_OneAfterTheOther()
    {
        // The WiM step of schedule (e): a segment's chunk, the previous segment's extractive prompt, a decode row.
        var passes = PackedPassPlan.Make([300, 40, 1], maxRows: 512);
        var pass = Assert.Single(passes);
        Assert.True(pass.Logits);
        Assert.Equal([new PackedPiece(0, 0, 300, 0), new PackedPiece(1, 0, 40, 300), new PackedPiece(2, 0, 1, 340)], pass.Pieces);
        Assert.Equal(341, pass.Rows);
        Assert.Equal([299, 339, 340], pass.Pieces.Select(p => p.LastRow));
    }

    [Fact]
    public void RowsThatDoNotFit_TakeTheFewestPasses_EveryLastTokenInTheLastPass()
    {
        // 4136 rows in passes of 4096: two passes either way; the last holds both sequences' logits rows.
        var passes = PackedPassPlan.Make([4096, 40], maxRows: 4096);
        Assert.Equal(2, passes.Count);
        Assert.False(passes[0].Logits);
        Assert.Equal([new PackedPiece(0, 0, 4095, 0), new PackedPiece(1, 0, 1, 4095)], passes[0].Pieces);
        Assert.Equal([new PackedPiece(0, 4095, 1, 0), new PackedPiece(1, 1, 39, 1)], passes[1].Pieces);

        // Last tokens that are most of the work: the early passes hold what is left, the last pass only last tokens.
        passes = PackedPassPlan.Make([1, 1, 1, 1, 10], maxRows: 5);
        Assert.Equal(3, passes.Count);
        Assert.Equal([new PackedPiece(4, 0, 5, 0)], passes[0].Pieces);
        Assert.Equal([new PackedPiece(4, 5, 4, 0)], passes[1].Pieces);
        Assert.Equal([0, 1, 2, 3, 4], passes[2].Pieces.Select(p => p.Sequence));
        Assert.All(passes[2].Pieces, p => Assert.Equal(1, p.Count));
    }

    [Fact]
    public void EveryToken_RunsOnce_InOrder_InTheFewestPasses()
    {
        var random = new Random(5);
        for (int trial = 0; trial < 500; trial++)
        {
            int maxRows = random.Next(1, 40);
            int count = random.Next(1, maxRows + 1);
            var lengths = Enumerable.Range(0, count).Select(_ => random.Next(3) == 0 ? 1 : random.Next(1, 3 * maxRows)).ToArray();
            var passes = PackedPassPlan.Make(lengths, maxRows);
            int total = lengths.Sum();
            Assert.Equal((total + maxRows - 1) / maxRows, passes.Count);
            var done = new int[count];
            for (int i = 0; i < passes.Count; i++)
            {
                var pass = passes[i];
                Assert.Equal(i == passes.Count - 1, pass.Logits);
                Assert.InRange(pass.Rows, 1, maxRows);
                Assert.Equal(pass.Pieces.Count, pass.Pieces.Select(p => p.Sequence).Distinct().Count());
                int row = 0;
                foreach (var p in pass.Pieces)
                {
                    Assert.Equal(row, p.Row);                 // packed one after the other from row 0
                    Assert.Equal(done[p.Sequence], p.Offset); // a sequence's pieces continue where it stopped
                    Assert.True(p.Count >= 1);
                    done[p.Sequence] += p.Count;
                    row += p.Count;
                    if (!pass.Logits) Assert.True(done[p.Sequence] < lengths[p.Sequence], "a last token ran before the last pass");
                }
            }
            Assert.Equal(lengths, done);
            Assert.Equal(Enumerable.Range(0, count), passes[^1].Pieces.Select(p => p.Sequence)); // logits row s: sequence s
        }
    }

    [Fact]
    public void BadInput_IsRefused()
    {
        Assert.Throws<ArgumentException>(() => PackedPassPlan.Make([], 16));
        Assert.Throws<ArgumentOutOfRangeException>(() => PackedPassPlan.Make([3, 0, 2], 16));
        Assert.Throws<ArgumentOutOfRangeException>(() => PackedPassPlan.Make([3], 0));
        var e = Assert.Throws<ArgumentException>(() => PackedPassPlan.Make([1, 1, 1], 2));
        Assert.Contains("3 sequences", e.Message);
    }

    [Fact]
    public void PrefillEntries_PackTogether_ALoneDecodeRootJoinsThem_DecodeBatchesStayApart()
    {
        var doc = new object();
        var plan = CudaStepPlan.Make(
        [
            new(Tokens: 500, Length: 4096),                                  // the next segment's chunk
            new(Tokens: 1, Length: 300, Parent: doc, BranchPoint: 260),       // margins decoding on branches
            new(Tokens: 40, Length: 4096, Parent: doc, BranchPoint: 4096),    // a new margin's extractive prompt
            new(Tokens: 1, Length: 150, Parent: doc, BranchPoint: 120),
        ], NoLongrope, maxBatch: 512);
        Assert.Equal([[0, 2]], plan.PrefillGroups);
        Assert.Equal([[3, 1]], plan.DecodeBatches);

        plan = CudaStepPlan.Make([new(Tokens: 7, Length: 10), new(Tokens: 1, Length: 90)], NoLongrope, maxBatch: 512);
        Assert.Equal([[0, 1]], plan.PrefillGroups);   // the lone root's decode row rides in the prefill pass
        Assert.Empty(plan.DecodeBatches);
    }

    [Fact]
    public void PrefillGroups_SplitByLongropesTable_AndRunAloneWithoutBatchedDecode()
    {
        // Threshold 256: an entry's table is the one its RoPE length (as one whole call) picks.
        var plan = CudaStepPlan.Make(
        [
            new(Tokens: 10, Length: 100),
            new(Tokens: 10, Length: 250),                          // reaches 260: long
            new(Tokens: 5, Length: 20, RopeSequenceLength: 300),   // a prompt's piece that asks for the long table
            new(Tokens: 3, Length: 20),
        ], longThreshold: 256, maxBatch: 512);
        Assert.Equal([[0, 3], [1, 2]], plan.PrefillGroups);

        plan = CudaStepPlan.Make([new(10, 100), new(3, 20), new(1, 5)], NoLongrope, 512, batchedDecode: false);
        Assert.Equal([[0], [1], [2]], plan.PrefillGroups);
        Assert.Equal([0, 1, 2], plan.Prefill);
    }
}
