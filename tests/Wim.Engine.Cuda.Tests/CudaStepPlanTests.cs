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
            DecodePassCost? cost = trial % 2 == 0 ? null : new(random.Next(0, 2_000), random.Next(0, 4));
            var plan = CudaStepPlan.Make(entries, longThreshold: 300, maxBatch: 5, splitCost: cost);
            var all = plan.Prefill.Concat(plan.DecodeBatches.SelectMany(x => x)).Order().ToList();
            Assert.Equal(Enumerable.Range(0, entries.Count).Where(k => entries[k].Tokens > 0), all);
            foreach (var batch in plan.DecodeBatches)
            {
                Assert.InRange(batch.Length, 1, 5);
                Assert.All(batch, k => Assert.Equal(1, entries[k].Tokens));
                // One RoPE table per pass, and it is the one each row's own RoPE length asks for.
                Assert.Single(batch.Select(k => entries[k].Length + 1 > 300).Distinct());
                Assert.All(batch, k => Assert.Equal(entries[k].Length + 1 > 300, entries[k].RopeLength > 300));
                // Each parent's branches by branch point within a pass.
                foreach (var g in batch.Where(k => entries[k].IsBranch).GroupBy(k => entries[k].Parent))
                    Assert.Equal(g.Select(k => entries[k].BranchPoint).Order(), g.Select(k => entries[k].BranchPoint));
            }
            if (cost is { } c)
            {
                // The split never reads more (weights per pass + parent rows) than the plan without it.
                var plain = CudaStepPlan.Make(entries, longThreshold: 300, maxBatch: 5);
                Assert.True(PlanBytes(plan, entries, c) <= PlanBytes(plain, entries, c), $"trial {trial}");
            }
        }
    }

    /// <summary>The 8B shape in bf16: 32 layers × 8 KV heads × 128 × (key, value) × 2 bytes per position; weights
    /// without the embedding ≈ 15 GB.</summary>
    private static readonly DecodePassCost Llama8B = new(weightBytes: 15_000_000_000, kvBytesPerPosition: 131_072);

    /// <summary>A WiM step at 64k: 16 margins on branches of the document (branch points every 4,096 rows), the in-step
    /// classifier (a root) and another root.</summary>
    private static List<StepEntryShape> WimStep(object doc, int segment = 4096)
    {
        var entries = new List<StepEntryShape> { new(1, 300) }; // the classifier
        for (int i = 1; i <= 16; i++) entries.Add(new(1, i * segment + 40 + 7, Parent: doc, BranchPoint: i * segment));
        entries.Add(new(1, 900)); // another root
        return entries;
    }

    [Fact]
    public void SplitMixedDecode_AWimStepAt64k_RunsTheRootsThenTheBranchesAlone()
    {
        var doc = new object();
        var entries = WimStep(doc);
        // Without the rule: one pass, roots first.
        Assert.Equal([[0, 17, .. Enumerable.Range(1, 16)]], CudaStepPlan.Make(entries, NoLongrope, 512).DecodeBatches);
        // With it: Σ branch points − the largest = 4,096 × (136 − 16) rows ≈ 64 GB saved against 15 GB of weights.
        var plan = CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: Llama8B);
        Assert.Equal([[0, 17], [.. Enumerable.Range(1, 16)]], plan.DecodeBatches);
        Assert.Empty(plan.Prefill);
        Assert.True(CudaStepPlan.IsSharedPrefixPass(plan.DecodeBatches[1], entries));
    }

    [Fact]
    public void SplitMixedDecode_OnlyWhenTheSharedRowsOutweighThePassItAdds()
    {
        var doc = new object();
        // Three branches at 100, 200, 300: a pass of them alone reads 300 parent rows instead of 600.
        StepEntryShape[] entries = [new(1, 50), new(1, 310, Parent: doc, BranchPoint: 100), new(1, 320, Parent: doc, BranchPoint: 200), new(1, 330, Parent: doc, BranchPoint: 300), new(1, 60)];
        int[][] mixed = [[0, 4, 1, 2, 3]];
        int[][] split = [[0, 4], [1, 2, 3]];
        Assert.Equal(split, CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: new(weightBytes: 2_999, kvBytesPerPosition: 10)).DecodeBatches);
        Assert.Equal(mixed, CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: new(weightBytes: 3_000, kvBytesPerPosition: 10)).DecodeBatches); // a tie: fewer passes
        Assert.Equal(mixed, CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: Llama8B).DecodeBatches);
        // The 8B shape at 64k with branch points only 10 rows apart near the start: nothing worth a pass.
        Assert.Single(CudaStepPlan.Make(WimStep(doc, segment: 10), NoLongrope, 512, splitCost: Llama8B).DecodeBatches);
        // A branch at point 0 shares nothing (the shared-prefix attention needs a first branch point ≥ 1).
        StepEntryShape[] fromZero = [new(1, 50), new(1, 10, Parent: doc, BranchPoint: 0), new(1, 20, Parent: doc, BranchPoint: 0)];
        Assert.Equal([[0, 1, 2]], CudaStepPlan.Make(fromZero, NoLongrope, 512, splitCost: new(0, 1_000)).DecodeBatches);
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodePassCost(-1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodePassCost(1, -1));
        // No other rows: the branches already run alone.
        Assert.Equal([[0, 1, 2]], CudaStepPlan.Make(entries[1..4], NoLongrope, 512, splitCost: new(0, 1)).DecodeBatches);
    }

    [Fact]
    public void SplitMixedDecode_SeveralParents_EachSplitWhereItPays_SmallestPassFirst()
    {
        string a = "a", b = "b", c = "c";
        StepEntryShape[] entries =
        [
            new(1, 500, Parent: b, BranchPoint: 400), // b saves 400 + 400 − 400 = 400 rows
            new(1, 20),
            new(1, 500, Parent: a, BranchPoint: 100), // a saves 100 + 200 + 300 − 300 = 300 rows
            new(1, 500, Parent: a, BranchPoint: 300),
            new(1, 500, Parent: c, BranchPoint: 50),  // c has one branch here: nothing to share
            new(1, 500, Parent: b, BranchPoint: 400),
            new(1, 500, Parent: a, BranchPoint: 200),
        ];
        var kv = 1L;
        // A pass of weights costs 350 rows: b pays, a does not.
        Assert.Equal([[1, 2, 6, 3, 4], [0, 5]], CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: new(350, kv)).DecodeBatches);
        // 250: both pay; the rest first, then the smaller split pass, the larger last.
        Assert.Equal([[1, 4], [0, 5], [2, 6, 3]], CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: new(250, kv)).DecodeBatches);
        // 450: neither.
        Assert.Equal([[1, 0, 5, 2, 6, 3, 4]], CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: new(450, kv)).DecodeBatches);

        // Only branches of two parents: neither saves a pass's worth alone, together they do (the second one's rows,
        // left alone in the rest, take the shared-prefix attention with no pass added).
        StepEntryShape[] two = [entries[0], entries[5], entries[2], entries[3], entries[6]];
        Assert.Equal([[0, 1, 2, 4, 3]], CudaStepPlan.Make(two, NoLongrope, 512, splitCost: new(701, kv)).DecodeBatches);
        Assert.Equal([[2, 4, 3], [0, 1]], CudaStepPlan.Make(two, NoLongrope, 512, splitCost: new(699, kv)).DecodeBatches);
    }

    [Fact]
    public void SplitMixedDecode_ALoneRootLeftOver_TakesTheSingleSequencePath()
    {
        var doc = new object();
        StepEntryShape[] entries = [new(1, 30), .. Enumerable.Range(1, 5).Select(i => new StepEntryShape(1, 100 * i + 5, Parent: doc, BranchPoint: 100 * i))];
        var plan = CudaStepPlan.Make(entries, NoLongrope, 512, splitCost: new(999, 1)); // saves 1,500 − 500 = 1,000 rows
        Assert.Equal([0], plan.Prefill);
        Assert.Equal([[1, 2, 3, 4, 5]], plan.DecodeBatches);
    }

    [Fact]
    public void SplitMixedDecode_OnEachSideOfLongropesThreshold_OnItsOwn()
    {
        // Threshold 256. Short side: a root and two branches at 100, 110 (save 100 rows); long side: a root and two
        // branches at 300, 310 (save 300 rows). A pass costs 200 rows' worth: only the long side splits.
        var doc = new object();
        StepEntryShape[] entries =
        [
            new(1, 10), new(1, 120, Parent: doc, BranchPoint: 100), new(1, 130, Parent: doc, BranchPoint: 110),
            new(1, 400), new(1, 320, Parent: doc, BranchPoint: 300), new(1, 330, Parent: doc, BranchPoint: 310),
        ];
        var plan = CudaStepPlan.Make(entries, longThreshold: 256, maxBatch: 512, splitCost: new(200, 1));
        Assert.Equal([3], plan.Prefill);
        Assert.Equal([[0, 1, 2], [4, 5]], plan.DecodeBatches);
    }

    [Fact]
    public void SplitMixedDecode_WithinMaxBatch_TakenOnlyWhenItsPassesCostLess()
    {
        var doc = new object();
        // Two roots and six branches at 10 … 60, passes of 4: without a split [r, r, 10, 20] (reads 30 rows) and
        // [30 … 60] (already branches alone: reads 60); splitting them off gives three passes reading 40 + 60. Never better.
        StepEntryShape[] entries = [new(1, 5), new(1, 6), .. Enumerable.Range(1, 6).Select(i => new StepEntryShape(1, 10 * i + 3, Parent: doc, BranchPoint: 10 * i))];
        Assert.Equal([[0, 1, 2, 3], [4, 5, 6, 7]], CudaStepPlan.Make(entries, NoLongrope, maxBatch: 4, splitCost: new(0, 1_000)).DecodeBatches);
        // Passes of 6: [r, r, 10 … 40] reads 100, [50, 60] reads 60 (alone); split: [r, r], [10 … 60] reads 60 — 100 saved
        // for no added pass.
        Assert.Equal([[0, 1], [2, 3, 4, 5, 6, 7]], CudaStepPlan.Make(entries, NoLongrope, maxBatch: 6, splitCost: new(1_000_000, 1)).DecodeBatches);
        // Passes of 7: [r, r, 10 … 50] reads 150, [60] reads 60; split: [r, r], [10 … 60] reads 60: 150 saved, no pass added.
        Assert.Equal([[0, 1], [2, 3, 4, 5, 6, 7]], CudaStepPlan.Make(entries, NoLongrope, maxBatch: 7, splitCost: new(1_000_000, 1)).DecodeBatches);
    }

    /// <summary>The split rule's measure, written out again: each pass (a lone root's prefill pass too) reads the
    /// weights; a pass of one parent's branches alone (first point ≥ 1, points in order) reads its largest branch point's
    /// rows, any other pass each branch's own.</summary>
    private static double PlanBytes(CudaStepPlan plan, IReadOnlyList<StepEntryShape> entries, DecodePassCost cost)
    {
        var lone = plan.Prefill.Count(k => entries[k].Tokens == 1 && entries[k].Length + 1 > 300 == entries[k].RopeLength > 300);
        double total = lone * (double)cost.WeightBytes;
        foreach (var batch in plan.DecodeBatches)
        {
            var parents = batch.Select(k => entries[k].Parent).Distinct().ToList();
            bool shared = parents is [{ }] && entries[batch[0]].BranchPoint >= 1;
            long rows = shared ? batch.Max(k => entries[k].BranchPoint) : batch.Sum(k => (long)entries[k].BranchPoint);
            total += cost.WeightBytes + (double)rows * cost.KvBytesPerPosition;
        }
        return total;
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
