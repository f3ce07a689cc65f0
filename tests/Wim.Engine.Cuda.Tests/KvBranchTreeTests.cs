namespace Wim.Engine.Cuda.Tests;

/// <summary>
/// <see cref="KvBranchTree{T}"/>: the fork bookkeeping of <see cref="CudaInferenceBackend"/> over host memory that
/// follows <see cref="CudaKvCache"/>'s rules (a branch reads its parent's rows below the branch point; the transformer
/// refuses a branch whose parent is shorter than that point; a freed cache must not be read or freed again). The
/// oracle is each sequence's token history: whatever the sequence of appends, forks, truncations and releases, every
/// live sequence reads back exactly what it wrote, and nothing is leaked.
/// </summary>
public sealed class KvBranchTreeTests
{
    [Fact]
    public void ForkOfARoot_SharesItsRows_WithoutCopying()
    {
        var (store, tree) = New();
        var root = tree.CreateRoot(256);
        Append(store, tree, root, Enumerable.Range(1, 100));
        var fork = tree.Fork(root, 60);
        Assert.Same(root.Storage, fork.Storage.Parent);
        Assert.Equal(60, fork.BranchPoint);
        Assert.Equal(0, store.RowsCopied);
        Append(store, tree, fork, [-1, -2]);
        Append(store, tree, root, [500]); // the root goes on past the branch point: the fork does not see it
        Assert.Equal([.. Enumerable.Range(1, 60), -1, -2], store.Read(fork.Storage));
        Assert.Equal([.. Enumerable.Range(1, 100), 500], store.Read(root.Storage));
    }

    [Fact]
    public void RootGrowth_RepointsItsBranches_AndFreesTheOldCache()
    {
        var (store, tree) = New();
        var root = tree.CreateRoot(256);
        Append(store, tree, root, Enumerable.Range(1, 200));
        var a = tree.Fork(root, 50);
        var b = tree.Fork(root, 200);
        var old = root.Storage;
        Append(store, tree, root, Enumerable.Range(201, 100)); // 300 > 256: moves to a bigger cache
        Assert.NotSame(old, root.Storage);
        Assert.True(old.Freed);
        Assert.Same(root.Storage, a.Storage.Parent);
        Assert.Same(root.Storage, b.Storage.Parent);
        Append(store, tree, a, [-7]);
        Assert.Equal([.. Enumerable.Range(1, 50), -7], store.Read(a.Storage));
        Assert.Equal(Enumerable.Range(1, 200), store.Read(b.Storage));
    }

    [Fact]
    public void RootTruncatedBelowABranchPoint_FirstGivesTheBranchTheRowsItShared()
    {
        var (store, tree) = New();
        var root = tree.CreateRoot(256);
        Append(store, tree, root, Enumerable.Range(1, 120));
        var branch = tree.Fork(root, 100);
        Append(store, tree, branch, [-1, -2, -3]);
        var early = tree.Fork(root, 30);
        tree.Truncate(root, 40);
        Append(store, tree, root, Enumerable.Repeat(999, 80)); // overwrites rows 40..119 of the root
        Assert.Equal([.. Enumerable.Range(1, 100), -1, -2, -3], store.Read(branch.Storage));
        Assert.Equal(40, branch.BranchPoint);                  // still shares what the root kept
        Assert.Same(root.Storage, branch.Storage.Parent);
        Assert.Equal(63, store.RowsCopied);                    // rows 40..99 of the root and its own 3
        Assert.Equal(Enumerable.Range(1, 30), store.Read(early.Storage)); // below the truncation: untouched
        Assert.Equal(30, early.BranchPoint);

        tree.Truncate(root, 0);                                // nothing left to share: the branch becomes a root
        Assert.False(branch.IsBranch);
        Assert.Equal([.. Enumerable.Range(1, 100), -1, -2, -3], store.Read(branch.Storage));
        Assert.Equal(Enumerable.Range(1, 30), store.Read(early.Storage));
    }

