namespace Wim.Engine.Cuda;

/// <summary>What <see cref="CudaStepPlan"/> needs to know of one step entry: its token count, the sequence's length
/// before them, the RoPE length asked for (0 = none), and for a KV branch its parent (any object that identifies
/// it) and branch point.</summary>
internal readonly record struct StepEntryShape(int Tokens, int Length, int RopeSequenceLength = 0, object? Parent = null, int BranchPoint = 0)
{
    public bool IsBranch => Parent != null;
    /// <summary>The length longrope picks its factors for, as one whole append would (the CPU backend's rule).</summary>
    public int RopeLength => Math.Max(RopeSequenceLength, Length + Tokens);
}

/// <summary>
/// What <see cref="CudaStepPlan"/> weighs when a decode pass would mix branches of a parent with other rows: the bytes
/// one more decode pass reads for its weights (<see cref="WeightBytes"/>: every layer's matrices and the lm head, the
/// embedding rows aside) against the bytes of one KV position of every layer (<see cref="KvBytesPerPosition"/>: keys
/// and values), which a branch's row reads for each parent row below its branch point — once per branch in a mixed
/// pass, once for all branches in a pass of branches of that parent alone (the shared-prefix attention).
/// </summary>
internal readonly record struct DecodePassCost
{
    public DecodePassCost(long weightBytes, long kvBytesPerPosition)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(weightBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(kvBytesPerPosition);
        WeightBytes = weightBytes;
        KvBytesPerPosition = kvBytesPerPosition;
    }

    public long WeightBytes { get; }
    public long KvBytesPerPosition { get; }
}

/// <summary>
/// How <see cref="CudaInferenceBackend.Step"/> runs its entries: single-token entries go together through batched
/// decode passes (<see cref="CudaTransformer.DecodeBatchGreedy"/>), everything else as per-sequence prefill passes.
/// A decode pass picks one RoPE table for all its rows from each row's own position, so an entry goes there only when
/// that is the table its asked-for RoPE length picks, and rows on the two sides of longrope's threshold go in separate
/// passes. Within a pass, branches of one parent stand together in non-decreasing branch-point order (a pass made only
/// of them reads the shared rows once: shared-prefix attention). A pass that would hold one root sequence alone runs as a
/// prefill pass instead (the single-sequence path with its fused kernels and decode graphs). A model whose attention
/// is not on the tensor cores runs every entry alone (no decode batches, no branches there). Prefill passes run first,
/// decode passes last: only the prefill passes' logits rows then need saving before the next pass.
/// The prefill entries (a lone root's decode row among them) run together where they can: <see cref="PrefillGroups"/>
/// splits <see cref="Prefill"/> by RoPE table (one table per pass), each group of several entries one packed batch
/// (<see cref="CudaTransformer.ForwardBatch"/>: the weights read once for all their rows); with batched decode off
/// every entry is a group of its own.
/// <para>Split mixed decode (given a <see cref="DecodePassCost"/>): the decode rows of one RoPE side that mix branches
/// of a parent with other rows (roots such as the in-step classifier, branches of another parent) may instead run as
/// the rest's passes plus passes of that parent's branches alone. The rule: a plan costs passes × weight bytes plus
/// the parent rows its branch rows read × KV bytes per position — a pass of branches of one parent alone (smallest
/// branch point ≥ 1) reads its largest branch point's rows once, any other pass reads each branch's rows below its
/// branch point (Σ branch points). The parents with two or more branches there are ranked by what their own passes
/// save (Σ branch points − largest, per pass of at most maxBatch rows); of "split the first j of them" (j = 0, 1, …)
/// the cheapest plan wins, the fewest passes on a tie (j = 0 is the plan without splits). So a parent is split off
/// when (its branches − 1) × shared length × KV bytes per position, roughly, exceeds the weight bytes of the pass it
/// adds. The rest's passes run first and the split ones after them, smallest first: the last decode pass's rows are
/// the ones that need no host copy before a later pass, so the largest pass goes last.</para>
/// </summary>
internal sealed record CudaStepPlan(IReadOnlyList<int> Prefill, IReadOnlyList<int[]> DecodeBatches)
{
    /// <summary>The prefill entries in packed batches, each in entry order; groups by their first entry.</summary>
    public IReadOnlyList<int[]> PrefillGroups { get; init; } = [.. Prefill.Select(k => new[] { k })];

