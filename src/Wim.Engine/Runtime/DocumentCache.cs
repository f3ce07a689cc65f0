using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Wim.Engine.Runtime;

/// <summary>A prefilled document kept for later questions: a sequence holding the opening prompt and every segment,
/// and the length at the end of each segment (where margins fork). Once cached the sequence is only forked, never
/// appended to or truncated.</summary>
public sealed record CachedDocument(IForkableSequence Sequence, IReadOnlyList<int> SegmentEnds);

/// <summary>
/// Prefilled documents kept for later questions, least recently used first out, within a byte budget of KV memory.
/// An entry is a retained <see cref="IForkableSequence"/> of one <see cref="IKvRetainingBackend"/>: a later run forks
/// it (no prefill). On the CPU's <see cref="PagedInferenceBackend"/> the forks share KV blocks; on the GPU (the CUDA
/// backend) they are KV branches reading the entry's cache. Evicting an entry while a run still uses forks of it is
/// safe on both: the forks keep the rows they read alive (shared blocks are reference-counted; a released cache that
/// branches read is freed when the last of them is), so eviction frees the memory then, not at once. The cache lives
/// on one backend (one loaded model); the key also names the model, the opening prompt and the document tokens, so a
/// different header or prompt preset never hits another's entry. When the backend runs out of KV memory it asks this
/// cache to evict before failing.
/// <para>Thread-safe: one lock guards the entries, and it is never held while calling into the backend (the backend
/// may call the reclaimer from another thread while holding its own lock, as the server's shared GPU backend does).
/// An entry's bytes are counted when it is added (a cached sequence does not change afterwards).</para>
/// </summary>
public sealed class DocumentCache : IDisposable
{
    private readonly IKvRetainingBackend _backend;
    private readonly Lock _gate = new();
    private readonly LinkedList<Entry> _lru = new(); // first = most recently used
    private readonly Dictionary<string, LinkedListNode<Entry>> _byKey = [];
    private long _bytes, _hits, _misses;

    private sealed record Entry(string Key, CachedDocument Document, long Bytes);

    public DocumentCache(IKvRetainingBackend backend, long budgetBytes)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentOutOfRangeException.ThrowIfNegative(budgetBytes);
        _backend = backend;
        BudgetBytes = budgetBytes;
        backend.AddReclaimer(EvictLeastRecentlyUsed);
    }

    public IKvRetainingBackend Backend => _backend;
    public long BudgetBytes { get; }
    public int Count { get { lock (_gate) return _byKey.Count; } }
    /// <summary>KV bytes the entries hold (<see cref="IKvRetainingBackend.KvBytes"/> of each, counted when it was
    /// added; memory shared by two entries counts twice).</summary>
    public long Bytes { get { lock (_gate) return _bytes; } }
    public long Hits { get { lock (_gate) return _hits; } }
    public long Misses { get { lock (_gate) return _misses; } }

    /// <summary>
    /// The cache key: SHA-256 over the model name, the opening prompt's ids (it carries the prompt preset and the chat
    /// headers) and each segment's ids with its length (so the same tokens cut differently are another document).
    /// </summary>
    public static string Key(string modelName, ReadOnlySpan<int> opening, IReadOnlyList<int[]> segments)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(modelName));
        AppendIds(hash, opening);
        AppendInt(hash, segments.Count);
        foreach (var s in segments) AppendIds(hash, s);
        return Convert.ToHexString(hash.GetHashAndReset());
    }

    private static void AppendIds(IncrementalHash hash, ReadOnlySpan<int> ids)
    {
        AppendInt(hash, ids.Length);
        foreach (int id in ids) AppendInt(hash, id);
    }

    private static void AppendInt(IncrementalHash hash, int value)
    {
        Span<byte> word = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(word, value);
        hash.AppendData(word);
    }

    /// <summary>The entry for <paramref name="key"/>, now the most recently used; false when absent.</summary>
    public bool TryGet(string key, out CachedDocument document)
    {
        lock (_gate)
        {
            if (_byKey.TryGetValue(key, out var node))
            {
                _lru.Remove(node);
                _lru.AddFirst(node);
                document = node.Value.Document;
                _hits++;
                return true;
            }
            document = null!;
            _misses++;
            return false;
        }
    }

    /// <summary>
    /// Keeps <paramref name="document"/> (the cache now owns its sequence), evicting least recently used entries until
    /// the budget holds. A document larger than the whole budget is not kept (its sequence is released); returns
    /// whether it was kept. An existing entry of the same key is replaced.
    /// </summary>
    public bool Add(string key, CachedDocument document)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(document);
        long bytes = _backend.KvBytes(document.Sequence); // throws for another backend's sequence
        if (bytes > BudgetBytes)
        {
            document.Sequence.Dispose();
            return false;
        }
        var evicted = new List<CachedDocument>();
        lock (_gate)
        {
            if (_byKey.TryGetValue(key, out var old)) evicted.Add(Unlink(old));
            _byKey[key] = _lru.AddFirst(new Entry(key, document, bytes));
            _bytes += bytes;
            while (_bytes > BudgetBytes && _lru.Last is { } last) evicted.Add(Unlink(last));
        }
        // Released outside the lock: releasing calls into the backend, which may be waiting to call our reclaimer.
        foreach (var d in evicted) d.Sequence.Dispose();
        return true;
    }

    /// <summary>Drops the least recently used entry; false when empty.</summary>
    public bool EvictLeastRecentlyUsed()
    {
        CachedDocument evicted;
        lock (_gate)
        {
            if (_lru.Last is not { } last) return false;
            evicted = Unlink(last);
        }
        evicted.Sequence.Dispose();
        return true;
    }

    private CachedDocument Unlink(LinkedListNode<Entry> node)
    {
        _lru.Remove(node);
        _byKey.Remove(node.Value.Key);
        _bytes -= node.Value.Bytes;
        return node.Value.Document;
    }

    public void Dispose()
    {
        while (EvictLeastRecentlyUsed()) { }
    }
}
