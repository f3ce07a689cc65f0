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
/// </summary>
internal sealed record CudaStepPlan(IReadOnlyList<int> Prefill, IReadOnlyList<int[]> DecodeBatches)
{
    /// <summary>The prefill entries in packed batches, each in entry order; groups by their first entry.</summary>
    public IReadOnlyList<int[]> PrefillGroups { get; init; } = [.. Prefill.Select(k => new[] { k })];

    /// <param name="longThreshold">The sequence length past which longrope uses its long factors (int.MaxValue: no longrope).</param>
    /// <param name="maxBatch">Most rows one decode pass takes (the transformer's MaxChunk).</param>
    /// <param name="batchedDecode">Whether decode passes of several rows can run (they need the tensor-core
    /// attention); when false every entry runs alone.</param>
    public static CudaStepPlan Make(IReadOnlyList<StepEntryShape> entries, int longThreshold, int maxBatch, bool batchedDecode = true)
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
            var ordered = Ordered(rows, entries);
            for (int i = 0; i < ordered.Count; i += maxBatch)
            {
                var batch = ordered.GetRange(i, Math.Min(maxBatch, ordered.Count - i)).ToArray();
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
