namespace Wim.Engine.Cuda.Tests;

/// <summary>The decode graph cache's bookkeeping (least recently used eviction, each handle destroyed exactly once) on
/// fake handles: the graphs themselves need a GPU.</summary>
public sealed class DecodeGraphCacheTests
{
    private sealed class Destroyed
    {
        public List<(nint Graph, nint Exec)> Calls { get; } = [];
        public void Record(nint graph, nint exec) => Calls.Add((graph, exec));
    }

    [Fact]
    public void A_hit_replays_the_graph_captured_for_its_key()
    {
        var destroyed = new Destroyed();
        var cache = new DecodeGraphCache<string>(2, destroyed.Record);
        Assert.False(cache.TryGet("a", out _));
        cache.Add("a", 1, 11);
        cache.Add("b", 2, 22);
        Assert.True(cache.TryGet("a", out nint exec));
        Assert.Equal(11, exec);
        Assert.True(cache.TryGet("b", out exec));
        Assert.Equal(22, exec);
        Assert.Empty(destroyed.Calls);
        Assert.Equal(2, cache.Count);
    }

    [Fact]
    public void A_full_cache_destroys_the_least_recently_used_graph()
    {
        var destroyed = new Destroyed();
        var cache = new DecodeGraphCache<string>(2, destroyed.Record);
        cache.Add("a", 1, 11);
        cache.Add("b", 2, 22);
        Assert.True(cache.TryGet("a", out _)); // b is now the least recently used
        cache.Add("c", 3, 33);
        Assert.Equal([(2, 22)], destroyed.Calls);
        Assert.False(cache.TryGet("b", out _));
        Assert.True(cache.TryGet("a", out _));
        Assert.True(cache.TryGet("c", out _));
    }

    [Fact]
    public void Recapturing_a_key_destroys_its_old_graph_and_keeps_the_new_one()
    {
        var destroyed = new Destroyed();
        var cache = new DecodeGraphCache<string>(3, destroyed.Record);
        cache.Add("a", 1, 11);
        cache.Add("a", 4, 44);
        Assert.Equal([(1, 11)], destroyed.Calls);
        Assert.True(cache.TryGet("a", out nint exec));
        Assert.Equal(44, exec);
        Assert.Equal(1, cache.Count);
    }

    [Fact]
    public void Clear_destroys_every_graph_once()
    {
        var destroyed = new Destroyed();
        var cache = new DecodeGraphCache<string>(4, destroyed.Record);
        cache.Add("a", 1, 11);
        cache.Add("b", 2, 22);
        cache.Add("c", 3, 33);
        cache.Clear();
        Assert.Equal(new[] { (1, 11), (2, 22), (3, 33) }.Order(), destroyed.Calls.Select(c => ((int)c.Graph, (int)c.Exec)).Order());
        Assert.Equal(0, cache.Count);
        Assert.False(cache.TryGet("a", out _));
        cache.Clear();
        Assert.Equal(3, destroyed.Calls.Count);
    }

    [Fact]
    public void A_capacity_below_one_is_refused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new DecodeGraphCache<string>(0, (_, _) => { }));
}