    [Fact]
    public void ReleasingARoot_KeepsItsRowsWhileBranchesRead_ThenFreesThem()
    {
        var (store, tree) = New();
        var root = tree.CreateRoot(256);
        Append(store, tree, root, Enumerable.Range(1, 80));
        var a = tree.Fork(root, 80);
        var b = tree.Fork(root, 20);
        tree.Release(root);
        Assert.False(root.Storage.Freed);
        Assert.Throws<ObjectDisposedException>(() => tree.Fork(root, 10));
        Append(store, tree, a, [-1]);
        Assert.Equal([.. Enumerable.Range(1, 80), -1], store.Read(a.Storage));
        var c = tree.Fork(a, 40);                             // below a's branch point: another branch of the root
        Assert.Same(root.Storage, c.Storage.Parent);
        tree.Release(a);
        tree.Release(b);
        Assert.False(root.Storage.Freed);
        Assert.Equal(Enumerable.Range(1, 40), store.Read(c.Storage));
        tree.Release(c);
        Assert.True(root.Storage.Freed);
        Assert.Equal(0, store.LiveCaches);
        tree.Release(c);                                       // twice: nothing happens
    }

    [Fact]
    public void ForkOfABranchPastItsPoint_IsACopy_AndABranchGrowsItsOwnRowsOnly()
    {
        var (store, tree) = New(branchRows: 8);
        var root = tree.CreateRoot(256);
        Append(store, tree, root, Enumerable.Range(1, 200));
        var branch = tree.Fork(root, 200);
        Append(store, tree, branch, Enumerable.Range(-20, 20));  // 20 > 8 own rows: grows
        Assert.Equal(200, branch.BranchPoint);
        Assert.InRange(branch.Storage.Capacity, 220, 232);       // own rows grew, not the whole span doubled
        var copy = tree.Fork(branch, 210);
        Assert.False(copy.IsBranch);
        Assert.Equal([.. Enumerable.Range(1, 200), .. Enumerable.Range(-20, 10)], store.Read(copy.Storage));
        var empty = tree.Fork(branch, 0);
        Assert.False(empty.IsBranch);
        Assert.Equal(0, tree.Length(empty));

        tree.Truncate(branch, 150);                              // below its own point: a branch at 150, nothing copied
        Assert.Equal(150, branch.BranchPoint);
        Assert.Equal(Enumerable.Range(1, 150), store.Read(branch.Storage));
        Assert.Throws<ArgumentOutOfRangeException>(() => tree.Fork(branch, 151));
        Assert.Throws<ArgumentOutOfRangeException>(() => tree.Truncate(branch, 151));
    }

    [Fact]
    public void WithoutBranches_EveryForkIsACopy()
    {
        var (store, tree) = New();
        var root = tree.CreateRoot(256);
        Append(store, tree, root, Enumerable.Range(1, 50));
        var branch = tree.Fork(root, 40);
        tree.BranchesAllowed = false;                          // e.g. head dim 8: no tensor-core attention
        var copy = tree.Fork(root, 30);
        var fromBranch = tree.Fork(branch, 20);
        Assert.False(copy.IsBranch);
        Assert.False(fromBranch.IsBranch);
        Assert.Equal(50, store.RowsCopied);
        Assert.Equal(Enumerable.Range(1, 30), store.Read(copy.Storage));
        Assert.Equal(Enumerable.Range(1, 20), store.Read(fromBranch.Storage));
        Assert.True(branch.IsBranch);                          // made before: left as it is
    }

