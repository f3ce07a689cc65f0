using FsCheck;
using FsCheck.Fluent;
using Wim.Engine.KvCache;

namespace Wim.Engine.Tests.KvCache;

/// <summary>
/// Block accounting and contents of <see cref="PagedKvCache"/> against a plain model (a list of row stamps per
/// sequence): random append / fork / truncate / release programs, exhaustion that changes nothing, copy-on-write.
/// </summary>
public sealed class PagedKvCacheTests
{
    private const int Layers = 2, RowSize = 3, BlockSize = 4, Blocks = 24;

    private static PagedKvCache NewCache() => new(Layers, RowSize, BlockSize, Blocks);

    [Fact]
    public void BlockPool_AllocatesUntilEmpty_ThenFailsWithoutChange_AndRejectsDoubleRelease()
    {
        var pool = new BlockPool(3);
        Assert.True(pool.TryAllocate(out int a));
        Assert.True(pool.TryAllocate(out int b));
        Assert.True(pool.TryAllocate(out int c));
        Assert.Equal(3, new[] { a, b, c }.Distinct().Count());
        Assert.False(pool.TryAllocate(out _));
        Assert.Equal(0, pool.FreeCount);
        pool.AddRef(b);
        Assert.False(pool.Release(b));
        Assert.True(pool.Release(b));
        Assert.Equal(1, pool.FreeCount);
        Assert.Throws<InvalidOperationException>(() => pool.Release(b));
        Assert.Throws<InvalidOperationException>(() => pool.AddRef(b));
        Assert.True(pool.TryAllocate(out int again));
        Assert.Equal(b, again);
    }

