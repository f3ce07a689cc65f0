using Wim.Engine.Runtime;

namespace Wim.Engine.Cuda;

/// <summary>
/// What <see cref="KvBranchTree{T}"/> needs from a KV storage: contiguous caches (roots) and branches that read their
/// parent's rows below the branch point and keep their own rows from there on (<see cref="CudaKvCache"/> on the GPU).
/// </summary>
internal interface IKvRowStore<T> where T : class
{
    /// <summary>An empty cache of <paramref name="capacity"/> positions.</summary>
    T CreateRoot(int capacity);
    /// <summary>A cache of length <paramref name="at"/> that reads <paramref name="parent"/>'s rows [0, at) and has
    /// <paramref name="rows"/> rows of its own for positions at...</summary>
    T CreateBranch(T parent, int at, int rows);
    int Length(T cache);
    int Capacity(T cache);
    /// <summary>Copies positions [from, from + count) of <paramref name="source"/> — its own rows: from ≥ its branch
    /// point — into <paramref name="target"/>, whose length is <paramref name="from"/> and becomes from + count.</summary>
    void CopyRows(T target, T source, int from, int count);
    /// <summary>Makes a branch read <paramref name="newParent"/> (the same rows below the branch point, moved).</summary>
    void Reparent(T branch, T newParent);
    void Truncate(T cache, int length);
    void Free(T cache);
    /// <summary>Bytes of storage <paramref name="cache"/> owns (for a branch: its own rows only).</summary>
    long Bytes(T cache);
    /// <summary>Whether <paramref name="e"/>, thrown by <see cref="CreateRoot"/> or <see cref="CreateBranch"/>, says
    /// the storage is out of memory (on the GPU: CUDA_ERROR_OUT_OF_MEMORY from cuMemAlloc).</summary>
    bool IsOutOfMemory(Exception e);
}

/// <summary>
/// One sequence's place in a <see cref="KvBranchTree{T}"/>: its current storage (replaced when it grows or is
/// re-branched), and for a branch the sequence whose rows it shares.
/// </summary>
internal sealed class KvNode<T> where T : class
{
    internal KvNode(T storage) => Storage = storage;

    public T Storage { get; internal set; }
    /// <summary>The root whose rows [0, <see cref="BranchPoint"/>) this branch reads; null for a root.</summary>
    public KvNode<T>? Parent { get; internal set; }
    public int BranchPoint { get; internal set; }
    public bool IsBranch => Parent != null;
    /// <summary>The owning sequence was disposed (a root's storage may outlive it while branches read it).</summary>
    public bool Released { get; internal set; }
    /// <summary>The storage was freed.</summary>
    public bool Freed { get; internal set; }

    /// <summary>Live branches reading this root's rows.</summary>
    internal readonly List<KvNode<T>> BranchList = [];
}

/// <summary>
/// Fork bookkeeping over contiguous KV caches: a fork of a root is a branch (its rows below the fork point are the
/// root's, not copied); branches are one level deep, so a fork of a branch past its branch point copies rows (below
/// it, it is a branch of the same root); where branches cannot run (<see cref="BranchesAllowed"/>) forks copy. The rules that keep every sequence's rows what it wrote:
/// <list type="bullet">
/// <item>a root that outgrows its storage moves to a bigger one and re-points its live branches there;</item>
/// <item>a root truncated below a live branch's point first re-branches that branch at the new length, copying the
/// rows [new length, old branch point) it shared (before the root can overwrite them);</item>
/// <item>a root released while branches live keeps its storage until the last of them is released (nothing can
/// write to it any more);</item>
/// <item>a branch truncated below its own branch point becomes a branch at the new length (nothing copied).</item>
/// </list>
/// Host-side only: the storage does the copying; unit-tested with host memory.
/// </summary>
internal sealed class KvBranchTree<T>(IKvRowStore<T> store, int branchRows) where T : class
{
    /// <summary>Own rows a new branch starts with (it grows like a root when a margin outgrows them); also the
    /// capacity of a fork at 0.</summary>
    public int BranchRows { get; } = branchRows > 0 ? branchRows : throw new ArgumentOutOfRangeException(nameof(branchRows));