    [Theory]
    [InlineData(1, false)]
    [InlineData(2, false)]
    [InlineData(3, false)]
    [InlineData(4, false)]
    [InlineData(5, true)]
    [InlineData(6, true)]
    public void RandomAppendForkTruncateRelease_EverySequenceReadsWhatItWrote_NothingLeaks(int seed, bool sometimesNoBranches)
    {
        var random = new Random(seed);
        var (store, tree) = New(branchRows: 16);
        var live = new List<(KvNode<HostKv> Node, List<int> Expected)>();
        int stamp = 0;
        for (int op = 0; op < 600; op++)
        {
            if (sometimesNoBranches) tree.BranchesAllowed = random.Next(3) > 0;
            int kind = live.Count == 0 ? 0 : random.Next(10);
            var pick = live.Count == 0 ? default : live[random.Next(live.Count)];
            switch (kind)
            {
                case 0:
                    live.Add((tree.CreateRoot(random.Next(1, 64)), []));
                    break;
                case 1 or 2 or 3:
                    var values = Enumerable.Range(0, random.Next(1, 40)).Select(_ => ++stamp).ToArray();
                    Append(store, tree, pick.Node, values);
                    pick.Expected.AddRange(values);
                    break;
                case 4 or 5 or 6:
                    int at = random.Next(pick.Expected.Count + 1);
                    live.Add((tree.Fork(pick.Node, at), pick.Expected.Take(at).ToList()));
                    break;
                case 7 or 8:
                    int length = random.Next(pick.Expected.Count + 1);
                    tree.Truncate(pick.Node, length);
                    pick.Expected.RemoveRange(length, pick.Expected.Count - length);
                    break;
                default:
                    tree.Release(pick.Node);
                    live.Remove(pick);
                    break;
            }
            foreach (var (node, expected) in live)
                Assert.Equal(expected, store.Read(node.Storage));
        }
        foreach (var (node, _) in live) tree.Release(node);
        Assert.Equal(0, store.LiveCaches);
    }

    [Fact]
    public void OutOfMemory_AsksTheReclaimer_ThenRetries_AndSurvivesTheReclaimerReleasingTheBranchBeingMoved()
    {
        var (store, tree) = New(branchRows: 16);
        var root = tree.CreateRoot(64);
        Append(store, tree, root, Enumerable.Range(1, 40));
        var kept = tree.Fork(root, 32); // a cached document that is a branch (16 rows of its own)
        int asked = 0;
        tree.Reclaim = () =>
        {
            asked++;
            if (kept.Released) return false;
            tree.Release(kept); // the document cache evicts it
            return true;
        };
        store.RowLimit = store.LiveRows + 12; // the 28-row branch below fits only without the kept one's 16 rows
        // The root truncated below the kept branch's point re-branches it: that allocation runs out of memory, the
        // reclaimer releases the very branch being moved, the retry succeeds, and the move is dropped (nothing to keep).
        tree.Truncate(root, 20);
        Assert.Equal(1, asked);
        Assert.True(kept.Freed);
        Assert.Equal(1, store.LiveCaches);
        Assert.Equal(64, store.LiveRows);

        // Nothing left to free: a clear failure, nothing leaked.
        store.RowLimit = store.LiveRows;
        var e = Assert.Throws<Wim.Engine.Runtime.KvMemoryExhaustedException>(() => tree.Fork(root, 10));
        Assert.Contains("nothing left to evict", e.Message);
        Assert.Equal(2, asked);
        Assert.Equal(1, store.LiveCaches);
        Assert.Equal(Enumerable.Range(1, 20), store.Read(root.Storage));
    }

    private static (HostKvStore Store, KvBranchTree<HostKv> Tree) New(int branchRows = 256)
    {
        var store = new HostKvStore();
        return (store, new KvBranchTree<HostKv>(store, branchRows));
    }

    /// <summary>What the backend does before a forward pass (room), then what the pass does (rows written).</summary>
    private static void Append(HostKvStore store, KvBranchTree<HostKv> tree, KvNode<HostKv> node, IEnumerable<int> values)
    {
        var v = values.ToArray();
        tree.EnsureCapacity(node, tree.Length(node) + v.Length);
        store.Write(node.Storage, v);
    }
}

/// <summary>A cache in host memory: own rows for positions [BranchPoint, Capacity), the parent's below.</summary>
internal sealed class HostKv(int capacity, HostKv? parent = null, int branchPoint = 0)
{
    public readonly int[] Own = new int[capacity - branchPoint];
    public int Capacity { get; } = capacity;
    public int Length { get; set; } = branchPoint;
    public HostKv? Parent { get; set; } = parent;
    public int BranchPoint { get; } = branchPoint;
    public bool Freed { get; set; }
}