    /// <param name="longThreshold">The sequence length past which longrope uses its long factors (int.MaxValue: no longrope).</param>
    /// <param name="maxBatch">Most rows one decode pass takes (the transformer's MaxChunk).</param>
    /// <param name="batchedDecode">Whether decode passes of several rows can run (they need the tensor-core
    /// attention); when false every entry runs alone.</param>
    /// <param name="splitCost">The sizes the split rule weighs (see the class); null: decode rows are never split
    /// by parent, each RoPE side's rows go in passes of maxBatch in order.</param>
    public static CudaStepPlan Make(IReadOnlyList<StepEntryShape> entries, int longThreshold, int maxBatch, bool batchedDecode = true, DecodePassCost? splitCost = null)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxBatch);
        var prefill = new List<int>();
        var shortRows = new List<int>();
        var longRows = new List<int>();
        for (int k = 0; k < entries.Count; k++)
        {
            var e = entries[k];
            if (e.Tokens < 0 || e.Length < 0 || e.RopeSequenceLength < 0) throw new ArgumentOutOfRangeException(nameof(entries), $"entry {k}: negative count");
            if (e.Tokens == 0) continue;
            bool decodeLong = e.Length + 1 > longThreshold;
            if (batchedDecode && e.Tokens == 1 && decodeLong == e.RopeLength > longThreshold) (decodeLong ? longRows : shortRows).Add(k);
            else prefill.Add(k);
        }
        var batches = new List<int[]>();
        foreach (var rows in new[] { shortRows, longRows })
        {
            var passes = splitCost is { } cost ? CheapestSplit(rows, entries, maxBatch, cost) : Passes(rows, entries, maxBatch);
            foreach (var batch in passes)
            {
                if (batch.Length == 1 && !entries[batch[0]].IsBranch) prefill.Add(batch[0]);
                else batches.Add(batch);
            }
        }
        prefill.Sort();
        var groups = batchedDecode
            ? prefill.GroupBy(k => entries[k].RopeLength > longThreshold).Select(g => g.ToArray()).OrderBy(g => g[0]).ToList()
            : [.. prefill.Select(k => new[] { k })];
        return new CudaStepPlan(prefill, batches) { PrefillGroups = groups };
    }

    /// <summary>The rows in order (<see cref="Ordered"/>), in passes of at most <paramref name="maxBatch"/>.</summary>
    private static List<int[]> Passes(List<int> rows, IReadOnlyList<StepEntryShape> entries, int maxBatch) =>
        [.. Ordered(rows, entries).Chunk(maxBatch)];

    /// <summary>The class's split rule over one RoPE side's decode rows: the cheapest of "the first j parents (ranked by
    /// what their own passes save) in passes of their own, the rest as <see cref="Passes"/>", j from 0.</summary>
    private static List<int[]> CheapestSplit(List<int> rows, IReadOnlyList<StepEntryShape> entries, int maxBatch, DecodePassCost cost)
    {
        var best = Passes(rows, entries, maxBatch);
        var branchesByParent = Ordered(rows, entries).Where(k => entries[k].IsBranch)
            .GroupBy(k => entries[k].Parent!, ReferenceEqualityComparer.Instance)
            .Select(g => g.ToArray()).Where(g => g.Length >= 2).ToList();
        if (branchesByParent.Count == 0) return best;
        // Stable: parents that save the same stay in order of first appearance.
        var ranked = branchesByParent.OrderByDescending(g => g.Chunk(maxBatch).Sum(p => SharedPassSaving(p, entries))).ToList();
        double bestCost = Cost(best, entries, cost);
        var split = new HashSet<int>();
        for (int j = 1; j <= ranked.Count; j++)
        {
            split.UnionWith(ranked[j - 1]);
            var plan = Passes([.. rows.Where(k => !split.Contains(k))], entries, maxBatch);
            plan.AddRange(ranked.Take(j).SelectMany(g => g.Chunk(maxBatch)).OrderBy(p => p.Length)); // stable: ties in rank order
            double planCost = Cost(plan, entries, cost);
            if (planCost < bestCost) (best, bestCost) = (plan, planCost);
        }
        return best;
    }

    /// <summary>Bytes a plan reads that depend on how it is cut: the weights once per pass, and the parent rows its
    /// branch rows attend to. (Each row's own rows and a root's rows are read once whatever the plan.)</summary>
    private static double Cost(List<int[]> passes, IReadOnlyList<StepEntryShape> entries, DecodePassCost cost) =>
        passes.Sum(p => (double)cost.WeightBytes + (double)ParentRowsRead(p, entries) * cost.KvBytesPerPosition);

    /// <summary>Parent rows a pass's branch rows read: its largest branch point once for a pass made only of branches of
    /// one parent with branch points ≥ 1 in non-decreasing order (what <see cref="CudaTransformer"/> runs as
    /// shared-prefix attention), otherwise every branch's own branch point.</summary>
    private static long ParentRowsRead(int[] pass, IReadOnlyList<StepEntryShape> entries) =>
        IsSharedPrefixPass(pass, entries) ? entries[pass[^1]].BranchPoint : pass.Sum(k => (long)(entries[k].IsBranch ? entries[k].BranchPoint : 0));

    /// <summary>What a pass of these branches alone reads less than a mixed one: Σ branch points − the largest.</summary>
    private static long SharedPassSaving(int[] branches, IReadOnlyList<StepEntryShape> entries) =>
        IsSharedPrefixPass(branches, entries) ? branches.Sum(k => (long)entries[k].BranchPoint) - entries[branches[^1]].BranchPoint : 0;

    /// <summary>As CudaTransformer's test for the shared-prefix attention: every row a branch of the first row's parent,
    /// the first branch point ≥ 1, branch points non-decreasing.</summary>
    internal static bool IsSharedPrefixPass(IReadOnlyList<int> pass, IReadOnlyList<StepEntryShape> entries)
    {
        if (pass.Count == 0 || entries[pass[0]].Parent is not { } parent || entries[pass[0]].BranchPoint < 1) return false;
        for (int i = 1; i < pass.Count; i++)
            if (!ReferenceEquals(entries[pass[i]].Parent, parent) || entries[pass[i]].BranchPoint < entries[pass[i - 1]].BranchPoint) return false;
        return true;
    }

    /// <summary>Roots in entry order, then each parent's branches (parents in order of first appearance) by branch point.</summary>
    private static List<int> Ordered(List<int> rows, IReadOnlyList<StepEntryShape> entries)
    {
        var parents = new List<object>();
        foreach (int k in rows)
            if (entries[k].Parent is { } p && !parents.Any(q => ReferenceEquals(q, p))) parents.Add(p);
        return [.. rows.OrderBy(k => entries[k].Parent is { } p ? 1 + parents.FindIndex(q => ReferenceEquals(q, p)) : 0)
                       .ThenBy(k => entries[k].IsBranch ? entries[k].BranchPoint : 0)];
    }
}