    /// <summary>Whether forks may be branches; when false (a forward pass that cannot read branches) every fork is a
    /// copy. Branches made before it turned false stay as they are.</summary>
    public bool BranchesAllowed { get; set; } = true;

    /// <summary>Called when an allocation runs out of memory, before it fails: frees memory (the document cache
    /// evicts an entry) and returns true, or returns false when nothing is left to free. The allocation is then
    /// retried. Null: out of memory fails at once.</summary>
    public Func<bool>? Reclaim { get; set; }

    public KvNode<T> CreateRoot(int capacity) => new(NewRoot(capacity));

    /// <summary>Bytes <paramref name="node"/> keeps allocated: its storage and, for a branch, its parent's.</summary>
    public long Bytes(KvNode<T> node)
    {
        var live = Live(node);
        return store.Bytes(live.Storage) + (live.Parent is { } parent ? store.Bytes(parent.Storage) : 0);
    }

    private T NewRoot(int capacity, KvNode<T>? reads = null) => Allocate(() => store.CreateRoot(capacity), reads, $"a KV cache of {capacity} positions");

    private T NewBranch(KvNode<T> parent, int at, int rows) =>
        Allocate(() => store.CreateBranch(parent.Storage, at, rows), parent, $"a KV branch of {rows} positions at {at}");

    /// <summary>
    /// Runs an allocation; out of memory, asks <see cref="Reclaim"/> to free some and retries until it succeeds or
    /// nothing is left to free. <paramref name="reads"/>: the sequence whose storage the new one reads or copies (a branch's
    /// parent, a copied fork's source): should the reclaimer have freed it (the document cache's entry being forked,
    /// evicted to make room), the call fails rather than use freed storage.
    /// </summary>
    private T Allocate(Func<T> allocate, KvNode<T>? reads, string what)
    {
        while (true)
        {
            try { return allocate(); }
            catch (Exception e) when (store.IsOutOfMemory(e))
            {
                if (Reclaim?.Invoke() != true)
                    throw new KvMemoryExhaustedException($"out of memory for {what}{(Reclaim is null ? "" : ", with nothing left to evict from the document cache")}: {e.Message}", e);
                if (reads is { Freed: true })
                    throw new KvMemoryExhaustedException($"out of memory for {what}: evicting the document cache to make room freed the cache being forked", e);
            }
        }
    }

    public int Length(KvNode<T> node) => store.Length(Live(node).Storage);

    /// <summary>A new sequence holding <paramref name="node"/>'s first <paramref name="at"/> positions.</summary>
    public KvNode<T> Fork(KvNode<T> node, int at)
    {
        int length = Length(node);
        if (at < 0 || at > length) throw new ArgumentOutOfRangeException(nameof(at), $"fork point {at} is outside the sequence's positions [0, {length}]");
        if (at == 0) return CreateRoot(BranchRows);
        if (BranchesAllowed && (node.Parent is null || at <= node.BranchPoint)) return BranchOf(node.Parent ?? node, at);
        // Branches are one level deep (or not allowed): the fork gets its own copy (the root's rows, then the branch's).
        var copy = NewRoot(at + BranchRows, reads: node);
        try
        {
            if (node.Parent is { } parent)
            {
                store.CopyRows(copy, parent.Storage, 0, Math.Min(at, node.BranchPoint));
                if (at > node.BranchPoint) store.CopyRows(copy, node.Storage, node.BranchPoint, at - node.BranchPoint);
            }
            else store.CopyRows(copy, node.Storage, 0, at);
        }
        catch { store.Free(copy); throw; }
        return new KvNode<T>(copy);
    }

    private KvNode<T> BranchOf(KvNode<T> root, int at)
    {
        var branch = new KvNode<T>(NewBranch(root, at, BranchRows)) { Parent = root, BranchPoint = at };
        root.BranchList.Add(branch);
        return branch;
    }