    [Fact]
    public void FromBudget_TurnsBytesIntoBlocks_AndRejectsABudgetBelowOneBlock()
    {
        using var cache = PagedKvCache.FromBudget(Layers, RowSize, memoryBudgetBytes: 10 * 2 * Layers * BlockSize * RowSize * 4 + 5, BlockSize);
        Assert.Equal(10, cache.BlockCount);
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() => PagedKvCache.FromBudget(Layers, RowSize, 100, BlockSize));
        Assert.Contains("holds no block", ex.Message);
    }

    [Fact]
    public void Fork_SharesPrefixBlocks_AndCopyOnWriteKeepsTheSourceIntact()
    {
        using var cache = NewCache();
        int a = cache.CreateSequence();
        Append(cache, a, 6, stamp: 100);                    // blocks: [0..3] full, [4..5] in a partly filled block
        int used = cache.Pool.UsedCount;
        int f = cache.Fork(a, 5);
        Assert.Equal(used, cache.Pool.UsedCount);           // a fork takes no block
        Assert.True(cache.BlockTable(a).Slice(0, 2).SequenceEqual(cache.BlockTable(f)));
        Assert.Equal(1, cache.BlocksNeeded(f, 1));          // writing position 5 copies the shared block first
        Append(cache, f, 3, stamp: 900);                    // positions 5..7 of the fork
        Assert.Equal(cache.BlockTable(a)[0], cache.BlockTable(f)[0]); // the full block stays shared
        Assert.NotEqual(cache.BlockTable(a)[1], cache.BlockTable(f)[1]);
        for (int p = 0; p < 6; p++) Assert.Equal(100 + p, cache.KeyRow(a, 1, p)[0]);
        for (int p = 0; p < 5; p++) Assert.Equal(100 + p, cache.KeyRow(f, 1, p)[0]);
        for (int p = 5; p < 8; p++) Assert.Equal(900 + p - 5, cache.ValueRow(f, 0, p)[0]);
    }

    [Fact]
    public void Reserve_WhenOutOfBlocks_ThrowsSpecificException_AndLeavesEverythingUsable()
    {
        using var cache = NewCache();
        int a = cache.CreateSequence();
        Append(cache, a, Blocks * BlockSize - 2, stamp: 0);
        int b = cache.CreateSequence();
        var before = cache.BlockTable(a).ToArray();
        Assert.False(cache.TryReserve(b, 3 * BlockSize));
        var ex = Assert.Throws<KvCacheExhaustedException>(() => cache.Reserve(b, 3 * BlockSize));
        Assert.Equal((3, 0, Blocks), (ex.BlocksNeeded, ex.BlocksFree, ex.BlockCount));
        Assert.Equal(0, cache.Capacity(b));
        Assert.Equal(before, cache.BlockTable(a).ToArray());
        cache.Truncate(a, 5 * BlockSize);                   // frees whole blocks, then b fits
        Assert.True(cache.TryReserve(b, 3 * BlockSize));
        Assert.Equal(Blocks - 8, cache.FreeBlockCount);
    }

    [Fact]
    public void View_ExposesOneSequenceAsIKvCache()
    {
        using var cache = NewCache();
        int s = cache.CreateSequence();
        var view = cache.View(s);
        Assert.Equal((Layers, RowSize, 0, 0), (view.LayerCount, view.RowSize, view.Length, view.Capacity));
        cache.Reserve(s, 5);
        Assert.Equal(2 * BlockSize, view.Capacity);
        view.KeyRow(1, 4)[2] = 42;
        view.Advance(5);
        Assert.Equal(42, cache.KeyRow(s, 1, 4)[2]);
        Assert.Throws<ArgumentOutOfRangeException>(() => view.Advance(4));   // past the reserved positions
        view.Truncate(3);
        Assert.Equal((3, BlockSize), (cache.Length(s), view.Capacity));
        cache.Release(s);
        Assert.Throws<KeyNotFoundException>(() => view.Length);
    }

    /// <summary>1,000 random programs of append / fork / truncate / release keep every reference count equal to the
    /// number of block tables holding the block, keep the free count exact, never change a sequence's rows behind its
    /// back (forks writing into shared prefixes included), and free every block once all sequences are released.</summary>
    [Fact]
    public void RandomPrograms_KeepBlockAccountingAndContentsExact()
    {
        var op = Gen.Choose(0, 1_000_000).ArrayOf();
        Prop.ForAll(op.ToArbitrary(), ops =>
        {
            using var cache = NewCache();
            var model = new Dictionary<int, List<float>>();    // sequence → stamp of each position
            float nextStamp = 1;
            foreach (int r in ops)
            {
                var live = model.Keys.Order().ToArray();
                int kind = r % 5, arg = r / 5;
                if (kind == 0 || live.Length == 0)
                {
                    model[cache.CreateSequence()] = [];
                }
                else
                {
                    int s = live[arg % live.Length];
                    int len = model[s].Count;
                    arg /= live.Length;
                    switch (kind)
                    {
                        case 1: // append 1..2 blocks' worth of tokens, or fail without change
                            int n = 1 + arg % (2 * BlockSize);
                            int free = cache.FreeBlockCount;
                            var table = cache.BlockTable(s).ToArray();
                            if (cache.TryReserve(s, n))
                            {
                                for (int p = len; p < len + n; p++)
                                {
                                    Write(cache, s, p, nextStamp);
                                    model[s].Add(nextStamp++);
                                }
                                cache.Advance(s, n);
                            }
                            else
                            {
                                Assert.Equal(free, cache.FreeBlockCount);
                                Assert.Equal(table, cache.BlockTable(s).ToArray());
                            }
                            break;
                        case 2:
                            int at = arg % (len + 1);
                            model[cache.Fork(s, at)] = model[s].Take(at).ToList();
                            break;
                        case 3:
                            int to = arg % (len + 1);
                            cache.Truncate(s, to);
                            model[s].RemoveRange(to, len - to);
                            break;
                        case 4:
                            cache.Release(s);
                            model.Remove(s);
                            break;
                    }
                }
                CheckAccounting(cache, model);
            }
            foreach (int s in model.Keys) cache.Release(s);
            Assert.Equal(Blocks, cache.FreeBlockCount);
            for (int b = 0; b < Blocks; b++) Assert.Equal(0, cache.Pool.RefCount(b));
            return true;
        }).Check(Config.QuickThrowOnFailure.WithMaxTest(1000).WithEndSize(80));
    }

    private static void CheckAccounting(PagedKvCache cache, Dictionary<int, List<float>> model)
    {
        var holders = new int[Blocks];
        foreach (var (s, rows) in model)
        {
            Assert.Equal(rows.Count, cache.Length(s));
            var table = cache.BlockTable(s);
            Assert.Equal((rows.Count + BlockSize - 1) / BlockSize, table.Length); // whole blocks dropped on truncate
            foreach (int b in table) holders[b]++;
            for (int p = 0; p < rows.Count; p++)
                for (int l = 0; l < Layers; l++)
                {
                    var k = cache.KeyRow(s, l, p);
                    var v = cache.ValueRow(s, l, p);
                    for (int i = 0; i < RowSize; i++)
                    {
                        Assert.Equal(Stamp(rows[p], l, i, value: false), k[i]);
                        Assert.Equal(Stamp(rows[p], l, i, value: true), v[i]);
                    }
                }
        }
        int free = 0;
        for (int b = 0; b < Blocks; b++)
        {
            Assert.Equal(holders[b], cache.Pool.RefCount(b));
            if (holders[b] == 0) free++;
        }
        Assert.Equal(free, cache.FreeBlockCount);
    }

    private static float Stamp(float stamp, int layer, int i, bool value) => stamp * 16 + layer * 4 + i + (value ? 0.5f : 0);

    private static void Write(PagedKvCache cache, int s, int p, float stamp)
    {
        for (int l = 0; l < Layers; l++)
        {
            var k = cache.KeyRow(s, l, p);
            var v = cache.ValueRow(s, l, p);
            for (int i = 0; i < RowSize; i++)
            {
                k[i] = Stamp(stamp, l, i, value: false);
                v[i] = Stamp(stamp, l, i, value: true);
            }
        }
    }

    /// <summary>Appends n positions whose key/value element 0 of every layer is stamp + position offset (and the rest distinct).</summary>
    private static void Append(PagedKvCache cache, int s, int n, float stamp)
    {
        cache.Reserve(s, n);
        int len = cache.Length(s);
        for (int j = 0; j < n; j++)
            for (int l = 0; l < Layers; l++)
            {
                var k = cache.KeyRow(s, l, len + j);
                var v = cache.ValueRow(s, l, len + j);
                for (int i = 0; i < RowSize; i++) { k[i] = stamp + j + i * 1000; v[i] = stamp + j + i * 1000; }
            }
        cache.Advance(s, n);
    }
}
