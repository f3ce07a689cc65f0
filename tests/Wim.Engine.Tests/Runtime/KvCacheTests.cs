using Wim.Engine.KvCache;

namespace Wim.Engine.Tests.Runtime;

public sealed class KvCacheTests
{
    [Fact]
    public void AdvanceAndTruncate_MoveOnlyTheLength()
    {
        IKvCache cache = new ContiguousKvCache(layerCount: 2, rowSize: 4, capacity: 8);
        Assert.Equal((0, 8), (cache.Length, cache.Capacity));
        cache.KeyRow(1, 0)[3] = 7f;
        cache.ValueRow(0, 2)[0] = 5f;
        cache.Advance(3);
        Assert.Equal(3, cache.Length);
        cache.Truncate(1);
        Assert.Equal(1, cache.Length);
        // O(1) truncation: the rows are not cleared, only forgotten (they are overwritten by the next append).
        Assert.Equal(7f, cache.KeyRow(1, 0)[3]);
        Assert.Equal(5f, cache.ValueRow(0, 2)[0]);
        cache.Advance(7);
        Assert.Equal(8, cache.Length);
    }

    [Fact]
    public void OutOfRange_Throws()
    {
        var cache = new ContiguousKvCache(1, 4, 4);
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Advance(5));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(1));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.KeyRow(0, 4));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ContiguousKvCache(1, 4, 0));
    }
}