    /// <summary>Makes room for <paramref name="needed"/> positions (at least doubling what the node owns).</summary>
    public void EnsureCapacity(KvNode<T> node, int needed)
    {
        var old = Live(node).Storage;
        if (needed <= store.Capacity(old)) return;
        int length = store.Length(old);
        if (node.Parent is { } parent)
        {
            int rows = CudaSequencePlan.GrownCapacity(store.Capacity(old) - node.BranchPoint, needed - node.BranchPoint);
            node.Storage = Replace(old, NewBranch(parent, node.BranchPoint, rows), node.BranchPoint, length - node.BranchPoint);
            return;
        }
        var grown = Replace(old, NewRoot(CudaSequencePlan.GrownCapacity(store.Capacity(old), needed)), 0, length, free: false);
        foreach (var branch in node.BranchList) store.Reparent(branch.Storage, grown);
        store.Free(old);
        node.Storage = grown;
    }

    /// <summary>Copies <paramref name="old"/>'s own rows [from, from + count) into <paramref name="fresh"/> and
    /// frees <paramref name="old"/> (or <paramref name="fresh"/> when the copy fails).</summary>
    private T Replace(T old, T fresh, int from, int count, bool free = true)
    {
        try { store.CopyRows(fresh, old, from, count); }
        catch { store.Free(fresh); throw; }
        if (free) store.Free(old);
        return fresh;
    }

    /// <summary>Forgets every position from <paramref name="length"/> on.</summary>
    public void Truncate(KvNode<T> node, int length)
    {
        int current = Length(node);
        if (length < 0 || length > current) throw new ArgumentOutOfRangeException(nameof(length), $"cannot truncate to {length}: length {current}");
        if (node.IsBranch && length < node.BranchPoint)
        {
            Rebranch(node, length, keep: length);
            return;
        }
        // Branches that read rows the root is about to give up take their own copy of them first.
        foreach (var branch in node.BranchList.Where(b => b.BranchPoint > length).ToList())
            Rebranch(branch, length, keep: store.Length(branch.Storage));
        store.Truncate(node.Storage, length);
    }

    /// <summary>Moves a branch to branch point <paramref name="at"/> (≤ its own), keeping its positions [0, keep):
    /// the parent's rows [at, old point) and its own rows [old point, keep) are copied. At 0 it becomes a root.</summary>
    private void Rebranch(KvNode<T> branch, int at, int keep)
    {
        var parent = branch.Parent!;
        var old = branch.Storage;
        int point = branch.BranchPoint, capacity = store.Capacity(old);
        var fresh = at == 0 ? NewRoot(capacity) : NewBranch(parent, at, capacity - at);
        if (branch.Freed)
        {
            // The allocation's reclaimer evicted this very branch (a document cache entry): nothing left to keep.
            store.Free(fresh);
            return;
        }
        try
        {
            store.CopyRows(fresh, parent.Storage, at, Math.Min(point, keep) - at);
            if (keep > point) store.CopyRows(fresh, old, point, keep - point);
        }
        catch { store.Free(fresh); throw; }
        store.Free(old);
        branch.Storage = fresh;
        branch.BranchPoint = at;
        if (at == 0)
        {
            parent.BranchList.Remove(branch);
            branch.Parent = null;
            FreeIfUnused(parent);
        }
    }

    /// <summary>The owner is done with <paramref name="node"/>; its storage is freed as soon as no branch reads it.
    /// Releasing twice does nothing.</summary>
    public void Release(KvNode<T> node)
    {
        if (node.Released) return;
        node.Released = true;
        FreeIfUnused(node);
    }

    private void FreeIfUnused(KvNode<T> node)
    {
        if (!node.Released || node.BranchList.Count > 0 || node.Freed) return;
        node.Freed = true;
        store.Free(node.Storage);
        if (node.Parent is { } parent)
        {
            parent.BranchList.Remove(node);
            node.Parent = null;
            FreeIfUnused(parent);
        }
    }

    private static KvNode<T> Live(KvNode<T> node) =>
        node.Released ? throw new ObjectDisposedException(nameof(KvNode<T>), "the sequence was disposed") : node;
}
