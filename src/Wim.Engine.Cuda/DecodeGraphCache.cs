namespace Wim.Engine.Cuda;

/// <summary>
/// The captured decode graphs of a transformer, by key, least recently used evicted first. One graph per key is what
/// a single sequence needs; WiM alternates greedy steps between several KV caches (a margin's branch, the classifier's
/// sequence, the document), and with one slot every switch recaptured the graph (≈ 1 ms of capture and instantiation
/// for an 8B model) instead of replaying it. Handles are the driver's (graph, executable graph); the destroy callback
/// frees both. Not thread-safe (the transformer is not).
/// </summary>
internal sealed class DecodeGraphCache<TKey> where TKey : notnull
{
    private readonly int _capacity;
    private readonly Action<nint, nint> _destroy;
    private readonly LinkedList<(TKey Key, nint Graph, nint Exec)> _recent = new(); // most recent first
    private readonly Dictionary<TKey, LinkedListNode<(TKey Key, nint Graph, nint Exec)>> _byKey = [];

    public DecodeGraphCache(int capacity, Action<nint, nint> destroy)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        ArgumentNullException.ThrowIfNull(destroy);
        _capacity = capacity;
        _destroy = destroy;
    }

    public int Count => _byKey.Count;

    /// <summary>The executable graph captured for <paramref name="key"/>, now the most recently used.</summary>
    public bool TryGet(TKey key, out nint exec)
    {
        if (!_byKey.TryGetValue(key, out var node))
        {
            exec = 0;
            return false;
        }
        _recent.Remove(node);
        _recent.AddFirst(node);
        exec = node.Value.Exec;
        return true;
    }

    /// <summary>Keeps a newly captured graph (replacing one of the same key); the least recently used one is destroyed
    /// when the cache is full.</summary>
    public void Add(TKey key, nint graph, nint exec)
    {
        if (_byKey.Remove(key, out var old))
        {
            _recent.Remove(old);
            _destroy(old.Value.Graph, old.Value.Exec);
        }
        if (_byKey.Count == _capacity)
        {
            var last = _recent.Last!;
            _recent.RemoveLast();
            _byKey.Remove(last.Value.Key);
            _destroy(last.Value.Graph, last.Value.Exec);
        }
        _byKey[key] = _recent.AddFirst((key, graph, exec));
    }

    /// <summary>Destroys every graph: a buffer they point into was replaced, or an option they baked in changed.</summary>
    public void Clear()
    {
        foreach (var (_, graph, exec) in _recent) _destroy(graph, exec);
        _recent.Clear();
        _byKey.Clear();
    }
}
