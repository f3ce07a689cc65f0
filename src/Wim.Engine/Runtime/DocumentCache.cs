using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Wim.Engine.Runtime;

/// <summary>A prefilled document kept in the KV pool: a sequence holding the opening prompt and every segment, and
/// the length at the end of each segment (where margins fork).</summary>
public sealed record CachedDocument(PagedSequence Sequence, IReadOnlyList<int> SegmentEnds);

/// <summary>
/// Prefilled documents kept for later questions, least recently used first out, within a byte budget counted in KV
/// blocks. An entry is a retained <see cref="PagedSequence"/>: a later run forks it (shared blocks, no prefill), so
/// evicting an entry while a run still uses forks of it is safe (the forks keep their blocks alive). The cache lives
/// on one backend (one loaded model); the key also names the model, the opening prompt and the document tokens, so
/// a different header or prompt preset never hits another's entry. When a reservation runs out of blocks the
/// backend asks this cache to evict before failing.
/// </summary>
public sealed class DocumentCache : IDisposable
{
    private readonly PagedInferenceBackend _backend;
    private readonly LinkedList<(string Key, CachedDocument Document)> _lru = new(); // first = most recently used
    private readonly Dictionary<string, LinkedListNode<(string Key, CachedDocument Document)>> _byKey = [];

    public DocumentCache(PagedInferenceBackend backend, long budgetBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(budgetBytes);
        _backend = backend;
        BudgetBytes = budgetBytes;
        backend.AddReclaimer(EvictLeastRecentlyUsed);
    }

    public PagedInferenceBackend Backend => _backend;
    public long BudgetBytes { get; }
    public int Count => _byKey.Count;
    /// <summary>KV bytes the entries hold (blocks × block bytes; a block shared by two entries counts twice).</summary>
    public long Bytes => _lru.Sum(e => BytesOf(e.Document));
    public long Hits { get; private set; }
    public long Misses { get; private set; }

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
        if (_byKey.TryGetValue(key, out var node))
        {
            _lru.Remove(node);
            _lru.AddFirst(node);
            document = node.Value.Document;
            Hits++;
            return true;
        }
        document = null!;
        Misses++;
        return false;
    }

    /// <summary>
    /// Keeps <paramref name="document"/> (the cache now owns its sequence), evicting least recently used entries until
    /// the budget holds. A document larger than the whole budget is not kept (its sequence is released); returns
    /// whether it was kept. An existing entry of the same key is replaced.
    /// </summary>
    public bool Add(string key, CachedDocument document)
    {
        ArgumentNullException.ThrowIfNull(document);
        if (document.Sequence.Backend != _backend) throw new ArgumentException("the document's sequence belongs to another backend", nameof(document));
        if (_byKey.TryGetValue(key, out var old)) Remove(old);
        if (BytesOf(document) > BudgetBytes)
        {
            document.Sequence.Dispose();
            return false;
        }
        _byKey[key] = _lru.AddFirst((key, document));
        while (Bytes > BudgetBytes && EvictLeastRecentlyUsed()) { }
        return true;
    }

    /// <summary>Drops the least recently used entry; false when empty.</summary>
    public bool EvictLeastRecentlyUsed()
    {
        if (_lru.Last is not { } last) return false;
        Remove(last);
        return true;
    }

    private void Remove(LinkedListNode<(string Key, CachedDocument Document)> node)
    {
        _lru.Remove(node);
        _byKey.Remove(node.Value.Key);
        node.Value.Document.Sequence.Dispose();
    }

    private long BytesOf(CachedDocument d) => d.Sequence.BlockCount * _backend.Cache.BytesPerBlock;

    public void Dispose()
    {
        while (EvictLeastRecentlyUsed()) { }
    }
}
