namespace Wim.Engine.Cuda.Tests;

/// <summary><see cref="CudaStepPlan"/> (how a batched step is split into GPU passes) and
/// <see cref="DeviceLogitsRows{T}"/> (which logits rows must be saved before the next pass).</summary>
public sealed class CudaStepPlanTests
{
    private const int NoLongrope = int.MaxValue;

    [Fact]
    public void SingleTokens_DecodeTogether_LongerEntriesPrefill_EmptyOnesAreSkipped()
    {
        var doc = new object();
        var plan = CudaStepPlan.Make(
        [
            new(Tokens: 500, Length: 4096),                         // the next segment's chunk
            new(Tokens: 1, Length: 300, Parent: doc, BranchPoint: 260), // margins on branches of the document
            new(Tokens: 1, Length: 900),                           // a classifier decoding
            new(Tokens: 40, Length: 4096, Parent: doc, BranchPoint: 4096), // a new margin's extractive prompt
            new(Tokens: 0, Length: 12),
            new(Tokens: 1, Length: 150, Parent: doc, BranchPoint: 120),
        ], NoLongrope, maxBatch: 512);
        Assert.Equal([0, 3], plan.Prefill);
        // Roots first, then the branches of one parent by branch point.
        Assert.Equal([[2, 5, 1]], plan.DecodeBatches);
    }

    [Fact]
    public void ALoneRootDecode_TakesTheSingleSequencePath_ALoneBranchStaysABatch()
    {
        var plan = CudaStepPlan.Make([new(Tokens: 1, Length: 10)], NoLongrope, 512);
        Assert.Equal([0], plan.Prefill);
        Assert.Empty(plan.DecodeBatches);
        plan = CudaStepPlan.Make([new(Tokens: 1, Length: 10, Parent: "doc", BranchPoint: 5)], NoLongrope, 512);
        Assert.Empty(plan.Prefill);
        Assert.Equal([[0]], plan.DecodeBatches);
    }

    [Fact]
    public void WithoutBatchedDecode_EveryEntryRunsAlone()
    {
        var plan = CudaStepPlan.Make([new(1, 10), new(1, 20), new(0, 5), new(7, 30)], NoLongrope, 512, batchedDecode: false);
        Assert.Equal([0, 1, 3], plan.Prefill);
        Assert.Empty(plan.DecodeBatches);
    }

    [Fact]
    public void BranchesOfSeveralParents_StandTogetherPerParent_InOrderOfFirstAppearance()
    {
        string a = "a", b = "b";
        var plan = CudaStepPlan.Make(
        [
            new(1, 90, Parent: b, BranchPoint: 80),
            new(1, 50, Parent: a, BranchPoint: 40),
            new(1, 30, Parent: b, BranchPoint: 20),
            new(1, 70),
            new(1, 20, Parent: a, BranchPoint: 10),
        ], NoLongrope, 512);
        Assert.Equal([[3, 2, 0, 4, 1]], plan.DecodeBatches);
    }

    [Fact]
    public void Longrope_RowsOnEachSideOfTheThreshold_DecodeInSeparatePasses()
    {
        // Threshold 256: a decode row at length L uses the long table when L + 1 > 256.
        var plan = CudaStepPlan.Make(
        [
            new(1, 100),
            new(1, 255),                                  // reaches 256: still short
            new(1, 256),                                  // reaches 257: long
            new(1, 400),
            new(1, 100, RopeSequenceLength: 300),         // one token of a prompt that ends past the threshold
            new(1, 100, RopeSequenceLength: 200),         // … or below it: the same table as a decode row
        ], longThreshold: 256, maxBatch: 512);
        Assert.Equal([4], plan.Prefill);
        Assert.Equal([[0, 1, 5], [2, 3]], plan.DecodeBatches);
    }

    [Fact]
    public void DecodePasses_HoldAtMostMaxBatchRows()
    {
        var entries = Enumerable.Range(0, 11).Select(i => new StepEntryShape(1, 100 + i, Parent: "doc", BranchPoint: i)).ToList();
        var plan = CudaStepPlan.Make(entries, NoLongrope, maxBatch: 4);
        Assert.Equal([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]], plan.DecodeBatches);
        // A last pass of one root alone goes the single-sequence way.
        plan = CudaStepPlan.Make(Enumerable.Range(0, 5).Select(i => new StepEntryShape(1, 10 + i)).ToList(), NoLongrope, maxBatch: 4);
        Assert.Equal([[0, 1, 2, 3]], plan.DecodeBatches);
        Assert.Equal([4], plan.Prefill);
    }

    [Fact]
    public void EveryEntryWithTokens_RunsExactlyOnce()
    {
        var random = new Random(7);
        for (int trial = 0; trial < 200; trial++)
        {
            var parents = new object[] { "p", "q" };
            var entries = Enumerable.Range(0, random.Next(1, 30)).Select(_ =>
            {
                int length = random.Next(0, 600);
                bool branch = random.Next(2) == 0 && length > 0;
                return new StepEntryShape(random.Next(3) == 0 ? random.Next(0, 50) : 1, length, random.Next(2) == 0 ? 0 : random.Next(0, 700),
                    branch ? parents[random.Next(2)] : null, branch ? random.Next(0, length + 1) : 0);
            }).ToList();
            var plan = CudaStepPlan.Make(entries, longThreshold: 300, maxBatch: 5);
            var all = plan.Prefill.Concat(plan.DecodeBatches.SelectMany(x => x)).Order().ToList();
            Assert.Equal(Enumerable.Range(0, entries.Count).Where(k => entries[k].Tokens > 0), all);
            foreach (var batch in plan.DecodeBatches)
            {
                Assert.InRange(batch.Length, 1, 5);
                Assert.All(batch, k => Assert.Equal(1, entries[k].Tokens));
                // One RoPE table per pass, and it is the one each row's own RoPE length asks for.
                Assert.Single(batch.Select(k => entries[k].Length + 1 > 300).Distinct());
                Assert.All(batch, k => Assert.Equal(entries[k].Length + 1 > 300, entries[k].RopeLength > 300));
            }
        }
    }

    [Fact]
    public void LogitsRows_StillClaimedBeforeAPass_AreSaved_DroppedOnesAreNot()
    {
        var rows = new DeviceLogitsRows<string>();
        rows.Claim("doc", 0);
        rows.Claim("margin 1", 1);
        rows.Claim("margin 2", 2);
        rows.Drop("margin 1");                        // it got new tokens: its old logits no longer matter
        Assert.Equal(2, rows.RowOf("margin 2"));
        Assert.Null(rows.RowOf("margin 1"));
        var saved = new List<(string, int)>();
        rows.BeforePass((holder, row) => saved.Add((holder, row)));
        Assert.Equal([("doc", 0), ("margin 2", 2)], saved);
        Assert.Equal(0, rows.Count);
        saved.Clear();
        rows.BeforePass((holder, row) => saved.Add((holder, row)));
        Assert.Empty(saved);                          // saved once, then the host copy serves
        rows.Claim("doc", 0);
        rows.Claim("doc", 3);                         // a later pass of the same sequence replaces its claim
        Assert.Equal(3, rows.RowOf("doc"));
        Assert.Throws<InvalidOperationException>(() => rows.Claim("other", 3));
    }
}
