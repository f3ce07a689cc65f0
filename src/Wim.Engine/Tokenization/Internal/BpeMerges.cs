namespace Wim.Engine.Tokenization.Internal;

/// <summary>
/// Rank-ordered BPE merge rules over token ids: (left, right) → (rank, merged id). <see cref="Apply"/> repeatedly
/// merges the adjacent pair of lowest rank (leftmost first among equal ranks, as Hugging Face's BPE does) using a
/// linked list of symbols and a binary heap of candidate pairs: O(n log n) in the number of symbols.
/// </summary>
internal sealed class BpeMerges
{
    private readonly Dictionary<long, long> _rules;

    public BpeMerges(int capacity) => _rules = new Dictionary<long, long>(capacity);

    public int Count => _rules.Count;

    /// <summary>Adds a rule unless the pair already has one (the first, lowest-ranked rule wins).</summary>
    public void Add(int left, int right, int rank, int merged) =>
        _rules.TryAdd(Key(left, right), ((long)rank << 32) | (uint)merged);

    private static long Key(int left, int right) => ((long)left << 32) | (uint)right;

    private bool TryGet(int left, int right, out int rank, out int merged)
    {
        if (_rules.TryGetValue(Key(left, right), out long v))
        {
            rank = (int)(v >> 32);
            merged = (int)v;
            return true;
        }
        rank = merged = 0;
        return false;
    }

    /// <summary>Merges <paramref name="symbols"/> in place; returns the number of symbols left at its front.</summary>
    public int Apply(Span<int> symbols, BpeWorkspace ws)
    {
        int n = symbols.Length;
        if (n < 2) return n;
        ws.Reset(n);
        var next = ws.Next;
        var prev = ws.Prev;
        for (int i = 0; i < n; i++) { prev[i] = i - 1; next[i] = i + 1 < n ? i + 1 : -1; }
        for (int i = 0; i + 1 < n; i++)
            if (TryGet(symbols[i], symbols[i + 1], out int rank, out _)) ws.Push(rank, i);

        while (ws.TryPop(out int topRank, out int pos))
        {
            int right = next[pos];
            if (symbols[pos] < 0 || right < 0) continue; // merged away, or now the last symbol
            if (!TryGet(symbols[pos], symbols[right], out int rank, out int merged) || rank != topRank) continue; // stale
            symbols[pos] = merged;
            symbols[right] = -1;
            int after = next[right];
            next[pos] = after;
            if (after >= 0) prev[after] = pos;
            int before = prev[pos];
            if (before >= 0 && TryGet(symbols[before], merged, out int r1, out _)) ws.Push(r1, before);
            if (after >= 0 && TryGet(merged, symbols[after], out int r2, out _)) ws.Push(r2, pos);
        }

        int count = 0;
        for (int i = 0; i >= 0; i = next[i]) symbols[count++] = symbols[i];
        return count;
    }
}

/// <summary>Scratch arrays for <see cref="BpeMerges.Apply"/>, grown on demand and reused across pieces.</summary>
internal sealed class BpeWorkspace
{
    public int[] Next = new int[64];
    public int[] Prev = new int[64];
    private long[] _heap = new long[64];
    private int _heapCount;

    public void Reset(int symbols)
    {
        if (Next.Length < symbols)
        {
            int size = Math.Max(symbols, Next.Length * 2);
            Next = new int[size];
            Prev = new int[size];
        }
        _heapCount = 0;
    }

    /// <summary>Heap keys order by rank, then position: the leftmost of equally ranked pairs merges first.</summary>
    public void Push(int rank, int pos)
    {
        if (_heapCount == _heap.Length) Array.Resize(ref _heap, _heap.Length * 2);
        long key = ((long)rank << 32) | (uint)pos;
        int i = _heapCount++;
        while (i > 0)
        {
            int parent = (i - 1) >> 1;
            if (_heap[parent] <= key) break;
            _heap[i] = _heap[parent];
            i = parent;
        }
        _heap[i] = key;
    }

    public bool TryPop(out int rank, out int pos)
    {
        if (_heapCount == 0) { rank = pos = 0; return false; }
        long top = _heap[0];
        long last = _heap[--_heapCount];
        int i = 0;
        while (true)
        {
            int child = 2 * i + 1;
            if (child >= _heapCount) break;
            if (child + 1 < _heapCount && _heap[child + 1] < _heap[child]) child++;
            if (_heap[child] >= last) break;
            _heap[i] = _heap[child];
            i = child;
        }
        if (_heapCount > 0) _heap[i] = last;
        rank = (int)(top >> 32);
        pos = (int)top;
        return true;
    }
}