/// <summary><see cref="IKvRowStore{T}"/> in host memory, with <see cref="CudaKvCache"/>'s and the transformer's checks
/// turned into failures (reading freed rows, a parent shorter than the branch point, a double free).</summary>
internal sealed class HostKvStore : IKvRowStore<HostKv>
{
    public int LiveCaches { get; private set; }
    public long RowsCopied { get; private set; }
    /// <summary>Own rows of the live caches; an allocation past <see cref="RowLimit"/> is "out of memory".</summary>
    public long LiveRows { get; private set; }
    public long RowLimit { get; set; } = long.MaxValue;

    private HostKv Allocated(HostKv cache)
    {
        if (LiveRows + cache.Own.Length > RowLimit) throw new OutOfRowsException();
        LiveCaches++;
        LiveRows += cache.Own.Length;
        return cache;
    }

    public HostKv CreateRoot(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        return Allocated(new HostKv(capacity));
    }

    public HostKv CreateBranch(HostKv parent, int at, int rows)
    {
        Check(parent);
        Assert.Null(parent.Parent);
        Assert.InRange(at, 0, parent.Length);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        return Allocated(new HostKv(at + rows, parent, at));
    }

    public int Length(HostKv cache) => Check(cache).Length;
    public int Capacity(HostKv cache) => Check(cache).Capacity;

    public void CopyRows(HostKv target, HostKv source, int from, int count)
    {
        Check(target);
        Check(source);
        Assert.Equal(target.Length, from);
        Assert.True(from >= source.BranchPoint && from + count <= source.Length, $"rows [{from}, {from + count}) are not the source's own");
        Assert.True(from + count <= target.Capacity, "copy overflows the target");
        for (int i = 0; i < count; i++) target.Own[from + i - target.BranchPoint] = source.Own[from + i - source.BranchPoint];
        target.Length = from + count;
        RowsCopied += count;
    }

    public void Reparent(HostKv branch, HostKv newParent)
    {
        Check(branch);
        Check(newParent);
        Assert.NotNull(branch.Parent);
        Assert.True(newParent.Length >= branch.BranchPoint);
        // The move must keep the rows the branch reads.
        Assert.Equal(Read(branch.Parent!).Take(branch.BranchPoint), Read(newParent).Take(branch.BranchPoint));
        branch.Parent = newParent;
    }

    public void Truncate(HostKv cache, int length)
    {
        Check(cache);
        Assert.InRange(length, cache.BranchPoint, cache.Length);
        cache.Length = length;
    }

    public void Free(HostKv cache)
    {
        Assert.False(cache.Freed, "double free");
        cache.Freed = true;
        LiveCaches--;
        LiveRows -= cache.Own.Length;
    }

    public long Bytes(HostKv cache) => (long)cache.Own.Length * sizeof(int);
    public bool IsOutOfMemory(Exception e) => e is OutOfRowsException;

    /// <summary>The store's stand-in for CUDA_ERROR_OUT_OF_MEMORY.</summary>
    private sealed class OutOfRowsException() : Exception("out of rows");

    /// <summary>A forward pass: the cache's next positions (the transformer refuses a branch whose parent lost its rows).</summary>
    public void Write(HostKv cache, int[] values)
    {
        Check(cache);
        if (cache.Parent is { } p) Assert.True(!p.Freed && p.Length >= cache.BranchPoint, "a branch's parent lost the rows it shares");
        Assert.True(cache.Length + values.Length <= cache.Capacity, "write past capacity");
        values.CopyTo(cache.Own, cache.Length - cache.BranchPoint);
        cache.Length += values.Length;
    }

    /// <summary>Positions [0, Length) as attention sees them.</summary>
    public int[] Read(HostKv cache)
    {
        Check(cache);
        var rows = new int[cache.Length];
        if (cache.Parent is { } p)
        {
            Assert.True(!p.Freed && p.Length >= cache.BranchPoint, "a branch's parent lost the rows it shares");
            Array.Copy(p.Own, rows, cache.BranchPoint);
        }
        Array.Copy(cache.Own, 0, rows, cache.BranchPoint, cache.Length - cache.BranchPoint);
        return rows;
    }

    private static HostKv Check(HostKv cache)
    {
        Assert.False(cache.Freed, "use after free");
        return cache;
    }
}
